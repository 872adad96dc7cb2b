//! The security rules of DESIGN.md §6, named. Each check that refuses or neutralises
//! something reports one of these: its log line carries `rule = <name>` and
//! `ftpgate_refusals_total{reason="<name>"}` counts it. `docs/security.md` lists them with
//! their defaults, the attacks they stop and their sources.

/// A rule that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// §6.1: a control line longer than `limits.max_line` ends the session.
    LineTooLong,
    /// §6.1: a control line containing NUL ends the session.
    NulInLine,
    /// §6.1: a line the server might read otherwise than ftpgate (verb not at the start,
    /// another separator than one space, control characters, an argument a typed verb
    /// does not take) is answered `500`/`501` and never forwarded.
    LineSyntax,
    /// §6.3: a `227`/`229` that does not answer the outstanding `PASV`/`EPSV` opens nothing
    /// and passes as text.
    UnsolicitedPassiveReply,
    /// §6.4: `PORT`/`EPRT` naming another host than the client (FTP bounce).
    Bounce,
    /// §6.4: a data port below 1024, named by a client or a server.
    PrivilegedPort,
    /// §6.4: a `PORT`/`EPRT` argument that is not strictly well-formed.
    MalformedAddress,
    /// §6.4: `LPRT`, `LPSV` or `SPSV`, data commands ftpgate does not translate: refused,
    /// so that no server opens a data connection ftpgate did not check.
    UnsupportedDataCommand,
    /// §6.5: a `227` named another address than the server's; ftpgate dials the server's.
    PassiveAddressIgnored,
    /// §6.5: a `227`/`229` answering `PASV`/`EPSV` whose address cannot be read.
    MalformedPassiveReply,
    /// §6.6: a data connection from another address than the expected peer.
    DataPeer,
    /// §6.6: an announced data port got no peer in time.
    DataAcceptTimeout,
    /// §6.7: the client sent bytes before it was greeted.
    EarlyData,
    /// §6.8: `limits.max_sessions` reached.
    MaxSessions,
    /// §6.8: `limits.max_sessions_per_client` reached.
    MaxSessionsPerClient,
    /// §6.8: every port of `data_ports` is in use.
    DataPortsExhausted,
    /// §6.8: `limits.idle_timeout` passed without a complete command or a data channel.
    IdleTimeout,
    /// §6.8: an unfinished command line waited longer than `limits.line_timeout`.
    LineTimeout,
    /// §6.8: a session asked for more data channels at once than it may hold.
    DataChannels,
    /// §6.8, §6.11: the process ran out of file descriptors; new connections get `421`.
    FdExhausted,
    /// §6.9: the client is not in `allow_clients`.
    AllowClients,
    /// §6.9: the upstream is in `deny_servers`.
    DenyServers,
    /// §6.9: a connection reached a transparent port without being redirected to it.
    NotRedirected,
    /// §6.10: `AUTH` refused under `tls: refuse`.
    TlsRefused,
    /// §6.10: plain-text bytes that followed `AUTH TLS` before the handshake were
    /// discarded, never read as commands (STARTTLS command injection).
    TlsInjection,
    /// §6.10: `tls.require`: a login before `AUTH TLS`, or a data command before `PROT P`.
    TlsRequired,
    /// §6.10: `CCC` (clearing the control channel) refused.
    CccRefused,
    /// §6.10: a protected data connection that did not resume its control connection's TLS
    /// session (`tls.require_reuse`; data-connection theft).
    TlsReuse,
    /// §6.12: one server reply longer than `limits.max_reply_bytes`.
    ReplyTooLong,
    /// §6.12: one server reply of more lines than `limits.max_reply_lines`.
    ReplyTooManyLines,
    /// §6.12: too many server replies waiting for the client behind a held one.
    ReplyQueue,
    /// §6.12: too many replies ftpgate wrote itself waiting behind the server's.
    LocalReplies,
    /// §6.12: more commands awaiting server replies than `limits.max_pipelined_commands`.
    PipelinedCommands,
    /// §6.12: too many client lines held while ftpgate waits (a login connecting, a command
    /// it sent on its own).
    HeldLines,
    /// §6.14: the upstream is one of the gateway's own addresses.
    GatewayAddress,
    /// §6.14: an explicit-proxy login named a server port outside `allow_server_ports`.
    ServerPort,
}

