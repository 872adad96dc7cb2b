//! Session state machine tests: every decision is checked through the actions it returns.

use super::*;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::{ClientSource, ServerMode, TlsPolicy};
use crate::fuzzing::SERVER;
use crate::plan::{ChannelEnd, DataStats, DialSource, Endpoint, TransferRecord};
use crate::rules::Rule;

/// The shell's part: answers every channel opening at once, records plans and stops.
#[derive(Default)]
struct MockData {
    opened: Vec<(ChannelId, DataPlan)>,
    cancelled: Vec<ChannelId>,
    fail: Option<DataOpenError>,
    /// Channels run on the kernel path.
    kernel: bool,
}

impl MockData {
    /// Client-side listeners get 50000, 50001, …; server-side ones 60000, 60001, ….
    fn open(&mut self, id: ChannelId, plan: &DataPlan) -> Result<Ports, DataOpenError> {
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        self.opened.push((id, plan.clone()));
        let n = self.opened.len() as u16 - 1;
        Ok(Ports {
            client: plan.client.accepts().then_some(50000 + n),
            server: plan.server.accepts().then_some(60000 + n),
            kernel: self.kernel,
        })
    }
}

fn params(upstream: UpstreamKind) -> SessionParams {
    crate::fuzzing::lab_params(upstream)
}

struct Harness {
    s: Session,
    data: MockData,
    /// The session's clock: moved only by [`Harness::advance`].
    now: Instant,
    /// Rules that fired, in order (taken out of the returned actions).
    refused: Vec<Rule>,
    /// Rewrites reported, in order (taken out of the returned actions).
    rewrites: Vec<Rewrite>,
    /// Transfer records, in order (taken out of the returned channel ends).
    transfers: Vec<TransferRecord>,
    /// Channel ends, in order (taken out of the returned actions).
    ended: Vec<ChannelEnd>,
}

impl Harness {
    /// A publish-role session past the greeting.
    fn relaying() -> Self {
        let mut h = Self::new(params(UpstreamKind::Fixed));
        assert!(h.s.start().is_empty());
        assert!(h
            .ev(Event::UpstreamConnected(SERVER.parse().unwrap()))
            .is_empty());
        assert_eq!(h.server(b"220 hello\r\n"), vec![to_client("220 hello\r\n")]);
        h
    }

    fn new(p: SessionParams) -> Self {
        let now = Instant::now();
        Self {
            s: Session::new(p, now),
            data: MockData::default(),
            now,
            refused: Vec::new(),
            rewrites: Vec::new(),
            transfers: Vec::new(),
            ended: Vec::new(),
        }
    }

    /// Feeds an event (and the answers to the channels it opens); returns the actions a
    /// test looks at: the writes and closes. Refusals, rewrites, channel ends, openings
    /// and stops are taken out into the harness's lists.
    fn ev(&mut self, e: Event) -> Vec<Action> {
        let mut out = Vec::new();
        let mut next = Some(e);
        while let Some(event) = next.take() {
            let actions = self.s.handle(self.now, event);
            for a in &actions {
                match a {
                    Action::OpenChannel { id, plan } => {
                        let result = self.data.open(*id, plan);
                        next = Some(Event::ChannelOpened { id: *id, result });
                    }
                    Action::CancelChannel(id) => self.data.cancelled.push(*id),
                    _ => {}
                }
            }
            out.extend(actions);
        }
        out.retain(|a| match a {
            Action::Refused(rule) => {
                self.refused.push(*rule);
                false
            }
            Action::Rewrote(kind) => {
                self.rewrites.push(*kind);
                false
            }
            Action::ChannelEnded(end) => {
                self.transfers.extend(end.transfer.clone());
                self.ended.push(end.clone());
                false
            }
            Action::OpenChannel { .. } | Action::CancelChannel(_) => false,
            _ => true,
        });
        out
    }
    fn client(&mut self, b: &[u8]) -> Vec<Action> {
        self.ev(Event::ClientData(b.to_vec()))
    }
    fn server(&mut self, b: &[u8]) -> Vec<Action> {
        self.ev(Event::ServerData(b.to_vec()))
    }
    fn data_ev(&mut self, id: ChannelId, e: DataEvent) -> Vec<Action> {
        self.ev(Event::Data(id, e))
    }
    /// Moves the clock on, and delivers the timeout if one came due.
    fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        match self.s.poll_timeout() {
            Some(t) if t <= self.now => self.ev(Event::Timeout),
            _ => Vec::new(),
        }
    }
}

/// Where a plain-mode channel connects to (the server in passive mode, the client in active).
fn dialled(plan: &DataPlan) -> SocketAddr {
    match (&plan.client, &plan.server) {
        (Endpoint::Dial { to, .. }, _) | (_, Endpoint::Dial { to, .. }) => *to,
        _ => panic!("nothing dialled: {plan:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn to_client(s: &str) -> Action {
    Action::ToClient(s.as_bytes().to_vec())
}
fn to_server(s: &str) -> Action {
    Action::ToServer(s.as_bytes().to_vec())
}

#[test]
fn passive_reply_is_rewritten_and_dials_the_server() {
    let mut h = Harness::relaying();
    assert_eq!(h.client(b"PASV\r\n"), vec![to_server("PASV\r\n")]);
    let out = h.server(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n");
    assert_eq!(
        out,
        vec![to_client(
            "227 Entering Passive Mode (198,51,100,1,195,80).\r\n"
        )]
    );
    let (_, plan) = &h.data.opened[0];
    assert_eq!(
        plan,
        &DataPlan {
            client: Endpoint::Accept {
                on: ip("10.0.0.1"),
                peer: ip("10.0.0.5"),
            },
            server: Endpoint::Dial {
                to: "192.0.2.10:5001".parse().unwrap(),
                from: DialSource::Bind(ip("203.0.113.1")),
            },
            client_tls: false,
            server_tls: false,
        }
    );
}

#[test]
fn passive_target_is_always_the_servers_control_address() {
    // Rule 5: a 227 naming another host (internal address, or a victim) is not dialled.
    let mut h = Harness::relaying();
    h.client(b"PASV\r\n");
    h.server(b"227 Entering Passive Mode (10,9,9,9,19,137)\r\n");
    assert_eq!(
        dialled(&h.data.opened[0].1),
        "192.0.2.10:5001".parse().unwrap()
    );
    assert_eq!(h.refused, vec![Rule::PassiveAddressIgnored]);
}

#[test]
fn epsv_reply_keeps_the_servers_text() {
    let mut h = Harness::relaying();
    assert_eq!(h.client(b"EPSV\r\n"), vec![to_server("EPSV\r\n")]);
    let out = h.server(b"229 Entering Extended Passive Mode (|||6446|)\r\n");
    assert_eq!(
        out,
        vec![to_client(
            "229 Entering Extended Passive Mode (|||50000|)\r\n"
        )]
    );
    assert_eq!(
        dialled(&h.data.opened[0].1),
        "192.0.2.10:6446".parse().unwrap()
    );
}

#[test]
fn port_is_rewritten_toward_the_server() {
    let mut h = Harness::relaying();
    let out = h.client(b"PORT 10,0,0,5,4,1\r\n");
    assert_eq!(out, vec![to_server("PORT 203,0,113,2,234,96\r\n")]);
    let (_, plan) = &h.data.opened[0];
    assert_eq!(
        plan,
        &DataPlan {
            client: Endpoint::Dial {
                to: "10.0.0.5:1025".parse().unwrap(),
                from: DialSource::Bind(ip("10.0.0.1")),
            },
            server: Endpoint::Accept {
                on: ip("203.0.113.1"),
                peer: ip("192.0.2.10"),
            },
            client_tls: false,
            server_tls: false,
        }
    );
    assert_eq!(h.server(b"200 ok\r\n"), vec![to_client("200 ok\r\n")]);

    let out = h.client(b"EPRT |1|10.0.0.5|2000|\r\n");
    assert_eq!(out, vec![to_server("EPRT |1|203.0.113.2|60001|\r\n")]);
    // The unused channel of the first PORT was released.
    assert_eq!(h.data.cancelled, vec![1]);
}

#[test]
fn transparent_client_source_binds_the_servers_address() {
    let mut p = params(UpstreamKind::Fixed);
    p.client_source = ClientSource::Server;
    let mut h = Harness::new(p);
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    h.server(b"220 hi\r\n");
    h.client(b"PORT 10,0,0,5,4,1\r\n");
    assert!(matches!(
        h.data.opened[0].1.client,
        Endpoint::Dial { from: DialSource::Transparent(from), .. } if from == ip("192.0.2.10")
    ));
}

#[test]
fn bounce_and_privileged_ports_are_refused() {
    // Rule 4: the data address must be the client's own, and not privileged.
    let mut h = Harness::relaying();
    for line in [
        &b"PORT 192,0,2,99,4,1\r\n"[..],
        b"EPRT |1|192.0.2.99|2000|\r\n",
        b"PORT 10,0,0,5,0,21\r\n",
        b"EPRT |1|10.0.0.5|1023|\r\n",
    ] {
        let out = h.client(line);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            matches!(&out[0], Action::ToClient(b) if b.starts_with(b"504 ")),
            "{out:?}"
        );
    }
    assert!(h.data.opened.is_empty());
    assert_eq!(
        h.refused,
        vec![
            Rule::Bounce,
            Rule::Bounce,
            Rule::PrivilegedPort,
            Rule::PrivilegedPort
        ]
    );
}

#[test]
fn malformed_addresses_are_refused() {
    let mut h = Harness::relaying();
    for line in [
        &b"PORT 10,0,0,256,4,1\r\n"[..],
        b"PORT 10,0,0,5,4\r\n",
        b"PORT 10,0,0,5,4,1,1\r\n",
        b"PORT 10,0,0,5,-4,1\r\n",
        b"PORT 10,0,0,5,0,0\r\n",
        b"EPRT |1|10.0.0.5|99999|\r\n",
    ] {
        let out = h.client(line);
        assert!(
            matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"501 ")),
            "{out:?}"
        );
    }
    assert!(h.data.opened.is_empty());
    assert_eq!(h.refused, vec![Rule::MalformedAddress; 6]);
}

