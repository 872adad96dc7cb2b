//! What a data channel is to do and what became of it: the words the session core and the
//! shell share. The session decides ([`DataPlan`]), the shell performs and reports
//! ([`DataEvent`], [`Ports`]), the session concludes ([`ChannelEnd`], [`TransferRecord`]).
//! Nothing here depends on either side.

use std::net::{IpAddr, SocketAddr};

/// Identifies one data channel within a session.
pub type ChannelId = u64;

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
    /// The client's connection is TLS, ftpgate the TLS server (`tls: terminate` and
    /// `PROT P`); the kernel cannot carry such a channel.
    pub client_tls: bool,
    /// The server's connection is TLS, ftpgate the TLS client (`tls.upstream`).
    pub server_tls: bool,
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

/// The announced ports of an opened channel, one per [`Endpoint::Accept`] end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    /// The port the client connects to.
    pub client: Option<u16>,
    /// The port the server connects to.
    pub server: Option<u16>,
    /// The kernel carries the channel (`relay: kernel`): it joins the two ends itself, so
    /// no reply needs to wait for the connection to the client.
    pub kernel: bool,
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
    /// Whether the byte counts are exact (the kernel path cannot always tell; then they
    /// are zero and the log says `bytes=unknown`).
    pub counted: bool,
}

impl Eq for DataStats {}

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
    /// The kernel carried it (`relay: kernel`); otherwise ftpgate's relay did.
    pub kernel: bool,
    /// The transfer it served, if it served one.
    pub transfer: Option<TransferRecord>,
}
