//! The shell side of one session's data channels, following the session's actions:
//! binding the listeners of a plan and starting its task ([`ChannelTasks::open`]),
//! stopping it, and what the operator sees of it (the live view, the channel counter,
//! one transfer log line).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::admin::Entry;
use crate::config::{RelayMode, Upstream};
use crate::data::channel::{self, ChannelContext, DataTls, Listeners, Listening};
use crate::data::kernel::{KernelChannel, KernelPath, Mapping};
use crate::data::ports::PortLease;
use crate::plan::{
    ChannelEnd, ChannelId, DataEvent, DataOpenError, DataPlan, Endpoint, Ports, TransferRecord,
};
use crate::telemetry;
use crate::tls::UpstreamSession;

use super::GatewayContext;

/// The running data channels of one session.
pub(super) struct ChannelTasks {
    ctx: Arc<GatewayContext>,
    channel_ctx: ChannelContext,
    running: HashMap<ChannelId, Carrier>,
    /// Channels whose client connection is TLS (relayed by copying, `path="tls"`).
    protected: HashSet<ChannelId>,
    /// The session's place in the live view.
    pub entry: Entry,
}

/// What moves a channel's bytes, while anything does.
enum Carrier {
    /// A task of ftpgate's (splice or copy).
    Task(AbortHandle),
    /// A mapping in ftpgate's nftables table, holding its announced port.
    Kernel {
        path: Arc<KernelPath>,
        channel: KernelChannel,
        _lease: PortLease,
        opened: Instant,
        mode: &'static str,
    },
}

impl Carrier {
    fn stop(self) {
        match self {
            Carrier::Task(task) => task.abort(),
            Carrier::Kernel { path, channel, .. } => path.close(channel),
        }
    }
}

impl ChannelTasks {
    /// Channels whose events go to `events`.
    pub fn new(
        ctx: Arc<GatewayContext>,
        events: mpsc::UnboundedSender<(ChannelId, DataEvent)>,
        entry: Entry,
    ) -> Self {
        let channel_ctx = ChannelContext {
            gateway: Arc::clone(&ctx.name),
            timeout: ctx.limits.data_accept_timeout.0,
            events,
            // Channels the kernel cannot carry are spliced.
            relay: match ctx.cfg.relay {
                RelayMode::Kernel => RelayMode::Splice,
                relay => relay,
            },
            tls: None,
            server_tls: None,
        };
        Self {
            ctx,
            channel_ctx,
            running: HashMap::new(),
            protected: HashSet::new(),
            entry,
        }
    }

    /// TLS toward the client for the channels opened from now on (the session is
    /// protected).
    pub fn set_client_tls(&mut self, tls: DataTls) {
        self.channel_ctx.tls = Some(tls);
    }

    /// TLS toward the server for the channels opened from now on (`tls.upstream`, once
    /// the server is known).
    pub fn set_server_tls(&mut self, tls: Option<UpstreamSession>) {
        self.channel_ctx.server_tls = tls;
    }

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

    /// Opens channel `id` as `plan` says, on the kernel path when the gateway has it and
    /// the channel allows it, otherwise with listeners and a relay task; returns the
    /// announced ports.
    pub fn open(&mut self, id: ChannelId, plan: &DataPlan) -> Result<Ports, DataOpenError> {
        // The kernel cannot carry TLS: ftpgate is the TLS server of a protected channel.
        let opened = match &self.ctx.kernel {
            Some(kernel) if !plan.client_tls && !plan.server_tls => {
                self.open_kernel(id, plan, Arc::clone(kernel))?
            }
            _ => None,
        };
        let (ports, carrier) = match opened {
            Some(opened) => opened,
            None => self.open_task(id, plan)?,
        };
        self.running.insert(id, carrier);
        if plan.client_tls || plan.server_tls {
            self.protected.insert(id);
        }
        let shown = ports.client.or(ports.server).unwrap_or_default();
        self.entry.channel_opened(id, plan.label(), shown);
        tracing::debug!(channel = id, ?ports, ?plan, "data channel opened");
        Ok(ports)
    }

    /// Binds the listeners `plan` asks for and starts its relay task.
    fn open_task(
        &mut self,
        id: ChannelId,
        plan: &DataPlan,
    ) -> Result<(Ports, Carrier), DataOpenError> {
        let client = self.listen(&plan.client)?;
        let server = self.listen(&plan.server)?;
        let ports = Ports {
            client: client.as_ref().map(|l| l.lease.port()),
            server: server.as_ref().map(|l| l.lease.port()),
            kernel: false,
        };
        let listeners = Listeners { client, server };
        let task = tokio::spawn(
            channel::run(id, listeners, plan.clone(), self.channel_ctx.clone())
                .instrument(tracing::Span::current()),
        );
        Ok((ports, Carrier::Task(task.abort_handle())))
    }