impl Rule {
    /// Every rule, in DESIGN.md order.
    pub const ALL: [Rule; 36] = [
        Rule::LineTooLong,
        Rule::NulInLine,
        Rule::LineSyntax,
        Rule::UnsolicitedPassiveReply,
        Rule::Bounce,
        Rule::PrivilegedPort,
        Rule::MalformedAddress,
        Rule::UnsupportedDataCommand,
        Rule::PassiveAddressIgnored,
        Rule::MalformedPassiveReply,
        Rule::DataPeer,
        Rule::DataAcceptTimeout,
        Rule::EarlyData,
        Rule::MaxSessions,
        Rule::MaxSessionsPerClient,
        Rule::DataPortsExhausted,
        Rule::IdleTimeout,
        Rule::LineTimeout,
        Rule::DataChannels,
        Rule::FdExhausted,
        Rule::AllowClients,
        Rule::DenyServers,
        Rule::NotRedirected,
        Rule::TlsRefused,
        Rule::TlsInjection,
        Rule::TlsRequired,
        Rule::CccRefused,
        Rule::TlsReuse,
        Rule::ReplyTooLong,
        Rule::ReplyTooManyLines,
        Rule::ReplyQueue,
        Rule::LocalReplies,
        Rule::PipelinedCommands,
        Rule::HeldLines,
        Rule::GatewayAddress,
        Rule::ServerPort,
    ];

    /// The name in logs (`rule=`) and metrics (`reason=`).
    pub fn name(self) -> &'static str {
        match self {
            Rule::LineTooLong => "line_too_long",
            Rule::NulInLine => "nul_in_line",
            Rule::LineSyntax => "line_syntax",
            Rule::UnsolicitedPassiveReply => "unsolicited_passive_reply",
            Rule::Bounce => "bounce",
            Rule::PrivilegedPort => "privileged_port",
            Rule::MalformedAddress => "malformed_address",
            Rule::UnsupportedDataCommand => "unsupported_data_command",
            Rule::PassiveAddressIgnored => "passive_address_ignored",
            Rule::MalformedPassiveReply => "malformed_passive_reply",
            Rule::DataPeer => "data_peer",
            Rule::DataAcceptTimeout => "data_accept_timeout",
            Rule::EarlyData => "early_data",
            Rule::MaxSessions => "max_sessions",
            Rule::MaxSessionsPerClient => "max_sessions_per_client",
            Rule::DataPortsExhausted => "data_ports_exhausted",
            Rule::IdleTimeout => "idle_timeout",
            Rule::LineTimeout => "line_timeout",
            Rule::DataChannels => "data_channels",
            Rule::FdExhausted => "fd_exhausted",
            Rule::AllowClients => "allow_clients",
            Rule::DenyServers => "deny_servers",
            Rule::NotRedirected => "not_redirected",
            Rule::TlsRefused => "tls_refused",
            Rule::TlsInjection => "tls_injection",
            Rule::TlsRequired => "tls_required",
            Rule::CccRefused => "ccc_refused",
            Rule::TlsReuse => "tls_reuse",
            Rule::ReplyTooLong => "reply_too_long",
            Rule::ReplyTooManyLines => "reply_too_many_lines",
            Rule::ReplyQueue => "reply_queue",
            Rule::LocalReplies => "local_replies",
            Rule::PipelinedCommands => "pipelined_commands",
            Rule::HeldLines => "held_lines",
            Rule::GatewayAddress => "gateway_address",
            Rule::ServerPort => "server_port",
        }
    }

    /// The rule's number in DESIGN.md §6.
    pub fn section(self) -> u8 {
        match self {
            Rule::LineTooLong | Rule::NulInLine | Rule::LineSyntax => 1,
            Rule::UnsolicitedPassiveReply => 3,
            Rule::Bounce
            | Rule::PrivilegedPort
            | Rule::MalformedAddress
            | Rule::UnsupportedDataCommand => 4,
            Rule::PassiveAddressIgnored | Rule::MalformedPassiveReply => 5,
            Rule::DataPeer | Rule::DataAcceptTimeout => 6,
            Rule::EarlyData => 7,
            Rule::MaxSessions
            | Rule::MaxSessionsPerClient
            | Rule::DataPortsExhausted
            | Rule::IdleTimeout
            | Rule::LineTimeout
            | Rule::DataChannels
            | Rule::FdExhausted => 8,
            Rule::AllowClients | Rule::DenyServers | Rule::NotRedirected => 9,
            Rule::TlsRefused
            | Rule::TlsInjection
            | Rule::TlsRequired
            | Rule::CccRefused
            | Rule::TlsReuse => 10,
            Rule::ReplyTooLong
            | Rule::ReplyTooManyLines
            | Rule::ReplyQueue
            | Rule::LocalReplies
            | Rule::PipelinedCommands
            | Rule::HeldLines => 12,
            Rule::GatewayAddress | Rule::ServerPort => 14,
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prometheus_label_values() {
        let mut names: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
        assert!(names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Rule::ALL.len());
    }

    #[test]
    fn every_rule_is_documented() {
        let doc = include_str!("../docs/security.md");
        for rule in Rule::ALL {
            assert!(
                doc.contains(&format!("`{}`", rule.name())),
                "docs/security.md does not describe {rule}"
            );
        }
    }
}