#[test]
fn unsolicited_227_opens_nothing() {
    // Rule 3: only the answer to the outstanding PASV counts.
    let mut h = Harness::relaying();
    h.client(b"NOOP\r\n");
    let echo = b"227 Entering Passive Mode (10,0,0,5,0,22)\r\n";
    assert_eq!(h.server(echo), vec![Action::ToClient(echo.to_vec())]);
    // Inside a multi-line reply to PASV, a 227-looking line is text; the final line is an error.
    h.client(b"PASV\r\n");
    let multi = b"500-no\r\n227 Entering Passive Mode (10,0,0,5,0,22)\r\n500 end\r\n";
    assert_eq!(h.server(multi), vec![Action::ToClient(multi.to_vec())]);
    // A 227 as the error text of another command.
    h.client(b"RETR x\r\n");
    let err = b"550 227 Entering Passive Mode (1,2,3,4,5,6)\r\n";
    assert_eq!(h.server(err), vec![Action::ToClient(err.to_vec())]);
    assert!(h.data.opened.is_empty());
    // Only the reply whose own code is 227 is counted; the others are plain text.
    assert_eq!(h.refused, vec![Rule::UnsolicitedPassiveReply]);
}

#[test]
fn bytes_before_the_greeting_are_not_commands() {
    // Rule 7: an HTTP request carrying a PORT line, sent before the server's 220.
    let mut h = Harness::new(params(UpstreamKind::Fixed));
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    let out = h.client(b"POST / HTTP/1.1\r\n\r\nPORT 10,0,0,5,0,22\r\n");
    assert!(
        out.iter().all(|a| !matches!(a, Action::ToServer(_))),
        "{out:?}"
    );
    assert_eq!(out.last(), Some(&Action::Close));
    assert!(h.s.is_closed());
    assert!(h.server(b"220 late\r\n").is_empty());
    assert_eq!(h.refused, vec![Rule::EarlyData]);
}

#[test]
fn long_lines_and_nul_end_the_session() {
    let mut h = Harness::relaying();
    let out = h.client(&[b'A'; 100]);
    assert_eq!(out.last(), Some(&Action::Close));
    assert!(matches!(&out[0], Action::ToClient(b) if b.starts_with(b"500 ")));
    assert_eq!(h.refused, vec![Rule::LineTooLong]);
    let mut h = Harness::relaying();
    let out = h.client(b"RETR a\0b\r\n");
    assert_eq!(out.last(), Some(&Action::Close));
    assert!(out.iter().all(|a| !matches!(a, Action::ToServer(_))));
    assert_eq!(h.refused, vec![Rule::NulInLine]);
}

#[test]
fn active_150_waits_for_the_client_connection_and_226_for_the_data() {
    let mut h = Harness::relaying();
    h.client(b"PORT 10,0,0,5,4,1\r\n");
    h.server(b"200 PORT ok\r\n");
    assert_eq!(h.client(b"LIST\r\n"), vec![to_server("LIST\r\n")]);
    // The server announces the transfer before ftpgate reached the client.
    assert!(h.server(b"150 Here it comes\r\n226 Done\r\n").is_empty());
    assert_eq!(
        h.data_ev(1, DataEvent::Established),
        vec![to_client("150 Here it comes\r\n")]
    );
    assert_eq!(
        h.data_ev(1, DataEvent::ServerToClientDone),
        vec![to_client("226 Done\r\n")]
    );
    let stats = DataStats {
        to_server: 0,
        to_client: 4321,
        seconds: 0.25,
        counted: true,
    };
    assert!(h.data_ev(1, DataEvent::Finished(stats)).is_empty());
    assert!(!h.s.has_data_channels());
}

#[test]
fn on_the_kernel_path_150_and_226_pass_at_once_and_the_transfer_still_waits_for_its_data() {
    let mut h = Harness::relaying();
    h.data.kernel = true;
    h.client(b"PORT 10,0,0,5,4,1\r\n");
    h.server(b"200 PORT ok\r\n");
    h.client(b"LIST\r\n");
    // The server's connect() returned only once the client accepted: nothing to wait for.
    assert_eq!(
        h.server(b"150 Here it comes\r\n226 Done\r\n"),
        vec![
            to_client("150 Here it comes\r\n"),
            to_client("226 Done\r\n")
        ]
    );
    // The channel is over, and the transfer recorded, only when the kernel's flow ended.
    assert!(h.s.has_data_channels());
    assert!(h.transfers.is_empty());
    let stats = DataStats {
        to_server: 0,
        to_client: 4321,
        seconds: 0.25,
        counted: true,
    };
    h.data_ev(1, DataEvent::Established);
    h.data_ev(1, DataEvent::Finished(stats));
    assert!(!h.s.has_data_channels());
    assert_eq!(h.transfers[0].stats, Some(stats));
}

#[test]
fn a_kernel_transfer_answered_226_still_reports_after_the_client_left() {
    let mut h = Harness::relaying();
    h.data.kernel = true;
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,137\r\n");
    h.client(b"RETR f\r\n");
    h.data_ev(1, DataEvent::Established);
    h.server(b"150 ok\r\n226 done\r\n");
    // The client read its 226 and left before the kernel reported the flow's end.
    h.ev(Event::ClientClosed);
    assert!(h.transfers.is_empty());
    let stats = DataStats {
        to_server: 0,
        to_client: 100,
        seconds: 0.01,
        counted: true,
    };
    h.data_ev(1, DataEvent::Finished(stats));
    assert_eq!(h.transfers.len(), 1);
    assert_eq!(h.transfers[0].stats, Some(stats));
}

#[test]
fn a_failed_active_transfer_releases_held_replies() {
    let mut h = Harness::relaying();
    h.client(b"PORT 10,0,0,5,4,1\r\n");
    h.server(b"200 PORT ok\r\n");
    h.client(b"RETR f\r\n");
    assert!(h.server(b"150 Opening\r\n").is_empty());
    let out = h.server(b"425 Can't open data connection\r\n");
    assert_eq!(
        out,
        vec![
            to_client("150 Opening\r\n"),
            to_client("425 Can't open data connection\r\n")
        ]
    );
    assert_eq!(h.data.cancelled, vec![1]);
}

#[test]
fn passive_226_waits_for_the_relay() {
    let mut h = Harness::relaying();
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,137\r\n");
    h.client(b"RETR f\r\n");
    h.data_ev(1, DataEvent::Established);
    assert_eq!(h.server(b"150 ok\r\n"), vec![to_client("150 ok\r\n")]);
    assert!(h.server(b"226 ok\r\n").is_empty());
    assert_eq!(
        h.data_ev(1, DataEvent::ServerToClientDone),
        vec![to_client("226 ok\r\n")]
    );
}

#[test]
fn local_replies_keep_their_place_among_pipelined_commands() {
    let mut h = Harness::relaying();
    let out = h.client(b"NOOP\r\nPORT 1,2,3,4,5,6\r\nSYST\r\n");
    assert_eq!(out, vec![to_server("NOOP\r\n"), to_server("SYST\r\n")]);
    let out = h.server(b"200 noop\r\n");
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], to_client("200 noop\r\n"));
    assert!(matches!(&out[1], Action::ToClient(b) if b.starts_with(b"504 ")));
    assert_eq!(h.server(b"215 UNIX\r\n"), vec![to_client("215 UNIX\r\n")]);
}

#[test]
fn port_exhaustion_gives_425() {
    let mut h = Harness::relaying();
    h.data.fail = Some(DataOpenError::Exhausted);
    h.client(b"PASV\r\n");
    let out = h.server(b"227 Entering Passive Mode (192,0,2,10,19,137)\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"425 ")),
        "{out:?}"
    );
    let out = h.client(b"PORT 10,0,0,5,4,1\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"425 ")),
        "{out:?}"
    );
    assert_eq!(h.refused, vec![Rule::DataPortsExhausted; 2]);
}

#[test]
fn auth_is_refused_or_passed_through() {
    let mut h = Harness::relaying();
    let out = h.client(b"AUTH TLS\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"534 ")),
        "{out:?}"
    );

    assert_eq!(h.refused, vec![Rule::TlsRefused]);

    let mut p = params(UpstreamKind::Fixed);
    p.tls.policy = TlsPolicy::Passthrough;
    let mut h = Harness::new(p);
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    h.server(b"220 hi\r\n");
    assert_eq!(h.client(b"AUTH TLS\r\n"), vec![to_server("AUTH TLS\r\n")]);
    assert_eq!(h.server(b"234 go\r\n"), vec![to_client("234 go\r\n")]);
    // From now on the bytes are opaque, in both directions.
    let hello = b"\x16\x03\x01\x00\x05PORT 1,2,3,4,5,6\r\n";
    assert_eq!(h.client(hello), vec![Action::ToServer(hello.to_vec())]);
    assert_eq!(
        h.server(b"\x16\x03\x03"),
        vec![Action::ToClient(b"\x16\x03\x03".to_vec())]
    );
    assert!(h.data.opened.is_empty());
}

