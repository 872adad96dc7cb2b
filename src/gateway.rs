//! The async shell: listening sockets, admission (ACLs and limits), upstream resolution,
//! and one task per control session that feeds socket events into a
//! [`Session`](crate::session::Session) and performs the actions it returns.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tracing::Instrument;

use crate::admin::{Entry, Registry};
use crate::config::{Config, GatewayConfig, Limits, Upstream};
use crate::data::channel::{self, ChannelContext, Listeners, Listening};
use crate::data::ports::PortPool;
use crate::rules::Rule;
use crate::session::{
    Action, ChannelEnd, ChannelId, DataChannels, DataEvent, DataOpenError, DataPlan, DialSource,
    Endpoint, Event, Ports, Session, SessionLimits, SessionParams, SideAddrs, TransferRecord,
    UpstreamKind,
};
use crate::telemetry::{self, LogLimiter};

/// Refused connections are logged at most this often (rule logs are rate-limited,
/// DESIGN.md §6.15); `ftpgate_refusals_total` counts every one.
static ADMISSION_LOG: LogLimiter = LogLimiter::new(10, Duration::from_secs(10));

/// How long connecting to an upstream control port may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Read buffer per control connection direction.
const CONTROL_BUFFER: usize = 4096;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A listening socket could not be bound.
    #[error("gateway {name:?}: cannot listen on {addr}: {error}")]
    Bind {
        /// Gateway name.
        name: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: io::Error,
    },
}

/// Session counts shared by all gateways, for `max_sessions` and `max_sessions_per_client`.
#[derive(Debug, Default)]
struct Admission {
    state: Mutex<AdmissionState>,
}

#[derive(Debug, Default)]
struct AdmissionState {
    total: usize,
    /// Sessions per client group (an address, or an IPv6 /64 by default).
    per_client: HashMap<IpNet, usize>,
}

/// Holds one admitted session's place; gives it back on drop.
struct AdmissionTicket {
    admission: Arc<Admission>,
    client: IpNet,
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, client: IpAddr, limits: &Limits) -> Result<AdmissionTicket, Rule> {
        let mut st = self.lock();
        if st.total >= limits.max_sessions {
            return Err(Rule::MaxSessions);
        }
        let client = limits.client_group(client);
        let mine = st.per_client.entry(client).or_insert(0);
        if *mine >= limits.max_sessions_per_client {
            return Err(Rule::MaxSessionsPerClient);
        }
        *mine += 1;
        st.total += 1;
        Ok(AdmissionTicket {
            admission: Arc::clone(self),
            client,
        })
    }

    fn active(&self) -> usize {
        self.lock().total
    }
}

impl Drop for AdmissionTicket {
    fn drop(&mut self) {
        let mut st = self.admission.lock();
        st.total -= 1;
        if let Some(n) = st.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                st.per_client.remove(&self.client);
            }
        }
    }
}

/// What every session of one gateway shares.
struct GatewayContext {
    cfg: GatewayConfig,
    name: Arc<str>,
    limits: Limits,
    pool: Arc<PortPool>,
    admission: Arc<Admission>,
    registry: Arc<Registry>,
    listen_addr: SocketAddr,
}

/// A gateway that is serving: its accept loop, and the context new sessions start with.
struct Serving {
    /// The configured listen address (what a reload compares).
    listen: SocketAddr,
    ctx: Arc<ArcSwap<GatewayContext>>,
    accept: JoinHandle<()>,
}

/// A gateway of a new configuration, checked and bound but not yet serving.
enum Prepared {
    /// Same name and listen address as the serving gateway at this index.
    Keep(usize, GatewayContext),
    /// A new listener.
    Start(TcpListener, GatewayContext),
}

/// The configured gateways, serving.
pub struct Gateways {
    serving: Vec<Serving>,
    admission: Arc<Admission>,
    registry: Arc<Registry>,
}

impl Gateways {
    /// Binds every gateway's listening socket and starts accepting.
    pub async fn start(config: &Config) -> Result<Self, GatewayError> {
        telemetry::build_info();
        fill_reserve();
        let mut gateways = Self {
            serving: Vec::new(),
            admission: Arc::new(Admission::default()),
            registry: Arc::new(Registry::default()),
        };
        let prepared = gateways.prepare(config)?;
        gateways.commit(prepared);
        Ok(gateways)
    }

