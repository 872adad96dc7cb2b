//! Fuzz harnesses: one arbitrary input in, invariants asserted (a violated invariant
//! panics). `fuzz/` drives them with libFuzzer (`cargo fuzz run -s none codec|session`);
//! the tests below drive them with random inputs on every `cargo test`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::{ClientSource, ServerMode, ServerSource, TlsPolicy, UpstreamTls};
use crate::ftp::command::{parse_command, parse_proxy_login};
use crate::ftp::hostport::{
    encode_eprt_arg, encode_port_arg, find_227, find_229, parse_eprt_arg, parse_port_arg,
};
use crate::ftp::line::{clean_line, LineFramer};
use crate::ftp::reply::{ReplyAssembler, ReplyLimits};
use crate::plan::{ChannelId, DataEvent, DataOpenError, DataPlan, DataStats, Endpoint, Ports};
use crate::session::{
    Action, Event, Session, SessionLimits, SessionParams, SideAddrs, TlsParams, UpstreamKind,
};

/// Every codec of the control protocol on arbitrary bytes: no panic, and what parses
/// re-encodes to something that parses to the same value.
pub fn codec(data: &[u8]) {
    if let Ok(addr) = parse_port_arg(data) {
        assert_eq!(parse_port_arg(encode_port_arg(addr).as_bytes()), Ok(addr));
    }
    if let Ok(addr) = parse_eprt_arg(data) {
        assert_eq!(parse_eprt_arg(encode_eprt_arg(addr).as_bytes()), Ok(addr));
    }
    if let Ok((addr, span)) = find_227(data) {
        assert_eq!(parse_port_arg(&data[span]), Ok(addr));
    }
    if let Ok((port, span)) = find_229(data) {
        assert_eq!(
            std::str::from_utf8(&data[span]).unwrap().parse::<u16>(),
            Ok(port)
        );
    }
    let _ = parse_proxy_login(data);
    let mut framer = LineFramer::new(64);
    let mut replies = ReplyAssembler::new(ReplyLimits {
        max_bytes: 256,
        max_lines: 8,
    });
    for chunk in data.chunks(7) {
        framer.push(chunk);
        while let Ok(Some(line)) = framer.next_line() {
            let _ = parse_command(&clean_line(&line));
            if let Ok(Some(r)) = replies.push_line(&line) {
                assert!(r.raw.ends_with(b"\n"));
                let _ = r.last_text();
            }
        }
    }
}

/// The client's control address in [`lab_params`].
pub const CLIENT: &str = "10.0.0.5:40001";
/// The server's control address the harness connects sessions to.
pub const SERVER: &str = "192.0.2.10:21";

/// The limits of [`lab_params`]: 64-byte client lines, 1 KiB / 16-line replies, 8
/// pipelined commands, a 60 s idle timeout and a 10 s line timeout.
pub const LAB_LIMITS: SessionLimits = SessionLimits {
    max_line: 64,
    max_reply: ReplyLimits {
        max_bytes: 1024,
        max_lines: 16,
    },
    max_pipelined: 8,
    idle_timeout: Duration::from_secs(60),
    line_timeout: Duration::from_secs(10),
};

/// Session parameters with fixed documentation addresses, shared by the harness and the
/// session tests: client 10.0.0.5, client side 10.0.0.1 announcing 198.51.100.1, server
/// side 203.0.113.1 announcing 203.0.113.2, [`LAB_LIMITS`], server port 21 only for
/// explicit logins, every rule on.
pub fn lab_params(upstream: UpstreamKind) -> SessionParams {
    SessionParams {
        upstream,
        client: CLIENT.parse().expect("constant address"),
        client_side: SideAddrs {
            address: IpAddr::from([10, 0, 0, 1]),
            announce: IpAddr::from([198, 51, 100, 1]),
        },
        server_side: SideAddrs {
            address: IpAddr::from([203, 0, 113, 1]),
            announce: IpAddr::from([203, 0, 113, 2]),
        },
        client_source: ClientSource::Gateway,
        server_source: ServerSource::Gateway,
        tls: TlsParams::default(),
        limits: LAB_LIMITS,
        allow_server_ports: vec![21],
        allow_privileged_ports: false,
        server_mode: ServerMode::Same,
    }
}

/// The shell's part for the harness: answers every [`Action::OpenChannel`] at once (or
/// fails it, when told to), and records the plans.
struct Shell {
    plans: Vec<DataPlan>,
    fail: bool,
}

