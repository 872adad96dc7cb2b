//! Adversarial tests, one or more per rule of DESIGN.md §6 (see docs/security.md).
//!
//! Each runs against a permissive real peer (pyftpdlib with `--permit-foreign` and
//! `--permit-privileged`) or a scripted hostile server, so that only ftpgate stands in the
//! way; where it makes sense the attack is first shown to succeed directly against that
//! peer. The third host of an attack is a listener on 127.0.0.2.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{
    data_ports, port_arg, random_file, sha256, Control, Gateway, PyFtpd, Scripted, Victim,
};

fn gateway_to(server: SocketAddr, gateway_extra: &str, limits: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
gateways:
  - name: sec
    listen: "127.0.0.1:0"
    upstream: "{server}"
    server_side: {{ address: 127.0.0.1 }}
    data_ports: "{ports}"
{gateway_extra}
limits:
  data_accept_timeout: 3s
{limits}
log: {{ level: warn }}
"#,
        ports = data_ports(10)
    ))
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits up to two seconds for a condition that proves an attack got through.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn permissive_server() -> PyFtpd {
    let server = PyFtpd::start(&["--permit-foreign", "--permit-privileged"]);
    random_file(&server.file("f.bin"), 200_000, 9);
    server
}

/// Directly against `server`: PORT to `target`, RETR, and the target receives the file.
fn attack_directly(server: &PyFtpd, target: &Victim) {
    let mut c = Control::connect(local(server.port));
    c.login();
    let r = c.cmd(&format!("PORT {}", port_arg(target.addr)));
    assert!(r.starts_with("200"), "the permissive peer refused: {r}");
    c.cmd("TYPE I");
    c.cmd("RETR f.bin");
    assert!(
        eventually(|| target.bytes() >= 200_000),
        "the attack did not work even directly: the test would prove nothing"
    );
}

#[test]
fn ftp_bounce_to_a_third_host_is_refused() {
    let server = permissive_server();
    attack_directly(&server, &Victim::bind("127.0.0.2", 0));

    let victim = Victim::bind("127.0.0.2", 0);
    let gw = gateway_to(local(server.port), "", "");
    let mut c = Control::connect(gw.addr());
    c.login();
    let r = c.cmd(&format!("PORT {}", port_arg(victim.addr)));
    assert!(r.starts_with("504"), "{r}");
    let r = c.cmd(&format!("EPRT |1|127.0.0.2|{}|", victim.addr.port()));
    assert!(r.starts_with("504"), "{r}");
    // The server never learnt the victim's address (pyftpdlib falls back to RFC 959's
    // default data port, the control connection's own source, which is ftpgate's).
    c.cmd("RETR f.bin");
    assert!(
        !eventually(|| victim.connections() > 0),
        "the victim was contacted"
    );
}

#[test]
fn privileged_data_ports_are_refused() {
    let server = permissive_server();
    // A "service" on a privileged port of the client's own address.
    let Ok(victim) = std::panic::catch_unwind(|| Victim::bind("127.0.0.1", 1021)) else {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIPPED privileged_data_ports_are_refused: binding port 1021 needs root");
        return;
    };
    attack_directly(&server, &victim);
    let before = victim.connections();

    let gw = gateway_to(local(server.port), "", "");
    let mut c = Control::connect(gw.addr());
    c.login();
    let r = c.cmd(&format!("PORT {}", port_arg(victim.addr)));
    assert!(r.starts_with("504"), "{r}");
    let r = c.cmd("EPRT |1|127.0.0.1|1021|");
    assert!(r.starts_with("504"), "{r}");
    c.cmd("RETR f.bin");
    assert!(!eventually(|| victim.connections() > before));
}