    /// Applies a new configuration. New and moved listeners are bound first, so that any
    /// failure leaves everything as it was; gateways that stay get the new settings for
    /// their new sessions; removed ones stop accepting. Live sessions and transfers keep
    /// the settings they started with. Returns once removed listeners are closed.
    pub async fn reload(&mut self, config: &Config) -> Result<(), GatewayError> {
        let prepared = self.prepare(config)?;
        for gone in self.commit(prepared) {
            gone.accept.abort();
            // The listener closes when the aborted task is dropped.
            let _ = gone.accept.await;
            tracing::info!(gateway = %gone.ctx.load().name, "gateway removed; its open sessions continue");
        }
        Ok(())
    }

    fn prepare(&self, config: &Config) -> Result<Vec<Prepared>, GatewayError> {
        let mut prepared = Vec::new();
        for g in &config.gateways {
            let kept = self
                .serving
                .iter()
                .position(|s| s.listen == g.listen && s.ctx.load().cfg.name == g.name);
            let name: Arc<str> = Arc::from(g.name.as_str());
            let transparent = g.upstream == Upstream::Transparent;
            let context = |listen_addr, pool| GatewayContext {
                cfg: g.clone(),
                name: Arc::clone(&name),
                limits: config.limits.clone(),
                pool,
                admission: Arc::clone(&self.admission),
                registry: Arc::clone(&self.registry),
                listen_addr,
            };
            prepared.push(match kept {
                Some(i) => {
                    let old = self.serving[i].ctx.load();
                    // Leases of live sessions stay valid: the pool survives if unchanged.
                    let pool = if old.cfg.data_ports == g.data_ports
                        && old.pool.transparent() == transparent
                    {
                        Arc::clone(&old.pool)
                    } else {
                        PortPool::new(Arc::clone(&name), g.data_ports, transparent)
                    };
                    Prepared::Keep(i, context(old.listen_addr, pool))
                }
                None => {
                    let err = |error| GatewayError::Bind {
                        name: g.name.clone(),
                        addr: g.listen,
                        error,
                    };
                    let listener = bind_control(g).map_err(err)?;
                    let local = listener.local_addr().map_err(err)?;
                    let pool = PortPool::new(Arc::clone(&name), g.data_ports, transparent);
                    Prepared::Start(listener, context(local, pool))
                }
            });
        }
        Ok(prepared)
    }

    /// Installs the prepared gateways; returns the ones that are no longer configured.
    fn commit(&mut self, prepared: Vec<Prepared>) -> Vec<Serving> {
        let mut old: Vec<Option<Serving>> = self.serving.drain(..).map(Some).collect();
        for p in prepared {
            let (serving, what) = match p {
                Prepared::Keep(i, ctx) => {
                    let Some(serving) = old[i].take() else {
                        continue;
                    };
                    serving.ctx.store(Arc::new(ctx));
                    (serving, "gateway updated")
                }
                Prepared::Start(listener, ctx) => {
                    telemetry::gateway_started(&ctx.name);
                    let listen = ctx.cfg.listen;
                    let ctx = Arc::new(ArcSwap::from_pointee(ctx));
                    let accept = tokio::spawn(accept_loop(listener, Arc::clone(&ctx)));
                    (
                        Serving {
                            listen,
                            ctx,
                            accept,
                        },
                        "gateway listening",
                    )
                }
            };
            let ctx = serving.ctx.load();
            tracing::info!(gateway = %ctx.name, listen = %ctx.listen_addr, upstream = %ctx.cfg.upstream, "{what}");
            if ctx.cfg.allow_privileged_ports {
                tracing::warn!(gateway = %ctx.name, "allow_privileged_ports is on: data ports below 1024 are accepted (DESIGN.md rule 4 relaxed)");
            }
            self.serving.push(serving);
        }
        old.into_iter().flatten().collect()
    }

    /// The bound control addresses, by gateway name (useful with port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.serving
            .iter()
            .map(|s| {
                let ctx = s.ctx.load();
                (ctx.cfg.name.clone(), ctx.listen_addr)
            })
            .collect()
    }

    /// The live sessions, for the admin socket.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Open control sessions, all gateways together.
    pub fn active_sessions(&self) -> usize {
        self.admission.active()
    }

    /// Stops accepting, then waits up to `grace` for open sessions (and their transfers)
    /// to end. Whatever is still open after that is closed when the runtime stops.
    pub async fn shutdown(self, grace: Duration) {
        for s in &self.serving {
            s.accept.abort();
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.admission.active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = self.admission.active();
        if left > 0 {
            tracing::warn!(sessions = left, "grace period over; closing open sessions");
        }
    }
}

