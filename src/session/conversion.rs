//! What ftpgate sends the server on its own: the `server_mode` conversions and the
//! `EPSV`/`EPRT` → `PASV`/`PORT` fallback for RFC 959-only servers.
//!
//! - `server_mode: passive` (an active client): at the transfer command, or the `REST` in
//!   front of it, ftpgate sends `PASV`/`EPSV`, holds the client's lines, opens a channel
//!   that dials both ends, then sends the held transfer command.
//! - `server_mode: active` (a passive client): at the transfer command ftpgate tells the
//!   server its listener with `PORT`/`EPRT` and sends the transfer command on `200`.
//! - Fallback: a first `EPSV`/`EPRT` to an IPv4 server answered `500`–`504`/`522` is sent
//!   again as `PASV`/`PORT`, and the server is known not to speak RFC 2428 from then on.
//!
//! `REST` stays right in front of its transfer command (RFC 959 §4.1.3), and while a
//! command of ftpgate's awaits its answer, client lines wait: order never changes.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use crate::ftp::command::{parse_command, Command, TransferVerb};
use crate::ftp::hostport::encode_port_arg;
use crate::ftp::line::clean_line;
use crate::ftp::replies::Response;
use crate::ftp::reply::Reply;
use crate::plan::{DataOpenError, DataPlan, Endpoint, Ports};

use super::gate::{Awaiting, PassiveUse};
use super::{Action, Opening, Rewrite, Session};

/// What the session knows and remembers about data-connection commands.
#[derive(Debug)]
pub(super) struct DataModes {
    /// Whether the server understands `EPSV`/`EPRT`; `None` until it has answered one.
    pub server_ext: Option<bool>,
    /// RFC 6384 `ALGS ENABLE64`/`DISABLE64`: fall back to `PASV`/`PORT` toward IPv4
    /// servers that do not know `EPSV`/`EPRT`.
    pub translate: bool,
    /// The client sent `EPSV ALL`.
    pub epsv_all: bool,
    /// `server_mode: passive`: the address a client's `PORT`/`EPRT` asked for, answered by
    /// ftpgate and dialled when the next transfer starts.
    pub port_target: Option<SocketAddr>,
    /// A `227` naming another address than the server's was logged (once per session).
    pub mismatch_logged: bool,
}

impl DataModes {
    pub fn new() -> Self {
        Self {
            server_ext: None,
            translate: true,
            epsv_all: false,
            port_target: None,
            mismatch_logged: false,
        }
    }
}

/// Final replies that mean the server does not know `EPSV`/`EPRT` (RFC 959-only servers
/// answer 500 or 502; some answer 501, 504 or 522 to the argument instead).
fn ext_unsupported(code: Option<u16>) -> bool {
    matches!(code, Some(500 | 501 | 502 | 504 | 522))
}

impl Session {
    /// A transfer command (`transfer`), or the `REST` in front of one (`None`): the moment
    /// a conversion tells the server about the data connection. Otherwise it is forwarded,
    /// served by the newest channel.
    pub(super) fn on_transfer_command(
        &mut self,
        line: Vec<u8>,
        transfer: Option<(TransferVerb, &[u8])>,
    ) {
        if let Some(target) = self.modes.port_target.take() {
            // server_mode: passive: ask the server for a port first; the held lines
            // follow once ftpgate can dial both ends.
            let sent_ext = self.server.is_some_and(|s| s.is_ipv6());
            self.gate.hold_first(line);
            self.send_passive(sent_ext, PassiveUse::Convert { target });
            return;
        }
        if let Some((id, port)) = self.channels.take_converted_port() {
            // server_mode: active: tell the server where to connect first.
            self.gate.hold_first(line);
            self.send_active(id, port, false, true);
            return;
        }
        let awaiting = match transfer {
            Some((verb, arg)) => Awaiting::Transfer(self.channels.assign_transfer(verb, arg)),
            None => Awaiting::Other,
        };
        self.forward(line, awaiting);
    }

