//! The async shell: the gateways' listening sockets, their configuration and reloads,
//! and shutdown. Each accepted connection becomes a session run by one connection driver;
//! the parts:
//! - [`accept`]: the accept loop and admission (ACLs, limits, original destinations);
//! - [`admission`]: session counts for the limits;
//! - [`upstream`]: resolving and connecting to servers, and who may be dialled;
//! - [`connection`]: the driver that owns a session's sockets and performs its actions;
//! - [`channels`]: the shell side of a session's data channels.

mod accept;
mod admission;
mod channels;
mod connection;
mod control;
mod upstream;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::Registry;
use crate::config::{ClientSource, Config, GatewayConfig, Limits, RelayMode, ServerSource};
use crate::data::kernel::{KernelError, KernelPath};
use crate::data::ports::PortPool;
use crate::sys::routing::PolicyRoutes;
use crate::telemetry;
use crate::tls::{Termination, TlsError};

use admission::Admission;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A listening socket could not be bound.
    #[error("gateway {name:?}: cannot listen on {addr}: {error}{}", bind_hint(.addr, .error))]
    Bind {
        /// Gateway name.
        name: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: io::Error,
    },
    /// A feature the gateway uses needs a privilege the process lacks.
    #[error(
        "gateway {name:?}: {key}: {what} needs CAP_NET_ADMIN, which this process lacks ({error})"
    )]
    Privilege {
        /// Gateway name.
        name: String,
        /// The configuration key that asks for the feature.
        key: &'static str,
        /// The feature.
        what: &'static str,
        /// What the probe got.
        error: io::Error,
    },
    /// The policy routing of transparent sockets could not be installed.
    #[error("policy routing for transparent sockets (policy_routing): {0}; it needs CAP_NET_ADMIN and iproute2")]
    Routing(String),
    /// `tls: terminate` whose certificate or key is unusable.
    #[error("gateway {name:?}: {error}")]
    Tls {
        /// Gateway name.
        name: String,
        /// Why.
        error: TlsError,
    },
    /// `relay: kernel` could not set up its nftables table and netlink sockets.
    #[error("gateway {name:?}: {error}")]
    Kernel {
        /// The first gateway that asked for the kernel path.
        name: String,
        /// What is missing.
        error: KernelError,
    },
}

/// The hint an unprivileged bind gets.
fn bind_hint(addr: &SocketAddr, error: &io::Error) -> &'static str {
    if error.kind() == io::ErrorKind::PermissionDenied && addr.port() < 1024 {
        " (ports below 1024 need CAP_NET_BIND_SERVICE)"
    } else {
        ""
    }
}

/// What every session of one gateway shares.
struct GatewayContext {
    cfg: GatewayConfig,
    name: Arc<str>,
    limits: Limits,
    pool: Arc<PortPool>,
    /// The kernel data path, for a `relay: kernel` gateway.
    kernel: Option<Arc<KernelPath>>,
    /// The certificate presented to clients under `tls: terminate`.
    tls: Option<Arc<Termination>>,
    admission: Arc<Admission>,
    registry: Arc<Registry>,
    listen_addr: SocketAddr,
    /// `Some(deadline)` once the gateway shuts down; every session watches it.
    shutdown: watch::Receiver<Option<Instant>>,
    /// Held while any session (or accept loop) of the process lives: shutdown waits until
    /// every clone is gone.
    _alive: mpsc::Sender<()>,
}

/// A gateway that is serving: its accept loop, and the context new sessions start with.
struct Serving {
    /// The configured listen addresses, plain and implicit TLS (what a reload compares).
    listen: (SocketAddr, Option<SocketAddr>),
    ctx: Arc<ArcSwap<GatewayContext>>,
    /// The accept loops: the plain listener's, and the implicit TLS listener's.
    accept: Vec<JoinHandle<()>>,
}

/// A gateway's bound listeners: the control listener and, under `tls: terminate`, the
/// implicit FTPS one.
struct Bound {
    control: TcpListener,
    implicit: Option<TcpListener>,
}

/// A gateway of a new configuration, checked and bound but not yet serving.
enum Prepared {
    /// Same name and listen address as the serving gateway at this index.
    Keep(usize, GatewayContext),
    /// New listeners.
    Start(Bound, GatewayContext),
}