impl Shell {
    /// Feeds `event`, then the answers to the channels it opened; returns every action.
    fn drive(&mut self, s: &mut Session, now: Instant, event: Event) -> Vec<Action> {
        let mut all = Vec::new();
        let mut next = vec![event];
        while let Some(event) = next.pop() {
            let actions = s.handle(now, event);
            for a in &actions {
                // The handshake the shell would make succeeds.
                if let Action::StartClientTls = a {
                    next.push(Event::ClientTls(Ok(())));
                }
                if let Action::StartServerTls = a {
                    next.push(Event::ServerTls(Ok(())));
                }
                if let Action::OpenChannel { id, plan } = a {
                    self.plans.push(plan.clone());
                    let result = if self.fail {
                        Err(DataOpenError::Exhausted)
                    } else {
                        Ok(Ports {
                            client: plan.client.accepts().then_some(50000),
                            server: plan.server.accepts().then_some(50001),
                            // Every other channel runs on the kernel path (ungated).
                            kernel: self.plans.len() % 2 == 0,
                        })
                    };
                    next.push(Event::ChannelOpened { id: *id, result });
                }
            }
            all.extend(actions);
        }
        all
    }
}

/// The session state machine driven by an arbitrary event sequence from both sides.
///
/// Input: a flags byte, then records `[kind, len, bytes...]`; one kind of record moves the
/// clock forward and delivers [`Event::Timeout`] when it is due, another starts a shutdown. Invariants: no panic;
/// every `PORT`/`EPRT` sent to the server names ftpgate's server-side address; every data
/// channel dials only the client's or the server's control address; no channel is
/// reported ended twice; after a timeout the next deadline lies in the future.
pub fn session(input: &[u8]) {
    let Some((&flags, mut rest)) = input.split_first() else {
        return;
    };
    let mut now = Instant::now();
    let mut s = Session::new(params_of(flags), now);
    let mut shell = Shell {
        plans: Vec::new(),
        fail: flags & 8 != 0,
    };
    let mut actions = s.start();
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        rest = next;
        let Some(event) = event_of(*kind, bytes, &mut now, &s) else {
            continue;
        };
        let was_timeout = event == Event::Timeout;
        actions.extend(shell.drive(&mut s, now, event));
        if was_timeout {
            // A timeout is acted on: the shell would otherwise wake up again at once.
            assert!(
                !matches!(s.poll_timeout(), Some(t) if t <= now),
                "timeout not acted on"
            );
        }
    }
    check_invariants(&actions, &shell.plans);
}

/// The session's settings, from the flags byte: role, TLS policy, privileged ports and
/// `server_mode`.
fn params_of(flags: u8) -> SessionParams {
    SessionParams {
        upstream: if flags & 1 == 0 {
            UpstreamKind::Fixed
        } else {
            UpstreamKind::Explicit
        },
        tls: TlsParams {
            policy: match (flags >> 1) % 3 {
                0 => TlsPolicy::Refuse,
                1 => TlsPolicy::Passthrough,
                _ => TlsPolicy::Terminate,
            },
            require: flags & 64 != 0,
            implicit: false,
            upstream: if flags & 128 != 0 {
                UpstreamTls::Explicit
            } else {
                UpstreamTls::Plain
            },
        },
        allow_privileged_ports: flags & 4 != 0,
        server_mode: match (flags >> 4) % 3 {
            0 => ServerMode::Same,
            1 => ServerMode::Passive,
            _ => ServerMode::Active,
        },
        ..lab_params(UpstreamKind::Fixed)
    }
}

/// The event a record stands for; a record that moves the clock yields the timeout when
/// one came due, and nothing otherwise.
fn event_of(kind: u8, bytes: &[u8], now: &mut Instant, s: &Session) -> Option<Event> {
    let first = u64::from(bytes.first().copied().unwrap_or(0));
    let id = ChannelId::from(bytes.first().copied().unwrap_or(0) % 4);
    Some(match kind % 11 {
        10 => Event::Shutdown {
            deadline: *now + Duration::from_secs(first),
        },
        9 => {
            *now += Duration::from_secs(first);
            return s
                .poll_timeout()
                .filter(|t| *t <= *now)
                .map(|_| Event::Timeout);
        }
        0..=2 => Event::ClientData(bytes.to_vec()),
        3..=5 => Event::ServerData(bytes.to_vec()),
        6 => Event::UpstreamConnected(SERVER.parse().expect("constant address")),
        7 => Event::Data(id, DataEvent::Established),
        _ => Event::Data(
            id,
            match bytes.len() % 3 {
                0 => DataEvent::ServerToClientDone,
                1 => DataEvent::Finished(DataStats {
                    to_server: 1,
                    to_client: 2,
                    seconds: 0.5,
                    counted: true,
                }),
                _ => DataEvent::Failed("fuzz".into()),
            },
        ),
    })
}

