//! Limits, timeouts and admission rules on a live gateway (loopback, pyftpdlib upstream),
//! spoken to with a raw control connection so that every reply can be checked.

mod common;

use std::time::Duration;

use common::{data_ports, Control, Gateway, PyFtpd};

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
    // The gateway notices the close asynchronously; give it a few seconds at most.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut greeting = String::new();
    while std::time::Instant::now() < deadline {
        greeting = Control::connect(gw.addr()).reply();
        if greeting.starts_with("220") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(greeting.starts_with("220"), "{greeting:?}");
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
fn a_trickle_of_bytes_does_not_keep_a_session_open() {
    // Rules idle_timeout and line_timeout: a byte every 0.3 s never completes a command;
    // it neither refreshes the idle timer nor holds the session past line_timeout.
    let server = PyFtpd::start(&[]);
    let gw = Gateway::start(&publish_yaml(
        server.port,
        &data_ports(5),
        "",
        "  idle_timeout: 3s\n  line_timeout: 1s",
    ));
    let mut c = Control::connect(gw.addr());
    c.login();
    let started = std::time::Instant::now();
    let writer = {
        let mut w = c.writer.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            for _ in 0..30 {
                if w.write_all(b"N").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let bye = c.reply();
    assert!(
        bye.starts_with("421 Timeout waiting for the end"),
        "{bye:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(c.reply(), "");
    writer.join().unwrap();

    // Complete commands keep a session open past its idle timeout.
    let mut c = Control::connect(gw.addr());
    c.login();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1000));
        assert!(c.cmd("NOOP").starts_with("200"));
    }
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
