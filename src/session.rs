//! The per-session state machine: control-connection bytes and data-channel events in,
//! actions out. No sockets and no clock live here; the async shell in [`crate::gateway`]
//! performs what this module decides.
//!
//! What the session tracks:
//! - the greeting (nothing from the client is acted on before the server's `220`, or
//!   ftpgate's own in the explicit role);
//! - the commands sent to the server and still awaiting their final reply, in order, so
//!   that a `227`/`229` is honoured only as the answer to the outstanding `PASV`/`EPSV` and
//!   replies ftpgate writes itself keep their place among the server's;
//! - the data channels it announced, and the reply gate that keeps a transfer's `150` behind
//!   an established active-mode connection and its `226` behind the last relayed byte;
//! - what it sends the server on its own: `PASV`/`PORT` for `server_mode` conversions and
//!   the `EPSV`/`EPRT` → `PASV`/`PORT` fallback for RFC 959-only servers. While such a
//!   command awaits its answer, later client lines are held, so order is never changed;
//! - across address families (FTP64, RFC 6384 behaviour) it speaks each side's family:
//!   `229` ↔ `227`, `EPRT |2|` ↔ `EPRT |1|`/`PORT`; `EPSV ALL` and `ALGS` are answered here.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::config::{ClientSource, ServerMode, TlsPolicy};
use crate::ftp::command::{
    parse_command, parse_proxy_login, split_command, AlgsArg, Command, EpsvArg,
};
use crate::ftp::hostport::{encode_eprt_arg, encode_port_arg, find_227, find_229};
use crate::ftp::line::{clean_line, wire_line, LineFramer};
use crate::ftp::reply::{Reply, ReplyAssembler, ReplyError, ReplyLimits};
use crate::rules::Rule;

/// Reports a rule that fired: always counted ([`Action::Refused`]), logged at `$level`
/// for the first [`REFUSAL_LOG_BURST`] refusals of the session and then only counted, with
/// one summary line when the session closes (DESIGN.md §6.15). A refusal that ends the
/// session (`final`) happens once and is always logged.
macro_rules! refusal {
    (final $s:expr, $level:ident, $rule:expr, $($log:tt)+) => {{
        let rule: Rule = $rule;
        tracing::$level!(rule = %rule, $($log)+);
        $s.refuse(rule);
        $s.ended_by(rule);
    }};
    ($s:expr, $level:ident, $rule:expr, $($log:tt)+) => {{
        let rule: Rule = $rule;
        if $s.refusal_log.admit() {
            tracing::$level!(rule = %rule, $($log)+);
        }
        $s.refuse(rule);
    }};
}

/// Identifies one data channel within a session.
pub type ChannelId = u64;

/// Client lines held while an explicit-proxy login is still connecting upstream (rule
/// `held_lines`).
const MAX_DEFERRED_LINES: usize = 8;

/// Replies ftpgate wrote itself that wait behind outstanding server replies (rule
/// `local_replies`).
pub const MAX_LOCAL_REPLIES: usize = 64;

/// Replies waiting for the client behind a gated one, such as a `226` that waits for its
/// data (rule `reply_queue`); their bytes together are bounded by
/// [`REPLY_QUEUE_REPLIES`] times [`SessionLimits::max_reply`]'s bytes.
pub const MAX_QUEUED_REPLIES: usize = 64;

/// The reply queue holds at most this many maximum-size replies' worth of bytes.
pub const REPLY_QUEUE_REPLIES: usize = 4;

/// Data channels of one session at once (rule `data_channels`): one transfer runs at a
/// time, and a finished one lingers only while its sockets close.
pub const MAX_DATA_CHANNELS: usize = 8;

/// Refusals of one session logged before the rest are only counted (rule logs are
/// rate-limited, DESIGN.md §6.15).
pub const REFUSAL_LOG_BURST: u32 = 10;

/// After the session closed, how long a data channel that handed everything the server
/// sent to the client's socket may take to finish: the client may still be reading what
/// its socket buffers hold after `226` and `QUIT`.
pub const CLOSING_GRACE: Duration = Duration::from_secs(30);

/// The bounds of one session: every buffer and queue a peer can grow (DESIGN.md §6.12),
/// and the timeouts that end a session nobody uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Longest client line, terminator included (rule `line_too_long`).
    pub max_line: usize,
    /// Bytes and lines of one server reply (rules `reply_too_long`, `reply_too_many_lines`);
    /// also the longest server line.
    pub max_reply: ReplyLimits,
    /// Commands sent to the server and awaiting their replies (rule `pipelined_commands`).
    pub max_pipelined: usize,
    /// No complete command and no data channel for this long ends the session (rule
    /// `idle_timeout`).
    pub idle_timeout: Duration,
    /// An unfinished client line older than this ends the session (rule `line_timeout`).
    pub line_timeout: Duration,
}

impl SessionLimits {
    /// The session's share of the configured limits.
    pub fn from_config(l: &crate::config::Limits) -> Self {
        Self {
            max_line: l.max_line,
            max_reply: ReplyLimits {
                max_bytes: l.max_reply_bytes,
                max_lines: l.max_reply_lines,
            },
            max_pipelined: l.max_pipelined_commands,
            idle_timeout: l.idle_timeout.0,
            line_timeout: l.line_timeout.0,
        }
    }
}

/// Where a data connection that ftpgate dials starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialSource {
    /// Bind this local address (port chosen by the kernel).
    Bind(IpAddr),
    /// Bind this foreign address with `IP_TRANSPARENT` (the server's, toward the client).
    Transparent(IpAddr),
}

/// How a data channel gets one of its two connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Listen on a port from the data-port pool at `on` and accept one connection, only
    /// from `peer`.
    Accept {
        /// Local address the one-shot listener binds.
        on: IpAddr,
        /// The only source IP accepted.
        peer: IpAddr,
    },
    /// Connect to `to`, starting from `from`.
    Dial {
        /// Where to connect.
        to: SocketAddr,
        /// Where the connection starts from.
        from: DialSource,
    },
}

impl Endpoint {
    /// Whether this end is a listener.
    pub fn accepts(&self) -> bool {
        matches!(self, Endpoint::Accept { .. })
    }
}

/// Everything the shell needs to run one data channel: how to get the client's connection
/// and the server's, then relay between them. The four combinations are the two plain modes
/// (client passive: accept the client, dial the server; client active: accept the server,
/// dial the client) and the two conversions of `server_mode` (dial both; accept both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPlan {
    /// The client's end.
    pub client: Endpoint,
    /// The server's end.
    pub server: Endpoint,
}

impl DataPlan {
    /// The client's mode for this channel, as metrics and logs name it: `passive` when the
    /// client connects to ftpgate, `active` when ftpgate connects to the client.
    pub fn client_mode(&self) -> &'static str {
        if self.client.accepts() {
            "passive"
        } else {
            "active"
        }
    }

    /// The mode on both sides, for the live session view: `passive`, `active`, or a
    /// conversion such as `active-to-passive` (active client, passive toward the server).
    pub fn label(&self) -> &'static str {
        match (self.client.accepts(), self.server.accepts()) {
            (true, false) => "passive",
            (false, true) => "active",
            (false, false) => "active-to-passive",
            (true, true) => "passive-to-active",
        }
    }
}

/// The listening ports of an opened channel, one per [`Endpoint::Accept`] end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    /// The port the client connects to.
    pub client: Option<u16>,
    /// The port the server connects to.
    pub server: Option<u16>,
}

/// Why a data channel could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataOpenError {
    /// Every port of `data_ports` is in use.
    #[error("no free data port")]
    Exhausted,
    /// Binding the listener failed for another reason.
    #[error("cannot listen: {0}")]
    Listen(String),
    /// The session already has its maximum of data channels.
    #[error("too many data connections in this session (at most {max})")]
    TooMany {
        /// The limit.
        max: usize,
    },
}

/// The shell's side of data channels, called synchronously by the session so that the
/// port it announces is known at once.
pub trait DataChannels {
    /// Binds the listeners `plan` asks for and starts the channel; returns their ports.
    fn open(&mut self, id: ChannelId, plan: &DataPlan) -> Result<Ports, DataOpenError>;
    /// Stops a channel and releases its port; no more events come for it.
    fn cancel(&mut self, id: ChannelId);
}

/// What happened on a data channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataEvent {
    /// Both ends are connected and bytes are being relayed.
    Established,
    /// Everything the server side sent has been delivered to the client side, and the
    /// server side has closed its sending half.
    ServerToClientDone,
    /// The channel ended normally.
    Finished(DataStats),
    /// The channel failed (timeout, refused dial, reset); the reason is for the log.
    Failed(String),
}

/// What a finished data channel moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataStats {
    /// Bytes from the client side to the server side.
    pub to_server: u64,
    /// Bytes from the server side to the client side.
    pub to_client: u64,
    /// From the peer's arrival to the end of the relay.
    pub seconds: f64,
}

impl Eq for DataStats {}