/// A publish-role session under `tls: terminate` past the greeting.
fn terminating(require: bool) -> Harness {
    let mut p = params(UpstreamKind::Fixed);
    p.tls.policy = TlsPolicy::Terminate;
    p.tls.require = require;
    let mut h = Harness::new(p);
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    h.server(b"220 hi\r\n");
    h
}

#[test]
fn auth_tls_is_answered_and_bytes_behind_it_are_discarded() {
    let mut h = terminating(false);
    // A command pipelined behind AUTH in plain text must never run (STARTTLS injection).
    let out = h.client(b"AUTH TLS\r\nDELE important\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b), Action::StartClientTls] if b.starts_with(b"234 ")),
        "{out:?}"
    );
    assert_eq!(h.refused, vec![Rule::TlsInjection]);
    assert!(h.ev(Event::ClientTls(Ok(()))).is_empty());
    // Inside TLS the session reads the channel as before; DELE was never sent.
    assert_eq!(h.client(b"USER ann\r\n"), vec![to_server("USER ann\r\n")]);
    // A second AUTH is out of sequence; CCC is refused; PBSZ and PROT are answered here.
    assert!(
        h.client(b"AUTH TLS\r\n").is_empty(),
        "its 503 waits for the 331"
    );
    let out = h.server(b"331 pass\r\n");
    assert!(
        matches!(&out[..], [_, Action::ToClient(b)] if b.starts_with(b"503 ")),
        "{out:?}"
    );
    assert!(matches!(&h.client(b"CCC\r\n")[..], [Action::ToClient(b)] if b.starts_with(b"534 ")));
    assert_eq!(h.client(b"PBSZ 0\r\n"), vec![to_client("200 PBSZ=0\r\n")]);
    assert!(
        matches!(&h.client(b"PROT E\r\n")[..], [Action::ToClient(b)] if b.starts_with(b"536 "))
    );
    assert!(
        matches!(&h.client(b"PROT P\r\n")[..], [Action::ToClient(b)] if b.starts_with(b"200 "))
    );
    // Data channels of a PROT P session are TLS toward the client.
    h.client(b"PASV\r\n");
    h.server(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n");
    assert!(
        h.data.opened.last().is_some_and(|(_, p)| p.client_tls),
        "{:?}",
        h.data.opened
    );
    assert_eq!(h.refused, vec![Rule::TlsInjection, Rule::CccRefused]);
}

#[test]
fn feat_lists_the_tls_features_ftpgate_adds() {
    let mut h = terminating(false);
    assert_eq!(h.client(b"FEAT\r\n"), vec![to_server("FEAT\r\n")]);
    assert_eq!(
        h.server(b"211-Features:\r\n EPSV\r\n PROT\r\n211 End\r\n"),
        vec![to_client(
            "211-Features:\r\n EPSV\r\n PROT\r\n AUTH TLS\r\n PBSZ\r\n211 End\r\n"
        )]
    );
    h.client(b"FEAT\r\n");
    assert_eq!(
        h.server(b"211 No features\r\n"),
        vec![to_client(
            "211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n211 End\r\n"
        )]
    );
    // Without termination the server's list passes as it is.
    let mut h = Harness::relaying();
    h.client(b"FEAT\r\n");
    assert_eq!(
        h.server(b"211 No features\r\n"),
        vec![to_client("211 No features\r\n")]
    );
}

#[test]
fn a_failed_handshake_ends_the_session_and_auth_waits_for_replies() {
    let mut h = terminating(false);
    h.client(b"NOOP\r\n");
    // AUTH behind an unanswered command: no handshake in the middle of a reply.
    let out = h.client(b"AUTH TLS\r\n");
    assert!(!out.contains(&Action::StartClientTls), "{out:?}");
    h.server(b"200 ok\r\n");
    assert!(h.client(b"AUTH SSL\r\n").contains(&Action::StartClientTls));
    let out = h.ev(Event::ClientTls(Err("bad record".into())));
    assert!(out.contains(&Action::Close), "{out:?}");
}

#[test]
fn require_refuses_plain_logins_and_unprotected_data() {
    let mut h = terminating(true);
    let out = h.client(b"USER ann\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"530 ")),
        "{out:?}"
    );
    assert!(
        matches!(&h.client(b"PBSZ 0\r\n")[..], [Action::ToClient(b)] if b.starts_with(b"503 "))
    );
    h.client(b"AUTH TLS\r\n");
    h.ev(Event::ClientTls(Ok(())));
    assert_eq!(h.client(b"USER ann\r\n"), vec![to_server("USER ann\r\n")]);
    h.server(b"230 in\r\n");
    for line in ["PASV\r\n", "EPSV\r\n", "LIST\r\n", "RETR f\r\n"] {
        let out = h.client(line.as_bytes());
        assert!(
            matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"521 ")),
            "{line}: {out:?}"
        );
    }
    h.client(b"PROT P\r\n");
    h.client(b"PASV\r\n");
    h.server(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n");
    assert!(h.data.opened.last().is_some_and(|(_, p)| p.client_tls));
    assert_eq!(h.refused, vec![Rule::TlsRequired; 5]);
}