/// What must hold of everything a session did, whatever it was fed.
fn check_invariants(actions: &[Action], plans: &[DataPlan]) {
    // A 234 without a handshake of ftpgate's: the client's TLS passes through.
    let in_passthrough = actions
        .iter()
        .any(|a| matches!(a, Action::ToClient(b) if b.starts_with(b"234")))
        && !actions.iter().any(|a| matches!(a, Action::StartClientTls));
    for a in actions {
        if let Action::ToServer(b) = a {
            // In TLS passthrough the bytes are the client's own, not ftpgate's words.
            if !in_passthrough && (b.starts_with(b"PORT ") || b.starts_with(b"EPRT ")) {
                assert!(
                    b.starts_with(b"PORT 203,0,113,2,") || b.starts_with(b"EPRT |1|203.0.113.2|"),
                    "{:?}",
                    String::from_utf8_lossy(b)
                );
            }
        }
    }
    let mut ended: Vec<ChannelId> = actions
        .iter()
        .filter_map(|a| match a {
            Action::ChannelEnded(end) => Some(end.id),
            _ => None,
        })
        .collect();
    let reports = ended.len();
    ended.sort_unstable();
    ended.dedup();
    assert_eq!(ended.len(), reports, "a data channel reported twice");
    let allowed: [IpAddr; 2] = ["10.0.0.5".parse().unwrap(), "192.0.2.10".parse().unwrap()];
    for plan in plans {
        for end in [&plan.client, &plan.server] {
            let ip = match end {
                Endpoint::Dial { to, .. } => to.ip(),
                Endpoint::Accept { peer, .. } => *peer,
            };
            assert!(allowed.contains(&ip), "{plan:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn codec_on_random_bytes(data: Vec<u8>) {
            super::codec(&data);
        }

        #[test]
        fn session_on_random_events(input: Vec<u8>) {
            super::session(&input);
        }

        #[test]
        fn session_on_ftp_shaped_events(
            flags: u8,
            records in proptest::collection::vec((0u8..11, ftp_shaped()), 0..30),
        ) {
            // Start from a connected, greeted session so that the records reach deep states.
            let mut input = vec![flags & !1, 6, 0, 3, 8];
            input.extend_from_slice(b"220 hi\r\n");
            for (kind, bytes) in records {
                input.push(kind);
                input.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
                input.extend_from_slice(&bytes[..bytes.len().min(255)]);
            }
            super::session(&input);
        }
    }

    /// An address that is sometimes the client's own and sometimes anybody's.
    fn address() -> impl Strategy<Value = ([u8; 4], u16)> {
        (
            prop_oneof![Just([10, 0, 0, 5]), any::<[u8; 4]>()],
            any::<u16>(),
        )
    }

    /// Lines that look like FTP, so that random streams reach deep states.
    fn ftp_shaped() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"220 hi\r\n".to_vec()),
            Just(b"230 ok\r\n".to_vec()),
            Just(b"PASV\r\n".to_vec()),
            Just(b"EPSV\r\n".to_vec()),
            Just(b"LIST\r\n".to_vec()),
            Just(b"AUTH TLS\r\n".to_vec()),
            Just(b"234 go\r\n".to_vec()),
            Just(b"150 here\r\n".to_vec()),
            Just(b"226 done\r\n".to_vec()),
            Just(b"USER a@h:21\r\n".to_vec()),
            Just(b"\xff\xf4\xff\xf2ABOR\r\n".to_vec()),
            address().prop_map(|([a, b, c, d], p)| {
                format!("PORT {a},{b},{c},{d},{},{}\r\n", p >> 8, p & 0xff).into_bytes()
            }),
            address().prop_map(|([a, b, c, d], p)| {
                format!("EPRT |1|{a}.{b}.{c}.{d}|{p}|\r\n").into_bytes()
            }),
            address().prop_map(|([a, b, c, d], p)| {
                format!(
                    "227 Entering Passive Mode ({a},{b},{c},{d},{},{})\r\n",
                    p >> 8,
                    p & 0xff
                )
                .into_bytes()
            }),
            "EPRT \\|[12]\\|[0-9a-f.:]{1,20}\\|[0-9]{1,6}\\|\r\n".prop_map(String::into_bytes),
            "227 [ -~]{0,10}\\(([0-9]{1,3},){5}[0-9]{1,3}\\)\r\n".prop_map(String::into_bytes),
            "229 [ -~]{0,10}\\(\\|\\|\\|[0-9]{1,6}\\|\\)\r\n".prop_map(String::into_bytes),
            "[0-9]{3}[- ][ -~]{0,20}\r\n".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..40),
        ]
    }
}
