//! The session's interface: the [`Event`]s it is fed and the [`Action`]s it returns.

use std::net::SocketAddr;
use std::time::Instant;

use crate::plan::{ChannelEnd, ChannelId, DataEvent, DataOpenError, DataPlan, Ports};
use crate::rules::Rule;

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
    pub(super) fn passive_reply(ext: bool) -> Self {
        if ext {
            Rewrite::Reply229
        } else {
            Rewrite::Reply227
        }
    }
}

/// An input to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes from the client's control connection.
    ClientData(Vec<u8>),
    /// Bytes from the server's control connection.
    ServerData(Vec<u8>),
    /// The client closed its control connection.
    ClientClosed,
    /// The server closed its control connection.
    ServerClosed,
    /// The answer to [`Action::StartClientTls`]: the handshake succeeded, or why not.
    ClientTls(Result<(), String>),
    /// The answer to [`Action::StartServerTls`]: the handshake succeeded, or why not.
    ServerTls(Result<(), String>),
    /// The upstream control connection is up; this is the server's address.
    UpstreamConnected(SocketAddr),
    /// The upstream could not be reached (or is not allowed); the reason is shown to the client.
    UpstreamFailed(String),
    /// The answer to [`Action::OpenChannel`]: the ports of its listeners, or why not.
    ChannelOpened {
        /// The channel.
        id: ChannelId,
        /// Its listening ports.
        result: Result<Ports, DataOpenError>,
    },
    /// Something happened on a data channel.
    Data(ChannelId, DataEvent),
    /// The time of [`Session::poll_timeout`] has come.
    Timeout,
    /// The gateway shuts down: idle sessions end at once, the others after their transfer
    /// or at `deadline`, whichever comes first.
    Shutdown {
        /// The end of the grace period.
        deadline: Instant,
    },
}

/// An output of the session, for the shell to perform in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the client.
    ToClient(Vec<u8>),
    /// Write these bytes to the server.
    ToServer(Vec<u8>),
    /// Write the Telnet Synch the client sent, then this command: `IAC IP` in band,
    /// `IAC` as TCP urgent data, then `DM` and the command (RFC 959 §4.1.3), so that the
    /// server sees what it would see without the gateway.
    ToServerSynch(Vec<u8>),
    /// Make the TLS handshake on the client's control connection (ftpgate the server)
    /// before reading anything more from it; report [`Event::ClientTls`].
    StartClientTls,
    /// Make the TLS handshake on the server's control connection (ftpgate the client),
    /// before reading anything more from it; report [`Event::ServerTls`].
    StartServerTls,
    /// Explicit role: resolve and connect to this upstream, then report
    /// [`Event::UpstreamConnected`] or [`Event::UpstreamFailed`].
    ConnectUpstream {
        /// Host name or address literal.
        host: String,
        /// Control port.
        port: u16,
    },
    /// Bind the listeners of `plan` and start the channel; report
    /// [`Event::ChannelOpened`].
    OpenChannel {
        /// The channel.
        id: ChannelId,
        /// What it is to do.
        plan: DataPlan,
    },
    /// Stop a channel and release its ports; no more events come for it.
    CancelChannel(ChannelId),
    /// A data channel is over (for the channel counter and the transfer log).
    ChannelEnded(ChannelEnd),
    /// Close both control connections; channels still finishing report within
    /// [`CLOSING_GRACE`](super::CLOSING_GRACE).
    Close,
    /// A security rule refused or neutralised something (for the refusal counter; the
    /// session has logged it).
    Refused(Rule),
    /// An address-carrying line was rewritten (for the rewrite counter).
    Rewrote(Rewrite),
}