#[test]
fn an_implicit_session_is_protected_from_the_start_and_clear_data_stays_clear() {
    let mut p = params(UpstreamKind::Fixed);
    p.tls = crate::session::TlsParams {
        policy: TlsPolicy::Terminate,
        require: false,
        implicit: true,
        upstream: crate::config::UpstreamTls::Plain,
    };
    let mut h = Harness::new(p);
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    h.server(b"220 hi\r\n");
    assert_eq!(h.client(b"PBSZ 0\r\n"), vec![to_client("200 PBSZ=0\r\n")]);
    h.client(b"PROT C\r\n");
    h.client(b"PASV\r\n");
    h.server(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n");
    assert!(h.data.opened.last().is_some_and(|(_, p)| !p.client_tls));
}

#[test]
fn the_server_connection_is_secured_before_the_client_is_greeted() {
    let mut p = params(UpstreamKind::Fixed);
    p.tls.policy = TlsPolicy::Terminate;
    p.tls.upstream = crate::config::UpstreamTls::Explicit;
    let mut h = Harness::new(p);
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    // Nothing reaches the client before the server's connection is protected.
    assert_eq!(h.server(b"220 vsFTPd\r\n"), vec![to_server("AUTH TLS\r\n")]);
    let out = h.client(b"USER x\r\n");
    assert!(
        out.contains(&Action::Close),
        "early data is refused: {out:?}"
    );
    assert_eq!(h.refused, vec![Rule::EarlyData]);
    let mut p = params(UpstreamKind::Fixed);
    p.tls.policy = TlsPolicy::Terminate;
    p.tls.upstream = crate::config::UpstreamTls::Explicit;
    let mut h = Harness::new(p);
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    h.server(b"220 vsFTPd\r\n");
    assert_eq!(h.server(b"234 Proceed\r\n"), vec![Action::StartServerTls]);
    assert_eq!(
        h.ev(Event::ServerTls(Ok(()))),
        vec![to_server("PBSZ 0\r\n")]
    );
    assert_eq!(h.server(b"200 PBSZ=0\r\n"), vec![to_server("PROT P\r\n")]);
    assert_eq!(
        h.server(b"200 PROT now Private.\r\n"),
        vec![to_client("220 vsFTPd\r\n")]
    );
    // Every data connection toward the server is protected, whatever the client's PROT.
    h.client(b"PASV\r\n");
    h.server(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n");
    assert!(h
        .data
        .opened
        .last()
        .is_some_and(|(_, p)| p.server_tls && !p.client_tls));
}

#[test]
fn a_server_that_refuses_tls_ends_the_session_before_any_login() {
    let mut p = params(UpstreamKind::Explicit);
    p.tls.policy = TlsPolicy::Terminate;
    p.tls.upstream = crate::config::UpstreamTls::Explicit;
    let mut h = Harness::new(p);
    h.s.start();
    h.client(b"USER anonymous@ftp.example.org\r\n");
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    assert_eq!(h.server(b"220 hi\r\n"), vec![to_server("AUTH TLS\r\n")]);
    h.client(b"PASS secret\r\n");
    let out = h.server(b"500 AUTH not understood\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b), Action::Close] if b.starts_with(b"421 ")),
        "{out:?}"
    );
    // With TLS, the login is replayed only after PROT P.
    let mut p = params(UpstreamKind::Explicit);
    p.tls.policy = TlsPolicy::Terminate;
    p.tls.upstream = crate::config::UpstreamTls::Implicit;
    let mut h = Harness::new(p);
    h.s.start();
    h.client(b"USER anonymous@ftp.example.org\r\n");
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    assert_eq!(h.server(b"220 hi\r\n"), vec![to_server("PBSZ 0\r\n")]);
    h.server(b"200 ok\r\n");
    assert_eq!(
        h.server(b"200 ok\r\n"),
        vec![to_server("USER anonymous\r\n")]
    );
}

#[test]
fn server_source_client_dials_and_listens_on_the_clients_address() {
    let mut p = params(UpstreamKind::Fixed);
    p.server_source = crate::config::ServerSource::Client;
    let client_ip = p.client.ip();
    let mut h = Harness::new(p);
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    h.server(b"220 hi\r\n");
    h.client(b"PASV\r\n");
    h.server(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n");
    let (_, plan) = h.data.opened.last().unwrap().clone();
    assert!(
        matches!(plan.server, Endpoint::Dial { from: DialSource::Transparent(ip), .. } if ip == client_ip),
        "{plan:?}"
    );
    // Active mode: the server is told the client's own address, where ftpgate listens.
    let out = h.client(b"PORT 10,0,0,5,4,1\r\n");
    let (_, plan) = h.data.opened.last().unwrap().clone();
    assert!(
        matches!(plan.server, Endpoint::Accept { on, .. } if on == client_ip),
        "{plan:?}"
    );
    assert!(
        matches!(&out[..], [Action::ToServer(b)] if b.starts_with(b"PORT 10,0,0,5,")),
        "{out:?}"
    );
}

#[test]
fn explicit_login_replays_user() {
    let mut h = Harness::new(SessionParams {
        allow_server_ports: vec![21, 2121],
        ..params(UpstreamKind::Explicit)
    });
    let out = h.s.start();
    assert!(matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"220 ")));
    // Before login ftpgate knows no server features; "log in first" makes clients ask again.
    let out = h.client(b"FEAT\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"530 ")),
        "{out:?}"
    );
    let out = h.client(b"USER bob\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"530 ")),
        "{out:?}"
    );
    let out = h.client(b"USER bob@ftp.example.org:2121\r\n");
    assert_eq!(
        out,
        vec![Action::ConnectUpstream {
            host: "ftp.example.org".into(),
            port: 2121
        }]
    );
    assert!(h.client(b"PASS secret\r\n").is_empty());
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    let out = h.server(b"220 real server\r\n");
    assert_eq!(
        out,
        vec![to_server("USER bob\r\n"), to_server("PASS secret\r\n")]
    );
    assert_eq!(h.server(b"331 pw\r\n"), vec![to_client("331 pw\r\n")]);
}

#[test]
fn explicit_upstream_failure_is_reported() {
    let mut h = Harness::new(params(UpstreamKind::Explicit));
    h.s.start();
    h.client(b"USER bob@127.0.0.1\r\n");
    let out = h.ev(Event::UpstreamFailed(
        "server 127.0.0.1 is not allowed".into(),
    ));
    assert_eq!(
        out,
        vec![
            to_client("421 Cannot connect to 127.0.0.1: server 127.0.0.1 is not allowed.\r\n"),
            Action::Close
        ]
    );
}

#[test]
fn telnet_abor_is_forwarded_unchanged_and_releases_an_unused_channel() {
    let mut h = Harness::relaying();
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,137\r\n");
    let line = b"\xff\xf4\xff\xf2ABOR\r\n";
    assert_eq!(h.client(line), vec![Action::ToServer(line.to_vec())]);
    assert_eq!(h.data.cancelled, vec![1]);
    // An established transfer is not the prepared one: ABOR leaves it to the server.
    h.server(b"225 ABOR ok\r\n");
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,137\r\n");
    h.data_ev(2, DataEvent::Established);
    h.client(line);
    assert_eq!(h.data.cancelled, vec![1]);
}

#[test]
fn ipv6_server_gets_epsv_and_the_client_still_gets_227() {
    let mut h = Harness::new(params(UpstreamKind::Fixed));
    h.ev(Event::UpstreamConnected(
        "[2001:db8::10]:21".parse().unwrap(),
    ));
    h.server(b"220 hi\r\n");
    assert_eq!(h.client(b"PASV\r\n"), vec![to_server("EPSV\r\n")]);
    let out = h.server(b"229 ok (|||7000|)\r\n");
    assert_eq!(
        out,
        vec![to_client(
            "227 Entering Passive Mode (198,51,100,1,195,80).\r\n"
        )]
    );
    assert_eq!(
        dialled(&h.data.opened[0].1),
        "[2001:db8::10]:7000".parse().unwrap()
    );
}

#[test]
fn privileged_passive_ports_are_refused_unless_allowed() {
    let mut h = Harness::relaying();
    h.client(b"PASV\r\n");
    let out = h.server(b"227 Entering Passive Mode (192,0,2,10,0,25)\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"425 ")),
        "{out:?}"
    );
    assert!(h.data.opened.is_empty());
    assert_eq!(h.refused, vec![Rule::PrivilegedPort]);

    let mut p = params(UpstreamKind::Fixed);
    p.allow_privileged_ports = true;
    let mut h = Harness::new(p);
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    h.server(b"220 hi\r\n");
    h.client(b"PASV\r\n");
    h.server(b"227 Entering Passive Mode (192,0,2,10,0,25)\r\n");
    assert_eq!(
        dialled(&h.data.opened[0].1),
        "192.0.2.10:25".parse().unwrap()
    );
    h.client(b"PORT 10,0,0,5,0,20\r\n");
    assert_eq!(dialled(&h.data.opened[1].1), "10.0.0.5:20".parse().unwrap());
    assert!(h.refused.is_empty());
}

#[test]
fn direction_addresses_count_only_from_their_own_side() {
    // Rule 2: a server line shaped like PORT is reply text; a client line shaped like a
    // 227 is no command at all: ftpgate refuses it (rule line_syntax). Neither opens
    // anything.
    let mut h = Harness::relaying();
    let line = b"PORT 10,0,0,5,4,1\r\n";
    assert_eq!(h.server(line), vec![Action::ToClient(line.to_vec())]);
    let line = b"227 Entering Passive Mode (10,0,0,5,4,1)\r\n";
    let out = h.client(line);
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"500 ")),
        "{out:?}"
    );
    assert_eq!(h.refused, vec![Rule::LineSyntax]);
    assert!(h.data.opened.is_empty());
}

#[test]
fn transfers_are_recorded_with_their_command_file_and_bytes() {
    let mut h = Harness::relaying();
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,137\r\n");
    h.client(b"STOR dir/report 2026.csv\r\n");
    h.data_ev(1, DataEvent::Established);
    let stats = DataStats {
        to_server: 1000,
        to_client: 0,
        seconds: 0.5,
        counted: true,
    };
    h.data_ev(1, DataEvent::Finished(stats));
    // A transfer is over when its data ended and the server answered it.
    assert!(h.transfers.is_empty());
    h.server(b"150 ok\r\n226 done\r\n");
    h.client(b"PORT 10,0,0,5,4,1\r\n");
    h.server(b"200 ok\r\n");
    h.client(b"RETR gone\r\n");
    h.data_ev(2, DataEvent::Failed("reset".into()));
    h.server(b"426 aborted\r\n");
    assert_eq!(
        h.transfers,
        vec![
            TransferRecord {
                command: "STOR".into(),
                argument: "dir/report 2026.csv".into(),
                upload: true,
                active: false,
                stats: Some(stats),
                failure: None,
            },
            TransferRecord {
                command: "RETR".into(),
                argument: "gone".into(),
                upload: false,
                active: true,
                stats: None,
                failure: Some("reset".into()),
            },
        ]
    );
    assert_eq!(h.rewrites, vec![Rewrite::Reply227, Rewrite::Port]);
    // A channel that served no transfer leaves no record.
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,137\r\n");
    h.data_ev(3, DataEvent::Failed("timeout".into()));
    assert_eq!(h.transfers.len(), 2);
}

fn relaying_with(mode: ServerMode) -> Harness {
    let mut p = params(UpstreamKind::Fixed);
    p.server_mode = mode;
    let mut h = Harness::new(p);
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    h.server(b"220 hi\r\n");
    h
}

#[test]
fn server_mode_passive_answers_port_and_dials_both_ends() {
    let mut h = relaying_with(ServerMode::Passive);
    // The server never sees PORT: ftpgate answers it.
    let out = h.client(b"PORT 10,0,0,5,4,1\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"200 ")),
        "{out:?}"
    );
    assert_eq!(h.client(b"TYPE I\r\n"), vec![to_server("TYPE I\r\n")]);
    assert_eq!(
        h.server(b"200 binary\r\n"),
        vec![to_client("200 binary\r\n")]
    );
    // The transfer command waits behind ftpgate's own PASV, and so does what follows it.
    assert_eq!(h.client(b"RETR f\r\nNOOP\r\n"), vec![to_server("PASV\r\n")]);
    assert!(h.data.opened.is_empty());
    let out = h.server(b"227 Entering Passive Mode (10,1,1,1,19,137)\r\n");
    assert_eq!(out, vec![to_server("RETR f\r\n"), to_server("NOOP\r\n")]);
    assert_eq!(
        h.data.opened[0].1,
        DataPlan {
            client: Endpoint::Dial {
                to: "10.0.0.5:1025".parse().unwrap(),
                from: DialSource::Bind(ip("10.0.0.1")),
            },
            server: Endpoint::Dial {
                to: "192.0.2.10:5001".parse().unwrap(),
                from: DialSource::Bind(ip("203.0.113.1")),
            },
            client_tls: false,
            server_tls: false,
        }
    );
    // Active toward the client: its 150 waits for the connection to the client.
    assert!(h.server(b"150 here it comes\r\n").is_empty());
    assert_eq!(
        h.data_ev(1, DataEvent::Established),
        vec![to_client("150 here it comes\r\n")]
    );
    assert!(h.server(b"226 done\r\n200 noop\r\n").is_empty());
    assert_eq!(
        h.data_ev(1, DataEvent::ServerToClientDone),
        vec![to_client("226 done\r\n"), to_client("200 noop\r\n")]
    );
    // The PORT was used up: the next transfer without one goes straight through.
    assert_eq!(h.client(b"LIST\r\n"), vec![to_server("LIST\r\n")]);
}

