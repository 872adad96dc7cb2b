//! Passive mode: the client's `PASV`/`EPSV`, and where the server's `227`/`229` gets
//! rewritten. ftpgate asks the server for a port, opens a listener on its client side
//! that admits only the client, dials the server's port at the server's control address
//! (rule 5: never an address the server chose), and tells the client its own port, in
//! the server's words where the reply keeps its form. Under `server_mode: active` ftpgate
//! answers `PASV`/`EPSV` itself ([`super::conversion`] tells the server later).

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::ops::Range;

use crate::config::ServerMode;
use crate::ftp::hostport::{encode_port_arg, find_227, find_229};
use crate::ftp::replies::Response;
use crate::ftp::reply::Reply;
use crate::plan::{ChannelId, DataOpenError, DataPlan, Endpoint, Ports};
use crate::rules::Rule;

use super::gate::{Awaiting, Outgoing, PassiveUse};
use super::{refusal, Action, Opening, Rewrite, Session};

/// A server's `227`/`229` waiting for the port of the listener ftpgate opens for it.
#[derive(Debug)]
pub(super) struct ReplyTemplate {
    /// The reply as the server sent it.
    raw: Vec<u8>,
    /// Where its address or port stands in `raw`.
    span: Range<usize>,
    /// The client asked with `EPSV` (and gets a `229`).
    client_ext: bool,
    /// ftpgate asked the server with `EPSV` (and it answered `229`).
    sent_ext: bool,
}

impl Session {
    /// `PASV`/`EPSV`: ask the server for a port (the reply is rewritten when it comes), or
    /// with `server_mode: active` answer at once with a listener on each side.
    pub(super) fn on_pasv(&mut self, ext: bool) {
        self.release_prepared();
        self.modes.port_target = None;
        if self.p.server_mode == ServerMode::Active {
            self.passive_to_active(ext);
            return;
        }
        // An IPv6 server cannot answer PASV, and 229 serves any family.
        let server_v6 = self.server.is_some_and(|s| s.is_ipv6());
        let sent_ext = server_v6 || (ext && self.modes.server_ext != Some(false));
        if sent_ext && self.may_fall_back() {
            self.gate.hold();
        }
        self.send_passive(sent_ext, PassiveUse::Client { ext });
    }

    /// Sends `EPSV` (`sent_ext`) or `PASV` to the server, for `then`.
    pub(super) fn send_passive(&mut self, sent_ext: bool, then: PassiveUse) {
        let command: &[u8] = if sent_ext { b"EPSV\r\n" } else { b"PASV\r\n" };
        self.forward(command.to_vec(), Awaiting::Passive { sent_ext, then });
    }

    /// A listener on the client side that admits only the client.
    pub(super) fn client_listener(&self) -> Endpoint {
        Endpoint::Accept {
            on: self.p.client_side.address,
            peer: self.p.client.ip().to_canonical(),
        }
    }

    /// `server_mode: active`: a passive client's channel accepts both ends; the server is
    /// told its port with `PORT`/`EPRT` when the transfer command comes.
    fn passive_to_active(&mut self, ext: bool) {
        let Some(server) = self.server else { return };
        let plan = DataPlan {
            client: self.client_listener(),
            server: self.server_listener(server),
            client_tls: self.client_data_protected(),
            server_tls: self.secures_upstream(),
        };
        if let Err(e) = self.open_channel(plan, false, Opening::AnswerPassive { ext }) {
            self.reply_local(Response::cannot_open_data(e));
        }
    }

    /// The channel of [`Session::passive_to_active`] is open: the client gets its port.
    pub(super) fn converted_passive_opened(
        &mut self,
        id: ChannelId,
        ext: bool,
        result: Result<Ports, DataOpenError>,
    ) {
        let reply = match result {
            Ok(ports) => {
                if let Some(ch) = self.channels.get_mut(id) {
                    ch.server_port = ports.server;
                }
                self.actions
                    .push(Action::Rewrote(Rewrite::passive_reply(ext)));
                self.passive_text(ext, ports.client.unwrap_or_default())
            }
            Err(e) => Response::cannot_open_data(e),
        };
        self.reply_local(reply);
    }

    /// ftpgate's own `227`/`229` announcing `port` on the client side.
    pub(super) fn passive_text(&self, ext: bool, port: u16) -> Response {
        match (ext, self.p.client_side.announce) {
            (true, _) => Response::entering_extended_passive(port),
            (false, IpAddr::V4(ip)) => Response::entering_passive(SocketAddrV4::new(ip, port)),
            (false, IpAddr::V6(_)) => Response::pasv_needs_ipv4(),
        }
    }