    /// Forwards the held transfer command once its data channel is arranged. The first
    /// held line is the transfer command, or the `REST` in front of it (which then goes as
    /// is; the transfer command follows with the other held lines).
    pub(super) fn send_held_transfer(&mut self) {
        let Some(line) = self.gate.next_held() else {
            return;
        };
        let awaiting = match parse_command(&clean_line(&line)) {
            Command::Transfer { verb, arg } => {
                Awaiting::Transfer(self.channels.assign_transfer(verb, arg))
            }
            _ => Awaiting::Other,
        };
        self.forward(line, awaiting);
    }

    /// Answers the held transfer command with ftpgate's own `425` instead of sending it.
    pub(super) fn fail_held_transfer(&mut self, why: &str) {
        if self.gate.next_held().is_some() {
            self.reply_local(Response::cannot_open_data(why));
        }
    }

    /// `server_mode: passive`: the server's answer to ftpgate's own `PASV`/`EPSV` for a
    /// client that asked to be connected to at `target`. Opens a channel that dials both;
    /// the held transfer command follows.
    pub(super) fn passive_for_active_client(
        &mut self,
        reply: Reply,
        sent_ext: bool,
        target: SocketAddr,
    ) {
        let dial = match self.server_data_addr(&reply, sent_ext) {
            Ok((dial, _)) => dial,
            Err(refusal) => {
                let text = match refusal {
                    Some(r) => format!("{} {}", r.code(), r.text()),
                    None => String::from_utf8_lossy(&reply.raw).trim_end().to_owned(),
                };
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
                from: self.server_dial_source(),
            },
            client_tls: self.client_data_protected(),
            server_tls: self.secures_upstream(),
        };
        tracing::debug!(client = %target, server = %dial, "active client, passive server");
        if let Err(e) = self.open_channel(plan, true, Opening::SendHeldTransfer { sent_ext }) {
            self.fail_held_transfer(&e.to_string());
        }
    }

    /// The channel of [`Session::passive_for_active_client`] is open (or not).
    pub(super) fn converted_active_opened(
        &mut self,
        sent_ext: bool,
        result: Result<Ports, DataOpenError>,
    ) {
        match result {
            Ok(_) => {
                self.actions
                    .push(Action::Rewrote(Rewrite::passive_reply(sent_ext)));
                self.send_held_transfer();
            }
            Err(e) => self.fail_held_transfer(&e.to_string()),
        }
    }

    /// Whether an `EPSV`/`EPRT` the server rejects may be retried as `PASV`/`PORT`: the
    /// server is IPv4, has not answered one yet, and the client left translation on.
    pub(super) fn may_fall_back(&self) -> bool {
        self.modes.translate
            && self.modes.server_ext.is_none()
            && self.server.is_some_and(|s| s.is_ipv4())
    }

    /// The server rejected the `EPSV`/`EPRT` of `awaiting`: remember that, and send
    /// `PASV`/`PORT` instead, in its place (client lines are still held). Returns `false`
    /// (and changes nothing) when no fallback applies, or `PORT` cannot carry the
    /// announced address.
    pub(super) fn fall_back_if_unsupported(&mut self, reply: &Reply, awaiting: Awaiting) -> bool {
        let retry = match awaiting {
            Awaiting::Passive {
                sent_ext: true,
                then,
            } => Awaiting::Passive {
                sent_ext: false,
                then,
            },
            Awaiting::Active {
                id,
                port,
                sent_ext: true,
                converted,
            } => Awaiting::Active {
                id,
                port,
                sent_ext: false,
                converted,
            },
            _ => return false,
        };
        if !self.may_fall_back() || !ext_unsupported(reply.code) {
            return false;
        }
        let command = match retry {
            Awaiting::Active { port, .. } => match self.server_announce() {
                IpAddr::V4(ip) => {
                    format!("PORT {}\r\n", encode_port_arg(SocketAddrV4::new(ip, port)))
                }
                IpAddr::V6(_) => return false,
            },
            _ => "PASV\r\n".to_owned(),
        };
        self.modes.server_ext = Some(false);
        tracing::info!("server does not support EPSV/EPRT; using PASV/PORT for this session");
        self.actions.push(Action::ToServer(command.into_bytes()));
        self.gate.expect_first(retry);
        true
    }
}