#[test]
fn server_mode_passive_reports_a_refused_pasv_as_the_transfers_failure() {
    let mut h = relaying_with(ServerMode::Passive);
    h.client(b"EPRT |1|10.0.0.5|2000|\r\n");
    assert_eq!(h.client(b"STOR up\r\n"), vec![to_server("PASV\r\n")]);
    let out = h.server(b"500 PASV not understood\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"425 ")),
        "{out:?}"
    );
    assert!(h.data.opened.is_empty());
    // Nothing is held any more.
    assert_eq!(h.client(b"NOOP\r\n"), vec![to_server("NOOP\r\n")]);
}

#[test]
fn server_mode_active_answers_pasv_and_sends_port_at_the_transfer() {
    let mut h = relaying_with(ServerMode::Active);
    // The server never sees PASV: ftpgate answers with its own client-side listener.
    assert_eq!(
        h.client(b"PASV\r\n"),
        vec![to_client(
            "227 Entering Passive Mode (198,51,100,1,195,80).\r\n"
        )]
    );
    assert_eq!(
        h.data.opened[0].1,
        DataPlan {
            client: Endpoint::Accept {
                on: ip("10.0.0.1"),
                peer: ip("10.0.0.5"),
            },
            server: Endpoint::Accept {
                on: ip("203.0.113.1"),
                peer: ip("192.0.2.10"),
            },
            client_tls: false,
            server_tls: false,
        }
    );
    // At the transfer, the server is told where to connect (port 60000 = 234*256+96).
    assert_eq!(
        h.client(b"RETR f\r\n"),
        vec![to_server("PORT 203,0,113,2,234,96\r\n")]
    );
    assert_eq!(h.server(b"200 PORT ok\r\n"), vec![to_server("RETR f\r\n")]);
    // Passive toward the client: the 150 is not held; the 226 waits for the bytes.
    assert_eq!(h.server(b"150 go\r\n"), vec![to_client("150 go\r\n")]);
    h.data_ev(1, DataEvent::Established);
    assert!(h.server(b"226 done\r\n").is_empty());
    assert_eq!(
        h.data_ev(1, DataEvent::ServerToClientDone),
        vec![to_client("226 done\r\n")]
    );
    assert_eq!(
        h.client(b"EPSV\r\n"),
        vec![to_client(
            "229 Entering Extended Passive Mode (|||50001|)\r\n"
        )]
    );
}

#[test]
fn server_mode_active_reports_a_refused_port_and_frees_the_channel() {
    let mut h = relaying_with(ServerMode::Active);
    h.client(b"EPSV\r\n");
    h.client(b"LIST\r\n");
    let out = h.server(b"500 PORT disabled\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"425 ")),
        "{out:?}"
    );
    assert_eq!(h.data.cancelled, vec![1]);
}

#[test]
fn epsv_falls_back_to_pasv_for_servers_that_do_not_know_it() {
    let mut h = Harness::relaying();
    // Lines after the EPSV wait until the server has answered it.
    assert_eq!(h.client(b"EPSV\r\nRETR f\r\n"), vec![to_server("EPSV\r\n")]);
    assert_eq!(
        h.server(b"500 'EPSV': command not understood.\r\n"),
        vec![to_server("PASV\r\n")]
    );
    let out = h.server(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n");
    assert_eq!(
        out,
        vec![
            to_client("229 Entering Extended Passive Mode (|||50000|)\r\n"),
            to_server("RETR f\r\n"),
        ]
    );
    assert_eq!(
        dialled(&h.data.opened[0].1),
        "192.0.2.10:5001".parse().unwrap()
    );
    // Remembered for the session: the next EPSV goes out as PASV at once.
    assert_eq!(h.client(b"EPSV\r\n"), vec![to_server("PASV\r\n")]);
}

#[test]
fn eprt_falls_back_to_port_for_servers_that_do_not_know_it() {
    let mut h = Harness::relaying();
    assert_eq!(
        h.client(b"EPRT |1|10.0.0.5|2000|\r\nLIST\r\n"),
        vec![to_server("EPRT |1|203.0.113.2|60000|\r\n")]
    );
    assert_eq!(
        h.server(b"502 EPRT not implemented\r\n"),
        vec![to_server("PORT 203,0,113,2,234,96\r\n")]
    );
    assert_eq!(
        h.server(b"200 PORT ok\r\n"),
        vec![to_client("200 PORT ok\r\n"), to_server("LIST\r\n")]
    );
}

#[test]
fn an_epsv_error_passes_through_when_translation_is_off() {
    let mut h = Harness::relaying();
    assert_eq!(
        h.client(b"ALGS STATUS64\r\n"),
        vec![to_client("216 ENABLED\r\n")]
    );
    let out = h.client(b"ALGS DISABLE64\r\n");
    assert!(matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"200 ")));
    assert_eq!(
        h.client(b"ALGS STATUS64\r\n"),
        vec![to_client("216 DISABLED\r\n")]
    );
    assert_eq!(
        h.client(b"EPSV\r\nNOOP\r\n"),
        vec![to_server("EPSV\r\n"), to_server("NOOP\r\n")]
    );
    assert_eq!(h.server(b"500 no\r\n"), vec![to_client("500 no\r\n")]);
    let out = h.client(b"ALGS BOGUS\r\n");
    assert!(out.is_empty(), "waits for the NOOP's reply: {out:?}");
    let out = h.server(b"200 noop\r\n");
    assert_eq!(out[0], to_client("200 noop\r\n"));
    assert!(matches!(&out[1], Action::ToClient(b) if b.starts_with(b"501 ")));
}

#[test]
fn epsv_all_is_answered_here_and_then_only_epsv_is_allowed() {
    let mut h = Harness::relaying();
    let out = h.client(b"EPSV ALL\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"200 ")),
        "{out:?}"
    );
    for line in [
        &b"PASV\r\n"[..],
        b"PORT 10,0,0,5,4,1\r\n",
        b"EPRT |1|10.0.0.5|2000|\r\n",
    ] {
        let out = h.client(line);
        assert!(
            matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"503 ")),
            "{out:?}"
        );
    }
    assert_eq!(h.client(b"EPSV\r\n"), vec![to_server("EPSV\r\n")]);
}

#[test]
fn ipv6_client_to_ipv4_server_is_translated() {
    let mut p = params(UpstreamKind::Fixed);
    p.client = "[2001:db8::5]:40001".parse().unwrap();
    p.client_side = SideAddrs {
        address: ip("2001:db8::1"),
        announce: ip("2001:db8::1"),
    };
    let mut h = Harness::new(p);
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    h.server(b"220 hi\r\n");
    // EPRT |2| becomes an IPv4 EPRT toward the server; the channel dials the IPv6 client.
    assert_eq!(
        h.client(b"EPRT |2|2001:db8::5|2000|\r\n"),
        vec![to_server("EPRT |1|203.0.113.2|60000|\r\n")]
    );
    assert_eq!(
        dialled(&h.data.opened[0].1),
        "[2001:db8::5]:2000".parse().unwrap()
    );
    h.server(b"200 ok\r\n");
    // An IPv6 client cannot use PASV, nor ask for an IPv4 EPSV.
    let out = h.client(b"PASV\r\n");
    assert!(matches!(&out[..], [Action::ToServer(_)]), "{out:?}");
    let out = h.server(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"425 ")),
        "{out:?}"
    );
    let out = h.client(b"EPSV 1\r\n");
    assert_eq!(
        out,
        vec![to_client(
            "522 Network protocol not supported, use (2).\r\n"
        )]
    );
    // EPSV 2 is served by ftpgate's IPv6 listener; the server is asked in its own family.
    assert_eq!(h.client(b"EPSV 2\r\n"), vec![to_server("EPSV\r\n")]);
    assert_eq!(
        h.server(b"229 Extended (|||6446|)\r\n"),
        vec![to_client("229 Extended (|||50002|)\r\n")]
    );
    assert!(matches!(
        h.data.opened[2].1.client,
        Endpoint::Accept { on, peer } if on == ip("2001:db8::1") && peer == ip("2001:db8::5")
    ));
}

#[test]
fn a_failed_transfer_frees_its_channel_and_is_recorded() {
    let mut h = Harness::relaying();
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,137\r\n");
    h.client(b"RETR missing\r\n");
    assert_eq!(
        h.server(b"550 No such file.\r\n"),
        vec![to_client("550 No such file.\r\n")]
    );
    assert_eq!(h.data.cancelled, vec![1]);
    assert_eq!(h.transfers.len(), 1);
    assert_eq!(
        h.transfers[0].failure.as_deref(),
        Some("server replied 550")
    );
}

