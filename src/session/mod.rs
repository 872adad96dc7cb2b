//! The per-session state machine: events in (control-connection bytes, data-channel
//! results, the time), actions out. No sockets, no clock, no callbacks: the connection
//! driver in [`crate::gateway`] performs what this module decides and reports back.
//!
//! The parts, each owning its state:
//! - [`gate`]: the ordered reply gate: commands awaiting replies, local replies, held
//!   client lines, and the replies that wait for their data (where a `150` is held);
//! - [`channels`]: the session's data channels, from opening to their one report;
//! - `client`: client lines, parsed once and dispatched; `server`: server replies,
//!   matched to the commands they answer; `login`: the greeting and the explicit login;
//! - `active`: `PORT`/`EPRT` and their rewriting; `passive`: `PASV`/`EPSV` and where a
//!   `227`/`229` gets rewritten; `conversion`: `server_mode` conversions and the
//!   `EPSV`/`EPRT` → `PASV`/`PORT` fallback;
//! - `events`, `params`: what the session is fed, returns and is told;
//! - this file: the phases and dispatch, time (idle, line, closing and shutdown
//!   deadlines), and closing.

mod active;
mod channels;
mod client;
mod conversion;
mod events;
mod gate;
mod login;
mod params;
mod passive;
mod server;
mod tls;
mod upstream_tls;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::ftp::line::LineFramer;
use crate::ftp::replies::Response;
use crate::ftp::reply::ReplyAssembler;
use crate::plan::{ChannelId, DataEvent, DataOpenError, DataPlan, Ports};
use crate::rules::Rule;

pub use channels::MAX_DATA_CHANNELS;
pub use events::{Action, Event, Rewrite};
pub use gate::{MAX_HELD_LINES, MAX_LOCAL_REPLIES, MAX_QUEUED_REPLIES, REPLY_QUEUE_REPLIES};
pub use params::{SessionLimits, SessionParams, SideAddrs, TlsParams, UpstreamKind};

use channels::Channels;
use conversion::DataModes;
use gate::{Outgoing, Overflow, ReplyGate};

/// Reports a rule that fired: always counted ([`Action::Refused`]), logged at `$level`
/// for the first [`REFUSAL_LOG_BURST`] refusals of the session and then only counted, with
/// one summary line when the session closes (DESIGN.md §6.15). A refusal that ends the
/// session (`final`) happens once and is always logged.
macro_rules! refusal {
    (final $s:expr, $level:ident, $rule:expr, $($log:tt)+) => {{
        let rule: crate::rules::Rule = $rule;
        tracing::$level!(rule = %rule, $($log)+);
        $s.refuse(rule);
        $s.ended_by(rule);
    }};
    ($s:expr, $level:ident, $rule:expr, $($log:tt)+) => {{
        let rule: crate::rules::Rule = $rule;
        if $s.refusal_log.admit() {
            tracing::$level!(rule = %rule, $($log)+);
        }
        $s.refuse(rule);
    }};
}
use refusal;

/// Refusals of one session logged before the rest are only counted (rule logs are
/// rate-limited, DESIGN.md §6.15).
pub const REFUSAL_LOG_BURST: u32 = 10;

/// After the session closed, how long a data channel that handed everything the server
/// sent to the client's socket may take to finish: the client may still be reading what
/// its socket buffers hold after `226` and `QUIT`.
pub const CLOSING_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug)]
enum Phase {
    /// Fixed upstream: waiting for the TCP connection.
    Connecting,
    /// Waiting for the server's `220`; the client has not been greeted.
    Greeting,
    /// Explicit: greeted by ftpgate, waiting for `USER name@host`.
    ExplicitLogin,
    /// Explicit: connecting to the host the client named.
    ExplicitConnecting { user: Vec<u8>, host: String },
    /// Explicit: connected, waiting for the server's `220` to replay `USER`.
    ExplicitGreeting { user: Vec<u8>, host: String },
    /// Normal operation.
    Relay,
    /// After `AUTH` succeeded with `tls: passthrough`: bytes are relayed blindly.
    Passthrough,
    /// `tls.upstream`: ftpgate secures the server's control connection, then `then`.
    UpstreamTls {
        step: upstream_tls::Step,
        then: upstream_tls::Then,
    },
    /// The session has asked to close.
    Closed,
}