/// Which address-carrying line ftpgate rewrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// A client's PORT/EPRT became a `PORT` to the server.
    Port,
    /// A client's PORT/EPRT became an `EPRT` to the server.
    Eprt,
    /// A `227` to the client.
    Reply227,
    /// A `229` to the client.
    Reply229,
}

impl Rewrite {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Rewrite::Port => "PORT",
            Rewrite::Eprt => "EPRT",
            Rewrite::Reply227 => "227",
            Rewrite::Reply229 => "229",
        }
    }

    /// The rewrite of a passive reply: a `229` when `ext`, else a `227`.
    fn passive_reply(ext: bool) -> Self {
        if ext {
            Rewrite::Reply229
        } else {
            Rewrite::Reply227
        }
    }
}

/// One transfer's record, for the transfer log (in the spirit of xferlog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecord {
    /// The transfer command: RETR, STOR, STOU, APPE, LIST, NLST or MLSD.
    pub command: String,
    /// Its argument (the file), as sent; may be empty.
    pub argument: String,
    /// `true` when data flowed from the client to the server (an upload).
    pub upload: bool,
    /// `true` for active mode (PORT/EPRT), `false` for passive.
    pub active: bool,
    /// Bytes and time, when the transfer completed; `None` when it failed.
    pub stats: Option<DataStats>,
    /// Why it failed, if it did: its data connection broke, or the server refused it,
    /// or the session ended before the server's reply.
    pub failure: Option<String>,
}

/// An input to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// Bytes from the client's control connection.
    ClientData(&'a [u8]),
    /// Bytes from the server's control connection.
    ServerData(&'a [u8]),
    /// The client closed its control connection.
    ClientClosed,
    /// The server closed its control connection.
    ServerClosed,
    /// The upstream control connection is up; this is the server's address.
    UpstreamConnected(SocketAddr),
    /// The upstream could not be reached (or is not allowed); the reason is shown to the client.
    UpstreamFailed(String),
    /// Something happened on a data channel.
    Data(ChannelId, DataEvent),
    /// The time of [`Session::poll_timeout`] has come.
    Timeout,
}

/// An output of the session, for the shell to perform in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the client.
    ToClient(Vec<u8>),
    /// Write these bytes to the server.
    ToServer(Vec<u8>),
    /// Explicit role: resolve and connect to this upstream, then report
    /// [`Event::UpstreamConnected`] or [`Event::UpstreamFailed`].
    ConnectUpstream {
        /// Host name or address literal.
        host: String,
        /// Control port.
        port: u16,
    },
    /// Flush what was written, then close both control connections and every data channel.
    Close,
    /// A security rule refused or neutralised something (for the refusal counter; the
    /// session has logged it).
    Refused(Rule),
    /// An address-carrying line was rewritten (for the rewrite counter).
    Rewrote(Rewrite),
    /// A data channel is over (for the channel counter and the transfer log); if its
    /// connections are still open, the shell stops them.
    ChannelEnded(ChannelEnd),
}

/// How a data channel ended: once for every channel that connected, timed out or served
/// a transfer (a listener released unused, for a newer `PASV`, is not counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelEnd {
    /// The channel.
    pub id: ChannelId,
    /// The client's mode: `active` or `passive`.
    pub mode: &'static str,
    /// Whether the channel did its work: its connections ended cleanly and the server
    /// answered its transfer command with success.
    pub ok: bool,
    /// The transfer it served, if it served one.
    pub transfer: Option<TransferRecord>,
}

/// The two addresses of one side of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SideAddrs {
    /// Data listeners for this side bind here; dials toward this side start here.
    pub address: IpAddr,
    /// The address this side's peer is told to connect to: written into `227` replies for
    /// the client side and into `PORT`/`EPRT` for the server side.
    pub announce: IpAddr,
}

/// How the session finds its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// The shell connects before the session starts (publish and transparent roles).
    Fixed,
    /// ftpgate greets the client and waits for `USER name@host[:port]`.
    Explicit,
}

/// Everything a session needs to know about its gateway and its client.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// How the upstream is found.
    pub upstream: UpstreamKind,
    /// The client's control-connection address.
    pub client: SocketAddr,
    /// Addresses toward clients.
    pub client_side: SideAddrs,
    /// Addresses toward servers.
    pub server_side: SideAddrs,
    /// Source of active-mode data connections toward the client.
    pub client_source: ClientSource,
    /// What to do with `AUTH TLS`/`AUTH SSL`.
    pub tls: TlsPolicy,
    /// Bounds and timeouts.
    pub limits: SessionLimits,
    /// Explicit role: the server ports a client may name in `USER name@host:port`.
    pub allow_server_ports: Vec<u16>,
    /// Accept data ports below 1024 (operator knob; off by default).
    pub allow_privileged_ports: bool,
    /// How data connections toward the server are opened.
    pub server_mode: ServerMode,
}

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
    /// The session has asked to close.
    Closed,
}

/// A command forwarded to the server and awaiting its final reply, or a reply ftpgate wrote
/// itself that must wait for the replies to earlier commands.
#[derive(Debug)]
enum Pending {
    Server(Awaiting),
    Local(Vec<u8>),
}

#[derive(Debug, Clone, Copy)]
enum Awaiting {
    /// `PASV` (`sent_ext: false`) or `EPSV` sent to the server; `then` says whose it is.
    Passive { sent_ext: bool, then: PassiveUse },
    /// `PORT` (`sent_ext: false`) or `EPRT` sent to the server for channel `id`, whose
    /// server-side listener has `port`; `converted` when ftpgate sent it on its own for a
    /// client in passive mode (`server_mode: active`).
    Active {
        id: ChannelId,
        port: u16,
        sent_ext: bool,
        converted: bool,
    },
    /// A transfer command (RETR, STOR, LIST, …) served by this channel, if any.
    Transfer(Option<ChannelId>),
    /// `AUTH` forwarded under `tls: passthrough`.
    Auth,
    /// `QUIT`: the server may close instead of answering.
    Quit,
    /// Anything else.
    Other,
}

/// Who a `PASV`/`EPSV` sent to the server is for.
#[derive(Debug, Clone, Copy)]
enum PassiveUse {
    /// The client's own `PASV` (`ext: false`) or `EPSV`.
    Client { ext: bool },
    /// ftpgate's, for a client in active mode (`server_mode: passive`) that asked to be
    /// connected to at `target`.
    Convert { target: SocketAddr },
}

/// Final replies that mean the server does not know `EPSV`/`EPRT` (RFC 959-only servers
/// answer 500 or 502; some answer 501, 504 or 522 to the argument instead).
fn ext_unsupported(code: Option<u16>) -> bool {
    matches!(code, Some(500 | 501 | 502 | 504 | 522))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelState {
    /// Listener announced; waiting for the peer and the dial.
    Waiting,
    /// Relaying.
    Established,
    /// The server side has finished sending; the client side may still be open.
    ServerDone,
}

#[derive(Debug)]
struct Channel {
    id: ChannelId,
    /// Active mode: the server connects to ftpgate, ftpgate dials the client.
    client_active: bool,
    state: ChannelState,
    /// The transfer command this channel serves, once the client sent it.
    transfer: Option<(String, String)>,
    /// A channel for a client in passive mode converted to active toward the server: the
    /// server-side listener's port, announced with `PORT`/`EPRT` when the transfer starts.
    server_port: Option<u16>,
    /// How its connections ended, once they have: what they moved, or why they broke.
    data: Option<Result<DataStats, String>>,
    /// The server's final reply to the transfer command once it came, or why none will.
    reply: Option<Result<u16, String>>,
}

impl Channel {
    /// Whether its connections are still open.
    fn live(&self) -> bool {
        self.data.is_none()
    }

    /// Whether nothing more can happen to it: its connections ended and, if it serves a
    /// transfer, the server answered it.
    fn settled(&self) -> bool {
        self.data.is_some() && (self.transfer.is_none() || self.reply.is_some())
    }

    /// Why it failed, if it did.
    fn failure(&self) -> Option<String> {
        match (&self.data, &self.reply) {
            (Some(Err(why)), _) | (_, Some(Err(why))) => Some(why.clone()),
            (_, Some(Ok(code))) if !(200..300).contains(code) => {
                Some(format!("server replied {code}"))
            }
            (None, _) => Some("the session ended during the transfer".to_owned()),
            (Some(Ok(_)), None) if self.transfer.is_some() => {
                Some("the session ended before the server's reply".to_owned())
            }
            (Some(Ok(_)), _) => None,
        }
    }
}

/// Commands that move data over a data connection; `true` for uploads.
const TRANSFER_COMMANDS: [(&str, bool); 7] = [
    ("RETR", false),
    ("LIST", false),
    ("NLST", false),
    ("MLSD", false),
    ("STOR", true),
    ("STOU", true),
    ("APPE", true),
];

#[derive(Debug)]
struct Outgoing {
    code: Option<u16>,
    bytes: Vec<u8>,
    /// For replies to a transfer command: the channel that serves it (the reply gate).
    channel: Option<ChannelId>,
}

/// Client lines held while ftpgate waits for the answer to a command it sent on its own
/// (rule `held_lines`).
pub const MAX_HELD_LINES: usize = 64;

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
    pending: VecDeque<Pending>,
    outq: VecDeque<Outgoing>,
    /// Bytes of the replies in `outq`.
    outq_bytes: usize,
    channels: Vec<Channel>,
    prepared: Option<ChannelId>,
    next_channel: ChannelId,
    deferred: Vec<Vec<u8>>,
    /// Client lines waiting until a command ftpgate sent on its own has its answer (mode
    /// conversion, the `EPSV`/`EPRT` probe); the first is the transfer command, if any.
    held: VecDeque<Vec<u8>>,
    holding: bool,
    /// `server_mode: passive`: the address a client's `PORT`/`EPRT` asked for, answered by
    /// ftpgate and dialled when the next transfer starts.
    port_target: Option<SocketAddr>,
    /// Whether the server understands `EPSV`/`EPRT`; `None` until it has answered one.
    server_ext: Option<bool>,
    /// RFC 6384 `ALGS ENABLE64`/`DISABLE64`: fall back to `PASV`/`PORT` toward IPv4 servers
    /// that do not know `EPSV`/`EPRT`.
    translate: bool,
    /// The client sent `EPSV ALL`.
    epsv_all: bool,
    mismatch_logged: bool,
    refusal_log: RefusalLog,
    /// The idle timeout counts from here: the last complete client command, or the last
    /// data channel that ended.
    idle_since: Instant,
    /// Since when an unfinished client line has been waiting for its end.
    partial_since: Option<Instant>,
    /// The server closed its control connection; the session closes once the replies
    /// still waiting for their data are out.
    server_gone: bool,
    /// Why the session ended abnormally, if it did.
    failure: Option<String>,
    /// When the session closed (channels still finishing get [`CLOSING_GRACE`]).
    closed_at: Option<Instant>,
    /// The time of the event being handled.
    now: Instant,
    actions: Vec<Action>,
}