#[test]
fn conversions_keep_rest_right_before_its_transfer_command() {
    // server_mode: passive: PASV goes before the REST, not between REST and RETR.
    let mut h = relaying_with(ServerMode::Passive);
    h.client(b"PORT 10,0,0,5,4,1\r\n");
    assert_eq!(
        h.client(b"REST 100\r\nRETR f\r\n"),
        vec![to_server("PASV\r\n")]
    );
    assert_eq!(
        h.server(b"227 =192,0,2,10,19,137\r\n"),
        vec![to_server("REST 100\r\n"), to_server("RETR f\r\n")]
    );
    assert_eq!(
        h.server(b"350 restarting\r\n"),
        vec![to_client("350 restarting\r\n")]
    );
    h.data_ev(1, DataEvent::Established);
    assert_eq!(h.server(b"150 go\r\n"), vec![to_client("150 go\r\n")]);
    h.data_ev(1, DataEvent::ServerToClientDone);
    assert_eq!(h.server(b"226 done\r\n"), vec![to_client("226 done\r\n")]);
    h.data_ev(
        1,
        DataEvent::Finished(DataStats {
            to_server: 0,
            to_client: 9,
            seconds: 0.1,
            counted: true,
        }),
    );
    assert_eq!(h.transfers[0].command, "RETR");

    // server_mode: active: PORT goes before the REST.
    let mut h = relaying_with(ServerMode::Active);
    h.client(b"PASV\r\n");
    assert_eq!(
        h.client(b"REST 7\r\nSTOR f\r\n"),
        vec![to_server("PORT 203,0,113,2,234,96\r\n")]
    );
    assert_eq!(
        h.server(b"200 ok\r\n"),
        vec![to_server("REST 7\r\n"), to_server("STOR f\r\n")]
    );
}

#[test]
fn a_transfer_finishing_after_the_session_closed_is_still_recorded() {
    let mut h = Harness::relaying();
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,137\r\n");
    h.client(b"RETR f\r\n");
    h.data_ev(1, DataEvent::Established);
    h.data_ev(1, DataEvent::ServerToClientDone);
    h.server(b"226 done\r\n221 bye\r\n");
    h.ev(Event::ClientClosed);
    assert!(
        h.s.is_closed() && !h.s.is_finished(),
        "a channel still finishing"
    );
    let stats = DataStats {
        to_server: 0,
        to_client: 42,
        seconds: 0.1,
        counted: true,
    };
    assert!(h.data_ev(1, DataEvent::Finished(stats)).is_empty());
    assert_eq!(h.transfers.len(), 1);
    assert_eq!(h.transfers[0].stats, Some(stats));
    assert!(h.s.is_finished());
}

#[test]
fn a_rejected_eprt_that_port_cannot_replace_reaches_the_client() {
    // An IPv6 server-side announcement toward an IPv4 server: PORT cannot carry it, so the
    // server's refusal is the answer.
    let mut p = params(UpstreamKind::Fixed);
    p.server_side.announce = ip("2001:db8:b::1");
    let mut h = Harness::new(p);
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    h.server(b"220 hi\r\n");
    assert_eq!(
        h.client(b"EPRT |1|10.0.0.5|2000|\r\n"),
        vec![to_server("EPRT |2|2001:db8:b::1|60000|\r\n")]
    );
    assert_eq!(
        h.server(b"522 use (1)\r\n"),
        vec![to_client("522 use (1)\r\n")]
    );
    assert_eq!(h.data.cancelled, vec![1]);
}

// ---- issue 11: bounds, strict parsing, time -------------------------------------------

/// Whether the actions end the session with a `421`.
fn closes_with_421(out: &[Action]) -> bool {
    out.last() == Some(&Action::Close)
        && out
            .iter()
            .any(|a| matches!(a, Action::ToClient(b) if b.starts_with(b"421 ")))
}

#[test]
fn a_multi_line_reply_that_never_ends_is_cut_off() {
    // Rule reply_too_long: 1 KiB in the lab limits.
    let mut h = Harness::relaying();
    h.client(b"HELP\r\n");
    assert!(h.server(b"214-Help\r\n").is_empty());
    let mut out = Vec::new();
    for _ in 0..200 {
        out = h.server(&[&b"214-"[..], &[b'x'; 96], b"\r\n"].concat());
        if !out.is_empty() {
            break;
        }
    }
    assert!(closes_with_421(&out), "{out:?}");
    assert_eq!(h.refused, vec![Rule::ReplyTooLong]);
    assert!(h.server(b"214 end\r\n").is_empty(), "closed for good");

    // Rule reply_too_many_lines: 16 lines in the lab limits, short ones.
    let mut h = Harness::relaying();
    h.client(b"HELP\r\n");
    let out = h.server(&b"214-\r\n".repeat(17));
    assert!(closes_with_421(&out), "{out:?}");
    assert_eq!(h.refused, vec![Rule::ReplyTooManyLines]);

    // One line longer than a reply may be.
    let mut h = Harness::relaying();
    let out = h.server(&[b'2'; 2000]);
    assert!(closes_with_421(&out), "{out:?}");
    assert_eq!(h.refused, vec![Rule::ReplyTooLong]);
}

#[test]
fn replies_waiting_behind_a_held_226_are_bounded() {
    // Rule reply_queue: a server keeps the data connection open (the 226 waits for it)
    // and talks on.
    let mut h = Harness::relaying();
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,137\r\n");
    h.client(b"RETR f\r\n");
    h.data_ev(1, DataEvent::Established);
    assert_eq!(h.server(b"150 ok\r\n"), vec![to_client("150 ok\r\n")]);
    assert!(h.server(b"226 done\r\n").is_empty(), "held for the data");
    let mut out = Vec::new();
    for i in 0..=MAX_QUEUED_REPLIES {
        out = h.server(b"200 chatter\r\n");
        if !out.is_empty() {
            assert_eq!(i, MAX_QUEUED_REPLIES - 1, "closed at the bound");
            break;
        }
    }
    assert!(closes_with_421(&out), "{out:?}");
    assert_eq!(h.refused, vec![Rule::ReplyQueue]);
}

#[test]
fn local_replies_behind_an_outstanding_reply_are_bounded() {
    // Rule local_replies: a RETR is outstanding; the client sends lines ftpgate answers
    // itself (a bare PORT), whose replies must wait for the server's.
    let mut h = Harness::relaying();
    h.client(b"RETR f\r\n");
    let mut out = Vec::new();
    for _ in 0..=MAX_LOCAL_REPLIES {
        out = h.client(b"PORT\r\n");
        if !out.is_empty() {
            break;
        }
    }
    assert!(closes_with_421(&out), "{out:?}");
    // Every PORT was refused (and counted); the one past the bound ended the session.
    let mut expected = vec![Rule::MalformedAddress; MAX_LOCAL_REPLIES + 1];
    expected.push(Rule::LocalReplies);
    assert_eq!(h.refused, expected);
}

#[test]
fn commands_pipelined_to_a_silent_server_are_bounded() {
    // Rule pipelined_commands: the explicit role's server greets and never answers.
    let mut h = Harness::new(params(UpstreamKind::Explicit));
    h.s.start();
    h.client(b"USER a@ftp.example.org\r\n");
    h.ev(Event::UpstreamConnected(SERVER.parse().unwrap()));
    assert_eq!(h.server(b"220 hi\r\n"), vec![to_server("USER a\r\n")]);
    // The replayed USER counts: 7 more fit into the lab limit of 8.
    let out = h.client(&b"NOOP\r\n".repeat(7));
    assert_eq!(out.len(), 7);
    let out = h.client(b"NOOP\r\n");
    assert!(closes_with_421(&out), "{out:?}");
    assert!(out.iter().all(|a| !matches!(a, Action::ToServer(_))));
    assert_eq!(h.refused, vec![Rule::PipelinedCommands]);
}

#[test]
fn lines_held_while_a_login_connects_are_bounded() {
    // Rule held_lines.
    let mut h = Harness::new(params(UpstreamKind::Explicit));
    h.s.start();
    h.client(b"USER a@ftp.example.org\r\n");
    assert!(h.client(&b"NOOP\r\n".repeat(8)).is_empty());
    let out = h.client(b"NOOP\r\n");
    assert!(closes_with_421(&out), "{out:?}");
    assert_eq!(h.refused, vec![Rule::HeldLines]);
}

#[test]
fn a_session_holds_a_bounded_number_of_data_channels() {
    // Rule data_channels: established channels are not replaced by a new PASV.
    let mut h = Harness::relaying();
    for i in 0..MAX_DATA_CHANNELS {
        h.client(b"PASV\r\n");
        let out = h.server(b"227 =192,0,2,10,19,137\r\n");
        assert!(matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"227 ")));
        h.data_ev(i as ChannelId + 1, DataEvent::Established);
    }
    h.client(b"PASV\r\n");
    let out = h.server(b"227 =192,0,2,10,19,137\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"425 ")),
        "{out:?}"
    );
    assert_eq!(h.refused, vec![Rule::DataChannels]);
    assert_eq!(h.data.opened.len(), MAX_DATA_CHANNELS);
}

