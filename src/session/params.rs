//! What a session is told about its gateway and its client: addresses, policies, and the
//! bounds and timeouts of DESIGN.md §6.12.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::{ClientSource, ServerMode, ServerSource, TlsPolicy, UpstreamTls};
use crate::ftp::reply::ReplyLimits;

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

/// The two addresses of one side of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SideAddrs {
    /// Data listeners for this side bind here; dials toward this side start here.
    pub address: IpAddr,
    /// The address this side's peer is told to connect to: written into `227` replies for
    /// the client side and into `PORT`/`EPRT` for the server side.
    pub announce: IpAddr,
}

/// TLS toward the client, as far as the session decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsParams {
    /// What to do with `AUTH`.
    pub policy: TlsPolicy,
    /// `tls.require`: a login before `AUTH TLS` gets `530`, a data command before
    /// `PROT P` gets `521`.
    pub require: bool,
    /// The control connection is TLS from its first byte (the implicit listener).
    pub implicit: bool,
    /// TLS toward the server: ftpgate secures its control connection after the greeting
    /// (`explicit`: `AUTH TLS` first) and protects every data connection to it.
    pub upstream: UpstreamTls,
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
    /// Source of connections toward the server: `client` dials (and, in active mode,
    /// listens) on the client's own address, announced in `PORT`/`EPRT`.
    pub server_source: ServerSource,
    /// What to do with `AUTH TLS`/`AUTH SSL`, and TLS termination's demands.
    pub tls: TlsParams,
    /// Bounds and timeouts.
    pub limits: SessionLimits,
    /// Explicit role: the server ports a client may name in `USER name@host:port`.
    pub allow_server_ports: Vec<u16>,
    /// Accept data ports below 1024 (operator knob; off by default).
    pub allow_privileged_ports: bool,
    /// How data connections toward the server are opened.
    pub server_mode: ServerMode,
}
