//! Active mode: the client's `PORT`/`EPRT`, checked (rule 4: the client's own address, a
//! port of 1024 or above) and rewritten. ftpgate opens a listener on its server side that
//! admits only the server, tells the server that listener with its own `PORT`/`EPRT`, and
//! dials the client once the server connected. Under `server_mode: passive` ftpgate
//! answers `PORT`/`EPRT` itself ([`super::conversion`] asks the server for `PASV` later).

use std::net::{IpAddr, SocketAddr};

use crate::config::{ClientSource, ServerMode, ServerSource};
use crate::ftp::hostport::{encode_eprt_arg, encode_port_arg};
use crate::ftp::replies::Response;
use crate::ftp::reply::Reply;
use crate::plan::{ChannelId, DataOpenError, DataPlan, DialSource, Endpoint, Ports};
use crate::rules::Rule;

use super::gate::Awaiting;
use super::{refusal, Action, Opening, Rewrite, Session};

impl Session {
    /// `PORT`/`EPRT`: the client will accept a data connection at `addr`.
    pub(super) fn on_port(&mut self, addr: SocketAddr, ext: bool) {
        let verb = if ext { "EPRT" } else { "PORT" };
        let client_ip = self.p.client.ip().to_canonical();
        if addr.ip().to_canonical() != client_ip {
            refusal!(self, warn, Rule::Bounce, verb, %addr, "refused data address of another host");
            self.reply_local(Response::bounce_refused(verb, client_ip));
            return;
        }
        if addr.port() < 1024 && !self.p.allow_privileged_ports {
            refusal!(self, warn, Rule::PrivilegedPort, verb, %addr, "refused privileged data port");
            self.reply_local(Response::privileged_port_refused(verb));
            return;
        }
        let Some(server) = self.server else { return };
        self.release_prepared();
        if self.p.server_mode == ServerMode::Passive {
            self.modes.port_target = Some(addr);
            tracing::debug!(client = %addr, "active client, passive toward the server");
            self.reply_local(Response::port_taken_for_later(verb));
            return;
        }
        let plan = DataPlan {
            client: Endpoint::Dial {
                to: addr,
                from: self.client_dial_source(server),
            },
            server: self.server_listener(server),
            client_tls: self.client_data_protected(),
            server_tls: self.secures_upstream(),
        };
        tracing::debug!(client = %addr, "active data channel");
        if let Err(e) = self.open_channel(plan, true, Opening::SendActive { ext }) {
            self.reply_local(Response::cannot_open_data(e));
        }
    }

    /// The channel of [`Session::on_port`] is open: the server is told its listener.
    pub(super) fn active_channel_opened(
        &mut self,
        id: ChannelId,
        ext: bool,
        result: Result<Ports, DataOpenError>,
    ) {
        match result {
            Ok(ports) => self.send_active(id, ports.server.unwrap_or_default(), ext, false),
            Err(e) => self.reply_local(Response::cannot_open_data(e)),
        }
    }

    /// A listener on the server side that admits only the server: on ftpgate's
    /// server-side address, or (`server_source: client`) a transparent one on the
    /// client's own, which is what `PORT`/`EPRT` then name.
    pub(super) fn server_listener(&self, server: SocketAddr) -> Endpoint {
        Endpoint::Accept {
            on: self.server_side_address(),
            peer: server.ip(),
        }
    }

    /// The address ftpgate's connections toward the server come from.
    pub(super) fn server_side_address(&self) -> IpAddr {
        match self.p.server_source {
            ServerSource::Gateway => self.p.server_side.address,
            ServerSource::Client => self.p.client.ip(),
        }
    }

    /// Where connections toward the server start from.
    pub(super) fn server_dial_source(&self) -> DialSource {
        match self.p.server_source {
            ServerSource::Gateway => DialSource::Bind(self.p.server_side.address),
            ServerSource::Client => DialSource::Transparent(self.p.client.ip()),
        }
    }

    /// The address `PORT`/`EPRT` name toward the server.
    pub(super) fn server_announce(&self) -> IpAddr {
        match self.p.server_source {
            ServerSource::Gateway => self.p.server_side.announce,
            ServerSource::Client => self.p.client.ip(),
        }
    }

    /// Where connections toward the client start from.
    pub(super) fn client_dial_source(&self, server: SocketAddr) -> DialSource {
        match self.p.client_source {
            ClientSource::Gateway => DialSource::Bind(self.p.client_side.address),
            ClientSource::Server => DialSource::Transparent(server.ip()),
        }
    }

    /// Sends `PORT` or `EPRT` naming ftpgate's server-side listener `port`. `EPRT` when the
    /// client asked for it (`ext`) or `PORT` cannot carry the address; `PORT` once the
    /// server has shown it does not know `EPRT`. An `EPRT` whose fate is unknown holds
    /// client lines, so that a `PORT` retry keeps the order of commands.
    pub(super) fn send_active(&mut self, id: ChannelId, port: u16, ext: bool, converted: bool) {
        let announce = SocketAddr::new(self.server_announce(), port);
        let sent_ext = match announce {
            SocketAddr::V4(_) => ext && self.modes.server_ext != Some(false),
            SocketAddr::V6(_) => true,
        };
        let command = match announce {
            SocketAddr::V4(v4) if !sent_ext => format!("PORT {}\r\n", encode_port_arg(v4)),
            _ => format!("EPRT {}\r\n", encode_eprt_arg(announce)),
        };
        self.actions.push(Action::Rewrote(if sent_ext {
            Rewrite::Eprt
        } else {
            Rewrite::Port
        }));
        if sent_ext && self.may_fall_back() && announce.is_ipv4() {
            self.gate.hold();
        }
        self.forward(
            command.into_bytes(),
            Awaiting::Active {
                id,
                port,
                sent_ext,
                converted,
            },
        );
    }

    /// The server answered a `PORT`/`EPRT` ftpgate sent (`awaiting` is
    /// [`Awaiting::Active`]). A refusal releases the channel; for a conversion the held
    /// transfer command goes now, or gets ftpgate's `425`.
    pub(super) fn on_active_reply(&mut self, reply: Reply, awaiting: Awaiting) {
        let Awaiting::Active {
            id,
            sent_ext,
            converted,
            ..
        } = awaiting
        else {
            return;
        };
        let ok = matches!(reply.code, Some(200..=299));
        if sent_ext && ok {
            self.modes.server_ext = Some(true);
        }
        if !ok && self.channels.forget(id) {
            self.actions.push(Action::CancelChannel(id));
        }
        match (converted, ok) {
            (false, _) => self.enqueue(reply.code, reply.raw, None),
            (true, true) => self.send_held_transfer(),
            (true, false) => {
                let why = format!(
                    "the server refused PORT: {}",
                    String::from_utf8_lossy(reply.last_text()).trim_end()
                );
                self.fail_held_transfer(&why);
            }
        }
    }
}