    /// Installs the kernel mapping for `plan` on a pool port; `None` when the kernel
    /// cannot carry this channel (a conversion, two address families, or a failing
    /// netlink request), which then takes the userspace path.
    fn open_kernel(
        &mut self,
        id: ChannelId,
        plan: &DataPlan,
        kernel: Arc<KernelPath>,
    ) -> Result<Option<(Ports, Carrier)>, DataOpenError> {
        let cfg = &self.ctx.cfg;
        let announced = if plan.client.accepts() {
            cfg.client_announce()
        } else {
            cfg.server_announce()
        };
        let via_server = cfg.upstream == Upstream::Transparent;
        let lease = self.ctx.pool.lease()?;
        let port = lease.port();
        let Some(mapping) = Mapping::for_plan(plan, port, announced, via_server) else {
            tracing::debug!(
                channel = id,
                "the kernel cannot carry this channel; splicing it"
            );
            return Ok(None);
        };
        let timeout = self.ctx.limits.data_accept_timeout.0;
        let events = self.channel_ctx.events.clone();
        let channel = match kernel.open(id, &mapping, timeout, events) {
            Ok(channel) => channel,
            Err(e) => {
                tracing::warn!(channel = id, error = %e, "cannot install a kernel mapping; splicing this channel");
                return Ok(None);
            }
        };
        let ports = Ports {
            client: plan.client.accepts().then_some(port),
            server: plan.server.accepts().then_some(port),
            kernel: true,
        };
        let carrier = Carrier::Kernel {
            path: kernel,
            channel,
            _lease: lease,
            opened: Instant::now(),
            mode: plan.client_mode(),
        };
        Ok(Some((ports, carrier)))
    }

    /// Stops a channel and releases its ports.
    pub fn cancel(&mut self, id: ChannelId) {
        if let Some(carrier) = self.running.remove(&id) {
            carrier.stop();
        }
        self.entry.channel_closed(id);
    }

    /// Something happened on a channel: the live view follows; a kernel-path channel's
    /// setup time and bytes are counted here (a task counts its own).
    pub fn event(&mut self, id: ChannelId, ev: &DataEvent) {
        let gateway = &self.ctx.name;
        match ev {
            DataEvent::Established => {
                self.entry.channel_state(id, "relaying");
                if let Some(Carrier::Kernel { opened, mode, .. }) = self.running.get(&id) {
                    telemetry::data_setup_seconds(gateway, mode, opened.elapsed().as_secs_f64());
                }
            }
            DataEvent::ServerToClientDone => self.entry.channel_state(id, "server-done"),
            DataEvent::Finished(_) | DataEvent::Failed(_) => {
                // The relay is over by itself; a kernel mapping is removed now.
                if let Some(carrier @ Carrier::Kernel { .. }) = self.running.remove(&id) {
                    if let DataEvent::Finished(s) = ev {
                        if s.counted {
                            telemetry::relayed(gateway, s.to_server, s.to_client);
                        }
                    }
                    carrier.stop();
                }
            }
        }
    }

    /// A channel is over: count it, log its transfer, forget it.
    pub fn ended(&mut self, end: &ChannelEnd) {
        self.cancel(end.id);
        let path = if end.kernel {
            RelayMode::Kernel.name()
        } else if self.protected.remove(&end.id) {
            "tls"
        } else {
            self.channel_ctx.relay.name()
        };
        telemetry::data_channel_done(&self.ctx.name, end.mode, path, end.ok);
        if let Some(record) = &end.transfer {
            log_transfer(record, path);
        }
    }
}

impl Drop for ChannelTasks {
    fn drop(&mut self) {
        for (_, carrier) in self.running.drain() {
            carrier.stop();
        }
    }
}

/// One line per finished transfer, in the spirit of xferlog: the session span carries id,
/// gateway, client and server; the line adds command, file, direction, mode, bytes, time
/// and outcome.
fn log_transfer(r: &TransferRecord, path: &'static str) {
    let direction = if r.upload { "in" } else { "out" };
    let mode = if r.active { "active" } else { "passive" };
    match (&r.stats, &r.failure) {
        (Some(s), _) if s.counted => tracing::info!(
            target: "ftpgate::transfer",
            command = %r.command,
            file = %r.argument,
            direction,
            mode,
            path,
            bytes = if r.upload { s.to_server } else { s.to_client },
            seconds = s.seconds,
            outcome = "complete",
            "transfer"
        ),
        // The kernel could not tell the byte count: never a wrong number.
        (Some(s), _) => tracing::info!(
            target: "ftpgate::transfer",
            command = %r.command,
            file = %r.argument,
            direction,
            mode,
            path,
            bytes = "unknown",
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
            path,
            outcome = "failed",
            reason = failure.as_deref().unwrap_or("unknown"),
            "transfer"
        ),
    }
}