/// What to do once the shell opened (or failed to open) a channel; client lines wait
/// meanwhile.
#[derive(Debug)]
enum Opening {
    /// A client's `PORT`/`EPRT`: tell the server ftpgate's listener.
    SendActive { ext: bool },
    /// A client's `PASV`/`EPSV` under `server_mode: active`: answer it.
    AnswerPassive { ext: bool },
    /// The server's `227`/`229` for a client's `PASV`/`EPSV`: rewrite it (it waits in
    /// the reply queue).
    RewriteReply(passive::ReplyTemplate),
    /// The server's `227`/`229` (`sent_ext`) for ftpgate's `PASV` (`server_mode:
    /// passive`): send the held transfer command.
    SendHeldTransfer { sent_ext: bool },
}

/// How many refusals of a session were logged, and how many only counted.
#[derive(Debug, Default)]
struct RefusalLog {
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    /// Whether the next refusal may be logged; counts it either way.
    fn admit(&mut self) -> bool {
        if self.logged < REFUSAL_LOG_BURST {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// The session's deadlines.
#[derive(Debug)]
struct Clock {
    /// The time of the event being handled.
    now: Instant,
    /// The idle timeout counts from here: the last complete client command, or the last
    /// data-channel event.
    idle_since: Instant,
    /// Since when an unfinished client line has been waiting for its end.
    partial_since: Option<Instant>,
    /// When the session closed (channels still finishing get [`CLOSING_GRACE`]).
    closed_at: Option<Instant>,
    /// The end of the shutdown grace, once the gateway shuts down.
    shutdown: Option<Instant>,
}

/// One control session. Create with [`Session::new`], call [`Session::start`] once, then
/// [`Session::handle`] for every event; perform the returned actions in order.
#[derive(Debug)]
pub struct Session {
    p: SessionParams,
    phase: Phase,
    server: Option<SocketAddr>,
    client_lines: LineFramer,
    server_lines: LineFramer,
    replies: ReplyAssembler,
    gate: ReplyGate,
    channels: Channels,
    modes: DataModes,
    opening: Option<(ChannelId, Opening)>,
    clock: Clock,
    refusal_log: RefusalLog,
    /// TLS toward the client (`tls: terminate`).
    tls: tls::ClientTls,
    /// The line being dispatched came behind a Synch with urgent data: the command it
    /// forwards goes to the server behind the same.
    urgent: bool,
    /// The server closed its control connection; the session closes once the client has
    /// its last replies and data.
    server_gone: bool,
    /// Why the session ended abnormally, if it did.
    failure: Option<String>,
    actions: Vec<Action>,
}

impl Session {
    /// A session for one client accepted at `now`.
    pub fn new(p: SessionParams, now: Instant) -> Self {
        let p_implicit = p.tls.implicit;
        let phase = match p.upstream {
            UpstreamKind::Fixed => Phase::Connecting,
            UpstreamKind::Explicit => Phase::ExplicitLogin,
        };
        Self {
            client_lines: LineFramer::new(p.limits.max_line),
            server_lines: LineFramer::new(p.limits.max_reply.max_bytes),
            replies: ReplyAssembler::new(p.limits.max_reply),
            gate: ReplyGate::new(p.limits.max_pipelined, p.limits.max_reply.max_bytes),
            channels: Channels::new(),
            modes: DataModes::new(),
            p,
            phase,
            server: None,
            opening: None,
            clock: Clock {
                now,
                idle_since: now,
                partial_since: None,
                closed_at: None,
                shutdown: None,
            },
            refusal_log: RefusalLog::default(),
            tls: tls::ClientTls {
                secured: p_implicit,
                private_data: false,
            },
            urgent: false,
            server_gone: false,
            failure: None,
            actions: Vec::new(),
        }
    }

    /// The first actions: in the explicit role, ftpgate's own greeting.
    pub fn start(&mut self) -> Vec<Action> {
        if matches!(self.phase, Phase::ExplicitLogin) {
            self.send_client(Response::proxy_greeting().to_bytes());
        }
        std::mem::take(&mut self.actions)
    }

    /// Whether the session has asked to close.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether the session is over: closed, and every data channel reported.
    pub fn is_finished(&self) -> bool {
        self.is_closed() && self.channels.is_empty()
    }

    /// Whether any data channel is open (the idle timeout waits for these).
    pub fn has_data_channels(&self) -> bool {
        self.channels.any_live()
    }

    /// Why the session ended abnormally (a peer vanished mid-command, a limit or a rule
    /// ended it), or `None` for a normal end.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// When the session wants [`Event::Timeout`]: the idle timeout (while no data channel
    /// is open), the end of an unfinished client line, the shutdown deadline, or after
    /// closing the end of [`CLOSING_GRACE`], whichever comes first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let c = &self.clock;
        if let Some(closed) = c.closed_at {
            return (!self.channels.is_empty()).then_some(closed + CLOSING_GRACE);
        }
        let idle = (!self.channels.any_live()).then(|| c.idle_since + self.p.limits.idle_timeout);
        let line = c.partial_since.map(|t| t + self.p.limits.line_timeout);
        [idle, line, c.shutdown].into_iter().flatten().min()
    }

    /// Feeds one event that happened at `now`; returns the actions to perform, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        self.clock.now = now;
        if self.is_closed() {
            // Only the ends of data channels still matter: their transfer records.
            match event {
                Event::Data(id, ev) => self.on_data_event(id, ev),
                Event::Timeout => self.on_timeout(),
                _ => {}
            }
            return std::mem::take(&mut self.actions);
        }
        match event {
            Event::ClientData(bytes) => self.on_client_data(&bytes),
            Event::ServerData(bytes) => self.on_server_data(&bytes),
            Event::ClientClosed => self.on_client_closed(),
            Event::ServerClosed => self.on_server_closed(),
            Event::ClientTls(result) => self.on_client_tls(result),
            Event::ServerTls(result) => self.on_server_tls(result),
            Event::UpstreamConnected(addr) => self.on_upstream_connected(addr),
            Event::UpstreamFailed(reason) => self.on_upstream_failed(&reason),
            Event::ChannelOpened { id, result } => self.on_channel_opened(id, result),
            Event::Data(id, ev) => self.on_data_event(id, ev),
            Event::Timeout => self.on_timeout(),
            Event::Shutdown { deadline } => self.on_shutdown(deadline),
        }
        std::mem::take(&mut self.actions)
    }

    // ---- time ------------------------------------------------------------------------

    fn on_timeout(&mut self) {
        let now = self.clock.now;
        let limits = self.p.limits;
        if let Some(closed) = self.clock.closed_at {
            // The grace is over: what has not reported now never will.
            if now >= closed + CLOSING_GRACE {
                self.end_channels(|_| true);
            }
            return;
        }
        if self.clock.shutdown.is_some_and(|t| now >= t) {
            tracing::info!("shutdown grace over; closing the session");
            self.close_with(Response::shutting_down());
        } else if self
            .clock
            .partial_since
            .is_some_and(|t| now >= t + limits.line_timeout)
        {
            refusal!(final self, info, Rule::LineTimeout, "unfinished command line timed out; closing");
            self.close_with(Response::line_timeout());
        } else if !self.channels.any_live() && now >= self.clock.idle_since + limits.idle_timeout {
            refusal!(final self, info, Rule::IdleTimeout, "closing idle session");
            self.close_with(Response::idle_timeout());
        }
    }

    /// The gateway shuts down: the session ends as soon as no transfer is under way.
    fn on_shutdown(&mut self, deadline: Instant) {
        self.clock.shutdown = Some(deadline);
        self.end_if_shutting_down();
    }

    /// Under shutdown, ends the session once nothing is in flight: no data channel left
    /// and no transfer command awaiting its reply.
    fn end_if_shutting_down(&mut self) {
        let busy = !self.channels.is_empty()
            || self
                .gate
                .awaits(|a| matches!(a, gate::Awaiting::Transfer(_)));
        if self.clock.shutdown.is_some() && !busy && !self.is_closed() {
            tracing::info!("shutting down: closing the session");
            self.flush();
            self.close_with(Response::shutting_down());
        }
    }

    // ---- data channels ---------------------------------------------------------------

    /// Asks the shell to open a channel for `plan`; `then` runs when it answers. Client
    /// lines wait meanwhile. `Err` when the session may not open another.
    fn open_channel(
        &mut self,
        plan: DataPlan,
        client_active: bool,
        then: Opening,
    ) -> Result<ChannelId, DataOpenError> {
        self.release_prepared();
        let id = self.channels.open(client_active).inspect_err(|_| {
            refusal!(
                self,
                warn,
                Rule::DataChannels,
                max = MAX_DATA_CHANNELS,
                "too many data channels in one session"
            );
        })?;
        self.actions.push(Action::OpenChannel { id, plan });
        self.opening = Some((id, then));
        self.gate.hold();
        Ok(id)
    }

    /// The shell's answer to [`Action::OpenChannel`].
    fn on_channel_opened(&mut self, id: ChannelId, result: Result<Ports, DataOpenError>) {
        let Some((opening_id, then)) = self.opening.take() else {
            return;
        };
        if opening_id != id {
            self.opening = Some((opening_id, then));
            return;
        }
        let result = match result {
            Ok(ports) => {
                self.channels.opened(id, ports.kernel);
                Ok(ports)
            }
            Err(e) => {
                if e == DataOpenError::Exhausted {
                    refusal!(
                        self,
                        warn,
                        Rule::DataPortsExhausted,
                        "cannot open data channel: no free data port"
                    );
                } else {
                    tracing::warn!(error = %e, "cannot open data channel");
                }
                self.channels.forget(id);
                Err(e)
            }
        };
        self.gate.unhold();
        match then {
            Opening::SendActive { ext } => self.active_channel_opened(id, ext, result),
            Opening::AnswerPassive { ext } => self.converted_passive_opened(id, ext, result),
            Opening::RewriteReply(template) => self.passive_reply_opened(id, template, result),
            Opening::SendHeldTransfer { sent_ext } => {
                self.converted_active_opened(sent_ext, result)
            }
        }
        self.flush();
        if !self.gate.holding() {
            self.process_held();
        }
    }

    /// A newer `PASV`/`PORT` (or `ABOR`, `REIN`) releases an announced channel nobody used.
    fn release_prepared(&mut self) {
        if let Some(id) = self.channels.release_prepared() {
            self.actions.push(Action::CancelChannel(id));
        }
    }

    fn on_data_event(&mut self, id: ChannelId, ev: DataEvent) {
        if !self.channels.on_event(id, ev) {
            return;
        }
        // Data moving is the session in use: the idle time counts from its last event.
        self.clock.idle_since = self.clock.now;
        // Replies waiting for this channel go first: they are rewritten if it broke.
        self.flush();
        self.settle(id);
        // A session whose server left, or that shuts down, may wait for this channel.
        self.flush();
        self.end_if_shutting_down();
    }

    /// Reports channel `id` once nothing more can happen to it.
    fn settle(&mut self, id: ChannelId) {
        if let Some(end) = self.channels.settle(id) {
            self.actions.push(Action::ChannelEnded(end));
        }
    }

    /// Ends every channel `which` selects: live ones are stopped, all are reported.
    fn end_channels(&mut self, which: impl Fn(&channels::Channel) -> bool) {
        for (end, live) in self.channels.end(which) {
            if live {
                self.actions.push(Action::CancelChannel(end.id));
            }
            self.actions.push(Action::ChannelEnded(end));
        }
    }

    // ---- replies to the client ---------------------------------------------------------

    /// A reply ftpgate writes itself, in its place among the server's replies.
    fn reply_local(&mut self, reply: Response) {
        match self.gate.local(reply.to_bytes()) {
            Ok(Some(bytes)) => {
                self.enqueue(Some(reply.code()), bytes, None);
                self.flush();
            }
            Ok(None) => {}
            Err(overflow) => self.overflow(overflow),
        }
    }

    /// Queues a reply for the client, behind any that wait for their data channel.
    fn enqueue(&mut self, code: Option<u16>, bytes: Vec<u8>, channel: Option<ChannelId>) {
        if self.is_closed() {
            return;
        }
        if let Err(overflow) = self.gate.enqueue(Outgoing::ready(code, bytes, channel)) {
            self.overflow(overflow);
        }
    }

    /// Sends every reply whose turn has come.
    fn flush(&mut self) {
        while let Some(out) = self.gate.next_ready(|o| self.channels.gated(o)) {
            self.send_reply(out);
        }
        // The server left: the client gets its last replies, and its data, then the end.
        if self.server_gone && self.gate.is_drained() && !self.channels.any_live() {
            self.close();
        }
    }

    /// Sends a reply; a success for a transfer whose data connection broke while the
    /// reply waited becomes `426`.
    fn send_reply(&mut self, out: Outgoing) {
        let broken = self.channels.broken_reply(out.channel, out.code);
        match (broken, out.bytes) {
            (Some(aborted), _) => self.send_client(aborted.to_bytes()),
            (None, Some(bytes)) => self.send_client(bytes),
            (None, None) => {}
        }
    }

    fn send_client(&mut self, bytes: Vec<u8>) {
        self.actions.push(Action::ToClient(bytes));
    }

    // ---- ending ----------------------------------------------------------------------

    fn refuse(&mut self, rule: Rule) {
        self.actions.push(Action::Refused(rule));
    }

    /// A rule ends the session: an abnormal end, except the idle timeout's.
    fn ended_by(&mut self, rule: Rule) {
        if rule != Rule::IdleTimeout && self.failure.is_none() {
            self.failure = Some(format!("ended by rule {rule}"));
        }
    }

    /// A bounded queue overflowed: the session ends with `421` (DESIGN.md §6.12).
    fn overflow(&mut self, o: Overflow) {
        refusal!(final self, warn, o.rule, max = o.max, "session limit exceeded: too many {}; closing", o.what);
        self.close_with(Response::too_many(o.what));
    }

    fn on_client_closed(&mut self) {
        tracing::debug!("client closed the control connection");
        if self.channels.transfer_under_way() {
            self.failure = Some("the client left during a transfer".into());
        }
        self.close();
    }

    fn close(&mut self) {
        if self.is_closed() {
            return;
        }
        if self.refusal_log.suppressed > 0 {
            tracing::warn!(
                suppressed = self.refusal_log.suppressed,
                "further refusals of this session were counted but not logged"
            );
        }
        self.phase = Phase::Closed;
        self.clock.closed_at = Some(self.clock.now);
        self.gate.clear();
        self.opening = None;
        self.actions.push(Action::Close);
        // Channels that are only closing get CLOSING_GRACE to report. The others end now.
        self.end_channels(|c| !c.finishing());
    }

    /// Sends what is queued and `reply`, then closes. Nothing happens on a closed session.
    fn close_with(&mut self, reply: Response) {
        if self.is_closed() {
            return;
        }
        for out in self.gate.drain() {
            self.send_reply(out);
        }
        self.send_client(reply.to_bytes());
        self.close();
    }
}

#[cfg(test)]
mod tests;