#[test]
fn a_second_host_cannot_steal_an_announced_data_port() {
    let server = PyFtpd::start(&[]);
    let sha = random_file(&server.file("f.bin"), 300_000, 4);
    let gw = gateway_to(local(server.port), "", "");
    let mut c = Control::connect(gw.addr());
    c.login();
    c.cmd("TYPE I");
    let pasv = c.cmd("PASV");
    let numbers: Vec<u16> = pasv[pasv.find('(').unwrap() + 1..pasv.find(')').unwrap()]
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect();
    let data_port = numbers[4] * 256 + numbers[5];

    // The thief, from another address, is first.
    let thief = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    thief
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    thief.connect(&local(data_port).into()).unwrap();
    let mut thief: TcpStream = thief.into();
    thief
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut stolen = Vec::new();
    let _ = thief.read_to_end(&mut stolen);
    assert!(stolen.is_empty(), "the thief got {} bytes", stolen.len());

    // The client still gets its file, whole.
    let mut data = TcpStream::connect(local(data_port)).unwrap();
    c.writer.write_all(b"RETR f.bin\r\n").unwrap();
    assert!(c.reply().starts_with("1"));
    let mut got = Vec::new();
    data.read_to_end(&mut got).unwrap();
    assert!(c.reply().starts_with("226"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("got"), &got).unwrap();
    assert_eq!(sha256(&dir.path().join("got")), sha);
}

#[test]
fn a_227_that_answers_no_pasv_opens_nothing() {
    let victim = Victim::bind("127.0.0.2", 0);
    let numbers = port_arg(victim.addr);
    let pasv_text = format!("227 Entering Passive Mode ({numbers})");
    let replies = {
        let pasv_text = pasv_text.clone();
        move |line: &str| -> String {
            let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
            match verb {
                "USER" => "331 ok\r\n".into(),
                "PASS" => "230 ok\r\n".into(),
                // Inside a multi-line reply.
                "SYST" => format!("215-Hello\r\n{pasv_text}\r\n215 UNIX\r\n"),
                // As the text of an error.
                "CWD" => format!("550 {pasv_text}\r\n"),
                // An echoed file name.
                "RETR" => format!("550 {arg}: no such file\r\n"),
                // A bare 227 answering something else.
                "NOOP" => format!("{pasv_text}\r\n"),
                _ => "500 no\r\n".into(),
            }
        }
    };
    let server = Scripted::start(replies);
    let gw = gateway_to(server.addr, "", "");
    let mut c = Control::connect(gw.addr());
    c.login();
    // Every reply reaches the client byte for byte: not rewritten, so nothing announced.
    assert_eq!(
        c.cmd("SYST"),
        format!("215-Hello\r\n{pasv_text}\r\n215 UNIX\r\n")
    );
    assert_eq!(c.cmd("CWD x"), format!("550 {pasv_text}\r\n"));
    assert_eq!(
        c.cmd(&format!("RETR {pasv_text}")),
        format!("550 {pasv_text}: no such file\r\n")
    );
    assert_eq!(c.cmd("NOOP"), format!("{pasv_text}\r\n"));
    // Anything connecting to the address those 227s name must not be ftpgate.
    assert!(!eventually(|| victim.connections() > 0));
}

#[test]
fn a_227_naming_another_host_is_dialled_at_the_servers_address() {
    // The server's real data port on its own address, and the same port on a victim.
    let server_data = Victim::bind("127.0.0.1", 0);
    let port = server_data.addr.port();
    let victim = Victim::bind("127.0.0.2", port);
    let numbers = port_arg(victim.addr);
    let server = Scripted::start(move |line: &str| match line {
        l if l.starts_with("USER") => "331 ok\r\n".into(),
        l if l.starts_with("PASS") => "230 ok\r\n".into(),
        "PASV" => format!("227 Entering Passive Mode ({numbers})\r\n"),
        _ => "500 no\r\n".into(),
    });
    let gw = gateway_to(server.addr, "", "");
    let mut c = Control::connect(gw.addr());
    c.login();
    let pasv = c.cmd("PASV");
    assert!(pasv.contains("(127,0,0,1,"), "{pasv}");
    let announced: Vec<u16> = pasv[pasv.find('(').unwrap() + 1..pasv.find(')').unwrap()]
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect();
    let _data = TcpStream::connect(local(announced[4] * 256 + announced[5])).unwrap();
    assert!(eventually(|| server_data.connections() == 1));
    assert_eq!(
        victim.connections(),
        0,
        "ftpgate dialled the address in the 227"
    );
}

#[test]
fn bytes_before_the_greeting_are_never_commands() {
    // A server that greets late, and a "client" that talks first: an HTTP request whose
    // body holds a PORT line (the NAT-slipstreaming shape). Nothing may reach the server.
    let slow = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_addr = slow.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        // ftpgate may close the session before its upstream connect even started: then
        // the server hears nothing at all, which is as good.
        slow.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut s = loop {
            match slow.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => return Vec::new(),
            }
        };
        s.set_nonblocking(false).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let _ = s.write_all(b"220 late\r\n");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    });
    let gw = gateway_to(slow_addr, "", "");
    let mut c = Control::connect(gw.addr());
    c.writer
        .write_all(b"POST / HTTP/1.1\r\nContent-Length: 20\r\n\r\nPORT 127,0,0,1,0,22\r\n")
        .unwrap();
    let reply = c.reply();
    assert!(reply.starts_with("421"), "{reply:?}");
    let seen_by_server = server.join().unwrap();
    assert!(
        seen_by_server.is_empty(),
        "server received {:?}",
        String::from_utf8_lossy(&seen_by_server)
    );
}