/// The configured gateways, serving.
pub struct Gateways {
    serving: Vec<Serving>,
    admission: Arc<Admission>,
    registry: Arc<Registry>,
    /// Started with the first `relay: kernel` gateway; its table goes at shutdown.
    kernel: Option<Arc<KernelPath>>,
    /// Installed with the first gateway that needs transparent sockets; removed at
    /// shutdown.
    routing: Option<PolicyRoutes>,
    shutdown: watch::Sender<Option<Instant>>,
    alive: mpsc::Sender<()>,
    all_gone: mpsc::Receiver<()>,
}

impl Gateways {
    /// Binds every gateway's listening socket and starts accepting.
    pub async fn start(config: &Config) -> Result<Self, GatewayError> {
        telemetry::build_info();
        accept::fill_reserve();
        let (alive, all_gone) = mpsc::channel(1);
        let mut gateways = Self {
            serving: Vec::new(),
            admission: Arc::new(Admission::default()),
            registry: Arc::new(Registry::default()),
            kernel: None,
            routing: None,
            shutdown: watch::Sender::new(None),
            alive,
            all_gone,
        };
        gateways.start_kernel(config)?;
        gateways.start_routing(config)?;
        let prepared = gateways.prepare(config)?;
        gateways.commit(prepared);
        Ok(gateways)
    }

    /// Applies a new configuration. New and moved listeners are bound first, so that any
    /// failure leaves everything as it was; gateways that stay get the new settings for
    /// their new sessions; removed ones stop accepting. Live sessions and transfers keep
    /// the settings they started with. Returns once removed listeners are closed.
    pub async fn reload(&mut self, config: &Config) -> Result<(), GatewayError> {
        self.start_kernel(config)?;
        self.start_routing(config)?;
        let prepared = self.prepare(config)?;
        for gone in self.commit(prepared) {
            gone.accept.iter().for_each(JoinHandle::abort);
            // The listener closes when the aborted task is dropped.
            for task in gone.accept {
                let _ = task.await;
            }
            tracing::info!(gateway = %gone.ctx.load().name, "gateway removed; its open sessions continue");
        }
        Ok(())
    }

