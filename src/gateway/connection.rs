//! The connection driver: the one place that owns a session's sockets and its state
//! machine. [`Connection::next_event`] turns socket readiness, data-channel events, the
//! session's deadline and the shutdown signal into one [`Event`];
//! [`Connection::perform`] carries out the [`Action`]s the session returns. Nothing is
//! decided here.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::admin::Entry;
use crate::config::{ServerSource, UpstreamTls};
use crate::data::channel::DataTls;
use crate::plan::DialSource;
use crate::plan::{ChannelId, DataEvent};
use crate::session::{
    Action, Event, Session, SessionLimits, SessionParams, SideAddrs, TlsParams, UpstreamKind,
};
use crate::telemetry;
use crate::tls::{SessionTls, UpstreamSession};

use super::channels::ChannelTasks;
use super::control::{ControlStream, Read};
use super::upstream::{connect_upstream, Target};
use super::GatewayContext;

/// An upstream control connection being made: TCP, and TLS at once for implicit FTPS;
/// with the plain text that came with the handshake.
type Connecting = Pin<Box<dyn Future<Output = Result<(ControlStream, Vec<u8>), String>> + Send>>;

/// One control session: the client's connection, the server's, the data channels and
/// the session that decides.
pub(super) struct Connection {
    ctx: Arc<GatewayContext>,
    session: Session,
    client: ControlStream,
    client_open: bool,
    /// This session's TLS configurations toward its client (`tls: terminate`): made at
    /// its implicit handshake or first `AUTH`.
    tls: Option<SessionTls>,
    /// The client's address (the source toward the server with `server_source: client`).
    peer_ip: std::net::IpAddr,
    /// TLS toward the server (`tls.upstream`), once its name is known.
    upstream_tls: Option<UpstreamSession>,
    server: Option<ControlStream>,
    connecting: Option<Connecting>,
    channels: ChannelTasks,
    channel_events: mpsc::UnboundedReceiver<(ChannelId, DataEvent)>,
    shutdown: watch::Receiver<Option<Instant>>,
    /// Events that performing actions produced (a channel opened, a peer lost).
    ready: VecDeque<Event>,
}

impl Connection {
    /// A session for `client` (from `peer`), whose server is `target` (`None` in the
    /// explicit role, where the client names it). `tls`: the session's TLS configuration
    /// under `tls: terminate`; `early`: plain text that came with an implicit FTPS
    /// handshake.
    pub fn new(
        ctx: Arc<GatewayContext>,
        client: ControlStream,
        peer: SocketAddr,
        target: Option<Target>,
        entry: Entry,
        tls: Option<SessionTls>,
        early: Vec<u8>,
    ) -> Self {
        let cfg = &ctx.cfg;
        let session = Session::new(
            SessionParams {
                upstream: if target.is_some() {
                    UpstreamKind::Fixed
                } else {
                    UpstreamKind::Explicit
                },
                client: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
                client_side: SideAddrs {
                    address: cfg.client_side.address,
                    announce: cfg.client_announce(),
                },
                server_side: SideAddrs {
                    address: cfg.server_side.address,
                    announce: cfg.server_announce(),
                },
                client_source: cfg.client_source,
                server_source: cfg.server_source,
                tls: TlsParams {
                    policy: cfg.tls.mode,
                    require: cfg.tls.require,
                    implicit: client.is_tls(),
                    upstream: cfg.tls.upstream,
                },
                limits: SessionLimits::from_config(&ctx.limits),
                allow_server_ports: cfg.allow_server_ports.clone(),
                allow_privileged_ports: cfg.allow_privileged_ports,
                server_mode: cfg.server_mode,
            },
            Instant::now(),
        );
        let (events_tx, channel_events) = mpsc::unbounded_channel();
        let host = match &target {
            Some(Target::Addr(a)) => Some(a.ip().to_string()),
            Some(Target::Name(h, _)) => Some(h.clone()),
            None => None,
        };
        let mut ready = VecDeque::new();
        if !early.is_empty() {
            ready.push_back(Event::ClientData(early));
        }
        let mut connection = Self {
            channels: ChannelTasks::new(Arc::clone(&ctx), events_tx, entry),
            shutdown: ctx.shutdown.clone(),
            ctx,
            session,
            client,
            client_open: true,
            tls,
            server: None,
            connecting: None,
            peer_ip: peer.ip().to_canonical(),
            upstream_tls: None,
            channel_events,
            ready,
        };
        if let Some(tls) = connection.tls.clone() {
            connection.secured(tls);
        }
        if let (Some(target), Some(host)) = (target, host) {
            connection.dial(target, &host, None);
        }
        connection
    }

