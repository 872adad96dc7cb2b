//! The limits shared by all gateways (`limits:`), their defaults and their checks.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// Limits shared by all gateways.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Control sessions at once, all gateways together.
    pub max_sessions: usize,
    /// Control sessions at once from one client IP.
    pub max_sessions_per_client: usize,
    /// A control connection without traffic (and no transfer) is closed after this.
    pub idle_timeout: HumanDuration,
    /// An announced data port waits this long for its peer; dials give up after it too.
    pub data_accept_timeout: HumanDuration,
    /// Longest client control line, CRLF included.
    pub max_line: usize,
    /// After SIGTERM/SIGINT, open sessions and transfers get this long to finish.
    pub shutdown_grace: HumanDuration,
    /// An unfinished client line may wait this long for its end.
    pub line_timeout: HumanDuration,
    /// Bytes of one server reply (a multi-line reply with every line); also the longest
    /// server line.
    pub max_reply_bytes: usize,
    /// Lines of one server reply.
    pub max_reply_lines: usize,
    /// Commands a client may send before their replies came (pipelining depth).
    pub max_pipelined_commands: usize,
    /// IPv4 clients are counted together per network of this prefix length for
    /// `max_sessions_per_client` (32: per address).
    pub client_prefix_v4: u8,
    /// IPv6 clients are counted together per network of this prefix length (64: one host
    /// owns its /64).
    pub client_prefix_v6: u8,
}

impl Limits {
    /// Whether the values make sense; `Err((key path, what was expected))`.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, message: &str| Err((key.to_owned(), message.to_owned()));
        if !(64..=65536).contains(&self.max_line) {
            return invalid("limits.max_line", "expected 64 to 65536 bytes");
        }
        if self.max_sessions == 0 || self.max_sessions_per_client == 0 {
            return invalid(
                "limits",
                "max_sessions and max_sessions_per_client must be at least 1",
            );
        }
        if [
            self.data_accept_timeout,
            self.idle_timeout,
            self.line_timeout,
        ]
        .iter()
        .any(|t| t.0.is_zero())
        {
            return invalid("limits", "timeouts must be longer than zero");
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_reply_bytes) {
            return invalid("limits.max_reply_bytes", "expected 1024 to 16777216 bytes");
        }
        for (key, value, max) in [
            ("max_reply_lines", self.max_reply_lines, 1_000_000),
            (
                "max_pipelined_commands",
                self.max_pipelined_commands,
                10_000,
            ),
        ] {
            if !(1..=max).contains(&value) {
                return Err((format!("limits.{key}"), format!("expected 1 to {max}")));
            }
        }
        if self.client_prefix_v4 > 32 || self.client_prefix_v6 > 128 {
            return invalid(
                "limits",
                "client_prefix_v4 is at most 32 and client_prefix_v6 at most 128",
            );
        }
        Ok(())
    }

    /// The group a client is counted in for `max_sessions_per_client`: its network of
    /// `client_prefix_v4` or `client_prefix_v6` bits (IPv4-mapped IPv6 counts as IPv4).
    pub fn client_group(&self, ip: IpAddr) -> IpNet {
        let ip = ip.to_canonical();
        let len = match ip {
            IpAddr::V4(_) => self.client_prefix_v4,
            IpAddr::V6(_) => self.client_prefix_v6,
        };
        IpNet::new(ip, len).map_or_else(|_| IpNet::from(ip), |n| n.trunc())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 10_000,
            max_sessions_per_client: 64,
            idle_timeout: HumanDuration(Duration::from_secs(15 * 60)),
            data_accept_timeout: HumanDuration(Duration::from_secs(30)),
            max_line: 2048,
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            line_timeout: HumanDuration(Duration::from_secs(30)),
            max_reply_bytes: 64 * 1024,
            max_reply_lines: 1024,
            max_pipelined_commands: 64,
            client_prefix_v4: 32,
            client_prefix_v6: 64,
        }
    }
}
