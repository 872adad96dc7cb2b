//! The shell side of one session's data channels, following the session's actions:
//! binding the listeners of a plan and starting its task ([`ChannelTasks::open`]),
//! stopping it, and what the operator sees of it (the live view, the channel counter,
//! one transfer log line).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::admin::Entry;
use crate::data::channel::{self, ChannelContext, Listeners, Listening};
use crate::plan::{
    ChannelEnd, ChannelId, DataEvent, DataOpenError, DataPlan, Endpoint, Ports, TransferRecord,
};
use crate::telemetry;

use super::GatewayContext;

/// The running data channels of one session.
pub(super) struct ChannelTasks {
    ctx: Arc<GatewayContext>,
    channel_ctx: ChannelContext,
    tasks: HashMap<ChannelId, AbortHandle>,
    /// The session's place in the live view.
    pub entry: Entry,
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
            relay: ctx.cfg.relay,
        };
        Self {
            ctx,
            channel_ctx,
            tasks: HashMap::new(),
            entry,
        }
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

    /// Binds the listeners `plan` asks for and starts the channel; returns their ports.
    pub fn open(&mut self, id: ChannelId, plan: &DataPlan) -> Result<Ports, DataOpenError> {
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

    /// Stops a channel and releases its ports.
    pub fn cancel(&mut self, id: ChannelId) {
        if let Some(task) = self.tasks.remove(&id) {
            task.abort();
        }
        self.entry.channel_closed(id);
    }

    /// Something happened on a channel: the live view follows.
    pub fn event(&mut self, id: ChannelId, ev: &DataEvent) {
        match ev {
            DataEvent::Established => self.entry.channel_state(id, "relaying"),
            DataEvent::ServerToClientDone => self.entry.channel_state(id, "server-done"),
            DataEvent::Finished(_) | DataEvent::Failed(_) => {
                // The task is over by itself.
                self.tasks.remove(&id);
            }
        }
    }

    /// A channel is over: count it, log its transfer, forget it.
    pub fn ended(&mut self, end: &ChannelEnd) {
        self.cancel(end.id);
        telemetry::data_channel_done(&self.ctx.name, end.mode, end.ok);
        if let Some(record) = &end.transfer {
            log_transfer(record);
        }
    }
}

impl Drop for ChannelTasks {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
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