    /// Starts connecting to the server `target` (named `host`, for its certificate);
    /// `checked`: the explicit role's rules on upstreams apply.
    fn dial(&mut self, target: Target, host: &str, checked: Option<Arc<GatewayContext>>) {
        let tls = match self.ctx.tls.as_ref().and_then(|t| t.upstream(host)) {
            Some(Ok(session)) => Some(session),
            Some(Err(e)) => {
                let why = e.to_string();
                self.connecting = Some(Box::pin(async move { Err(why) }));
                return;
            }
            None => None,
        };
        self.channels.set_server_tls(tls.clone());
        self.upstream_tls = tls.clone();
        let implicit = tls.filter(|_| self.ctx.cfg.tls.upstream == UpstreamTls::Implicit);
        // server_source: client: the server sees the client's own address.
        let from = match self.ctx.cfg.server_source {
            ServerSource::Gateway => DialSource::Bind(self.ctx.cfg.server_side.address),
            ServerSource::Client => DialSource::Transparent(self.peer_ip),
        };
        let within = self.ctx.limits.line_timeout.0;
        self.connecting = Some(Box::pin(async move {
            let tcp = connect_upstream(target, from, checked.as_deref()).await?;
            let _ = tcp.set_nodelay(true);
            let mut server = ControlStream::plain(tcp);
            let early = match implicit {
                Some(up) => server
                    .connect_tls(up.config, up.name, within)
                    .await
                    .map_err(|e| format!("implicit TLS: {e}"))?,
                None => Vec::new(),
            };
            Ok((server, early))
        }));
    }

    /// Runs the session to its end; returns why it ended abnormally, if it did.
    pub async fn run(mut self) -> Option<String> {
        let mut actions = self.session.start();
        loop {
            self.perform(actions).await;
            if self.session.is_finished() {
                return self.session.failure().map(str::to_owned);
            }
            let event = self.next_event().await;
            actions = self.session.handle(Instant::now(), event);
        }
    }

    /// The next thing that happened.
    async fn next_event(&mut self) -> Event {
        if let Some(event) = self.ready.pop_front() {
            return event;
        }
        loop {
            let deadline = self.session.poll_timeout();
            tokio::select! {
                r = self.client.readable(), if self.client_open => {
                    let read = match r {
                        Ok(()) => self.client.read().await,
                        Err(e) => Err(e),
                    };
                    match read {
                        Ok(Read::Data(bytes)) => return Event::ClientData(bytes),
                        Ok(Read::Nothing) => continue,
                        Ok(Read::Closed) | Err(_) => {
                            self.client_open = false;
                            return Event::ClientClosed;
                        }
                    }
                }
                r = server_readable(&self.server), if self.server.is_some() => {
                    let read = match (r, self.server.as_mut()) {
                        (Ok(()), Some(server)) => server.read().await,
                        (Err(e), _) => Err(e),
                        (Ok(()), None) => Ok(Read::Closed),
                    };
                    match read {
                        Ok(Read::Data(bytes)) => return Event::ServerData(bytes),
                        Ok(Read::Nothing) => continue,
                        // Stop reading a closed connection; the session still answers
                        // the client.
                        Ok(Read::Closed) | Err(_) => {
                            self.server = None;
                            return Event::ServerClosed;
                        }
                    }
                }
                r = async { self.connecting.as_mut().expect("guarded").await }, if self.connecting.is_some() => {
                    self.connecting = None;
                    return self.upstream(r);
                }
                Some((id, ev)) = self.channel_events.recv() => {
                    self.channels.event(id, &ev);
                    return Event::Data(id, ev);
                }
                Ok(()) = self.shutdown.changed() => {
                    if let Some(deadline) = *self.shutdown.borrow_and_update() {
                        return Event::Shutdown { deadline };
                    }
                }
                () = sleep_until(deadline) => return Event::Timeout,
            }
        }
    }

    /// The upstream connection is up (or failed).
    fn upstream(&mut self, result: Result<(ControlStream, Vec<u8>), String>) -> Event {
        let connected = result.and_then(|(server, early)| {
            let addr = server.peer_addr().map_err(|e| e.to_string())?;
            Ok((server, early, addr))
        });
        match connected {
            Ok((server, early, addr)) => {
                tracing::Span::current().record("server", tracing::field::display(addr));
                self.channels.entry.server(addr, server.local_addr().ok());
                tracing::info!(tls = server.is_tls(), "connected upstream");
                self.server = Some(server);
                if !early.is_empty() {
                    self.ready.push_back(Event::ServerData(early));
                }
                Event::UpstreamConnected(addr)
            }
            Err(why) => {
                telemetry::upstream_connect_failed(&self.ctx.name);
                Event::UpstreamFailed(why)
            }
        }
    }