fn bind_control(g: &GatewayConfig) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(g.listen),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if g.listen.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if g.upstream == Upstream::Transparent {
        // TPROXY delivers connections for foreign addresses only to transparent sockets.
        if let Err(e) = crate::sys::set_transparent(&socket, g.listen.is_ipv6()) {
            tracing::info!(gateway = %g.name, error = %e, "IP_TRANSPARENT unavailable: REDIRECT works, TPROXY does not");
        }
    }
    socket.bind(&g.listen.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Accept failures are logged at most this often, with the number held back.
static ACCEPT_LOG: LogLimiter = LogLimiter::new(1, Duration::from_secs(10));

/// One descriptor held in reserve: when the process runs out, it is given up for a moment
/// to accept a waiting connection and answer it `421` instead of leaving it unanswered.
static RESERVE: Mutex<Option<std::fs::File>> = Mutex::new(None);

fn reserve() -> std::sync::MutexGuard<'static, Option<std::fs::File>> {
    RESERVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the reserve descriptor (once per process) if it is not held yet.
fn fill_reserve() {
    let mut reserve = reserve();
    if reserve.is_none() {
        *reserve = std::fs::File::open("/dev/null").ok();
    }
}

/// Accepts one waiting connection with the reserve descriptor and answers it `421`;
/// returns whether there was one to answer.
fn shed_with_reserve(listener: &TcpListener, gateway: &str) -> bool {
    let mut reserve = reserve();
    if reserve.take().is_none() {
        return false;
    }
    let shed = match socket2::SockRef::from(listener).accept() {
        Ok((conn, _)) => {
            let _ = conn.send(b"421 The gateway is out of file descriptors; try again later.\r\n");
            telemetry::refused(gateway, Rule::FdExhausted);
            telemetry::session_closed(gateway, "refused");
            true
        }
        Err(_) => false,
    };
    *reserve = std::fs::File::open("/dev/null").ok();
    shed
}

/// Whether an accept failed for want of file descriptors (per process or system-wide).
fn out_of_descriptors(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE))
}

async fn accept_loop(listener: TcpListener, ctx: Arc<ArcSwap<GatewayContext>>) {
    const MIN_BACKOFF: Duration = Duration::from_millis(10);
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u64;
    loop {
        let error = match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = MIN_BACKOFF;
                tokio::spawn(admit(ctx.load_full(), stream, peer));
                continue;
            }
            Err(e) => e,
        };
        failures += 1;
        let name = Arc::clone(&ctx.load().name);
        let exhausted = out_of_descriptors(&error);
        let shed = exhausted && shed_with_reserve(&listener, &name);
        if ACCEPT_LOG.admit().is_some() {
            if exhausted {
                tracing::error!(gateway = %name, %error, failures, rule = %Rule::FdExhausted,
                    "out of file descriptors: new connections are answered 421 until sessions end");
            } else {
                tracing::error!(gateway = %name, %error, failures, "accept failed");
            }
            failures = 0;
        }
        if !shed {
            // Nothing could be answered: wait for sessions to end instead of spinning.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

async fn admit(ctx: Arc<GatewayContext>, mut stream: TcpStream, peer: SocketAddr) {
    let client_ip = peer.ip().to_canonical();
    if !ctx.cfg.client_allowed(client_ip) {
        refuse_connection(&ctx, peer, Rule::AllowClients, "refused control connection");
        return;
    }
    let ticket = match ctx.admission.admit(client_ip, &ctx.limits) {
        Ok(t) => t,
        Err(limit) => {
            refuse_connection(&ctx, peer, limit, "session limit reached");
            let _ = stream
                .write_all(b"421 Too many connections; try again later.\r\n")
                .await;
            return;
        }
    };
    let target = match &ctx.cfg.upstream {
        Upstream::Transparent => match transparent_target(&ctx, &stream) {
            Ok(t) => Some(Target::Addr(t)),
            Err((rule, why)) => {
                refuse_connection(&ctx, peer, rule, &why);
                let _ = stream.write_all(format!("421 {why}.\r\n").as_bytes()).await;
                return;
            }
        },
        Upstream::Fixed { host, port } => Some(Target::Name(host.clone(), *port)),
        Upstream::Explicit => None,
    };
    telemetry::session_opened(&ctx.name);
    let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "session",
        id,
        gateway = %ctx.name,
        client = %peer,
        server = tracing::field::Empty
    );
    let entry = ctx.registry.open(id, Arc::clone(&ctx.name), peer);
    let outcome = async {
        tracing::info!("session opened");
        match serve(Arc::clone(&ctx), stream, peer, target, entry).await {
            None => {
                tracing::info!("session closed");
                "ok"
            }
            Some(why) => {
                tracing::info!(error = %why, "session ended");
                "error"
            }
        }
    }
    .instrument(span)
    .await;
    telemetry::session_closed(&ctx.name, outcome);
    drop(ticket);
}