    /// The server answered a `PASV`/`EPSV` ftpgate sent for `then`.
    pub(super) fn on_passive_reply(&mut self, reply: Reply, sent_ext: bool, then: PassiveUse) {
        if sent_ext && reply.code == Some(229) {
            self.modes.server_ext = Some(true);
        }
        match then {
            PassiveUse::Client { ext } => self.client_passive_reply(reply, ext, sent_ext),
            PassiveUse::Convert { target } => {
                self.passive_for_active_client(reply, sent_ext, target)
            }
        }
    }

    /// Where the server's `227`/`229` says to connect: always the server's control address
    /// (rule 5), with its port; and where in `reply.raw` the address text stands.
    /// `Err(Some(refusal))` when the answer cannot be used; `Err(None)` when it is no
    /// passive answer at all (an error), which passes as the server sent it.
    pub(super) fn server_data_addr(
        &mut self,
        reply: &Reply,
        sent_ext: bool,
    ) -> Result<(SocketAddr, Range<usize>), Option<Response>> {
        let expected = if sent_ext { 229 } else { 227 };
        let server = self.server.filter(|_| reply.code == Some(expected));
        let Some(server) = server else {
            return Err(None);
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
                return Err(Some(Response::unreadable_passive_reply()));
            }
        };
        if let Some(ip) = named_ip {
            if IpAddr::V4(ip) != server.ip().to_canonical() {
                self.refuse(Rule::PassiveAddressIgnored);
                if !self.modes.mismatch_logged {
                    self.modes.mismatch_logged = true;
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
            return Err(Some(Response::privileged_passive_port()));
        }
        let offset = reply.last_text_offset();
        Ok((
            SocketAddr::new(server.ip(), server_port),
            offset + span.start..offset + span.end,
        ))
    }

    /// The server's answer to the client's own `PASV`/`EPSV`: a channel that accepts the
    /// client and dials the server; the reply waits in the queue for its port.
    fn client_passive_reply(&mut self, reply: Reply, client_ext: bool, sent_ext: bool) {
        let (dial, span) = match self.server_data_addr(&reply, sent_ext) {
            Ok(found) => found,
            Err(Some(refusal)) => {
                self.enqueue(Some(refusal.code()), refusal.to_bytes(), None);
                return;
            }
            Err(None) => {
                self.enqueue(reply.code, reply.raw, None);
                return;
            }
        };
        let plan = DataPlan {
            client: self.client_listener(),
            server: Endpoint::Dial {
                to: dial,
                from: self.server_dial_source(),
            },
            client_tls: self.client_data_protected(),
            server_tls: self.secures_upstream(),
        };
        let template = ReplyTemplate {
            raw: reply.raw,
            span,
            client_ext,
            sent_ext,
        };
        match self.open_channel(plan, false, Opening::RewriteReply(template)) {
            Ok(id) => {
                if let Err(overflow) = self.gate.enqueue(Outgoing::awaiting_ports(id)) {
                    self.overflow(overflow);
                }
            }
            Err(e) => {
                let refusal = Response::cannot_open_data(e);
                self.enqueue(Some(refusal.code()), refusal.to_bytes(), None);
            }
        }
    }

    /// The channel of [`Session::client_passive_reply`] is open: its reply gets the port,
    /// keeping the server's own text where the reply keeps its form.
    pub(super) fn passive_reply_opened(
        &mut self,
        id: ChannelId,
        t: ReplyTemplate,
        result: Result<Ports, DataOpenError>,
    ) {
        let (code, bytes) = match result {
            Ok(ports) => {
                let port = ports.client.unwrap_or_default();
                self.actions
                    .push(Action::Rewrote(Rewrite::passive_reply(t.client_ext)));
                match (t.client_ext == t.sent_ext, self.p.client_side.announce) {
                    (true, _) if t.sent_ext => {
                        (229, splice(&t.raw, t.span, port.to_string().as_bytes()))
                    }
                    (true, IpAddr::V4(ip)) => (
                        227,
                        splice(
                            &t.raw,
                            t.span,
                            encode_port_arg(SocketAddrV4::new(ip, port)).as_bytes(),
                        ),
                    ),
                    _ => {
                        let own = self.passive_text(t.client_ext, port);
                        (own.code(), own.to_bytes())
                    }
                }
            }
            Err(e) => {
                let refusal = Response::cannot_open_data(e);
                (refusal.code(), refusal.to_bytes())
            }
        };
        self.gate.fill(id, code, bytes);
    }
}

/// `raw` with `span` replaced by `with`.
fn splice(raw: &[u8], span: Range<usize>, with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + with.len());
    out.extend_from_slice(&raw[..span.start]);
    out.extend_from_slice(with);
    out.extend_from_slice(&raw[span.end..]);
    out
}