#[test]
fn lines_the_server_might_read_otherwise_are_answered_here() {
    // Rule line_syntax: none of these reaches the server, each gets a 500, and the reply
    // order stays right (pure-ftpd says nothing to such lines, which used to shift every
    // later reply onto the wrong command).
    let mut h = Harness::relaying();
    for line in [
        &b"\tPASV\r\n"[..],
        b" PORT 10,0,0,5,4,1\r\n",
        b"PORT\t10,0,0,5,4,1\r\n",
        b" AUTH TLS\r\n",
        b"NOOP\rPASV\r\n",
        b"RETR a\x1bb\r\n",
    ] {
        let out = h.client(line);
        assert!(
            matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"500 ")),
            "{line:?}: {out:?}"
        );
    }
    assert_eq!(h.refused, vec![Rule::LineSyntax; 6]);
    assert_eq!(h.client(b"PASV\r\n"), vec![to_server("PASV\r\n")]);
    let out = h.server(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n");
    assert_eq!(
        out,
        vec![to_client(
            "227 Entering Passive Mode (198,51,100,1,195,80).\r\n"
        )]
    );
    // Empty lines are dropped, as vsftpd and pure-ftpd do, and a PASV with an argument
    // (which servers take for PASV) is refused rather than forwarded.
    assert!(h.client(b"\r\n").is_empty());
    let out = h.client(b"PASV x\r\n");
    assert!(matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"501 ")));
}

#[test]
fn typed_verbs_with_trailing_spaces_are_still_typed() {
    // vsftpd and pure-ftpd answer `PASV ` and `EPSV 1 `: their replies must be rewritten.
    let mut h = Harness::relaying();
    assert_eq!(h.client(b"PASV \r\n"), vec![to_server("PASV\r\n")]);
    let out = h.server(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"227 Entering Passive Mode (198,51,100,1,"))
    );
    assert_eq!(h.client(b"EPSV 1 \r\n"), vec![to_server("EPSV\r\n")]);
    let out = h.server(b"229 Entering Extended Passive Mode (|||6446|)\r\n");
    assert_eq!(
        out,
        vec![to_client(
            "229 Entering Extended Passive Mode (|||50001|)\r\n"
        )]
    );
}

#[test]
fn long_address_verbs_are_refused_and_228_opens_nothing() {
    let mut h = Harness::relaying();
    for line in [
        &b"LPRT 4,4,127,0,0,1,2,4,1\r\n"[..],
        b"LPSV\r\n",
        b"SPSV\r\n",
    ] {
        let out = h.client(line);
        assert!(
            matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"502 ")),
            "{out:?}"
        );
    }
    assert_eq!(h.refused, vec![Rule::UnsupportedDataCommand; 3]);
    h.client(b"NOOP\r\n");
    let text = b"228 Entering Long Passive Mode (4,4,10,0,0,5,2,4,1)\r\n";
    assert_eq!(h.server(text), vec![Action::ToClient(text.to_vec())]);
    assert!(h.data.opened.is_empty());
    assert_eq!(h.refused.last(), Some(&Rule::UnsolicitedPassiveReply));
}

#[test]
fn forwarded_lines_are_the_ones_ftpgate_parsed() {
    // Telnet commands go, a bare LF becomes CR LF; a plain line is passed byte for byte.
    let mut h = Harness::relaying();
    assert_eq!(h.client(b"\xff\xf1NOOP\r\n"), vec![to_server("NOOP\r\n")]);
    h.server(b"200 ok\r\n");
    assert_eq!(h.client(b"SYST\n"), vec![to_server("SYST\r\n")]);
    h.server(b"215 UNIX\r\n");
    assert_eq!(
        h.client(b"RETR My  File \r\n"),
        vec![to_server("RETR My  File \r\n")]
    );
}

#[test]
fn explicit_logins_name_only_allowed_server_ports() {
    // Rule server_port: the proxy is not a tunnel to SMTP.
    let mut h = Harness::new(params(UpstreamKind::Explicit));
    h.s.start();
    let out = h.client(b"USER m@mail.example.org:25\r\n");
    assert!(
        matches!(&out[..], [Action::ToClient(b)] if b.starts_with(b"530 Port 25 is not allowed")),
        "{out:?}"
    );
    assert_eq!(h.refused, vec![Rule::ServerPort]);
    // The session stays at the login and may name an allowed port.
    let out = h.client(b"USER m@ftp.example.org\r\n");
    assert!(matches!(
        &out[..],
        [Action::ConnectUpstream { port: 21, .. }]
    ));
}

#[test]
fn the_idle_timeout_counts_complete_commands_not_bytes() {
    let mut h = Harness::relaying();
    let idle = crate::fuzzing::LAB_LIMITS.idle_timeout;
    let line = crate::fuzzing::LAB_LIMITS.line_timeout;
    h.advance(idle / 2);
    assert_eq!(h.client(b"NOOP\r\n"), vec![to_server("NOOP\r\n")]);
    h.server(b"200 ok\r\n");
    // A byte every few seconds never completes a line: it does not keep the session.
    let mut out = Vec::new();
    for _ in 0..10 {
        h.client(b"N");
        out = h.advance(Duration::from_secs(3));
        if !out.is_empty() {
            break;
        }
    }
    assert!(closes_with_421(&out), "{out:?}");
    assert_eq!(h.refused, vec![Rule::LineTimeout]);
    assert!(h.now - h.s.clock.idle_since >= line && h.now - h.s.clock.idle_since < idle);

    // A session with nothing to do ends at its idle timeout, through the reply queue.
    let mut h = Harness::relaying();
    assert!(h.advance(idle - Duration::from_secs(1)).is_empty());
    let out = h.advance(Duration::from_secs(1));
    assert_eq!(
        out,
        vec![
            to_client("421 Idle timeout; closing control connection.\r\n"),
            Action::Close
        ]
    );
    assert_eq!(h.refused, vec![Rule::IdleTimeout]);
    assert_eq!(h.s.poll_timeout(), None);
}

#[test]
fn the_idle_timeout_waits_for_transfers() {
    let mut h = Harness::relaying();
    let idle = crate::fuzzing::LAB_LIMITS.idle_timeout;
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,137\r\n");
    h.client(b"RETR f\r\n");
    h.data_ev(1, DataEvent::Established);
    assert_eq!(
        h.s.poll_timeout(),
        None,
        "no idle timeout during a transfer"
    );
    h.now += idle * 10;
    h.server(b"150 ok\r\n");
    h.data_ev(1, DataEvent::ServerToClientDone);
    let stats = DataStats {
        to_server: 0,
        to_client: 1,
        seconds: 600.0,
        counted: true,
    };
    h.data_ev(1, DataEvent::Finished(stats));
    // The idle time counts from the end of the transfer, not from the RETR.
    assert_eq!(h.s.poll_timeout(), Some(h.now + idle));
    assert!(h.advance(idle - Duration::from_secs(1)).is_empty());
}

#[test]
fn refusal_logs_are_rate_limited_and_counts_stay_exact() {
    // The log lines themselves are counted end to end in tests/security.rs; here, the
    // session's own account of them.
    let mut h = Harness::relaying();
    for _ in 0..200 {
        h.client(b"PORT 192,0,2,99,4,1\r\n");
    }
    assert_eq!(h.refused, vec![Rule::Bounce; 200], "every refusal counted");
    assert_eq!(h.s.refusal_log.logged, REFUSAL_LOG_BURST);
    assert_eq!(
        h.s.refusal_log.suppressed,
        200 - u64::from(REFUSAL_LOG_BURST)
    );
}

// ---- issue 12: a broken transfer is never reported as complete ------------------------

/// A publish session with a passive transfer `command` on channel 1, connected.
fn transferring(command: &[u8]) -> Harness {
    let mut h = Harness::relaying();
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,137\r\n");
    h.client(command);
    h.data_ev(1, DataEvent::Established);
    assert_eq!(h.server(b"150 go\r\n"), vec![to_client("150 go\r\n")]);
    h
}

fn starts_with(out: &[Action], prefix: &str) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::ToClient(b) if b.starts_with(prefix.as_bytes())))
}

#[test]
fn a_cut_upload_gets_426_not_the_servers_226() {
    // The relay broke (ftpgate's server-facing socket reset); the server took the reset
    // for the end of the file and says 226. The client must not believe it.
    let mut h = transferring(b"STOR up.bin\r\n");
    h.data_ev(
        1,
        DataEvent::Failed("relay: Software caused connection abort".into()),
    );
    let out = h.server(b"226 Transfer complete\r\n");
    assert_eq!(
        out,
        vec![to_client(
            "426 Connection closed; transfer aborted: relay: Software caused connection abort.\r\n"
        )]
    );
    assert_eq!(h.ended.len(), 1);
    assert!(!h.ended[0].ok);
    let record = h.ended[0].transfer.as_ref().unwrap();
    assert_eq!(record.command, "STOR");
    assert!(record.failure.as_deref().unwrap().contains("abort"));

    // The same when the 226 came first and waited for the data.
    let mut h = transferring(b"STOR up.bin\r\n");
    assert!(h.server(b"226 Transfer complete\r\n").is_empty());
    let out = h.data_ev(1, DataEvent::Failed("relay: reset".into()));
    assert!(starts_with(&out, "426 "), "{out:?}");
    assert!(!starts_with(&out, "226"), "{out:?}");
    assert_eq!(h.ended.len(), 1);
    assert!(!h.ended[0].ok);
}

