//! TLS toward the client under `tls: terminate` (RFC 4217): `AUTH TLS`/`SSL` answered
//! here and the handshake asked of the shell; `PBSZ` and `PROT` answered here (they are
//! about the client's leg; ftpgate decides the server's); `CCC` refused; with
//! `tls.require`, a login before `AUTH` and a data command before `PROT P` refused. The
//! session reads and rewrites the protected control channel as it does a plain one.

use crate::config::TlsPolicy;
use crate::ftp::command::Command;
use crate::ftp::replies::Response;
use crate::rules::Rule;

use super::{refusal, Action, Session};

/// The features ftpgate's TLS termination adds to a server's `FEAT` reply.
const TLS_FEATURES: [&str; 3] = ["AUTH TLS", "PBSZ", "PROT"];

/// A server's `211` to `FEAT` with ftpgate's TLS features in it (the server behind may
/// speak no TLS at all); a feature the server lists already is not listed twice.
pub(super) fn with_tls_features(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let mut lines: Vec<&str> = text.split_terminator("\r\n").collect();
    let listed = |f: &str| {
        lines
            .iter()
            .any(|l| l.trim().to_ascii_uppercase().starts_with(&f[..4]))
    };
    let missing: Vec<String> = TLS_FEATURES
        .iter()
        .filter(|f| !listed(f))
        .map(|f| format!(" {f}"))
        .collect();
    if missing.is_empty() {
        return raw.to_vec();
    }
    let last = lines.pop().unwrap_or("211 End");
    let mut out: Vec<String> = if lines.is_empty() {
        // A one-line `211 no features`: a list of its own.
        vec!["211-Features:".to_owned()]
    } else {
        lines.iter().map(|l| (*l).to_owned()).collect()
    };
    out.extend(missing);
    out.push(if lines.is_empty() {
        "211 End".to_owned()
    } else {
        last.to_owned()
    });
    let mut bytes = out.join("\r\n").into_bytes();
    bytes.extend_from_slice(b"\r\n");
    bytes
}

/// What the client's leg is protected with.
#[derive(Debug, Default)]
pub(super) struct ClientTls {
    /// The control connection is TLS (after `AUTH`, or from the first byte).
    pub secured: bool,
    /// `PROT P`: data connections with the client are TLS.
    pub private_data: bool,
}

impl Session {
    /// Whether this session terminates TLS toward its client.
    pub(super) fn terminates_tls(&self) -> bool {
        self.p.tls.policy == TlsPolicy::Terminate
    }

    /// `AUTH mechanism` under `tls: terminate`. On `234` the shell makes the handshake
    /// before anything else is read; bytes the client sent behind `AUTH` are discarded
    /// (rule `tls_injection`): they were not protected, so they are not commands.
    pub(super) fn on_auth(&mut self, mechanism: &[u8]) {
        let mech = String::from_utf8_lossy(mechanism).to_ascii_uppercase();
        if !matches!(mech.as_str(), "TLS" | "SSL" | "TLS-C" | "TLS-P") {
            self.reply_local(Response::auth_mechanism_unknown());
            return;
        }
        if self.tls.secured {
            self.reply_local(Response::auth_out_of_sequence(
                "the control connection is protected already",
            ));
            return;
        }
        if !self.gate.is_drained() || self.gate.awaits(|_| true) {
            self.reply_local(Response::auth_out_of_sequence(
                "earlier commands still await their replies",
            ));
            return;
        }
        let behind = self.client_lines.take_rest();
        if !behind.is_empty() {
            refusal!(
                self,
                warn,
                Rule::TlsInjection,
                bytes = behind.len(),
                "discarded plain-text bytes sent behind AUTH"
            );
        }
        self.send_client(Response::auth_ok(&mech).to_bytes());
        self.actions.push(Action::StartClientTls);
        // `AUTH TLS-P` (draft) also protects data.
        self.tls.private_data = mech == "TLS-P";
    }

    /// The handshake after `AUTH` succeeded (`Ok`) or failed: the session ends then.
    pub(super) fn on_client_tls(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                tracing::info!("client control connection protected (TLS)");
                self.tls.secured = true;
            }
            Err(why) => {
                tracing::info!(error = %why, "TLS handshake with the client failed");
                self.failure = Some(format!("TLS handshake with the client failed: {why}"));
                self.close();
            }
        }
    }

    /// `PBSZ`, `PROT` or `CCC` under `tls: terminate`: answered here.
    pub(super) fn on_protection_command(&mut self, command: &Command<'_>) {
        let (verb, reply) = match command {
            Command::Ccc => {
                refusal!(self, info, Rule::CccRefused, "refused CCC");
                ("CCC", Response::ccc_refused())
            }
            Command::Pbsz(_) if !self.tls.secured => ("PBSZ", Response::tls_first("PBSZ")),
            Command::Pbsz(_) => ("PBSZ", Response::pbsz_ok()),
            Command::Prot(_) if !self.tls.secured => ("PROT", Response::tls_first("PROT")),
            Command::Prot(level) => {
                let level = String::from_utf8_lossy(level).to_ascii_uppercase();
                match level.as_str() {
                    "P" | "C" => {
                        self.tls.private_data = level == "P";
                        ("PROT", Response::prot_ok(self.tls.private_data))
                    }
                    other => ("PROT", Response::prot_unsupported(other)),
                }
            }
            _ => return,
        };
        tracing::debug!(verb, code = reply.code(), "answered a protection command");
        self.reply_local(reply);
    }

    /// `tls.require`: a login before `AUTH TLS` is refused (`530`); `true` when refused.
    pub(super) fn login_refused_in_clear(&mut self) -> bool {
        if !(self.terminates_tls() && self.p.tls.require && !self.tls.secured) {
            return false;
        }
        refusal!(
            self,
            info,
            Rule::TlsRequired,
            "refused a login before AUTH TLS"
        );
        self.reply_local(Response::tls_login_required());
        true
    }

    /// `tls.require`: a data command before `PROT P` is refused (`521`); `true` when
    /// refused.
    pub(super) fn data_refused_in_clear(&mut self) -> bool {
        if !(self.terminates_tls() && self.p.tls.require && !self.tls.private_data) {
            return false;
        }
        refusal!(
            self,
            info,
            Rule::TlsRequired,
            "refused a data command before PROT P"
        );
        self.reply_local(Response::data_protection_required());
        true
    }

    /// Whether the client's data connections are TLS.
    pub(super) fn client_data_protected(&self) -> bool {
        self.terminates_tls() && self.tls.secured && self.tls.private_data
    }
}
