//! The connection driver: the one place that owns a session's sockets and its state
//! machine. [`Connection::next_event`] turns socket readiness, data-channel events, the
//! session's deadline and the shutdown signal into one [`Event`];
//! [`Connection::perform`] carries out the [`Action`]s the session returns. Nothing is
//! decided here.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::admin::Entry;
use crate::data::channel::DataTls;
use crate::plan::{ChannelId, DataEvent};
use crate::session::{
    Action, Event, Session, SessionLimits, SessionParams, SideAddrs, TlsParams, UpstreamKind,
};
use crate::telemetry;
use crate::tls::SessionTls;

use super::channels::ChannelTasks;
use super::control::{ControlStream, Read};
use super::upstream::{connect_upstream, Target};
use super::GatewayContext;

/// Bytes read from a control connection at a time.
const CONTROL_BUFFER: usize = 4096;

type Connecting = Pin<Box<dyn Future<Output = Result<TcpStream, String>> + Send>>;

/// One control session: the client's connection, the server's, the data channels and
/// the session that decides.
pub(super) struct Connection {
    ctx: Arc<GatewayContext>,
    session: Session,
    client: ControlStream,
    client_open: bool,
    /// This session's TLS configurations toward its client (`tls: terminate`).
    tls: Option<SessionTls>,
    server: Option<(OwnedReadHalf, OwnedWriteHalf)>,
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
                tls: TlsParams {
                    policy: cfg.tls.mode,
                    require: cfg.tls.require,
                    implicit: client.is_tls(),
                },
                limits: SessionLimits::from_config(&ctx.limits),
                allow_server_ports: cfg.allow_server_ports.clone(),
                allow_privileged_ports: cfg.allow_privileged_ports,
                server_mode: cfg.server_mode,
            },
            Instant::now(),
        );
        let (events_tx, channel_events) = mpsc::unbounded_channel();
        let from = cfg.server_side.address;
        let connecting = target.map(|t| Box::pin(connect_upstream(t, from, None)) as Connecting);
        let data_tls = tls.as_ref().map(|t| DataTls {
            config: Arc::clone(&t.data),
            require_reuse: ctx.tls.as_ref().is_some_and(|t| t.require_reuse),
        });
        let mut ready = VecDeque::new();
        if !early.is_empty() {
            ready.push_back(Event::ClientData(early));
        }
        Self {
            channels: ChannelTasks::new(Arc::clone(&ctx), events_tx, entry, data_tls),
            shutdown: ctx.shutdown.clone(),
            ctx,
            session,
            client,
            client_open: true,
            tls,
            server: None,
            connecting,
            channel_events,
            ready,
        }
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
                    match r.and_then(|rd| read_now(|buf| rd.try_read(buf))) {
                        Ok(bytes) if bytes.is_empty() => {
                            // Stop reading a closed connection; the session still answers
                            // the client.
                            self.server = None;
                            return Event::ServerClosed;
                        }
                        Ok(bytes) => return Event::ServerData(bytes),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => {
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
    fn upstream(&mut self, result: Result<TcpStream, String>) -> Event {
        let connected = result.and_then(|stream| {
            let addr = stream.peer_addr().map_err(|e| e.to_string())?;
            Ok((stream, addr))
        });
        match connected {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                tracing::Span::current().record("server", tracing::field::display(addr));
                self.channels.entry.server(addr);
                tracing::info!("connected upstream");
                self.server = Some(stream.into_split());
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
                Action::ConnectUpstream { host, port } => {
                    let ctx = Arc::clone(&self.ctx);
                    let from: IpAddr = ctx.cfg.server_side.address;
                    self.connecting = Some(Box::pin(async move {
                        connect_upstream(Target::Name(host, port), from, Some(&ctx)).await
                    }));
                }
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
    async fn start_client_tls(&mut self) {
        let result = match (&self.tls, self.client_open) {
            (Some(tls), true) => {
                let within = self.ctx.limits.line_timeout.0;
                let config = Arc::clone(&tls.control);
                self.client.accept_tls(config, within, false).await
            }
            (None, _) => Err("this gateway has no TLS configuration".into()),
            (_, false) => Err("the client is gone".into()),
        };
        match result {
            Ok(plain) => {
                self.ready.push_back(Event::ClientTls(Ok(())));
                if !plain.is_empty() {
                    self.ready.push_back(Event::ClientData(plain));
                }
            }
            Err(why) => self.ready.push_back(Event::ClientTls(Err(why))),
        }
    }

    async fn write_server(&mut self, bytes: &[u8]) {
        let Some((_, wr)) = &mut self.server else {
            tracing::debug!("dropped server-bound bytes: no server connection");
            return;
        };
        if wr.write_all(bytes).await.is_err() {
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
        if let Some((_, mut wr)) = self.server.take() {
            let _ = wr.shutdown().await;
        }
        self.connecting = None;
    }
}

/// What a ready socket has now (empty at its end). The buffer lives on the stack only
/// for the read, never in the session's future: an idle session costs no buffer.
fn read_now(read: impl FnOnce(&mut [u8]) -> io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; CONTROL_BUFFER];
    let n = read(&mut buf)?;
    Ok(buf[..n].to_vec())
}

/// Waits until the server's control connection is readable; returns its read half.
async fn server_readable(
    server: &Option<(OwnedReadHalf, OwnedWriteHalf)>,
) -> io::Result<&OwnedReadHalf> {
    match server {
        Some((rd, _)) => rd.readable().await.map(|()| rd),
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