/// Counts and (rate-limited) logs a connection refused before its session started.
fn refuse_connection(ctx: &GatewayContext, peer: SocketAddr, rule: Rule, what: &str) {
    telemetry::refused(&ctx.name, rule);
    telemetry::session_closed(&ctx.name, "refused");
    if let Some(suppressed) = ADMISSION_LOG.admit() {
        tracing::warn!(gateway = %ctx.name, client = %peer, %rule, suppressed, "{what}");
    }
}

/// The rule that forbids dialling `ip` as an upstream (transparent and explicit roles), if
/// one does: `deny_servers`, or one of the gateway's own addresses (no pivot into the
/// gateway itself); `allow_servers` lists the operator's exceptions.
fn upstream_refusal(cfg: &GatewayConfig, ip: IpAddr) -> Option<Rule> {
    let ip = ip.to_canonical();
    if cfg.server_excepted(ip) {
        None
    } else if !cfg.server_allowed(ip) {
        Some(Rule::DenyServers)
    } else if is_own_address(ip) {
        Some(Rule::GatewayAddress)
    } else {
        None
    }
}

/// Whether `ip` is an address of this host (any interface), or the unspecified address.
fn is_own_address(ip: IpAddr) -> bool {
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    match if_addrs::get_if_addrs() {
        Ok(addrs) => addrs.iter().any(|a| a.ip().to_canonical() == ip),
        Err(e) => {
            // Without the list, refuse rather than risk a pivot into the gateway.
            tracing::warn!(error = %e, "cannot list local addresses; refusing the upstream");
            true
        }
    }
}

/// Session ids, unique in this process, for logs.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Where a session's control connection goes.
enum Target {
    Addr(SocketAddr),
    Name(String, u16),
}

fn transparent_target(
    ctx: &GatewayContext,
    stream: &TcpStream,
) -> Result<SocketAddr, (Rule, String)> {
    let dst = crate::sys::original_destination(stream).map_err(|e| {
        (
            Rule::NotRedirected,
            format!("cannot read the original destination: {e}"),
        )
    })?;
    // A connection made to ftpgate's own port rather than redirected to it would make
    // ftpgate dial itself. (With TPROXY the local address is the original destination.)
    let listen = ctx.listen_addr;
    if dst.port() == listen.port() && (listen.ip().is_unspecified() || dst.ip() == listen.ip()) {
        return Err((
            Rule::NotRedirected,
            "this port only serves redirected connections".into(),
        ));
    }
    // Behind a NAT64 the client dialled the IPv4 server's synthesized IPv6 address.
    let dst = match ctx.cfg.nat64_server(dst.ip()) {
        Some(v4) => SocketAddr::new(v4, dst.port()),
        None => dst,
    };
    match upstream_refusal(&ctx.cfg, dst.ip()) {
        Some(rule) => Err((rule, format!("server {} is not allowed", dst.ip()))),
        None => Ok(dst),
    }
}