    /// Sets up the kernel data path when a gateway first asks for it (`relay: kernel`).
    /// Its `kernel:` settings are read then; changing them takes a restart.
    fn start_kernel(&mut self, config: &Config) -> Result<(), GatewayError> {
        let Some(g) = config
            .gateways
            .iter()
            .find(|g| g.relay == RelayMode::Kernel)
        else {
            return Ok(());
        };
        match &self.kernel {
            None => {
                let path =
                    KernelPath::start(&config.kernel).map_err(|error| GatewayError::Kernel {
                        name: g.name.clone(),
                        error,
                    })?;
                self.kernel = Some(path);
            }
            Some(path) if *path.config() != config.kernel => {
                tracing::warn!("the kernel: settings changed; they take effect at the next start");
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Checks that the process may make the transparent sockets the gateways need, and
    /// installs their policy routing (for each family they use) when first needed.
    fn start_routing(&mut self, config: &Config) -> Result<(), GatewayError> {
        let mut families = Vec::new();
        for g in config
            .gateways
            .iter()
            .filter(|g| g.needs_transparent_sockets())
        {
            let (key, what) = if g.client_source == ClientSource::Server {
                (
                    "client_source",
                    "`server` (dialling from the server's address)",
                )
            } else if g.server_source == ServerSource::Client {
                (
                    "server_source",
                    "`client` (dialling the server from each client's address)",
                )
            } else {
                ("intercept.method", "`tproxy` (transparent listeners)")
            };
            // A dual-stack listener ([::]) takes clients of both families.
            let flags: &[&'static str] = match g.listen.ip() {
                IpAddr::V6(v6) if v6.is_unspecified() => &["-4", "-6"],
                IpAddr::V6(_) => &["-6"],
                IpAddr::V4(_) => &["-4"],
            };
            for &flag in flags {
                crate::sys::probe_transparent(flag == "-6").map_err(|error| {
                    GatewayError::Privilege {
                        name: g.name.clone(),
                        key,
                        what,
                        error,
                    }
                })?;
                if !families.contains(&flag) {
                    families.push(flag);
                }
            }
        }
        if families.is_empty() {
            return Ok(());
        }
        let r = config.policy_routing;
        match &mut self.routing {
            Some(routes) => {
                for flag in families {
                    if !routes.covers(flag) {
                        routes.add(flag).map_err(GatewayError::Routing)?;
                    }
                }
            }
            None => {
                self.routing = Some(
                    PolicyRoutes::install(r.mark, r.table, &families)
                        .map_err(GatewayError::Routing)?,
                );
                tracing::info!(mark = %format!("{:#x}", r.mark), table = r.table, "policy routing for transparent sockets in place");
            }
        }
        Ok(())
    }

    fn prepare(&self, config: &Config) -> Result<Vec<Prepared>, GatewayError> {
        let mut prepared = Vec::new();
        for (index, g) in config.gateways.iter().enumerate() {
            let listen = (g.listen, g.tls.implicit_listen);
            let kept = self
                .serving
                .iter()
                .position(|s| s.listen == listen && s.ctx.load().cfg.name == g.name);
            // Read at every start and reload: new sessions get new certificates.
            let tls = Termination::load(&g.tls, index)
                .map_err(|error| GatewayError::Tls {
                    name: g.name.clone(),
                    error,
                })?
                .map(Arc::new);
            let name: Arc<str> = Arc::from(g.name.as_str());
            // Transparent listeners: TPROXY's, and (server_source: client) those on the
            // client's address that the server connects to in active mode.
            let transparent = g.listens_transparently() || g.server_source == ServerSource::Client;
            let context = |listen_addr, pool| GatewayContext {
                cfg: g.clone(),
                name: Arc::clone(&name),
                limits: config.limits.clone(),
                pool,
                kernel: self.kernel.clone().filter(|_| g.relay == RelayMode::Kernel),
                tls: tls.clone(),
                admission: Arc::clone(&self.admission),
                registry: Arc::clone(&self.registry),
                listen_addr,
                shutdown: self.shutdown.subscribe(),
                _alive: self.alive.clone(),
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
                    let err = |addr| {
                        move |error| GatewayError::Bind {
                            name: g.name.clone(),
                            addr,
                            error,
                        }
                    };
                    let control = bind_control(g, g.listen).map_err(err(g.listen))?;
                    let local = control.local_addr().map_err(err(g.listen))?;
                    let implicit = match g.tls.implicit_listen {
                        Some(addr) => Some(bind_control(g, addr).map_err(err(addr))?),
                        None => None,
                    };
                    let pool = PortPool::new(Arc::clone(&name), g.data_ports, transparent);
                    Prepared::Start(Bound { control, implicit }, context(local, pool))
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
                Prepared::Start(bound, ctx) => {
                    telemetry::gateway_started(&ctx.name);
                    let listen = (ctx.cfg.listen, ctx.cfg.tls.implicit_listen);
                    let ctx = Arc::new(ArcSwap::from_pointee(ctx));
                    let mut accept = vec![tokio::spawn(accept::accept_loop(
                        bound.control,
                        Arc::clone(&ctx),
                        false,
                    ))];
                    if let Some(implicit) = bound.implicit {
                        if let Ok(addr) = implicit.local_addr() {
                            tracing::info!(gateway = %ctx.load().name, listen = %addr, "implicit FTPS listening");
                        }
                        accept.push(tokio::spawn(accept::accept_loop(
                            implicit,
                            Arc::clone(&ctx),
                            true,
                        )));
                    }
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
            let server_source = match ctx.cfg.server_source {
                ServerSource::Gateway => "gateway",
                ServerSource::Client => "client",
            };
            tracing::info!(gateway = %ctx.name, listen = %ctx.listen_addr, upstream = %ctx.cfg.upstream, server_source, "{what}");
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

    /// Stops accepting and tells every session to end: idle ones at once, those with a
    /// transfer when it ends or at the end of `grace`. Returns when the last session is
    /// gone (or a few seconds after the grace, should one not end).
    pub async fn shutdown(self, grace: Duration) {
        let Self {
            serving,
            admission,
            shutdown,
            alive,
            mut all_gone,
            kernel,
            routing,
            ..
        } = self;
        for s in &serving {
            s.accept.iter().for_each(JoinHandle::abort);
        }
        for s in serving {
            for task in s.accept {
                let _ = task.await;
            }
        }
        let _ = shutdown.send(Some(Instant::now() + grace));
        drop(alive);
        // Every session holds its gateway's context, and with it a clone of `alive`.
        let margin = Duration::from_secs(5);
        if tokio::time::timeout(grace + margin, all_gone.recv())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = admission.active(),
                "sessions still open after the grace period; stopping"
            );
        }
        if kernel.is_some() {
            KernelPath::stop();
        }
        if let Some(r) = routing {
            r.remove();
        }
    }
}

fn bind_control(g: &GatewayConfig, listen: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if listen.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if g.listens_transparently() {
        // TPROXY delivers connections for foreign addresses only to transparent sockets
        // (the privilege was checked at start).
        crate::sys::set_transparent(&socket, listen.is_ipv6())?;
    }
    socket.bind(&listen.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}