#[test]
fn a_server_that_dies_mid_retr_leaves_a_426_and_a_failed_transfer() {
    // The server's data socket closed cleanly (the process died): the data looks whole,
    // but no 226 ever comes.
    let mut h = transferring(b"RETR big.bin\r\n");
    h.data_ev(1, DataEvent::ServerToClientDone);
    let stats = DataStats {
        to_server: 0,
        to_client: 13_000_000,
        seconds: 1.0,
        counted: true,
    };
    assert!(h.data_ev(1, DataEvent::Finished(stats)).is_empty());
    assert!(
        h.transfers.is_empty(),
        "not complete without the server's reply"
    );
    let out = h.ev(Event::ServerClosed);
    assert_eq!(
        out,
        vec![
            to_client("426 Connection closed; transfer aborted: the server closed the control connection.\r\n"),
            to_client("421 Service not available: the server closed the control connection.\r\n"),
            Action::Close
        ]
    );
    assert_eq!(h.ended.len(), 1);
    assert!(!h.ended[0].ok);
    assert_eq!(
        h.transfers[0].failure.as_deref(),
        Some("the server closed the control connection")
    );
    assert_eq!(
        h.s.failure(),
        Some("the server closed the control connection")
    );
    assert!(h.s.is_finished());
}

#[test]
fn a_server_closing_after_its_226_waits_for_the_data_and_is_no_failure() {
    let mut h = transferring(b"RETR f\r\n");
    assert!(
        h.server(b"226 done\r\n").is_empty(),
        "226 waits for the data"
    );
    // The server closes while the data is still being relayed: the 226 keeps its place.
    assert!(h.ev(Event::ServerClosed).is_empty());
    let out = h.data_ev(1, DataEvent::ServerToClientDone);
    assert_eq!(out, vec![to_client("226 done\r\n")]);
    // The client may still be reading its data: the control connection stays until the
    // channel is over.
    let stats = DataStats {
        to_server: 0,
        to_client: 5,
        seconds: 0.1,
        counted: true,
    };
    assert_eq!(
        h.data_ev(1, DataEvent::Finished(stats)),
        vec![Action::Close]
    );
    assert_eq!(h.ended.len(), 1);
    assert!(h.ended[0].ok);
    assert_eq!(h.s.failure(), None);
    assert!(h.s.is_finished());
}

#[test]
fn a_client_that_dies_mid_stor_leaves_a_failed_transfer() {
    let mut h = transferring(b"STOR up.bin\r\n");
    let out = h.ev(Event::ClientClosed);
    assert_eq!(out, vec![Action::Close]);
    assert_eq!(h.ended.len(), 1, "reported once, and the shell stops it");
    assert!(!h.ended[0].ok);
    assert_eq!(
        h.transfers[0].failure.as_deref(),
        Some("the session ended during the transfer")
    );
    assert!(h.s.failure().is_some());
    assert!(h.s.is_finished());
    // Late events of the stopped channel change nothing.
    assert!(h.data_ev(1, DataEvent::Failed("aborted".into())).is_empty());
    assert_eq!(h.ended.len(), 1);
}

#[test]
fn a_channel_still_finishing_at_close_gets_its_grace_then_is_reported_once() {
    let mut h = transferring(b"RETR f\r\n");
    h.data_ev(1, DataEvent::ServerToClientDone);
    h.server(b"226 done\r\n");
    h.client(b"QUIT\r\n");
    h.server(b"221 bye\r\n");
    h.ev(Event::ClientClosed);
    assert!(h.s.is_closed() && !h.s.is_finished());
    assert_eq!(h.s.failure(), None, "a QUIT after the 226 is a normal end");
    assert_eq!(h.s.poll_timeout(), Some(h.now + CLOSING_GRACE));
    // It never reports: at the end of the grace it is failed, once.
    assert!(h
        .advance(CLOSING_GRACE - Duration::from_millis(1))
        .is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.ended.len(), 1);
    assert!(!h.ended[0].ok);
    assert!(h.s.is_finished());
    assert_eq!(h.s.poll_timeout(), None);
}

#[test]
fn a_listener_nobody_used_is_counted_failed_and_a_replaced_one_not_at_all() {
    let mut h = Harness::relaying();
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,137\r\n");
    // Replaced by a newer PASV before anyone connected: released, not counted.
    h.client(b"PASV\r\n");
    h.server(b"227 =192,0,2,10,19,138\r\n");
    assert_eq!(h.data.cancelled, vec![1]);
    assert!(h.ended.is_empty());
    // Timed out: counted as a failed channel, no transfer.
    h.data_ev(2, DataEvent::Failed("no connection within 30s".into()));
    assert_eq!(h.ended.len(), 1);
    assert!(!h.ended[0].ok && h.ended[0].transfer.is_none());
}

// ---- shutdown: a signal every session selects on ----------------------------------------

#[test]
fn on_shutdown_an_idle_session_gets_421_at_once() {
    let mut h = Harness::relaying();
    h.client(b"NOOP\r\n");
    h.server(b"200 ok\r\n");
    let deadline = h.now + Duration::from_secs(30);
    let out = h.ev(Event::Shutdown { deadline });
    assert_eq!(
        out,
        vec![
            to_client("421 Service shutting down; closing control connection.\r\n"),
            Action::Close
        ]
    );
    assert!(h.s.is_finished());
    assert_eq!(h.s.failure(), None);
}

#[test]
fn on_shutdown_a_transfer_ends_first_with_its_226_then_421() {
    let mut h = transferring(b"RETR f\r\n");
    let deadline = h.now + Duration::from_secs(30);
    assert!(
        h.ev(Event::Shutdown { deadline }).is_empty(),
        "the transfer goes on"
    );
    assert_eq!(h.s.poll_timeout(), Some(deadline));
    assert!(
        h.server(b"226 done\r\n").is_empty(),
        "226 waits for the data"
    );
    assert_eq!(
        h.data_ev(1, DataEvent::ServerToClientDone),
        vec![to_client("226 done\r\n")]
    );
    let stats = DataStats {
        to_server: 0,
        to_client: 9,
        seconds: 1.0,
        counted: true,
    };
    assert_eq!(
        h.data_ev(1, DataEvent::Finished(stats)),
        vec![
            to_client("421 Service shutting down; closing control connection.\r\n"),
            Action::Close
        ]
    );
    assert_eq!(h.ended.len(), 1);
    assert!(h.ended[0].ok, "the transfer completed");
    assert!(h.s.is_finished());
}

#[test]
fn on_shutdown_a_transfer_past_the_grace_is_cut_with_421() {
    let mut h = transferring(b"RETR huge\r\n");
    let grace = Duration::from_secs(30);
    let deadline = h.now + grace;
    h.ev(Event::Shutdown { deadline });
    assert!(h.advance(grace - Duration::from_secs(1)).is_empty());
    let out = h.advance(Duration::from_secs(1));
    assert_eq!(
        out,
        vec![
            to_client("421 Service shutting down; closing control connection.\r\n"),
            Action::Close
        ]
    );
    assert_eq!(h.data.cancelled, vec![1], "the channel is stopped");
    assert_eq!(h.ended.len(), 1);
    assert!(!h.ended[0].ok);
}

#[test]
fn a_synch_with_urgent_data_goes_to_the_server_as_it_came() {
    let mut h = Harness::relaying();
    // BSD ftp: IAC IP, IAC as urgent data (not in band), DM ABOR; split across reads.
    assert!(h.client(b"\xff\xf4").is_empty());
    assert_eq!(
        h.client(b"\xf2ABOR\r\n"),
        vec![Action::ToServerSynch(b"ABOR\r\n".to_vec())]
    );
    // The next command is an ordinary one.
    assert_eq!(h.client(b"NOOP\r\n"), vec![to_server("NOOP\r\n")]);
    // All of the Synch in band: passed as sent.
    assert_eq!(
        h.client(b"\xff\xf4\xff\xf2ABOR\r\n"),
        vec![Action::ToServer(b"\xff\xf4\xff\xf2ABOR\r\n".to_vec())]
    );
    // Any command may follow a Synch (STAT during a transfer).
    assert_eq!(
        h.client(b"\xff\xf4\xf2STAT\r\n"),
        vec![Action::ToServerSynch(b"STAT\r\n".to_vec())]
    );
    // Answered here: nothing is left urgent for a later line.
    h.client(b"\xff\xf4\xf2PORT 1,2,3\r\n");
    assert_eq!(h.client(b"NOOP\r\n"), vec![to_server("NOOP\r\n")]);
    assert!(h.refused.is_empty() || h.refused == vec![Rule::MalformedAddress]);
}

#[test]
fn abor_never_cancels_a_channel_its_transfer_claimed_even_before_it_reported() {
    let mut h = Harness::relaying();
    h.client(b"PASV\r\n");
    h.server(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n");
    h.client(b"RETR big\r\n");
    // The client connected and data flows, but the session has not heard of it yet when
    // the ABOR line arrives (events race under load).
    h.client(b"ABOR\r\n");
    assert!(h.data.cancelled.is_empty(), "{:?}", h.data.cancelled);
    // An announced channel nobody claimed is still released by ABOR.
    let mut h = Harness::relaying();
    h.client(b"PASV\r\n");
    h.server(b"227 Entering Passive Mode (192,0,2,10,19,137).\r\n");
    h.client(b"ABOR\r\n");
    assert_eq!(h.data.cancelled.len(), 1);
}
