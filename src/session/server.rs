//! Server bytes: framed into lines, assembled into replies (bounded), and each final reply
//! matched to the command it answers, the one at the head of the gate. What a reply means
//! depends on that command: the answer to a `PASV` is rewritten ([`super::passive`]), to a
//! `PORT` ftpgate sent ([`super::active`]), to a transfer command it settles the transfer.

use crate::ftp::replies::Response;
use crate::ftp::reply::{Reply, ReplyError};
use crate::plan::ChannelId;
use crate::rules::Rule;

use super::gate::{Awaiting, Pending};
use super::tls::with_tls_features;
use super::{refusal, Action, Phase, Session};

impl Session {
    pub(super) fn on_server_data(&mut self, bytes: &[u8]) {
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
                Ok(Some(reply)) => self.on_reply(reply),
                Ok(None) => {}
                Err(e) => {
                    let rule = match e {
                        ReplyError::TooLong { .. } => Rule::ReplyTooLong,
                        ReplyError::TooManyLines { .. } => Rule::ReplyTooManyLines,
                    };
                    refusal!(final self, warn, rule, "server sent {e}; closing");
                    self.close_with(Response::server_sent(e));
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

    fn on_reply(&mut self, reply: Reply) {
        match self.phase {
            Phase::Greeting => self.on_greeting(reply),
            Phase::ExplicitGreeting { .. } => self.on_explicit_greeting(reply),
            Phase::Relay => self.on_relay_reply(reply),
            Phase::UpstreamTls { .. } => self.on_prelude_reply(reply),
            _ => {
                // Replies in other phases (a server that talks before its TCP handshake
                // completed cannot exist); pass the text on.
                self.enqueue(reply.code, reply.raw, None);
                self.flush();
            }
        }
    }

    /// A reply in the relay phase: a preliminary one belongs to the command at the head,
    /// a final one answers it.
    fn on_relay_reply(&mut self, reply: Reply) {
        if !reply.is_final() {
            let channel = match self.gate.head() {
                Some(Awaiting::Transfer(id)) => id,
                _ => None,
            };
            self.enqueue(reply.code, reply.raw, channel);
            self.flush();
            return;
        }
        let awaiting = self.gate.answered().unwrap_or(Awaiting::Other);
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
        let resolved = match awaiting {
            Awaiting::Passive { sent_ext, then } => {
                if self.fall_back_if_unsupported(&reply, awaiting) {
                    return;
                }
                self.on_passive_reply(reply, sent_ext, then);
                true
            }
            Awaiting::Active { .. } => {
                if self.fall_back_if_unsupported(&reply, awaiting) {
                    return;
                }
                self.on_active_reply(reply, awaiting);
                true
            }
            Awaiting::Transfer(id) => {
                self.on_transfer_reply(id, reply);
                false
            }
            Awaiting::Auth if code == Some(234) => {
                self.enqueue(code, reply.raw, None);
                self.flush();
                self.enter_passthrough();
                return;
            }
            Awaiting::Feat if code == Some(211) && self.terminates_tls() => {
                self.enqueue(code, with_tls_features(&reply.raw), None);
                false
            }
            Awaiting::Auth | Awaiting::Feat | Awaiting::Other | Awaiting::Quit => {
                self.enqueue(code, reply.raw, None);
                false
            }
        };
        for bytes in self.gate.due_locals() {
            let code = reply_code(&bytes);
            self.enqueue(code, bytes, None);
        }
        self.flush();
        if resolved && self.gate.holding() && self.opening.is_none() {
            self.gate.unhold();
            self.process_held();
        }
        self.end_if_shutting_down();
    }

    /// The server's final reply to a transfer command served by channel `id`: recorded
    /// for the channel; a refusal stops the channel; a success whose data connection broke
    /// becomes `426`, never the server's `2xx`.
    fn on_transfer_reply(&mut self, id: Option<ChannelId>, reply: Reply) {
        let mut code = reply.code;
        let mut raw = reply.raw;
        if let Some(id) = id {
            if self.channels.record_reply(id, code.unwrap_or_default()) {
                self.actions.push(Action::CancelChannel(id));
            }
            if let Some(aborted) = self.channels.broken_reply(Some(id), code) {
                code = Some(aborted.code());
                raw = aborted.to_bytes();
            }
            self.settle(id);
        }
        self.enqueue(code, raw, id);
    }

    /// `AUTH` succeeded under `tls: passthrough`: from now on bytes pass blindly.
    fn enter_passthrough(&mut self) {
        tracing::warn!(
            "TLS passthrough: the control channel is now encrypted and opaque; data \
             connections need a statically forwarded port range"
        );
        for out in self.gate.drain() {
            self.send_reply(out);
        }
        self.phase = Phase::Passthrough;
        let rest = self.client_lines.take_rest();
        if !rest.is_empty() {
            self.actions.push(Action::ToServer(rest));
        }
    }

    /// The server closed its control connection. Whatever the client still awaits gets an
    /// answer (`426` for a transfer, then `421`), in its place after the replies that wait
    /// for their data; the session closes once those and the data are delivered.
    pub(super) fn on_server_closed(&mut self) {
        tracing::debug!("server closed the control connection");
        if matches!(self.phase, Phase::Passthrough) {
            self.close();
            return;
        }
        let pending = self.gate.take_pending();
        let awaited = pending
            .iter()
            .any(|p| matches!(p, Pending::Server(a) if *a != Awaiting::Quit));
        if awaited {
            let why = "the server closed the control connection";
            self.failure = Some(why.to_owned());
            for p in pending {
                match p {
                    Pending::Server(Awaiting::Transfer(id)) => {
                        if let Some(id) = id {
                            self.channels.lose_reply(id, why);
                            self.settle(id);
                        }
                        let aborted = Response::transfer_aborted(why);
                        self.enqueue(Some(aborted.code()), aborted.to_bytes(), None);
                    }
                    Pending::Local(bytes) => {
                        let code = reply_code(&bytes);
                        self.enqueue(code, bytes, None);
                    }
                    Pending::Server(_) => {}
                }
            }
            let closed = Response::server_closed();
            self.enqueue(Some(closed.code()), closed.to_bytes(), None);
        }
        self.server_gone = true;
        self.flush();
    }
}

/// The code of a reply ftpgate wrote (always `ddd ` or `ddd-`).
fn reply_code(bytes: &[u8]) -> Option<u16> {
    std::str::from_utf8(bytes.get(..3)?).ok()?.parse().ok()
}
