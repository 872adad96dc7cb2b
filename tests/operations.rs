//! Operating the `ftpgate` binary: SIGHUP reload during a transfer, a broken
//! configuration on reload, SIGTERM during a transfer.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{data_ports, free_port, random_file, require, sha256, Control, PyFtpd, Running};

fn gateway(name: &str, port: u16, server_port: u16) -> String {
    format!(
        "  - name: {name}\n    listen: \"127.0.0.1:{port}\"\n    upstream: \"127.0.0.1:{server_port}\"\n    server_side: {{ address: 127.0.0.1 }}\n    data_ports: \"{}\"\n",
        data_ports(20)
    )
}

fn write_config(path: &Path, gateways: &[String]) {
    let text = format!(
        "gateways:\n{}limits:\n  shutdown_grace: 20s\nlog:\n  level: info\n",
        gateways.concat()
    );
    std::fs::write(path, text).unwrap();
}

/// A rate-limited download through `port`, in the background.
fn slow_download(port: u16, out: &Path) -> Child {
    require("curl");
    Command::new("curl")
        .args(["-sS", "--limit-rate", "4M", "--max-time", "60", "-o"])
        .arg(out)
        .arg(format!("ftp://127.0.0.1:{port}/big.bin"))
        .spawn()
        .unwrap()
}