impl Session {
    /// A session for one client accepted at `now`.
    pub fn new(p: SessionParams, now: Instant) -> Self {
        let phase = match p.upstream {
            UpstreamKind::Fixed => Phase::Connecting,
            UpstreamKind::Explicit => Phase::ExplicitLogin,
        };
        Self {
            client_lines: LineFramer::new(p.limits.max_line),
            server_lines: LineFramer::new(p.limits.max_reply.max_bytes),
            replies: ReplyAssembler::new(p.limits.max_reply),
            p,
            phase,
            server: None,
            pending: VecDeque::new(),
            outq: VecDeque::new(),
            outq_bytes: 0,
            channels: Vec::new(),
            prepared: None,
            next_channel: 1,
            deferred: Vec::new(),
            held: VecDeque::new(),
            holding: false,
            port_target: None,
            server_ext: None,
            translate: true,
            epsv_all: false,
            mismatch_logged: false,
            refusal_log: RefusalLog::default(),
            idle_since: now,
            partial_since: None,
            server_gone: false,
            failure: None,
            closed_at: None,
            now,
            actions: Vec::new(),
        }
    }

    /// When the session wants [`Event::Timeout`]: the idle timeout (while no data channel
    /// is open) or the end of an unfinished client line, whichever comes first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some(closed) = self.closed_at {
            return (!self.channels.is_empty()).then_some(closed + CLOSING_GRACE);
        }
        let idle = (!self.channels.iter().any(Channel::live))
            .then(|| self.idle_since + self.p.limits.idle_timeout);
        let line = self.partial_since.map(|t| t + self.p.limits.line_timeout);
        idle.into_iter().chain(line).min()
    }

    fn on_timeout(&mut self, now: Instant) {
        if self.closed_at.is_some_and(|t| now >= t + CLOSING_GRACE) {
            // The grace is over: what has not reported now never will.
            self.end_channels(|_| true);
            return;
        }
        if self.is_closed() {
            return;
        }
        if self
            .partial_since
            .is_some_and(|t| now >= t + self.p.limits.line_timeout)
        {
            refusal!(final self,
                info,
                Rule::LineTimeout,
                "unfinished command line timed out; closing"
            );
            self.close_with(b"421 Timeout waiting for the end of a command line.\r\n".to_vec());
        } else if !self.channels.iter().any(Channel::live)
            && now >= self.idle_since + self.p.limits.idle_timeout
        {
            refusal!(final self, info, Rule::IdleTimeout, "closing idle session");
            self.close_with(b"421 Idle timeout; closing control connection.\r\n".to_vec());
        }
    }

    /// The first actions: in the explicit role, ftpgate's own greeting.
    pub fn start(&mut self) -> Vec<Action> {
        if matches!(self.phase, Phase::ExplicitLogin) {
            self.send_client(
                b"220 ftpgate proxy ready: log in as USER name@host[:port]\r\n".to_vec(),
            );
        }
        std::mem::take(&mut self.actions)
    }

    /// Whether any data channel is open (the idle timeout waits for these).
    pub fn has_data_channels(&self) -> bool {
        !self.channels.is_empty()
    }

    /// Whether the session has asked to close.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether the session is over: closed, and every data channel reported.
    pub fn is_finished(&self) -> bool {
        self.is_closed() && self.channels.is_empty()
    }

    /// Why the session ended abnormally (a peer vanished mid-command, a limit or a rule
    /// ended it), or `None` for a normal end.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Feeds one event that happened at `now`; returns the actions to perform, in order.
    pub fn handle(
        &mut self,
        now: Instant,
        event: Event<'_>,
        data: &mut dyn DataChannels,
    ) -> Vec<Action> {
        self.now = now;
        if self.is_closed() {
            // Only the ends of data channels still matter: their transfer records.
            match event {
                Event::Data(id, ev) => self.on_data_event(now, id, ev),
                Event::Timeout => self.on_timeout(now),
                _ => {}
            }
            return std::mem::take(&mut self.actions);
        }
        match event {
            Event::ClientData(bytes) => self.on_client_data(now, bytes, data),
            Event::ServerData(bytes) => self.on_server_data(bytes, data),
            Event::ClientClosed => {
                tracing::debug!("client closed the control connection");
                if self
                    .channels
                    .iter()
                    .any(|c| c.transfer.is_some() && c.reply.is_none())
                {
                    self.failure = Some("the client left during a transfer".into());
                }
                self.close();
            }
            Event::ServerClosed => self.on_server_closed(),
            Event::UpstreamConnected(addr) => self.on_upstream_connected(addr),
            Event::UpstreamFailed(reason) => {
                let target = match &self.phase {
                    Phase::ExplicitConnecting { host, .. } => host.clone(),
                    _ => "the server".to_owned(),
                };
                tracing::warn!(%target, %reason, "upstream connection failed");
                self.failure = Some(format!("cannot connect to {target}: {reason}"));
                self.close_with(format!("421 Cannot connect to {target}: {reason}.\r\n"));
            }
            Event::Data(id, ev) => self.on_data_event(now, id, ev),
            Event::Timeout => self.on_timeout(now),
        }
        std::mem::take(&mut self.actions)
    }

    fn on_upstream_connected(&mut self, addr: SocketAddr) {
        self.server = Some(addr);
        self.phase = match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Connecting => Phase::Greeting,
            Phase::ExplicitConnecting { user, host } => Phase::ExplicitGreeting { user, host },
            other => other,
        };
    }

    // ---- client side -------------------------------------------------------------------

    fn on_client_data(&mut self, now: Instant, bytes: &[u8], data: &mut dyn DataChannels) {
        match self.phase {
            Phase::Passthrough => {
                self.actions.push(Action::ToServer(bytes.to_vec()));
                return;
            }
            Phase::Connecting | Phase::Greeting => {
                // Rule 7: a peer that talks before it was greeted is not an FTP client.
                refusal!(final self,
                    warn,
                    Rule::EarlyData,
                    bytes = bytes.len(),
                    "client sent data before the greeting; closing"
                );
                self.close_with(b"421 Protocol violation: data before greeting.\r\n".to_vec());
                return;
            }
            _ => {}
        }
        self.client_lines.push(bytes);
        loop {
            let line = match self.client_lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    refusal!(final self, warn, Rule::LineTooLong, "client {e}; closing");
                    self.close_with(
                        format!("500 Command line too long.\r\n421 Closing: {e}.\r\n").into_bytes(),
                    );
                    return;
                }
            };
            // Only a complete command counts as activity (rule idle_timeout).
            self.idle_since = now;
            match self.phase {
                Phase::ExplicitLogin => self.on_login_line(line),
                Phase::ExplicitConnecting { .. } | Phase::ExplicitGreeting { .. } => {
                    if self.deferred.len() >= MAX_DEFERRED_LINES {
                        self.too_many(
                            Rule::HeldLines,
                            MAX_DEFERRED_LINES,
                            "commands before the login completed",
                        );
                    } else {
                        self.deferred.push(line);
                    }
                }
                Phase::Relay => self.on_command_line(line, data),
                // Client lines cannot switch phases to these mid-loop.
                Phase::Passthrough | Phase::Connecting | Phase::Greeting | Phase::Closed => {}
            }
            if self.is_closed() {
                return;
            }
        }
        // An unfinished line must end within line_timeout; only its start counts.
        self.partial_since = match (self.client_lines.has_partial(), self.partial_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
            (false, _) => None,
        };
    }

    /// A bounded queue overflowed: the session ends with `421` (DESIGN.md §6.12).
    fn too_many(&mut self, rule: Rule, max: usize, what: &str) {
        refusal!(final self,
            warn,
            rule,
            max,
            "session limit exceeded: too many {what}; closing"
        );
        self.close_with(format!("421 Too many {what}; closing.\r\n").into_bytes());
    }

    /// Explicit role, before the upstream is known.
    fn on_login_line(&mut self, line: Vec<u8>) {
        let clean = clean_line(&line);
        if clean.contains(&0) {
            self.refuse_nul();
            return;
        }
        match parse_command(&clean) {
            Command::Empty => {}
            Command::Malformed(e) => self.refuse_syntax(e),
            Command::User(arg) => match parse_proxy_login(arg) {
                Ok(login) if !self.p.allow_server_ports.contains(&login.port) => {
                    refusal!(self, warn, Rule::ServerPort, host = %login.host, port = login.port, "refused explicit-proxy login to a port that is not allowed");
                    self.reply_local(
                        format!(
                            "530 Port {} is not allowed through this proxy (allowed: {}).\r\n",
                            login.port,
                            self.p
                                .allow_server_ports
                                .iter()
                                .map(u16::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                        .into_bytes(),
                    );
                }
                Ok(login) => {
                    tracing::info!(host = %login.host, port = login.port, "explicit proxy login");
                    self.actions.push(Action::ConnectUpstream {
                        host: login.host.clone(),
                        port: login.port,
                    });
                    self.phase = Phase::ExplicitConnecting {
                        user: login.user,
                        host: login.host,
                    };
                }
                Err(e) => self.reply_local(format!("530 {e}.\r\n").into_bytes()),
            },
            Command::Auth(_) => self.reply_local(
                b"534 TLS is not available before USER name@host through this proxy.\r\n".to_vec(),
            ),
            Command::Quit => self.close_with(b"221 Goodbye.\r\n".to_vec()),
            // FEAT included: a client then asks again after login and learns the real
            // server's features (lftp trusts a pre-login feature list for the session).
            _ => self.reply_local(b"530 Log in with USER name@host[:port] first.\r\n".to_vec()),
        }
    }

    fn refuse_nul(&mut self) {
        refusal!(final self,
            warn,
            Rule::NulInLine,
            "client line contains NUL; closing"
        );
        self.close_with(b"500 NUL in command line.\r\n421 Closing connection.\r\n".to_vec());
    }

    /// A line the server might read differently: answered here, never forwarded.
    fn refuse_syntax(&mut self, e: crate::ftp::command::LineSyntax) {
        refusal!(self, info, Rule::LineSyntax, error = %e, "refused a malformed command line");
        self.reply_local(format!("500 Syntax error: {e}.\r\n").into_bytes());
    }

    fn on_command_line(&mut self, line: Vec<u8>, data: &mut dyn DataChannels) {
        if self.server_gone {
            // Nobody to send it to; the session closes once its last replies are out.
            return;
        }
        if self.holding {
            if self.held.len() >= MAX_HELD_LINES {
                self.too_many(
                    Rule::HeldLines,
                    MAX_HELD_LINES,
                    "commands sent without waiting",
                );
            } else {
                self.held.push_back(line);
            }
            return;
        }
        let clean = clean_line(&line);
        if clean.contains(&0) {
            self.refuse_nul();
            return;
        }
        // What the server gets: the line as ftpgate parsed it.
        let wire = wire_line(&line).into_owned();
        let command = parse_command(&clean);
        if self.epsv_all
            && matches!(
                command,
                Command::Port(_)
                    | Command::Eprt(_)
                    | Command::Pasv
                    | Command::BadAddress { .. }
                    | Command::BadArgument { verb: "PASV" }
            )
        {
            // RFC 2428 §4: after EPSV ALL only EPSV sets up data connections.
            self.reply_local(b"503 Only EPSV is allowed after EPSV ALL.\r\n".to_vec());
            return;
        }
        match command {
            Command::Empty => tracing::debug!("ignored an empty command line"),
            Command::Malformed(e) => self.refuse_syntax(e),
            Command::Unsupported(verb) => {
                refusal!(
                    self,
                    info,
                    Rule::UnsupportedDataCommand,
                    verb,
                    "refused a data command ftpgate does not implement"
                );
                self.reply_local(
                    format!("502 {verb} is not supported through this gateway; use EPSV, PASV, EPRT or PORT.\r\n")
                        .into_bytes(),
                );
            }
            Command::BadArgument { verb: "EPSV" } => self.epsv_family_unsupported(),
            Command::BadArgument { verb } => {
                refusal!(
                    self,
                    info,
                    Rule::LineSyntax,
                    verb,
                    "refused an argument the gateway does not take"
                );
                self.reply_local(format!("501 {verb}: unexpected argument.\r\n").into_bytes());
            }
            Command::Port(addr) => self.client_active(SocketAddr::V4(addr), false, data),
            Command::Eprt(addr) => self.client_active(addr, true, data),
            Command::BadAddress { verb, error } => {
                refusal!(self, info, Rule::MalformedAddress, verb, %error, "refused malformed address");
                self.reply_local(format!("501 {verb} refused: {error}.\r\n").into_bytes());
            }
            Command::Pasv => self.client_passive(false, data),
            Command::Epsv(EpsvArg::All) => {
                // Answered here, not forwarded: ftpgate owns the data connections and may
                // still need PASV or PORT toward the server (RFC 959-only servers, mode
                // conversion).
                self.epsv_all = true;
                self.reply_local(b"200 EPSV ALL accepted.\r\n".to_vec());
            }
            Command::Epsv(arg) => {
                let family_ok = match arg {
                    EpsvArg::V4 => self.p.client_side.announce.is_ipv4(),
                    EpsvArg::V6 => self.p.client_side.announce.is_ipv6(),
                    _ => true,
                };
                if family_ok {
                    self.client_passive(true, data);
                } else {
                    self.epsv_family_unsupported();
                }
            }
            Command::Algs(arg) => self.on_algs(arg),
            Command::Auth(_) if self.p.tls == TlsPolicy::Passthrough => {
                self.forward(wire, Awaiting::Auth)
            }
            Command::Auth(mech) => {
                refusal!(self, info, Rule::TlsRefused, mechanism = %String::from_utf8_lossy(mech), "refused AUTH");
                self.reply_local(b"534 TLS is refused by this gateway's policy.\r\n".to_vec());
            }
            Command::Rein | Command::Abor => {
                // An announced data connection that never came is not coming now.
                self.cancel_prepared(data);
                self.port_target = None;
                // ABOR keeps the Telnet IP/DM in front of it: servers look for them.
                let sent = if command == Command::Abor {
                    line.clone()
                } else {
                    wire
                };
                self.forward(sent, Awaiting::Other);
            }
            Command::Other => {
                let transfer = transfer_command(&clean);
                let rest =
                    split_command(&clean).is_ok_and(|c| c.verb.eq_ignore_ascii_case(b"REST"));
                self.on_other(wire, transfer, rest);
            }
            Command::User(_) => self.forward(wire, Awaiting::Other),
            Command::Quit => self.forward(wire, Awaiting::Quit),
        }
    }

    /// `EPSV` for a protocol ftpgate's client side does not announce (RFC 2428 §3).
    fn epsv_family_unsupported(&mut self) {
        let ours = if self.p.client_side.announce.is_ipv4() {
            1
        } else {
            2
        };
        self.reply_local(
            format!("522 Network protocol not supported, use ({ours}).\r\n").into_bytes(),
        );
    }

    /// RFC 6384 `ALGS`: the client asks about (or switches) the IPv6/IPv4 translation.
    fn on_algs(&mut self, arg: AlgsArg) {
        let reply: &[u8] = match arg {
            AlgsArg::Status64 if self.translate => b"216 ENABLED\r\n",
            AlgsArg::Status64 => b"216 DISABLED\r\n",
            AlgsArg::Enable64 => {
                self.translate = true;
                b"200 FTP64 translation enabled.\r\n"
            }
            AlgsArg::Disable64 => {
                self.translate = false;
                b"200 FTP64 translation disabled.\r\n"
            }
            AlgsArg::Unknown => b"501 ALGS takes STATUS64, ENABLE64 or DISABLE64.\r\n",
        };
        self.reply_local(reply.to_vec());
    }

    /// Any command ftpgate does not act on: `transfer` for transfer commands, `rest` for
    /// `REST`. A conversion starts at the transfer command, or at the `REST` before it: `REST`
    /// must stay right in front of its transfer command (RFC 959 §4.1.3).
    fn on_other(&mut self, line: Vec<u8>, transfer: Option<(String, String)>, rest: bool) {
        if transfer.is_some() || rest {
            if let Some(target) = self.port_target.take() {
                // server_mode: passive: ask the server for a port first; the held lines
                // follow once ftpgate can dial both ends.
                let sent_ext = self.server.is_some_and(|s| s.is_ipv6());
                self.hold_first(line);
                self.send_passive(sent_ext, PassiveUse::Convert { target });
                return;
            }
            let convert = self.prepared.and_then(|id| {
                let ch = self.channels.iter_mut().find(|c| c.id == id)?;
                ch.server_port.take().map(|port| (id, port))
            });
            if let Some((id, port)) = convert {
                // server_mode: active: tell the server where to connect first.
                self.hold_first(line);
                self.send_active(id, port, false, true);
                return;
            }
        }
        match transfer {
            Some(transfer) => {
                let id = self.assign_transfer(transfer);
                self.forward(line, Awaiting::Transfer(id));
            }
            None => self.forward(line, Awaiting::Other),
        }
    }

    /// The newest channel without a transfer serves this one; returns its id.
    fn assign_transfer(&mut self, (verb, arg): (String, String)) -> Option<ChannelId> {
        let ch = self
            .channels
            .iter_mut()
            .rev()
            .find(|c| c.transfer.is_none())?;
        ch.transfer = Some((verb, arg));
        Some(ch.id)
    }

    /// Sends a command to the server; its reply is awaited in order. A client that
    /// pipelines more than `max_pipelined` commands ends its session (a server that never
    /// answers would otherwise let the queue grow without bound).
    fn forward(&mut self, line: Vec<u8>, awaiting: Awaiting) {
        if self.is_closed() {
            return;
        }
        let waiting = self
            .pending
            .iter()
            .filter(|p| matches!(p, Pending::Server(_)))
            .count();
        if waiting >= self.p.limits.max_pipelined {
            self.too_many(
                Rule::PipelinedCommands,
                self.p.limits.max_pipelined,
                "commands awaiting replies",
            );
            return;
        }
        self.actions.push(Action::ToServer(line));
        self.pending.push_back(Pending::Server(awaiting));
    }

    /// Holds client lines from now on, `line` first, until [`Session::release`].
    fn hold_first(&mut self, line: Vec<u8>) {
        self.held.push_front(line);
        self.holding = true;
    }

    /// Forwards a held transfer command once its data channel is arranged.
    /// The first held line is the transfer command, or the REST in front of it (which then
    /// goes as is; the transfer command follows with the other held lines).
    fn send_held_transfer(&mut self) {
        if let Some(line) = self.held.pop_front() {
            let awaiting = match transfer_command(&clean_line(&line)) {
                Some(transfer) => Awaiting::Transfer(self.assign_transfer(transfer)),
                None => Awaiting::Other,
            };
            self.actions.push(Action::ToServer(line));
            self.pending.push_back(Pending::Server(awaiting));
        }
    }

    /// Answers a held transfer command with ftpgate's own `425` instead of sending it.
    fn fail_held_transfer(&mut self, why: &str) {
        if self.held.pop_front().is_some() {
            self.reply_local(format!("425 Cannot open data connection: {why}.\r\n").into_bytes());
        }
    }

    /// Stops holding and processes the held client lines, until one holds again.
    fn release(&mut self, data: &mut dyn DataChannels) {
        self.holding = false;
        while !self.holding && !self.is_closed() {
            let Some(line) = self.held.pop_front() else {
                break;
            };
            self.on_command_line(line, data);
        }
    }

    /// A reply ftpgate writes itself, in its place among the server's replies.
    fn reply_local(&mut self, bytes: Vec<u8>) {
        if self.pending.is_empty() {
            self.enqueue(reply_code(&bytes), bytes, None);
            self.flush();
            return;
        }
        let waiting = self
            .pending
            .iter()
            .filter(|p| matches!(p, Pending::Local(_)))
            .count();
        if waiting >= MAX_LOCAL_REPLIES {
            self.too_many(
                Rule::LocalReplies,
                MAX_LOCAL_REPLIES,
                "commands answered while a reply is outstanding",
            );
        } else {
            self.pending.push_back(Pending::Local(bytes));
        }
    }

    /// `PORT`/`EPRT`: the client will accept a data connection at `addr`.
    fn client_active(&mut self, addr: SocketAddr, ext: bool, data: &mut dyn DataChannels) {
        let verb = if ext { "EPRT" } else { "PORT" };
        let client_ip = self.p.client.ip().to_canonical();
        if addr.ip().to_canonical() != client_ip {
            refusal!(self, warn, Rule::Bounce, verb, %addr, "refused data address of another host");
            self.reply_local(
                format!("504 {verb} refused: the address must be your own ({client_ip}).\r\n")
                    .into_bytes(),
            );
            return;
        }
        if addr.port() < 1024 && !self.p.allow_privileged_ports {
            refusal!(self, warn, Rule::PrivilegedPort, verb, %addr, "refused privileged data port");
            self.reply_local(
                format!("504 {verb} refused: data ports below 1024 are not allowed.\r\n")
                    .into_bytes(),
            );
            return;
        }
        let Some(server) = self.server else { return };
        self.cancel_prepared(data);
        if self.p.server_mode == ServerMode::Passive {
            self.port_target = Some(addr);
            tracing::debug!(client = %addr, "active client, passive toward the server");
            self.reply_local(
                format!(
                    "200 {verb} command successful; ftpgate connects when the transfer starts.\r\n"
                )
                .into_bytes(),
            );
            return;
        }
        let plan = DataPlan {
            client: Endpoint::Dial {
                to: addr,
                from: self.client_dial_source(server),
            },
            server: self.server_listener(server),
        };
        let (id, ports) = match self.open_channel(&plan, true, data) {
            Ok(v) => v,
            Err(e) => {
                self.reply_local(format!("425 Cannot open data connection: {e}.\r\n").into_bytes());
                return;
            }
        };
        let port = ports.server.unwrap_or_default();
        tracing::debug!(channel = id, client = %addr, port, "active data channel");
        self.send_active(id, port, ext, false);
    }

    /// A listener on the client side that admits only the client.
    fn client_listener(&self) -> Endpoint {
        Endpoint::Accept {
            on: self.p.client_side.address,
            peer: self.p.client.ip().to_canonical(),
        }
    }

    /// A listener on the server side that admits only the server.
    fn server_listener(&self, server: SocketAddr) -> Endpoint {
        Endpoint::Accept {
            on: self.p.server_side.address,
            peer: server.ip(),
        }
    }

    /// Where connections toward the client start from.
    fn client_dial_source(&self, server: SocketAddr) -> DialSource {
        match self.p.client_source {
            ClientSource::Gateway => DialSource::Bind(self.p.client_side.address),
            ClientSource::Server => DialSource::Transparent(server.ip()),
        }
    }

    /// Sends `PORT` or `EPRT` naming ftpgate's server-side listener `port`. `EPRT` when the
    /// client asked for it (`ext`) or `PORT` cannot carry the address; `PORT` once the
    /// server has shown it does not know `EPRT`. An `EPRT` whose fate is unknown holds
    /// client lines, so that a `PORT` retry keeps the order of commands.
    fn send_active(&mut self, id: ChannelId, port: u16, ext: bool, converted: bool) {
        let announce = SocketAddr::new(self.p.server_side.announce, port);
        let sent_ext = match announce {
            SocketAddr::V4(_) => ext && self.server_ext != Some(false),
            SocketAddr::V6(_) => true,
        };
        let command = match announce {
            SocketAddr::V4(v4) if !sent_ext => format!("PORT {}\r\n", encode_port_arg(v4)),
            _ => format!("EPRT {}\r\n", encode_eprt_arg(announce)),
        };
        self.actions.push(Action::Rewrote(if sent_ext {
            Rewrite::Eprt
        } else {
            Rewrite::Port
        }));
        if sent_ext && self.may_fall_back() && announce.is_ipv4() {
            self.holding = true;
        }
        self.forward(
            command.into_bytes(),
            Awaiting::Active {
                id,
                port,
                sent_ext,
                converted,
            },
        );
    }

    /// Whether an `EPSV`/`EPRT` the server rejects may be retried as `PASV`/`PORT`: the
    /// server is IPv4, has not answered one yet, and the client left translation on.
    fn may_fall_back(&self) -> bool {
        self.translate && self.server_ext.is_none() && self.server.is_some_and(|s| s.is_ipv4())
    }

    /// `PASV`/`EPSV`: ask the server for a port (the reply is rewritten when it comes), or
    /// with `server_mode: active` answer at once with a listener on each side.
    fn client_passive(&mut self, ext: bool, data: &mut dyn DataChannels) {
        self.cancel_prepared(data);
        self.port_target = None;
        if self.p.server_mode == ServerMode::Active {
            self.passive_to_active(ext, data);
            return;
        }
        // An IPv6 server cannot answer PASV, and 229 serves any family.
        let server_v6 = self.server.is_some_and(|s| s.is_ipv6());
        let sent_ext = server_v6 || (ext && self.server_ext != Some(false));
        if sent_ext && self.may_fall_back() {
            self.holding = true;
        }
        self.send_passive(sent_ext, PassiveUse::Client { ext });
    }

    /// Sends `EPSV` (`sent_ext`) or `PASV` to the server, for `then`.
    fn send_passive(&mut self, sent_ext: bool, then: PassiveUse) {
        let command: &[u8] = if sent_ext { b"EPSV\r\n" } else { b"PASV\r\n" };
        self.forward(command.to_vec(), Awaiting::Passive { sent_ext, then });
    }

    /// `server_mode: active`: a passive client's channel accepts both ends; the server is
    /// told its port with `PORT`/`EPRT` when the transfer command comes.
    fn passive_to_active(&mut self, ext: bool, data: &mut dyn DataChannels) {
        let Some(server) = self.server else { return };
        let plan = DataPlan {
            client: self.client_listener(),
            server: self.server_listener(server),
        };
        let reply = match self.open_channel(&plan, false, data) {
            Ok((id, ports)) => {
                if let Some(ch) = self.channels.iter_mut().find(|c| c.id == id) {
                    ch.server_port = ports.server;
                }
                self.actions
                    .push(Action::Rewrote(Rewrite::passive_reply(ext)));
                self.passive_text(ext, ports.client.unwrap_or_default())
            }
            Err(e) => format!("425 Cannot open data connection: {e}.\r\n").into_bytes(),
        };
        self.reply_local(reply);
    }

    /// ftpgate's own `227`/`229` announcing `port` on the client side.
    fn passive_text(&self, ext: bool, port: u16) -> Vec<u8> {
        match (ext, self.p.client_side.announce) {
            (true, _) => {
                format!("229 Entering Extended Passive Mode (|||{port}|)\r\n").into_bytes()
            }
            (false, IpAddr::V4(ip)) => format!(
                "227 Entering Passive Mode ({}).\r\n",
                encode_port_arg(SocketAddrV4::new(ip, port))
            )
            .into_bytes(),
            (false, IpAddr::V6(_)) => b"425 PASV needs an IPv4 address; use EPSV.\r\n".to_vec(),
        }
    }

    fn open_channel(
        &mut self,
        plan: &DataPlan,
        client_active: bool,
        data: &mut dyn DataChannels,
    ) -> Result<(ChannelId, Ports), DataOpenError> {
        self.cancel_prepared(data);
        if self.channels.len() >= MAX_DATA_CHANNELS {
            refusal!(
                self,
                warn,
                Rule::DataChannels,
                max = MAX_DATA_CHANNELS,
                "too many data channels in one session"
            );
            return Err(DataOpenError::TooMany {
                max: MAX_DATA_CHANNELS,
            });
        }
        let id = self.next_channel;
        self.next_channel += 1;
        let ports = data.open(id, plan);
        match &ports {
            Err(DataOpenError::Exhausted) => {
                refusal!(
                    self,
                    warn,
                    Rule::DataPortsExhausted,
                    "cannot open data channel: no free data port"
                )
            }
            Err(e) => tracing::warn!(error = %e, "cannot open data channel"),
            Ok(_) => {}
        }
        let ports = ports?;
        self.channels.push(Channel {
            id,
            client_active,
            state: ChannelState::Waiting,
            transfer: None,
            server_port: None,
            data: None,
            reply: None,
        });
        self.prepared = Some(id);
        Ok((id, ports))
    }

    /// A newer `PASV`/`PORT` replaces an announced channel that nobody used.
    fn cancel_prepared(&mut self, data: &mut dyn DataChannels) {
        if let Some(id) = self.prepared.take() {
            if let Some(pos) = self
                .channels
                .iter()
                .position(|c| c.id == id && c.state == ChannelState::Waiting && c.live())
            {
                self.channels.remove(pos);
                data.cancel(id);
            }
        }
    }

    // ---- server side -------------------------------------------------------------------

    fn on_server_data(&mut self, bytes: &[u8], data: &mut dyn DataChannels) {
        if matches!(self.phase, Phase::Passthrough) {
            self.actions.push(Action::ToClient(bytes.to_vec()));
            return;
        }
        self.server_lines.push(bytes);
        loop {
            let reply = match self.server_lines.next_line() {
                Ok(Some(line)) => self.replies.push_line(&line),
                Ok(None) => break,
                Err(_) => Err(ReplyError::TooLong {
                    max: self.p.limits.max_reply.max_bytes,
                }),
            };
            match reply {
                Ok(Some(reply)) => self.on_reply(reply, data),
                Ok(None) => {}
                Err(e) => {
                    let rule = match e {
                        ReplyError::TooLong { .. } => Rule::ReplyTooLong,
                        ReplyError::TooManyLines { .. } => Rule::ReplyTooManyLines,
                    };
                    refusal!(final self, warn, rule, "server sent {e}; closing");
                    self.close_with(format!("421 The server sent {e}.\r\n").into_bytes());
                    return;
                }
            }
            if self.is_closed() {
                return;
            }
            if matches!(self.phase, Phase::Passthrough) {
                let rest = self.server_lines.take_rest();
                if !rest.is_empty() {
                    self.actions.push(Action::ToClient(rest));
                }
                return;
            }
        }
    }

    fn on_reply(&mut self, reply: Reply, data: &mut dyn DataChannels) {
        match self.phase {
            Phase::Greeting => self.on_greeting(reply),
            Phase::ExplicitGreeting { .. } => self.on_explicit_greeting(reply, data),
            Phase::Relay => self.on_relay_reply(reply, data),
            _ => {
                // Replies in other phases (a server that talks before its TCP handshake
                // completed cannot exist); pass the text on.
                self.enqueue(reply.code, reply.raw, None);
                self.flush();
            }
        }
    }

    fn on_greeting(&mut self, reply: Reply) {
        let code = reply.code;
        self.enqueue(code, reply.raw, None);
        self.flush();
        match code {
            Some(220) => self.phase = Phase::Relay,
            Some(c) if c >= 200 => {
                tracing::info!(code = c, "server refused the session in its greeting");
                self.close();
            }
            _ => {}
        }
    }

    fn on_explicit_greeting(&mut self, reply: Reply, data: &mut dyn DataChannels) {
        let Phase::ExplicitGreeting { user, host } = &self.phase else {
            return;
        };
        match reply.code {
            Some(220) => {
                let mut line = b"USER ".to_vec();
                line.extend_from_slice(user);
                line.extend_from_slice(b"\r\n");
                self.phase = Phase::Relay;
                self.forward(line, Awaiting::Other);
                for line in std::mem::take(&mut self.deferred) {
                    self.on_command_line(line, data);
                    if self.is_closed() {
                        return;
                    }
                }
            }
            Some(c) if c >= 200 => {
                let text = String::from_utf8_lossy(reply.last_text());
                let reply = format!("421 {host} refused the session: {c} {text}\r\n");
                self.close_with(reply);
            }
            _ => {}
        }
    }

    fn on_relay_reply(&mut self, reply: Reply, data: &mut dyn DataChannels) {
        if !reply.is_final() {
            // A preliminary reply (150) belongs to the command at the head of the queue.
            let channel = match self.pending.front() {
                Some(Pending::Server(Awaiting::Transfer(id))) => *id,
                _ => None,
            };
            self.enqueue(reply.code, reply.raw, channel);
            self.flush();
            return;
        }
        let awaiting = match self.pending.pop_front() {
            Some(Pending::Server(a)) => a,
            Some(local @ Pending::Local(_)) => {
                // Unreachable by construction (locals at the head are drained at once);
                // keep it rather than lose a reply.
                self.pending.push_front(local);
                Awaiting::Other
            }
            None => Awaiting::Other,
        };
        let code = reply.code;
        if matches!(code, Some(227..=229)) && !matches!(awaiting, Awaiting::Passive { .. }) {
            // Rule 3: only the answer to the outstanding PASV/EPSV counts; this is text.
            // (ftpgate never sends LPSV, so a 228 answers nothing.)
            refusal!(
                self,
                info,
                Rule::UnsolicitedPassiveReply,
                "passing a 227/228/229 that answers no PASV/EPSV as text"
            );
        }
        let mut passthrough = false;
        let mut resolved = false;
        match awaiting {
            Awaiting::Passive { sent_ext, then } => {
                if sent_ext
                    && self.may_fall_back()
                    && ext_unsupported(code)
                    && self.fall_back(Awaiting::Passive {
                        sent_ext: false,
                        then,
                    })
                {
                    return;
                }
                if sent_ext && code == Some(229) {
                    self.server_ext = Some(true);
                }
                resolved = true;
                match then {
                    PassiveUse::Client { ext } => {
                        let bytes = self.passive_reply(reply, ext, sent_ext, data);
                        self.enqueue(reply_code(&bytes), bytes, None);
                    }
                    PassiveUse::Convert { target } => {
                        self.passive_for_active_client(reply, sent_ext, target, data)
                    }
                }
            }
            Awaiting::Active {
                id,
                port,
                sent_ext,
                converted,
            } => {
                if sent_ext
                    && self.may_fall_back()
                    && ext_unsupported(code)
                    && self.fall_back(Awaiting::Active {
                        id,
                        port,
                        sent_ext: false,
                        converted,
                    })
                {
                    return;
                }
                let ok = matches!(code, Some(200..=299));
                if sent_ext && ok {
                    self.server_ext = Some(true);
                }
                resolved = true;
                if !ok {
                    self.drop_channel(id, data);
                }
                match (converted, ok) {
                    (false, _) => self.enqueue(code, reply.raw, None),
                    (true, true) => self.send_held_transfer(),
                    (true, false) => self.fail_held_transfer(&format!(
                        "the server refused PORT: {}",
                        String::from_utf8_lossy(reply.last_text()).trim_end()
                    )),
                }
            }
            Awaiting::Transfer(id) => {
                let (code, raw) = match id {
                    Some(id) => self.transfer_reply(id, code, reply.raw, data),
                    None => (code, reply.raw),
                };
                self.enqueue(code, raw, id);
            }
            Awaiting::Auth => {
                passthrough = code == Some(234);
                self.enqueue(code, reply.raw, None);
            }
            Awaiting::Other | Awaiting::Quit => self.enqueue(code, reply.raw, None),
        }
        while let Some(Pending::Local(_)) = self.pending.front() {
            if let Some(Pending::Local(bytes)) = self.pending.pop_front() {
                self.enqueue(reply_code(&bytes), bytes, None);
            }
        }
        self.flush();
        if passthrough {
            tracing::warn!(
                "TLS passthrough: the control channel is now encrypted and opaque; data \
                 connections need a statically forwarded port range"
            );
            self.flush_all();
            self.phase = Phase::Passthrough;
            let rest = self.client_lines.take_rest();
            if !rest.is_empty() {
                self.actions.push(Action::ToServer(rest));
            }
            return;
        }
        if resolved && self.holding {
            self.release(data);
        }
    }

    /// The server rejected `EPSV`/`EPRT`: remember that, and send `PASV`/`PORT` instead.
    /// Client lines are still held, so the retry keeps its place. Returns `false` (and
    /// changes nothing) when `PORT` cannot carry the announced address.
    fn fall_back(&mut self, retry: Awaiting) -> bool {
        let command = match retry {
            Awaiting::Active { port, .. } => match self.p.server_side.announce {
                IpAddr::V4(ip) => {
                    format!("PORT {}\r\n", encode_port_arg(SocketAddrV4::new(ip, port)))
                }
                IpAddr::V6(_) => return false,
            },
            _ => "PASV\r\n".to_owned(),
        };
        self.server_ext = Some(false);
        tracing::info!("server does not support EPSV/EPRT; using PASV/PORT for this session");
        self.actions.push(Action::ToServer(command.into_bytes()));
        self.pending.push_front(Pending::Server(retry));
        true
    }

    /// Where the server's `227`/`229` says to connect: always the server's control address
    /// (rule 5), with its port; and where in `reply.raw` the address text stands. `Err`
    /// carries the reply for the client.
    fn server_data_addr(
        &mut self,
        reply: &Reply,
        sent_ext: bool,
    ) -> Result<(SocketAddr, std::ops::Range<usize>), Vec<u8>> {
        let expected = if sent_ext { 229 } else { 227 };
        let server = self.server.filter(|_| reply.code == Some(expected));
        let Some(server) = server else {
            return Err(reply.raw.clone());
        };
        let found = if sent_ext {
            find_229(reply.last_text()).map(|(port, span)| (None, port, span))
        } else {
            find_227(reply.last_text()).map(|(addr, span)| (Some(*addr.ip()), addr.port(), span))
        };
        let (named_ip, server_port, span) = match found {
            Ok(found) => found,
            Err(e) => {
                refusal!(self, warn, Rule::MalformedPassiveReply, error = %e, "unparsable passive reply");
                return Err(b"425 Cannot parse the server's passive reply.\r\n".to_vec());
            }
        };
        if let Some(ip) = named_ip {
            if IpAddr::V4(ip) != server.ip().to_canonical() {
                self.refuse(Rule::PassiveAddressIgnored);
                if !self.mismatch_logged {
                    self.mismatch_logged = true;
                    tracing::info!(
                        rule = %Rule::PassiveAddressIgnored,
                        announced = %ip,
                        server = %server.ip(),
                        "server announced another address in 227; dialling its control address"
                    );
                }
            }
        }
        if server_port < 1024 && !self.p.allow_privileged_ports {
            refusal!(
                self,
                warn,
                Rule::PrivilegedPort,
                port = server_port,
                "refused privileged passive port"
            );
            return Err(b"425 Refused: the server offered a data port below 1024.\r\n".to_vec());
        }
        let offset = reply.last_text_offset();
        Ok((
            SocketAddr::new(server.ip(), server_port),
            offset + span.start..offset + span.end,
        ))
    }

    /// Builds the client's reply to `PASV`/`EPSV` from the server's.
    fn passive_reply(
        &mut self,
        reply: Reply,
        client_ext: bool,
        sent_ext: bool,
        data: &mut dyn DataChannels,
    ) -> Vec<u8> {
        let (dial, span) = match self.server_data_addr(&reply, sent_ext) {
            Ok(found) => found,
            Err(bytes) => return bytes,
        };
        let plan = DataPlan {
            client: self.client_listener(),
            server: Endpoint::Dial {
                to: dial,
                from: DialSource::Bind(self.p.server_side.address),
            },
        };
        let port = match self.open_channel(&plan, false, data) {
            Ok((_, ports)) => ports.client.unwrap_or_default(),
            Err(e) => return format!("425 Cannot open data connection: {e}.\r\n").into_bytes(),
        };
        self.actions
            .push(Action::Rewrote(Rewrite::passive_reply(client_ext)));
        // Keep the server's own text where the reply keeps its form.
        match (client_ext == sent_ext, self.p.client_side.announce) {
            (true, _) if sent_ext => splice(&reply.raw, span, port.to_string().as_bytes()),
            (true, IpAddr::V4(ip)) => splice(
                &reply.raw,
                span,
                encode_port_arg(SocketAddrV4::new(ip, port)).as_bytes(),
            ),
            _ => self.passive_text(client_ext, port),
        }
    }

    /// `server_mode: passive`: the server's answer to ftpgate's own `PASV`/`EPSV` for a
    /// client that asked to be connected to at `target`. Opens a channel that dials both,
    /// then sends the held transfer command.
    fn passive_for_active_client(
        &mut self,
        reply: Reply,
        sent_ext: bool,
        target: SocketAddr,
        data: &mut dyn DataChannels,
    ) {
        let dial = match self.server_data_addr(&reply, sent_ext) {
            Ok((dial, _)) => dial,
            Err(bytes) => {
                let text = String::from_utf8_lossy(&bytes).trim_end().to_owned();
                self.fail_held_transfer(&format!("passive mode toward the server failed: {text}"));
                return;
            }
        };
        let Some(server) = self.server else { return };
        let plan = DataPlan {
            client: Endpoint::Dial {
                to: target,
                from: self.client_dial_source(server),
            },
            server: Endpoint::Dial {
                to: dial,
                from: DialSource::Bind(self.p.server_side.address),
            },
        };
        match self.open_channel(&plan, true, data) {
            Ok((id, _)) => {
                self.actions
                    .push(Action::Rewrote(Rewrite::passive_reply(sent_ext)));
                tracing::debug!(channel = id, client = %target, server = %dial, "active client, passive server");
                self.send_held_transfer();
            }
            Err(e) => self.fail_held_transfer(&e.to_string()),
        }
    }

    // ---- data channels and the reply gate ----------------------------------------------

    fn on_data_event(&mut self, now: Instant, id: ChannelId, ev: DataEvent) {
        let Some(ch) = self.channels.iter_mut().find(|c| c.id == id && c.live()) else {
            return;
        };
        match ev {
            DataEvent::Established => ch.state = ChannelState::Established,
            DataEvent::ServerToClientDone => ch.state = ChannelState::ServerDone,
            DataEvent::Finished(stats) => ch.data = Some(Ok(stats)),
            DataEvent::Failed(reason) => {
                tracing::info!(channel = id, %reason, "data channel failed");
                ch.data = Some(Err(reason));
            }
        }
        // A connected (or ended) channel is no longer one a new PASV/PORT may replace.
        if self.prepared == Some(id) && (ch.state != ChannelState::Waiting || !ch.live()) {
            self.prepared = None;
        }
        // Data moving is the session in use: the idle time counts from its last event.
        self.idle_since = now;
        // Replies waiting for this channel go first: they are rewritten if it broke.
        self.flush();
        self.settle(id);
        // A session whose server left may be waiting for this channel to end.
        self.flush();
    }

    /// The server's final reply to a transfer command served by channel `id`: recorded
    /// for the channel, and what the client gets for it. A refusal stops the channel; a
    /// success whose data connection broke becomes `426`, never the server's `2xx`.
    fn transfer_reply(
        &mut self,
        id: ChannelId,
        code: Option<u16>,
        raw: Vec<u8>,
        data: &mut dyn DataChannels,
    ) -> (Option<u16>, Vec<u8>) {
        let Some(ch) = self.channels.iter_mut().find(|c| c.id == id) else {
            return (code, raw);
        };
        let code_or_zero = code.unwrap_or_default();
        ch.reply = Some(Ok(code_or_zero));
        if code_or_zero >= 400 && ch.live() {
            // The transfer failed: its channel will carry nothing more, and must not hold
            // later replies.
            data.cancel(id);
            ch.data = Some(Err(format!("server replied {code_or_zero}")));
        }
        let reply = match broken_transfer(ch, code) {
            Some(text) => (Some(426), text),
            None => (code, raw),
        };
        self.settle(id);
        reply
    }

    /// Reports channel `id` once nothing more can happen to it.
    fn settle(&mut self, id: ChannelId) {
        if let Some(pos) = self.channels.iter().position(|c| c.id == id && c.settled()) {
            let ch = self.channels.remove(pos);
            self.report(ch);
        }
    }

    /// Ends every channel `which` selects (a live one is stopped by the shell when it
    /// sees the report), as failed unless it already settled well.
    fn end_channels(&mut self, which: impl Fn(&Channel) -> bool) {
        let (ended, kept): (Vec<Channel>, Vec<Channel>) = std::mem::take(&mut self.channels)
            .into_iter()
            .partition(which);
        self.channels = kept;
        for ch in ended {
            self.report(ch);
        }
    }

    /// The report of a channel that is over: the channel counter and the transfer log.
    fn report(&mut self, ch: Channel) {
        if self.prepared == Some(ch.id) {
            self.prepared = None;
        }
        let failure = ch.failure();
        let ok = failure.is_none();
        let stats = match &ch.data {
            Some(Ok(stats)) if ok => Some(*stats),
            _ => None,
        };
        let transfer = ch.transfer.map(|(command, argument)| TransferRecord {
            upload: TRANSFER_COMMANDS
                .iter()
                .any(|(verb, up)| *up && *verb == command),
            command,
            argument,
            active: ch.client_active,
            stats,
            failure,
        });
        self.actions.push(Action::ChannelEnded(ChannelEnd {
            id: ch.id,
            mode: if ch.client_active {
                "active"
            } else {
                "passive"
            },
            ok,
            transfer,
        }));
    }

    /// Forgets a channel that never served anything and stops it.
    fn drop_channel(&mut self, id: ChannelId, data: &mut dyn DataChannels) {
        if self.prepared == Some(id) {
            self.prepared = None;
        }
        if let Some(pos) = self.channels.iter().position(|c| c.id == id) {
            data.cancel(id);
            self.channels.remove(pos);
        }
    }

    /// Queues a reply for the client, behind any that wait for their data channel. A
    /// server that talks while a reply waits can fill the queue only so far (rule
    /// `reply_queue`).
    fn enqueue(&mut self, code: Option<u16>, bytes: Vec<u8>, channel: Option<ChannelId>) {
        if self.is_closed() {
            return;
        }
        let max_bytes = REPLY_QUEUE_REPLIES * self.p.limits.max_reply.max_bytes;
        if self.outq.len() >= MAX_QUEUED_REPLIES || self.outq_bytes + bytes.len() > max_bytes {
            self.too_many(
                Rule::ReplyQueue,
                MAX_QUEUED_REPLIES,
                "server replies while a reply waits for its data",
            );
            return;
        }
        self.outq_bytes += bytes.len();
        self.outq.push_back(Outgoing {
            code,
            bytes,
            channel,
        });
    }

    /// Whether a reply must wait for its transfer's data channel.
    fn gated(&self, out: &Outgoing) -> bool {
        let Some(ch) = out
            .channel
            .and_then(|id| self.channels.iter().find(|c| c.id == id && c.live()))
        else {
            return false;
        };
        if is_preliminary(out.code) {
            // Active mode: the client's data connection must exist before its 150.
            return ch.client_active && ch.state == ChannelState::Waiting;
        }
        // The transfer's bytes reach the client before its completion reply.
        out.code.is_some_and(|c| c < 300) && ch.state != ChannelState::ServerDone
    }

    fn flush(&mut self) {
        while let Some(head) = self.outq.front() {
            if self.gated(head) {
                break;
            }
            if let Some(out) = self.outq.pop_front() {
                self.outq_bytes -= out.bytes.len();
                self.send_reply(out);
            }
        }
        // The server left: the client gets its last replies, and its data, then the end.
        if self.server_gone && self.outq.is_empty() && !self.channels.iter().any(Channel::live) {
            self.close();
        }
    }

    fn flush_all(&mut self) {
        self.outq_bytes = 0;
        while let Some(out) = self.outq.pop_front() {
            self.send_reply(out);
        }
    }

    /// Sends a queued reply; a success for a transfer whose data connection broke while
    /// the reply waited becomes `426`.
    fn send_reply(&mut self, out: Outgoing) {
        let broken = out
            .channel
            .and_then(|id| self.channels.iter().find(|c| c.id == id))
            .and_then(|ch| broken_transfer(ch, out.code));
        self.send_client(broken.unwrap_or(out.bytes));
    }

    fn send_client(&mut self, bytes: Vec<u8>) {
        self.actions.push(Action::ToClient(bytes));
    }

    fn refuse(&mut self, rule: Rule) {
        self.actions.push(Action::Refused(rule));
    }

    /// A rule ends the session: an abnormal end, except the idle timeout's.
    fn ended_by(&mut self, rule: Rule) {
        if rule != Rule::IdleTimeout && self.failure.is_none() {
            self.failure = Some(format!("ended by rule {rule}"));
        }
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
        self.closed_at = Some(self.now);
        self.held.clear();
        self.deferred.clear();
        self.pending.clear();
        self.actions.push(Action::Close);
        // Channels that delivered everything the server sent are only closing their
        // sockets: they get CLOSING_GRACE to report. The others end now.
        self.end_channels(|c| !(c.live() && c.state == ChannelState::ServerDone));
    }

    /// The server closed its control connection. Whatever the client still awaits gets an
    /// answer (`426` for a transfer, then `421`), in its place after the replies that wait
    /// for their data; then the session closes.
    fn on_server_closed(&mut self) {
        tracing::debug!("server closed the control connection");
        if matches!(self.phase, Phase::Passthrough) {
            self.close();
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let awaited = pending
            .iter()
            .any(|p| matches!(p, Pending::Server(a) if !matches!(a, Awaiting::Quit)));
        if awaited {
            let why = "the server closed the control connection";
            self.failure = Some(why.to_owned());
            for p in pending {
                match p {
                    Pending::Server(Awaiting::Transfer(id)) => {
                        if let Some(ch) =
                            id.and_then(|id| self.channels.iter_mut().find(|c| c.id == id))
                        {
                            ch.reply = Some(Err(why.to_owned()));
                        }
                        if let Some(id) = id {
                            self.settle(id);
                        }
                        let text = format!("426 Connection closed; transfer aborted: {why}.\r\n");
                        self.enqueue(Some(426), text.into_bytes(), None);
                    }
                    Pending::Local(bytes) => self.enqueue(reply_code(&bytes), bytes, None),
                    Pending::Server(_) => {}
                }
            }
            let text = format!("421 Service not available: {why}.\r\n");
            self.enqueue(Some(421), text.into_bytes(), None);
        }
        self.server_gone = true;
        self.flush();
    }

    /// Sends what is queued and `reply`, then closes. Nothing happens on a closed session.
    fn close_with(&mut self, reply: impl Into<Vec<u8>>) {
        if self.is_closed() {
            return;
        }
        self.flush_all();
        self.send_client(reply.into());
        self.close();
    }
}

/// A transfer command's verb (upper case) and argument (for the log, at most 512
/// characters), or `None` for other lines.
fn transfer_command(clean: &[u8]) -> Option<(String, String)> {
    let cl = split_command(clean).ok()?;
    TRANSFER_COMMANDS
        .iter()
        .any(|(verb, _)| cl.verb.eq_ignore_ascii_case(verb.as_bytes()))
        .then(|| {
            let argument = String::from_utf8_lossy(cl.arg.unwrap_or_default());
            (
                String::from_utf8_lossy(cl.verb).to_ascii_uppercase(),
                argument.chars().take(512).collect(),
            )
        })
}

/// The `426` a client gets instead of a success reply for a transfer whose data
/// connection broke (DESIGN.md §5: a failed relay is never reported as success).
fn broken_transfer(ch: &Channel, code: Option<u16>) -> Option<Vec<u8>> {
    match (&ch.data, code) {
        (Some(Err(why)), Some(200..=299)) => {
            Some(format!("426 Connection closed; transfer aborted: {why}.\r\n").into_bytes())
        }
        _ => None,
    }
}

fn is_preliminary(code: Option<u16>) -> bool {
    matches!(code, Some(100..=199))
}

/// The code of a reply ftpgate wrote (always `ddd ` or `ddd-`).
fn reply_code(bytes: &[u8]) -> Option<u16> {
    std::str::from_utf8(bytes.get(..3)?).ok()?.parse().ok()
}

fn splice(raw: &[u8], span: std::ops::Range<usize>, with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + with.len());
    out.extend_from_slice(&raw[..span.start]);
    out.extend_from_slice(with);
    out.extend_from_slice(&raw[span.end..]);
    out
}

#[cfg(test)]
mod tests;
