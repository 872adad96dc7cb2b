//! TLS toward the server (`tls.upstream: explicit|implicit`): after the server's `220`
//! and before anything of the client's reaches it, ftpgate secures the control connection
//! itself — `AUTH TLS` and the handshake (explicit; implicit TLS starts with the
//! connection) — then `PBSZ 0` and `PROT P`, so that every data connection toward the
//! server is protected too. A server that refuses any step ends the session with `421`
//! before a `USER` or `PASS` was sent; nothing falls back to plain text.

use crate::config::UpstreamTls;
use crate::ftp::replies::Response;
use crate::ftp::reply::Reply;

use super::{Action, Phase, Session};

/// Where the prelude is.
#[derive(Debug)]
pub(super) enum Step {
    /// `AUTH TLS` sent.
    Auth,
    /// The shell makes the handshake.
    Handshake,
    /// `PBSZ 0` sent.
    Pbsz,
    /// `PROT P` sent.
    Prot,
}

/// What follows the prelude.
#[derive(Debug)]
pub(super) enum Then {
    /// Publish role: greet the client with the server's `220`.
    Greet(Reply),
    /// Explicit role: replay `USER name` (the client named `host`).
    ReplayUser { user: Vec<u8> },
}

impl Session {
    /// Whether the server's control connection is to be secured by ftpgate.
    pub(super) fn secures_upstream(&self) -> bool {
        self.p.tls.upstream != UpstreamTls::Plain
    }

    /// The server greeted: secure its connection before `then`.
    pub(super) fn start_upstream_tls(&mut self, then: Then) {
        let step = if self.p.tls.upstream == UpstreamTls::Explicit {
            self.actions
                .push(Action::ToServer(b"AUTH TLS\r\n".to_vec()));
            Step::Auth
        } else {
            self.actions.push(Action::ToServer(b"PBSZ 0\r\n".to_vec()));
            Step::Pbsz
        };
        self.phase = Phase::UpstreamTls { step, then };
    }

    /// A final reply during the prelude.
    pub(super) fn on_prelude_reply(&mut self, reply: Reply) {
        let Phase::UpstreamTls { step, .. } = &mut self.phase else {
            return;
        };
        let code = reply.code.unwrap_or_default();
        if code < 200 {
            return;
        }
        let (ok, sent) = match step {
            Step::Auth => (code == 234, "AUTH TLS"),
            Step::Pbsz => ((200..300).contains(&code), "PBSZ 0"),
            Step::Prot => ((200..300).contains(&code), "PROT P"),
            Step::Handshake => (false, "nothing (during the TLS handshake)"),
        };
        if !ok {
            let text = String::from_utf8_lossy(reply.last_text()).into_owned();
            self.upstream_tls_failed(&format!("the server answered {sent} with {code} {text}"));
            return;
        }
        match step {
            Step::Auth => {
                *step = Step::Handshake;
                self.actions.push(Action::StartServerTls);
            }
            Step::Pbsz => {
                *step = Step::Prot;
                self.actions.push(Action::ToServer(b"PROT P\r\n".to_vec()));
            }
            Step::Prot | Step::Handshake => self.finish_upstream_tls(),
        }
    }

    /// The handshake `AUTH TLS` led to succeeded, or failed.
    pub(super) fn on_server_tls(&mut self, result: Result<(), String>) {
        match (result, &mut self.phase) {
            (Ok(()), Phase::UpstreamTls { step, .. }) => {
                tracing::info!("server control connection protected (TLS)");
                *step = Step::Pbsz;
                self.actions.push(Action::ToServer(b"PBSZ 0\r\n".to_vec()));
            }
            (Ok(()), _) => {}
            (Err(why), _) => {
                self.upstream_tls_failed(&format!("TLS with the server failed: {why}"))
            }
        }
    }

    fn finish_upstream_tls(&mut self) {
        let Phase::UpstreamTls { then, .. } = std::mem::replace(&mut self.phase, Phase::Relay)
        else {
            return;
        };
        match then {
            Then::Greet(reply) => self.greet_client(reply),
            Then::ReplayUser { user } => self.replay_user(&user),
        }
    }

    /// The server cannot be reached over TLS: the session ends, nothing of the login
    /// having been sent.
    fn upstream_tls_failed(&mut self, why: &str) {
        tracing::warn!(reason = %why, "no TLS toward the server; closing");
        self.failure = Some(why.to_owned());
        self.close_with(Response::upstream_tls_failed(why));
    }
}
