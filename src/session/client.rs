//! Client bytes: framed into whole lines, each parsed once into a typed command and
//! dispatched. Lines ftpgate cannot vouch for are answered here and never forwarded;
//! what is forwarded is the line as ftpgate parsed it.

use crate::config::TlsPolicy;
use crate::ftp::command::{parse_command, AlgsArg, Command, EpsvArg, LineSyntax};
use crate::ftp::line::{clean_line, synch, wire_line, Synch};
use crate::ftp::replies::Response;
use crate::rules::Rule;

use super::gate::{Awaiting, MAX_HELD_LINES, MAX_LOGIN_LINES};
use super::{refusal, Action, Phase, Session};

impl Session {
    pub(super) fn on_client_data(&mut self, bytes: &[u8]) {
        match self.phase {
            Phase::Passthrough => {
                self.actions.push(Action::ToServer(bytes.to_vec()));
                return;
            }
            Phase::Connecting
            | Phase::Greeting
            | Phase::UpstreamTls {
                then: super::upstream_tls::Then::Greet(_),
                ..
            } => {
                // Rule 7: a peer that talks before it was greeted is not an FTP client.
                refusal!(final self, warn, Rule::EarlyData, bytes = bytes.len(), "client sent data before the greeting; closing");
                self.close_with(Response::early_data());
                return;
            }
            _ => {}
        }
        self.client_lines.push(bytes);
        loop {
            let line = match self.client_lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    refusal!(final self, warn, Rule::LineTooLong, "client {e}; closing");
                    self.send_client(Response::line_too_long().to_bytes());
                    self.close_with(Response::closing(e));
                    return;
                }
            };
            // Only a complete command counts as activity (rule idle_timeout).
            self.clock.idle_since = self.clock.now;
            match self.phase {
                Phase::ExplicitLogin => self.on_login_line(&line),
                Phase::ExplicitConnecting { .. }
                | Phase::ExplicitGreeting { .. }
                | Phase::UpstreamTls { .. } => {
                    if let Err(overflow) = self.gate.hold_line(line, MAX_LOGIN_LINES) {
                        self.overflow(overflow);
                    }
                }
                Phase::Relay => self.on_command_line(line),
                // Client lines cannot switch phases to these mid-loop.
                Phase::Passthrough | Phase::Connecting | Phase::Greeting | Phase::Closed => {}
            }
            if self.is_closed() {
                return;
            }
        }
        // An unfinished line must end within line_timeout; only its start counts.
        self.clock.partial_since = match (self.client_lines.has_partial(), self.clock.partial_since)
        {
            (true, Some(since)) => Some(since),
            (true, None) => Some(self.clock.now),
            (false, _) => None,
        };
    }

    pub(super) fn refuse_nul(&mut self) {
        refusal!(final self, warn, Rule::NulInLine, "client line contains NUL; closing");
        self.send_client(Response::nul_in_line().to_bytes());
        self.close_with(Response::closing("NUL in command line"));
    }

    /// A line the server might read differently: answered here, never forwarded.
    pub(super) fn refuse_syntax(&mut self, e: LineSyntax) {
        refusal!(self, info, Rule::LineSyntax, error = %e, "refused a malformed command line");
        self.reply_local(Response::syntax_error(e));
    }

    /// One client line in the relay phase.
    pub(super) fn on_command_line(&mut self, line: Vec<u8>) {
        if self.server_gone {
            // Nobody to send it to; the session closes once its last replies are out.
            return;
        }
        if self.gate.holding() {
            if let Err(overflow) = self.gate.hold_line(line, MAX_HELD_LINES) {
                self.overflow(overflow);
            }
            return;
        }
        let clean = clean_line(&line);
        if clean.contains(&0) {
            self.refuse_nul();
            return;
        }
        // What the server gets: the line as ftpgate parsed it, behind the Synch the client
        // sent, if it sent one.
        let wire = wire_line(&line).into_owned();
        let synch = synch(&line).map(|(s, _)| s);
        self.urgent = synch == Some(Synch::Urgent);
        let command = parse_command(&clean);
        match command {
            Command::Empty => tracing::debug!("ignored an empty command line"),
            Command::Malformed(_)
            | Command::Unsupported(_)
            | Command::BadArgument { .. }
            | Command::BadAddress { .. } => self.refuse_command(command),
            Command::Port(_) | Command::Eprt(_) | Command::Pasv | Command::Epsv(_)
                if self.data_refused_in_clear() => {}
            Command::Port(_)
            | Command::Eprt(_)
            | Command::Pasv
            | Command::Epsv(_)
            | Command::Algs(_) => self.on_data_command(command),
            Command::Auth(_) if self.p.tls.policy == TlsPolicy::Passthrough => {
                self.forward(wire, Awaiting::Auth)
            }
            Command::Auth(mech) if self.terminates_tls() => self.on_auth(mech),
            Command::Pbsz(_) | Command::Prot(_) | Command::Ccc if self.terminates_tls() => {
                self.on_protection_command(&command)
            }
            Command::Auth(mech) => {
                refusal!(self, info, Rule::TlsRefused, mechanism = %String::from_utf8_lossy(mech), "refused AUTH");
                self.reply_local(Response::tls_refused());
            }
            Command::Rein | Command::Abor => {
                // An announced data connection that never came is not coming now.
                self.release_prepared();
                self.modes.port_target = None;
                // A Synch sent in band stays in front of it as sent: servers look for it.
                let sent = if synch == Some(Synch::InBand) {
                    line.clone()
                } else {
                    wire
                };
                self.forward(sent, Awaiting::Other);
            }
            Command::Transfer { .. } if self.data_refused_in_clear() => {}
            Command::Transfer { verb, arg } => self.on_transfer_command(wire, Some((verb, arg))),
            Command::Rest => self.on_transfer_command(wire, None),
            Command::User(_) if self.login_refused_in_clear() => {}
            Command::User(_)
            | Command::Pbsz(_)
            | Command::Prot(_)
            | Command::Ccc
            | Command::Other => self.forward(wire, Awaiting::Other),
            Command::Quit => self.forward(wire, Awaiting::Quit),
            Command::Feat => self.forward(wire, Awaiting::Feat),
        }
        // Only the command of this line goes behind its Synch.
        self.urgent = false;
    }

    /// A line ftpgate answers with a refusal, never forwarding it.
    fn refuse_command(&mut self, command: Command<'_>) {
        match command {
            Command::Malformed(e) => self.refuse_syntax(e),
            Command::Unsupported(verb) => {
                refusal!(
                    self,
                    info,
                    Rule::UnsupportedDataCommand,
                    verb,
                    "refused a data command ftpgate does not implement"
                );
                self.reply_local(Response::not_supported(verb));
            }
            Command::BadArgument { verb: "EPSV" } => self.epsv_family_unsupported(),
            Command::BadArgument { verb: "PASV" } if self.modes.epsv_all => {
                self.reply_local(Response::only_epsv_after_epsv_all())
            }
            Command::BadArgument { verb } => {
                refusal!(
                    self,
                    info,
                    Rule::LineSyntax,
                    verb,
                    "refused an argument the gateway does not take"
                );
                self.reply_local(Response::unexpected_argument(verb));
            }
            Command::BadAddress { .. } if self.modes.epsv_all => {
                self.reply_local(Response::only_epsv_after_epsv_all())
            }
            Command::BadAddress { verb, error } => {
                refusal!(self, info, Rule::MalformedAddress, verb, %error, "refused malformed address");
                self.reply_local(Response::bad_address(verb, error));
            }
            _ => {}
        }
    }

    /// The commands that set up data connections (and `ALGS`, which governs them).
    fn on_data_command(&mut self, command: Command<'_>) {
        if self.modes.epsv_all
            && matches!(command, Command::Port(_) | Command::Eprt(_) | Command::Pasv)
        {
            // RFC 2428 §4: after EPSV ALL only EPSV sets up data connections.
            self.reply_local(Response::only_epsv_after_epsv_all());
            return;
        }
        match command {
            Command::Port(addr) => self.on_port(addr.into(), false),
            Command::Eprt(addr) => self.on_port(addr, true),
            Command::Pasv => self.on_pasv(false),
            Command::Epsv(EpsvArg::All) => {
                // Answered here, not forwarded: ftpgate owns the data connections and may
                // still need PASV or PORT toward the server (RFC 959-only servers, mode
                // conversion).
                self.modes.epsv_all = true;
                self.reply_local(Response::epsv_all_accepted());
            }
            Command::Epsv(arg) => {
                let announce = self.p.client_side.announce;
                let family_ok = match arg {
                    EpsvArg::V4 => announce.is_ipv4(),
                    EpsvArg::V6 => announce.is_ipv6(),
                    _ => true,
                };
                if family_ok {
                    self.on_pasv(true);
                } else {
                    self.epsv_family_unsupported();
                }
            }
            Command::Algs(arg) => self.on_algs(arg),
            _ => {}
        }
    }

    /// `EPSV` for a protocol ftpgate's client side does not announce (RFC 2428 §3).
    fn epsv_family_unsupported(&mut self) {
        let ours = if self.p.client_side.announce.is_ipv4() {
            1
        } else {
            2
        };
        self.reply_local(Response::protocol_not_supported(ours));
    }

    /// RFC 6384 `ALGS`: the client asks about (or switches) the IPv6/IPv4 translation.
    fn on_algs(&mut self, arg: AlgsArg) {
        let reply = match arg {
            AlgsArg::Status64 => Response::translation_status(self.modes.translate),
            AlgsArg::Enable64 | AlgsArg::Disable64 => {
                self.modes.translate = arg == AlgsArg::Enable64;
                Response::translation_switched(self.modes.translate)
            }
            AlgsArg::Unknown => Response::algs_usage(),
        };
        self.reply_local(reply);
    }

    /// Sends a command to the server; its reply is awaited in order. A client that
    /// pipelines more than `max_pipelined` commands ends its session (a server that never
    /// answers would otherwise let the queue grow without bound).
    pub(super) fn forward(&mut self, line: Vec<u8>, awaiting: Awaiting) {
        if self.is_closed() {
            return;
        }
        match self.gate.expect(awaiting) {
            Ok(()) if std::mem::take(&mut self.urgent) => {
                self.actions.push(Action::ToServerSynch(line))
            }
            Ok(()) => self.actions.push(Action::ToServer(line)),
            Err(overflow) => self.overflow(overflow),
        }
    }

    /// Processes held client lines until one holds again.
    pub(super) fn process_held(&mut self) {
        while !self.gate.holding() && !self.is_closed() {
            let Some(line) = self.gate.next_held() else {
                break;
            };
            self.on_command_line(line);
        }
    }
}