    /// Carries out the session's actions, in order. A peer that cannot be written to is
    /// gone: the session hears it as a close, so that it can answer the other side and
    /// report every channel.
    async fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::ToClient(bytes) if self.client_open => {
                    if self.client.write_all(&bytes).await.is_err() {
                        self.client_open = false;
                        self.ready.push_back(Event::ClientClosed);
                    }
                }
                Action::ToClient(_) => {}
                Action::StartClientTls => self.start_client_tls().await,
                Action::ToServer(bytes) => self.write_server(&bytes).await,
                Action::ToServerSynch(command) => self.write_server_synch(&command).await,
                Action::ConnectUpstream { host, port } => {
                    let ctx = Arc::clone(&self.ctx);
                    self.dial(Target::Name(host.clone(), port), &host, Some(ctx));
                }
                Action::StartServerTls => self.start_server_tls().await,
                Action::OpenChannel { id, plan } => {
                    let result = self.channels.open(id, &plan);
                    self.ready.push_back(Event::ChannelOpened { id, result });
                }
                Action::CancelChannel(id) => self.channels.cancel(id),
                Action::ChannelEnded(end) => self.channels.ended(&end),
                Action::Close => self.close().await,
                Action::Refused(rule) => telemetry::refused(&self.ctx.name, rule),
                Action::Rewrote(kind) => telemetry::rewrote(&self.ctx.name, kind.name()),
            }
        }
    }

    /// The TLS handshake `AUTH` asked for, before anything more is read from the client.
    /// The session's TLS toward its client is set up now, at the first `AUTH`: sessions
    /// that never ask for TLS cost nothing of it.
    async fn start_client_tls(&mut self) {
        let result = match (self.session_tls(), self.client_open) {
            (Ok(tls), true) => {
                let within = self.ctx.limits.line_timeout.0;
                self.client.accept_tls(tls.control, within, false).await
            }
            (Err(why), _) => Err(why),
            (_, false) => Err("the client is gone".into()),
        };
        self.handshake_done(result, Event::ClientTls, Event::ClientData);
    }

    /// The session's TLS configurations, made when first needed.
    fn session_tls(&mut self) -> Result<SessionTls, String> {
        if let Some(tls) = &self.tls {
            return Ok(tls.clone());
        }
        let tls = self
            .ctx
            .tls
            .as_ref()
            .ok_or("this gateway has no TLS configuration")?
            .session()
            .map_err(|e| e.to_string())?;
        self.tls = Some(tls.clone());
        self.secured(tls.clone());
        Ok(tls)
    }

    /// Data channels of a protected session use its TLS toward the client.
    fn secured(&mut self, tls: SessionTls) {
        self.channels.set_client_tls(DataTls {
            config: tls.data,
            require_reuse: self.ctx.tls.as_ref().is_some_and(|t| t.require_reuse),
        });
    }

    /// The TLS handshake with the server after its `234` to ftpgate's `AUTH TLS`.
    async fn start_server_tls(&mut self) {
        let result = match (&self.upstream_tls, self.server.as_mut()) {
            (Some(up), Some(server)) => {
                let within = self.ctx.limits.line_timeout.0;
                let config = Arc::clone(&up.config);
                server.connect_tls(config, up.name.clone(), within).await
            }
            (None, _) => Err("no TLS configuration toward the server".into()),
            (_, None) => Err("the server is gone".into()),
        };
        self.handshake_done(result, Event::ServerTls, Event::ServerData);
    }

    /// Reports a handshake's outcome (`done`), then the plain text that came with it
    /// (`data`).
    fn handshake_done(
        &mut self,
        result: Result<Vec<u8>, String>,
        done: fn(Result<(), String>) -> Event,
        data: fn(Vec<u8>) -> Event,
    ) {
        match result {
            Ok(plain) => {
                self.ready.push_back(done(Ok(())));
                if !plain.is_empty() {
                    self.ready.push_back(data(plain));
                }
            }
            Err(why) => self.ready.push_back(done(Err(why))),
        }
    }

    /// The client's Synch, then `command`, to the server.
    async fn write_server_synch(&mut self, command: &[u8]) {
        let Some(server) = &mut self.server else {
            return;
        };
        if server.write_synch(command).await.is_err() {
            self.server = None;
            self.ready.push_back(Event::ServerClosed);
        }
    }

    async fn write_server(&mut self, bytes: &[u8]) {
        let Some(server) = &mut self.server else {
            tracing::debug!("dropped server-bound bytes: no server connection");
            return;
        };
        if server.write_all(bytes).await.is_err() {
            self.server = None;
            self.ready.push_back(Event::ServerClosed);
        }
    }

    /// The control connections end; data channels still finishing get their grace from
    /// the session.
    async fn close(&mut self) {
        if self.client_open {
            self.client.shutdown().await;
            self.client_open = false;
        }
        if let Some(mut server) = self.server.take() {
            server.shutdown().await;
        }
        self.connecting = None;
    }
}

/// Waits until the server's control connection is readable.
async fn server_readable(server: &Option<ControlStream>) -> io::Result<()> {
    match server {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