/// Resolves and connects to an upstream, trying each address in turn.
async fn connect_upstream(
    target: Target,
    from: IpAddr,
    check_deny: Option<Arc<GatewayContext>>,
) -> Result<TcpStream, String> {
    let candidates: Vec<SocketAddr> = match target {
        Target::Addr(a) => vec![a],
        Target::Name(host, port) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    let mut last = String::from("no address to connect to");
    for addr in candidates {
        if let Some(ctx) = &check_deny {
            if let Some(rule) = upstream_refusal(&ctx.cfg, addr.ip()) {
                telemetry::refused(&ctx.name, rule);
                tracing::warn!(%rule, server = %addr, "refused upstream");
                last = format!("server {} is not allowed", addr.ip());
                continue;
            }
        }
        if !from.is_unspecified() && from.is_ipv4() != addr.is_ipv4() {
            last = format!("{addr} is not reachable from {from}");
            continue;
        }
        match channel::dial(addr, DialSource::Bind(from), UPSTREAM_CONNECT_TIMEOUT).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// The shell's data-channel operations for one session.
struct SessionData {
    ctx: Arc<GatewayContext>,
    channel_ctx: ChannelContext,
    tasks: HashMap<ChannelId, AbortHandle>,
    entry: Entry,
}

impl SessionData {
    /// Binds a pool port for an accepting end; nothing for a dialling one.
    fn listen(&self, end: &Endpoint) -> Result<Option<Listening>, DataOpenError> {
        let Endpoint::Accept { on, .. } = end else {
            return Ok(None);
        };
        let (listener, lease) = self.ctx.pool.bind(*on)?;
        let listener =
            TcpListener::from_std(listener).map_err(|e| DataOpenError::Listen(e.to_string()))?;
        Ok(Some(Listening { listener, lease }))
    }
}

impl DataChannels for SessionData {
    fn open(&mut self, id: ChannelId, plan: &DataPlan) -> Result<Ports, DataOpenError> {
        let client = self.listen(&plan.client)?;
        let server = self.listen(&plan.server)?;
        let ports = Ports {
            client: client.as_ref().map(|l| l.lease.port()),
            server: server.as_ref().map(|l| l.lease.port()),
        };
        let listeners = Listeners { client, server };
        let task = tokio::spawn(
            channel::run(id, listeners, plan.clone(), self.channel_ctx.clone())
                .instrument(tracing::Span::current()),
        );
        self.tasks.insert(id, task.abort_handle());
        let shown = ports.client.or(ports.server).unwrap_or_default();
        self.entry.channel_opened(id, plan.label(), shown);
        tracing::debug!(channel = id, ?ports, ?plan, "data channel opened");
        Ok(ports)
    }

    fn cancel(&mut self, id: ChannelId) {
        if let Some(task) = self.tasks.remove(&id) {
            task.abort();
        }
        self.entry.channel_closed(id);
    }
}

impl SessionData {
    /// A channel is over: stop what is left of it, count it, log its transfer.
    fn ended(&mut self, end: &ChannelEnd) {
        if let Some(task) = self.tasks.remove(&end.id) {
            task.abort();
        }
        self.entry.channel_closed(end.id);
        telemetry::data_channel_done(&self.ctx.name, end.mode, end.ok);
        if let Some(record) = &end.transfer {
            log_transfer(record);
        }
    }
}

impl Drop for SessionData {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TcpStream, String>> + Send>>;

/// Runs one control session to its end; returns why it ended abnormally, if it did.
async fn serve(
    ctx: Arc<GatewayContext>,
    client: TcpStream,
    peer: SocketAddr,
    target: Option<Target>,
    entry: Entry,
) -> Option<String> {
    let cfg = &ctx.cfg;
    let _ = client.set_nodelay(true);
    let mut session = Session::new(
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
            tls: cfg.tls,
            limits: SessionLimits::from_config(&ctx.limits),
            allow_server_ports: cfg.allow_server_ports.clone(),
            allow_privileged_ports: cfg.allow_privileged_ports,
            server_mode: cfg.server_mode,
        },
        Instant::now(),
    );
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut data = SessionData {
        ctx: Arc::clone(&ctx),
        channel_ctx: ChannelContext {
            gateway: Arc::clone(&ctx.name),
            timeout: ctx.limits.data_accept_timeout.0,
            events: events_tx,
            relay: cfg.relay,
        },
        tasks: HashMap::new(),
        entry,
    };
    let from = cfg.server_side.address;
    let mut connecting: Option<Connecting> =
        target.map(|t| Box::pin(connect_upstream(t, from, None)) as Connecting);
    let (client_rd, mut client_wr) = client.into_split();
    let mut client_open = true;
    let mut server: Option<(OwnedReadHalf, OwnedWriteHalf)> = None;
    // One read buffer for both directions: the loop waits for readiness, then reads.
    let mut buf = [0u8; CONTROL_BUFFER];

    let mut actions = session.start();
    loop {
        // A peer that cannot be written to is gone: the session hears it as a close, so
        // that it can answer the other side and report every channel.
        let mut lost = None;
        for action in actions.drain(..) {
            match action {
                Action::ToClient(bytes) if client_open => {
                    if client_wr.write_all(&bytes).await.is_err() {
                        client_open = false;
                        lost = Some(Event::ClientClosed);
                    }
                }
                Action::ToClient(_) => {}
                Action::ToServer(bytes) => match &mut server {
                    Some((_, wr)) => {
                        if wr.write_all(&bytes).await.is_err() {
                            server = None;
                            lost = lost.or(Some(Event::ServerClosed));
                        }
                    }
                    None => tracing::debug!("dropped server-bound bytes: no server connection"),
                },
                Action::ConnectUpstream { host, port } => {
                    connecting = Some(Box::pin(connect_upstream(
                        Target::Name(host, port),
                        from,
                        Some(Arc::clone(&ctx)),
                    )));
                }
                Action::Close => {
                    // The control connections end now; data channels still finishing get
                    // their grace from the session.
                    if client_open {
                        let _ = client_wr.shutdown().await;
                        client_open = false;
                    }
                    if let Some((_, mut wr)) = server.take() {
                        let _ = wr.shutdown().await;
                    }
                    connecting = None;
                }
                Action::Refused(rule) => telemetry::refused(&ctx.name, rule),
                Action::Rewrote(kind) => telemetry::rewrote(&ctx.name, kind.name()),
                Action::ChannelEnded(end) => data.ended(&end),
            }
        }
        if let Some(event) = lost {
            actions = session.handle(Instant::now(), event, &mut data);
            continue;
        }
        if session.is_finished() {
            return session.failure().map(str::to_owned);
        }
        let deadline = session.poll_timeout();
        let event_owned: OwnedEvent = tokio::select! {
            r = client_rd.readable(), if client_open => match r.and_then(|()| client_rd.try_read(&mut buf)) {
                Ok(0) => OwnedEvent::ClientClosed,
                Ok(n) => OwnedEvent::Client(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => OwnedEvent::ClientClosed,
            },
            r = server_readable(&server), if server.is_some() => match r.and_then(|rd| rd.try_read(&mut buf)) {
                Ok(0) => OwnedEvent::ServerClosed,
                Ok(n) => OwnedEvent::Server(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => OwnedEvent::ServerClosed,
            },
            r = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match r.and_then(|stream| stream.peer_addr().map(|a| (stream, a)).map_err(|e| e.to_string())) {
                    Ok((stream, addr)) => {
                        let _ = stream.set_nodelay(true);
                        tracing::Span::current().record("server", tracing::field::display(addr));
                        data.entry.server(addr);
                        tracing::info!("connected upstream");
                        server = Some(stream.into_split());
                        OwnedEvent::Connected(addr)
                    }
                    Err(why) => {
                        telemetry::upstream_connect_failed(&ctx.name);
                        OwnedEvent::ConnectFailed(why)
                    }
                }
            },
            Some((id, ev)) = events_rx.recv() => {
                match ev {
                    DataEvent::Established => data.entry.channel_state(id, "relaying"),
                    DataEvent::ServerToClientDone => data.entry.channel_state(id, "server-done"),
                    DataEvent::Finished(_) | DataEvent::Failed(_) => {
                        data.tasks.remove(&id);
                    }
                }
                OwnedEvent::Data(id, ev)
            },
            () = sleep_until(deadline) => OwnedEvent::Timeout,
        };
        match event_owned {
            OwnedEvent::ClientClosed => client_open = false,
            // Stop reading a closed connection; the session still answers the client.
            OwnedEvent::ServerClosed => server = None,
            _ => {}
        }
        let event = match &event_owned {
            OwnedEvent::Client(n) => Event::ClientData(&buf[..*n]),
            OwnedEvent::Server(n) => Event::ServerData(&buf[..*n]),
            OwnedEvent::ClientClosed => Event::ClientClosed,
            OwnedEvent::ServerClosed => Event::ServerClosed,
            OwnedEvent::Connected(addr) => Event::UpstreamConnected(*addr),
            OwnedEvent::ConnectFailed(why) => Event::UpstreamFailed(why.clone()),
            OwnedEvent::Data(id, ev) => Event::Data(*id, ev.clone()),
            OwnedEvent::Timeout => Event::Timeout,
        };
        actions = session.handle(Instant::now(), event, &mut data);
    }
}

/// One line per finished transfer, in the spirit of xferlog: the session span carries id,
/// gateway, client and server; the line adds command, file, direction, mode, bytes, time
/// and outcome.
fn log_transfer(r: &TransferRecord) {
    let direction = if r.upload { "in" } else { "out" };
    let mode = if r.active { "active" } else { "passive" };
    match (&r.stats, &r.failure) {
        (Some(s), _) => tracing::info!(
            target: "ftpgate::transfer",
            command = %r.command,
            file = %r.argument,
            direction,
            mode,
            bytes = if r.upload { s.to_server } else { s.to_client },
            seconds = s.seconds,
            outcome = "complete",
            "transfer"
        ),
        (None, failure) => tracing::info!(
            target: "ftpgate::transfer",
            command = %r.command,
            file = %r.argument,
            direction,
            mode,
            outcome = "failed",
            reason = failure.as_deref().unwrap_or("unknown"),
            "transfer"
        ),
    }
}

enum OwnedEvent {
    Client(usize),
    Server(usize),
    ClientClosed,
    ServerClosed,
    Connected(SocketAddr),
    ConnectFailed(String),
    Data(ChannelId, DataEvent),
    Timeout,
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_per_prefix() {
        // Rule max_sessions_per_client with client_prefix_v6: a host owns its whole /64.
        let limits = Limits {
            max_sessions_per_client: 64,
            ..Limits::default()
        };
        let admission = Arc::new(Admission::default());
        let mut tickets = Vec::new();
        let mut refused = 0;
        for i in 0..200u16 {
            let ip = IpAddr::from([0x2001, 0xdb8, 0, 7, i, 0, 0, 1]);
            match admission.admit(ip, &limits) {
                Ok(t) => tickets.push(t),
                Err(rule) => {
                    assert_eq!(rule, Rule::MaxSessionsPerClient);
                    refused += 1;
                }
            }
        }
        assert_eq!((tickets.len(), refused), (64, 136));
        // Another /64 is another client; IPv4 clients count per address.
        let other = admission.admit("2001:db8:0:8::1".parse().unwrap(), &limits);
        let v4 = admission.admit("192.0.2.1".parse().unwrap(), &limits);
        assert!(other.is_ok() && v4.is_ok());
        // Places come back when sessions end.
        tickets.clear();
        assert_eq!(admission.active(), 2);
        assert!(admission
            .admit("2001:db8:0:7::99".parse().unwrap(), &limits)
            .is_ok());
    }

    #[test]
    fn the_gateway_never_dials_itself() {
        // Rule gateway_address, whatever deny_servers says; allow_servers is the exception.
        let mut cfg = crate::config::Config::parse(
            "gateways:\n  - name: x\n    listen: \"127.0.0.1:2121\"\n    upstream: \"user@host\"\n    server_side: { address: 127.0.0.1 }\n    deny_servers: []\n",
            "t.yaml",
        )
        .unwrap()
        .gateways
        .remove(0);
        let own = ["127.0.0.1", "::1", "0.0.0.0", "::ffff:127.0.0.1"];
        for ip in own {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                upstream_refusal(&cfg, ip),
                Some(Rule::GatewayAddress),
                "{ip}"
            );
        }
        if let Some(iface) = if_addrs::get_if_addrs()
            .unwrap()
            .into_iter()
            .find(|i| !i.is_loopback())
        {
            assert_eq!(
                upstream_refusal(&cfg, iface.ip()),
                Some(Rule::GatewayAddress),
                "{}",
                iface.ip()
            );
        }
        assert_eq!(upstream_refusal(&cfg, "192.0.2.10".parse().unwrap()), None);
        cfg.allow_servers = vec![crate::config::Net::try_from("127.0.0.1".to_owned()).unwrap()];
        assert_eq!(upstream_refusal(&cfg, "127.0.0.1".parse().unwrap()), None);
        cfg.deny_servers = vec![crate::config::Net::try_from("192.0.2.0/24".to_owned()).unwrap()];
        assert_eq!(
            upstream_refusal(&cfg, "192.0.2.10".parse().unwrap()),
            Some(Rule::DenyServers)
        );
    }
}