fn server_with_big_file() -> (PyFtpd, String) {
    let server = PyFtpd::start(&[]);
    let sha = random_file(&server.file("big.bin"), 12 * 1024 * 1024, 11);
    (server, sha)
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn reload_applies_to_new_sessions_and_leaves_transfers_alone() {
    let (server, sha) = server_with_big_file();
    let dir = tempfile::tempdir().unwrap();
    let config: PathBuf = dir.path().join("ftpgate.yaml");
    let (p1, p2) = (free_port(), free_port());
    write_config(&config, &[gateway("a", p1, server.port)]);
    let gw = Running::start(&config);

    let out = dir.path().join("during-reload.bin");
    let mut transfer = slow_download(p1, &out);
    std::thread::sleep(Duration::from_millis(700));

    // Add a gateway: it serves at once, and the transfer goes on.
    write_config(
        &config,
        &[gateway("a", p1, server.port), gateway("b", p2, server.port)],
    );
    let mark = gw.lines();
    gw.signal("HUP");
    gw.wait_for_after(mark, "configuration reloaded");
    let mut c = Control::connect(local(p2));
    c.login();
    assert!(c.cmd("NOOP").starts_with("200"));

    // A broken configuration is refused; both gateways keep serving.
    std::fs::write(&config, "gateways:\n  - name: a\n    listen: nowhere\n").unwrap();
    let mark = gw.lines();
    gw.signal("HUP");
    gw.wait_for_after(mark, "reload failed; keeping the running configuration");
    for port in [p1, p2] {
        let mut c = Control::connect(local(port));
        c.login();
        assert!(c.cmd("NOOP").starts_with("200"));
    }

    // Removing a gateway stops its listener; its open session goes on.
    write_config(&config, &[gateway("a", p1, server.port)]);
    let mark = gw.lines();
    gw.signal("HUP");
    gw.wait_for_after(mark, "gateway removed");
    assert!(std::net::TcpStream::connect(local(p2)).is_err());
    assert!(
        c.cmd("NOOP").starts_with("200"),
        "the removed gateway's session lives on"
    );

    assert!(transfer.wait().unwrap().success());
    assert_eq!(
        sha256(&out),
        sha,
        "the transfer across three reloads is intact"
    );
}

#[test]
fn sigterm_lets_a_running_transfer_finish() {
    let (server, sha) = server_with_big_file();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ftpgate.yaml");
    let port = free_port();
    write_config(&config, &[gateway("a", port, server.port)]);
    let mut gw = Running::start(&config);
    let out = dir.path().join("during-shutdown.bin");
    let mut transfer = slow_download(port, &out);
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    gw.signal("TERM");
    gw.wait_for("shutting down");
    // No new sessions...
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::net::TcpStream::connect(local(port)).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(std::net::TcpStream::connect(local(port)).is_err());
    // ...but the transfer completes, and then ftpgate exits 0 within the grace period.
    assert!(transfer.wait().unwrap().success());
    assert_eq!(sha256(&out), sha);
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn sessions_lists_live_sessions_and_their_data_channels() {
    let server = PyFtpd::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/admin.sock");
    let config = dir.path().join("ftpgate.yaml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "gateways:\n{}admin:\n  socket: \"{}\"\n",
            gateway("a", port, server.port),
            socket.display()
        ),
    )
    .unwrap();
    let _gw = Running::start(&config);
    let sessions = || {
        let out = Command::new(env!("CARGO_BIN_EXE_ftpgate"))
            .args(["sessions", "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let mut c = Control::connect(local(port));
    c.login();
    assert!(c.cmd("PASV").starts_with("227"));
    let view = sessions();
    let client = c.writer.local_addr().unwrap();
    assert!(
        view.contains(&format!(
            "gateway=a client={client} server=127.0.0.1:{}",
            server.port
        )),
        "{view}"
    );
    assert!(
        view.contains("mode=passive") && view.contains("state=listening"),
        "{view}"
    );
    assert!(view.ends_with("1 session(s)\n"), "{view}");
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sessions().ends_with("0 session(s)\n") {
        assert!(Instant::now() < deadline, "the closed session stays listed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn systemd_is_told_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let server = PyFtpd::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ftpgate.yaml");
    write_config(&config, &[gateway("a", free_port(), server.port)]);
    // Stand in for systemd: the notify protocol is datagrams on $NOTIFY_SOCKET.
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut gw = Running::start_with_env(&config, &[("NOTIFY_SOCKET", notify_path.as_os_str())]);
    assert!(next().contains("READY=1"));
    gw.signal("HUP");
    assert!(next().contains("RELOADING=1"));
    assert!(next().contains("READY=1"));
    gw.signal("TERM");
    assert!(next().contains("STOPPING=1"));
    assert!(gw.child.wait().unwrap().success());
}

#[test]
fn sigterm_tells_idle_clients_421_and_lets_transfers_end_with_226_first() {
    let (server, sha) = server_with_big_file();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ftpgate.yaml");
    let port = free_port();
    write_config(&config, &[gateway("a", port, server.port)]);
    let mut gw = Running::start(&config);

    let mut idle = Control::connect(local(port));
    idle.login();
    let mut busy = Control::connect(local(port));
    busy.login();
    busy.cmd("TYPE I");
    let pasv = busy.cmd("PASV");
    let mut data = std::net::TcpStream::connect(local(common::pasv_address(&pasv).port())).unwrap();
    busy.writer.write_all(b"RETR big.bin\r\n").unwrap();
    assert!(busy.reply().starts_with('1'));
    // The client reads its data slowly, so that the transfer spans the shutdown.
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match data.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    });
    std::thread::sleep(Duration::from_millis(300));
    gw.signal("TERM");

    // The idle client is told at once, then the connection closes.
    let bye = idle.reply();
    assert!(bye.starts_with("421 Service shutting down"), "{bye:?}");
    assert_eq!(idle.reply(), "", "closed after the 421");
    // The transfer completes: 226 after the last byte, then 421.
    let got = reader.join().unwrap();
    let file = dir.path().join("got.bin");
    std::fs::write(&file, &got).unwrap();
    assert_eq!(sha256(&file), sha, "the whole file arrived");
    assert!(
        busy.reply().starts_with("226"),
        "the transfer's own reply first"
    );
    assert!(busy.reply().starts_with("421 Service shutting down"));
    assert_eq!(busy.reply(), "");
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn refusals_of_servers_and_unused_data_ports_name_their_rule() {
    let server = PyFtpd::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("refusals.yaml");
    let explicit = format!(
        "  - name: proxy\n    listen: \"127.0.0.1:{}\"\n    upstream: \"user@host\"\n    server_side: {{ address: 127.0.0.1 }}\n    deny_servers: [\"127.0.0.0/8\"]\n    allow_server_ports: [{}]\n    data_ports: \"{}\"\n",
        free_port(),
        server.port,
        data_ports(5)
    );
    write_config(
        &config,
        &[gateway("pub", free_port(), server.port), explicit],
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("limits:\n", "limits:\n  data_accept_timeout: 1s\n");
    std::fs::write(&config, text).unwrap();
    let gw = Running::start(&config);
    // deny_servers: the explicit role refuses a server in the list.
    let mut c = Control::connect(gw.listening("proxy"));
    c.reply();
    c.cmd(&format!("USER anonymous@127.0.0.1:{}", server.port));
    gw.wait_for("rule=deny_servers");
    // data_accept_timeout: a passive port nobody connects to.
    let mut c = Control::connect(gw.listening("pub"));
    c.login();
    assert!(c.cmd("PASV").starts_with("227"));
    gw.wait_for("rule=data_accept_timeout");
}
