//! The start of a session: the server's greeting (nothing from the client is acted on
//! before it, rule 7), and in the explicit role ftpgate's own greeting, the
//! `USER name@host[:port]` login that names the server, and the replay of `USER name`.

use std::net::SocketAddr;

use crate::ftp::command::{parse_command, parse_proxy_login, Command};
use crate::ftp::line::clean_line;
use crate::ftp::replies::Response;
use crate::ftp::reply::Reply;
use crate::rules::Rule;

use super::gate::Awaiting;
use super::upstream_tls::Then;
use super::{refusal, Action, Phase, Session};

impl Session {
    /// Explicit role, before the upstream is known.
    pub(super) fn on_login_line(&mut self, line: &[u8]) {
        let clean = clean_line(line);
        if clean.contains(&0) {
            self.refuse_nul();
            return;
        }
        let command = parse_command(&clean);
        match command {
            Command::Empty => {}
            Command::Malformed(e) => self.refuse_syntax(e),
            Command::User(_) if self.login_refused_in_clear() => {}
            Command::User(arg) => match parse_proxy_login(arg) {
                Ok(login) if !self.p.allow_server_ports.contains(&login.port) => {
                    refusal!(self, warn, Rule::ServerPort, host = %login.host, port = login.port, "refused explicit-proxy login to a port that is not allowed");
                    let reply = Response::port_not_allowed(login.port, &self.p.allow_server_ports);
                    self.reply_local(reply);
                }
                Ok(login) => {
                    tracing::info!(host = %login.host, port = login.port, "explicit proxy login");
                    self.actions.push(Action::ConnectUpstream {
                        host: login.host.clone(),
                        port: login.port,
                    });
                    self.phase = Phase::ExplicitConnecting {
                        user: login.user,
                        host: login.host,
                    };
                }
                Err(e) => self.reply_local(Response::bad_login(e)),
            },
            Command::Auth(mech) if self.terminates_tls() => self.on_auth(mech),
            Command::Pbsz(_) | Command::Prot(_) | Command::Ccc if self.terminates_tls() => {
                self.on_protection_command(&command)
            }
            Command::Auth(_) => self.reply_local(Response::tls_not_before_login()),
            Command::Quit => self.close_with(Response::goodbye()),
            // FEAT included: a client then asks again after login and learns the real
            // server's features (lftp trusts a pre-login feature list for the session).
            _ => self.reply_local(Response::log_in_first()),
        }
    }

    pub(super) fn on_upstream_connected(&mut self, addr: SocketAddr) {
        self.server = Some(addr);
        self.phase = match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Connecting => Phase::Greeting,
            Phase::ExplicitConnecting { user, host } => Phase::ExplicitGreeting { user, host },
            other => other,
        };
    }

    pub(super) fn on_upstream_failed(&mut self, reason: &str) {
        let target = match &self.phase {
            Phase::ExplicitConnecting { host, .. } => host.clone(),
            _ => "the server".to_owned(),
        };
        tracing::warn!(%target, %reason, "upstream connection failed");
        self.failure = Some(format!("cannot connect to {target}: {reason}"));
        self.close_with(Response::cannot_connect(&target, reason));
    }

    /// The server's greeting, passed to the client (once its connection is secured, with
    /// `tls.upstream`); a refusal ends the session.
    pub(super) fn on_greeting(&mut self, reply: Reply) {
        if reply.code == Some(220) && self.secures_upstream() {
            self.start_upstream_tls(Then::Greet(reply));
            return;
        }
        self.greet_client(reply);
    }

    /// The server's greeting goes to the client.
    pub(super) fn greet_client(&mut self, reply: Reply) {
        let code = reply.code;
        self.enqueue(code, reply.raw, None);
        self.flush();
        match code {
            Some(220) => self.phase = Phase::Relay,
            Some(c) if c >= 200 => {
                tracing::info!(code = c, "server refused the session in its greeting");
                self.failure = Some(format!("the server refused the session ({c})"));
                self.close();
            }
            _ => {}
        }
    }

    /// Explicit role: `USER name` goes to the server, and the lines the client sent
    /// meanwhile follow.
    pub(super) fn replay_user(&mut self, user: &[u8]) {
        let mut line = b"USER ".to_vec();
        line.extend_from_slice(user);
        line.extend_from_slice(b"\r\n");
        self.phase = Phase::Relay;
        self.forward(line, Awaiting::Other);
        self.process_held();
    }

    /// Explicit role: the server the client named greets; `USER name` is replayed and the
    /// lines the client sent meanwhile follow.
    pub(super) fn on_explicit_greeting(&mut self, reply: Reply) {
        let Phase::ExplicitGreeting { user, host } = &self.phase else {
            return;
        };
        match reply.code {
            Some(220) if self.secures_upstream() => {
                let then = Then::ReplayUser { user: user.clone() };
                self.start_upstream_tls(then);
            }
            Some(220) => {
                let user = user.clone();
                self.replay_user(&user);
            }
            Some(c) if c >= 200 => {
                let refused = Response::refused_by_server(
                    host,
                    c,
                    String::from_utf8_lossy(reply.last_text()),
                );
                self.failure = Some(format!("{host} refused the session ({c})"));
                self.close_with(refused);
            }
            _ => {}
        }
    }
}
