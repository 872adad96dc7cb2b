//! Limits, timeouts and admission rules on a live gateway (loopback, pyftpdlib upstream),
//! spoken to with a raw control connection so that every reply can be checked.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{data_ports, Gateway, PyFtpd};

/// A raw FTP control connection.
struct Control {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Control {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// Reads one whole reply (multi-line aware); "" at end of stream.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            let b = line.as_bytes();
            let first = all.as_bytes();
            let multi = first.len() > 3 && first[3] == b'-';
            if !multi || (b.len() > 3 && b[3] == b' ' && b[..3] == first[..3]) {
                return all;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }

    fn login(&mut self) {
        assert!(self.reply().starts_with("220"));
        assert!(self.cmd("USER anonymous").starts_with("331"));
        assert!(self.cmd("PASS x@").starts_with("230"));
    }
}

fn publish_yaml(server_port: u16, ports: &str, gateway_extra: &str, limits: &str) -> String {
    format!(
        r#"
gateways:
  - name: t
    listen: "127.0.0.1:0"
    upstream: "127.0.0.1:{server_port}"
    server_side: {{ address: 127.0.0.1 }}
    data_ports: "{ports}"
{gateway_extra}
limits:
{limits}
log: {{ level: warn }}
"#
    )
}

#[test]
fn sessions_per_client_are_limited() {
    let server = PyFtpd::start(&[]);
    let gw = Gateway::start(&publish_yaml(
        server.port,
        &data_ports(5),
        "",
        "  max_sessions_per_client: 2",
    ));
    let mut a = Control::connect(gw.addr());
    let mut b = Control::connect(gw.addr());
    assert!(a.reply().starts_with("220"));
    assert!(b.reply().starts_with("220"));
    let mut c = Control::connect(gw.addr());
    let refused = c.reply();
    assert!(
        refused.starts_with("421 Too many connections"),
        "{refused:?}"
    );
    assert_eq!(c.reply(), "", "the refused connection must be closed");
    // The first two are unaffected, and a place frees when one leaves.
    assert!(a.cmd("NOOP").starts_with("200"));
    drop(b);
    std::thread::sleep(Duration::from_millis(300));
    let mut d = Control::connect(gw.addr());
    assert!(d.reply().starts_with("220"));
}

#[test]
fn idle_sessions_are_closed() {
    let server = PyFtpd::start(&[]);
    let gw = Gateway::start(&publish_yaml(
        server.port,
        &data_ports(5),
        "",
        "  idle_timeout: 1s",
    ));
    let mut c = Control::connect(gw.addr());
    c.login();
    let started = std::time::Instant::now();
    let bye = c.reply();
    assert!(bye.starts_with("421 Idle timeout"), "{bye:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(c.reply(), "");
}

#[test]
fn port_exhaustion_answers_425_and_ports_return_after_the_timeout() {
    let server = PyFtpd::start(&[]);
    let gw = Gateway::start(&publish_yaml(
        server.port,
        &data_ports(1),
        "",
        "  data_accept_timeout: 1s",
    ));
    let mut a = Control::connect(gw.addr());
    a.login();
    let first = a.cmd("PASV");
    assert!(first.starts_with("227"), "{first:?}");
    // The only port is announced to `a`; nobody connects to it.
    let mut b = Control::connect(gw.addr());
    b.login();
    let refused = b.cmd("PASV");
    assert!(refused.starts_with("425"), "{refused:?}");
    // Also for active mode; and the session stays usable.
    let port = b.writer.local_addr().unwrap().port();
    let port_line = format!("PORT 127,0,0,1,{},{}", port >> 8, port & 0xff);
    assert!(b.cmd(&port_line).starts_with("425"));
    assert!(b.cmd("NOOP").starts_with("200"));
    // After data_accept_timeout the unused listener closes and its port is free again.
    std::thread::sleep(Duration::from_millis(1500));
    let again = b.cmd("PASV");
    assert!(again.starts_with("227"), "{again:?}");
    assert_eq!(
        first.split('(').nth(1),
        again.split('(').nth(1),
        "the same port returns to the pool"
    );
}

#[test]
fn clients_outside_allow_clients_are_refused() {
    let server = PyFtpd::start(&[]);
    let gw = Gateway::start(&publish_yaml(
        server.port,
        &data_ports(5),
        "    allow_clients: [\"10.0.0.0/8\"]",
        "  max_sessions: 10",
    ));
    let mut c = Control::connect(gw.addr());
    assert_eq!(c.reply(), "", "no greeting for a refused client");
}

#[test]
fn transparent_port_refuses_connections_that_were_not_redirected() {
    let yaml = format!(
        r#"
gateways:
  - name: t
    listen: "127.0.0.1:0"
    upstream: transparent
    server_side: {{ address: 127.0.0.1 }}
    client_source: gateway
    data_ports: "{}"
log: {{ level: warn }}
"#,
        data_ports(5)
    );
    let gw = Gateway::start(&yaml);
    let mut c = Control::connect(gw.addr());
    let reply = c.reply();
    assert!(
        reply.starts_with("421") && reply.contains("redirected"),
        "{reply:?}"
    );
}

#[test]
fn bytes_before_the_greeting_are_never_commands() {
    // A server that greets late, and a "client" that talks first: an HTTP request whose
    // body holds a PORT line (the NAT-slipstreaming shape). Nothing may reach the server.
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_port = slow.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = slow.accept().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let _ = s.write_all(b"220 late\r\n");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut got);
        got
    });
    let gw = Gateway::start(&publish_yaml(
        slow_port,
        &data_ports(5),
        "",
        "  max_line: 2048",
    ));
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

#[test]
fn over_long_lines_end_only_that_session() {
    let server = PyFtpd::start(&[]);
    let gw = Gateway::start(&publish_yaml(
        server.port,
        &data_ports(5),
        "",
        "  max_line: 128",
    ));
    let mut other = Control::connect(gw.addr());
    other.login();
    let mut c = Control::connect(gw.addr());
    c.login();
    let reply = c.cmd(&format!("RETR {}", "a".repeat(200)));
    assert!(reply.starts_with("500"), "{reply:?}");
    assert!(c.reply().starts_with("421"));
    assert_eq!(c.reply(), "");
    assert!(
        other.cmd("NOOP").starts_with("200"),
        "other sessions are unaffected"
    );
}