fn login_only(line: &str) -> String {
    match line.split(' ').next().unwrap_or("") {
        "USER" => "331 ok\r\n".into(),
        "PASS" => "230 ok\r\n".into(),
        _ => "200 ok\r\n".into(),
    }
}

#[test]
fn a_line_with_nul_ends_the_session_and_reaches_nobody() {
    let server = Scripted::start(login_only);
    let gw = gateway_to(server.addr, "", "");
    let mut c = Control::connect(gw.addr());
    c.login();
    let r = c.cmd("NOOP\0PORT 127,0,0,1,200,1");
    assert!(r.starts_with("500"), "{r}");
    assert!(c.reply().starts_with("421"));
    assert_eq!(c.reply(), "", "closed");
    assert!(
        server
            .received()
            .iter()
            .all(|l| !l.contains("NOOP") && !l.contains("PORT")),
        "{:?}",
        server.received()
    );
}

#[test]
fn malformed_numbers_are_refused_and_never_forwarded() {
    let server = Scripted::start(login_only);
    let gw = gateway_to(server.addr, "", "");
    let mut c = Control::connect(gw.addr());
    c.login();
    for bad in [
        "PORT 127,0,0,256,4,1",
        "PORT 127,0,0,1,0,0",
        "PORT 127,0,0,1,4,1,7",
        "PORT 127,0,0,-1,4,1",
        "PORT 127,0,0,1,4,99999999999999999999",
        "PORT 127,0,0,1,4",
        "EPRT |1|127.0.0.1|0|",
        "EPRT |1|127.0.0.1|70000|",
        "EPRT |3|127.0.0.1|2000|",
        "EPRT |1|127.0.0.256|2000|",
    ] {
        let r = c.cmd(bad);
        assert!(r.starts_with("501"), "{bad}: {r}");
    }
    assert!(c.cmd("NOOP").starts_with("200"), "the session goes on");
    let received = server.received();
    assert!(
        received
            .iter()
            .all(|l| !l.starts_with("PORT") && !l.starts_with("EPRT")),
        "{received:?}"
    );
}

#[test]
fn a_flood_of_control_connections_is_capped() {
    let server = Scripted::start(login_only);
    let gw = gateway_to(server.addr, "", "  max_sessions: 4");
    let mut conns: Vec<Control> = (0..8).map(|_| Control::connect(gw.addr())).collect();
    let greetings: Vec<String> = conns.iter_mut().map(|c| c.reply()).collect();
    let admitted = greetings.iter().filter(|g| g.starts_with("220")).count();
    let refused = greetings
        .iter()
        .filter(|g| g.starts_with("421 Too many connections"))
        .count();
    assert_eq!((admitted, refused), (4, 4), "{greetings:?}");
    for (c, g) in conns.iter_mut().zip(&greetings) {
        if g.starts_with("220") {
            assert!(
                c.cmd("NOOP").starts_with("200"),
                "admitted sessions keep working"
            );
        }
    }
}

#[test]
fn auth_tls_is_refused_by_default_and_passed_through_on_request() {
    let server = Scripted::start(|line: &str| match line {
        "AUTH TLS" => "234 go ahead\r\n".into(),
        other => login_only(other),
    });
    let gw = gateway_to(server.addr, "", "");
    let mut c = Control::connect(gw.addr());
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("AUTH TLS").starts_with("534"));
    assert!(!server.received().iter().any(|l| l.starts_with("AUTH")));

    let gw = gateway_to(server.addr, "    tls: passthrough", "");
    let mut c = Control::connect(gw.addr());
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("AUTH TLS").starts_with("234"));
    assert!(server.received().iter().any(|l| l == "AUTH TLS"));
}
