//! Loopback integration tests with real peers: a pyftpdlib server, curl and Python ftplib
//! clients, through the publish and the explicit-proxy roles, in each of PASV, EPSV, PORT
//! and EPRT; then mode conversion (`server_mode`) against passive-only and active-only
//! servers, and RFC 959-only servers (no EPSV/EPRT) for IPv4 and IPv6 clients. Every
//! transferred file is checked by SHA-256.

mod common;

use std::process::Command;

use common::{
    data_ports, random_file, require, run, run_ok, sha256, support, Gateway, Mode, PyFtpd, Victim,
};

#[derive(Debug, Clone, Copy)]
enum Role {
    Publish,
    Explicit,
    /// Publish, with the client side on IPv6 and the server on IPv4.
    PublishV6,
}

impl Role {
    /// The client's own address, for active mode.
    fn client_address(self) -> &'static str {
        match self {
            Role::PublishV6 => "::1",
            _ => "127.0.0.1",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Client {
    Curl,
    Ftplib,
}

const DOWN_SIZE: usize = 4 * 1024 * 1024 + 123;
const UP_SIZE: usize = 3 * 1024 * 1024 + 7;

/// Server options: answer these commands with 500, as servers configured for one mode
/// only, or written before RFC 2428, do.
const PASSIVE_ONLY: &[&str] = &["--disable", "PORT,EPRT"];
const ACTIVE_ONLY: &[&str] = &["--disable", "PASV,EPSV"];
const RFC959_ONLY: &[&str] = &["--disable", "EPSV,EPRT"];

fn gateway_yaml(role: Role, server_port: u16, relay: &str, server_mode: &str) -> String {
    let upstream = match role {
        Role::Publish | Role::PublishV6 => format!("\"127.0.0.1:{server_port}\""),
        // The server is on loopback, one of the gateway's own addresses: an exception.
        Role::Explicit => format!(
            "\"user@host\"\n    allow_servers: [\"127.0.0.1\"]\n    allow_server_ports: [{server_port}]"
        ),
    };
    let (listen, client_side) = match role {
        Role::PublishV6 => ("[::1]:0", "::1"),
        _ => ("127.0.0.1:0", "127.0.0.1"),
    };
    format!(
        r#"
gateways:
  - name: test
    listen: "{listen}"
    upstream: {upstream}
    client_side: {{ address: "{client_side}" }}
    server_side: {{ address: 127.0.0.1 }}
    data_ports: "{ports}"
    relay: {relay}
    server_mode: {server_mode}
log: {{ level: warn }}
"#,
        ports = data_ports(50)
    )
}

/// The user name the client logs in with through `role`.
fn login(role: Role, server_port: u16) -> String {
    match role {
        Role::Publish | Role::PublishV6 => "anonymous".into(),
        Role::Explicit => format!("anonymous@127.0.0.1:{server_port}"),
    }
}

struct Run<'a> {
    role: Role,
    client: Client,
    mode: Mode,
    server: &'a PyFtpd,
    gateway: &'a Gateway,
}

impl Run<'_> {
    fn user(&self) -> String {
        login(self.role, self.server.port)
    }

    fn curl(&self, path: &str, extra: &[&str]) -> std::process::Output {
        require("curl");
        let user = self.user().replace('@', "%40").replace(':', "%3A");
        let url = format!("ftp://{user}:guest@{}/{path}", self.gateway.addr());
        let out = run_ok(
            Command::new("curl")
                .args(["-sS", "-v", "-g", "--max-time", "60"])
                .args(self.mode.curl_args(self.role.client_address()))
                .args(extra)
                .arg(url),
        );
        // curl falls back (EPSV to PASV, EPRT to PORT) silently; make sure it did not.
        let log = String::from_utf8_lossy(&out.stderr);
        let (sent, answer) = match self.mode {
            Mode::Pasv => ("> PASV", "< 227"),
            Mode::Epsv => ("> EPSV", "< 229"),
            Mode::Port => ("> PORT", "< 200"),
            Mode::Eprt => ("> EPRT", "< 200"),
        };
        assert!(
            log.contains(sent) && log.contains(answer),
            "curl did not use {:?}:\n{log}",
            self.mode
        );
        out
    }

    fn ftplib(&self, op: &[&str]) -> std::process::Output {
        let addr = self.gateway.addr();
        run_ok(
            Command::new("python3")
                .arg(support("ftpclient.py"))
                .args([
                    "--host",
                    &addr.ip().to_string(),
                    "--port",
                    &addr.port().to_string(),
                ])
                .args(["--mode", self.mode.name(), "--user", &self.user()])
                .args(op),
        )
    }

    fn list(&self) -> String {
        let out = match self.client {
            Client::Curl => self.curl("", &[]),
            Client::Ftplib => self.ftplib(&["list"]),
        };
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn get(&self, remote: &str, local: &std::path::Path) {
        match self.client {
            Client::Curl => {
                self.curl(remote, &["-o", local.to_str().unwrap()]);
            }
            Client::Ftplib => {
                self.ftplib(&["get", remote, local.to_str().unwrap()]);
            }
        }
    }

    fn put(&self, local: &std::path::Path, remote: &str) {
        match self.client {
            Client::Curl => {
                self.curl(remote, &["-T", local.to_str().unwrap()]);
            }
            Client::Ftplib => {
                self.ftplib(&["put", local.to_str().unwrap(), remote]);
            }
        }
    }
}

fn transfers(role: Role, client: Client, mode: Mode) {
    transfers_with(role, client, mode, &[], "same");
}

/// LIST, RETR and STOR through `role`, against a server started with `server_args`.
fn transfers_with(role: Role, client: Client, mode: Mode, server_args: &[&str], server_mode: &str) {
    let server = PyFtpd::start(server_args);
    let down_sha = random_file(&server.file("down.bin"), DOWN_SIZE, 1);
    // Both relays end to end: splice (the default) for curl, the portable copy for ftplib.
    let relay = match client {
        Client::Curl => "splice",
        Client::Ftplib => "copy",
    };
    let gateway = Gateway::start(&gateway_yaml(role, server.port, relay, server_mode));
    let work = tempfile::tempdir().unwrap();
    let up = work.path().join("up.bin");
    let up_sha = random_file(&up, UP_SIZE, 2);
    let r = Run {
        role,
        client,
        mode,
        server: &server,
        gateway: &gateway,
    };

    let listing = r.list();
    assert!(
        listing.contains("down.bin"),
        "LIST misses down.bin:\n{listing}"
    );

    let got = work.path().join("got.bin");
    r.get("down.bin", &got);
    assert_eq!(sha256(&got), down_sha, "RETR corrupted the file");

    r.put(&up, "up.bin");
    assert_eq!(
        sha256(&server.file("up.bin")),
        up_sha,
        "STOR corrupted the file"
    );
}

macro_rules! matrix {
    ($($name:ident: $role:ident, $client:ident, $mode:ident;)*) => {$(
        #[test]
        fn $name() {
            transfers(Role::$role, Client::$client, Mode::$mode);
        }
    )*};
}

matrix! {
    publish_curl_pasv: Publish, Curl, Pasv;
    publish_curl_epsv: Publish, Curl, Epsv;
    publish_curl_port: Publish, Curl, Port;
    publish_curl_eprt: Publish, Curl, Eprt;
    publish_ftplib_pasv: Publish, Ftplib, Pasv;
    publish_ftplib_epsv: Publish, Ftplib, Epsv;
    publish_ftplib_port: Publish, Ftplib, Port;
    publish_ftplib_eprt: Publish, Ftplib, Eprt;
    explicit_curl_pasv: Explicit, Curl, Pasv;
    explicit_curl_epsv: Explicit, Curl, Epsv;
    explicit_curl_port: Explicit, Curl, Port;
    explicit_curl_eprt: Explicit, Curl, Eprt;
    explicit_ftplib_pasv: Explicit, Ftplib, Pasv;
    explicit_ftplib_epsv: Explicit, Ftplib, Epsv;
    explicit_ftplib_port: Explicit, Ftplib, Port;
    explicit_ftplib_eprt: Explicit, Ftplib, Eprt;
    // An IPv6 client through to an IPv4 server (which speaks EPSV/EPRT).
    ipv6_client_curl_epsv: PublishV6, Curl, Epsv;
    ipv6_client_curl_eprt: PublishV6, Curl, Eprt;
    ipv6_client_ftplib_epsv: PublishV6, Ftplib, Epsv;
    ipv6_client_ftplib_eprt: PublishV6, Ftplib, Eprt;
}

#[test]
fn passive_reply_names_the_gateway_port() {
    // The client is told ftpgate's data port, not the server's: the data really crosses
    // the gateway.
    let server = PyFtpd::start(&["--passive-ports", "47000-47009"]);
    let yaml = gateway_yaml(Role::Publish, server.port, "splice", "same");
    let range = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("data_ports: "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let (first, last) = range.split_once('-').unwrap();
    let (first, last): (u16, u16) = (first.parse().unwrap(), last.parse().unwrap());
    let gateway = Gateway::start(&yaml);
    let addr = gateway.addr();
    let script = format!(
        "import ftplib\nf=ftplib.FTP()\nf.connect('{}',{})\nf.login()\nprint(f.sendcmd('PASV'))\nprint(f.sendcmd('EPSV'))\nf.quit()",
        addr.ip(),
        addr.port()
    );
    let out = run_ok(Command::new("python3").args(["-c", &script]));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let pasv = lines.next().unwrap();
    let announced = common::pasv_address(pasv);
    assert_eq!(announced.ip().octets(), [127, 0, 0, 1]);
    let port = announced.port();
    assert!((first..=last).contains(&port), "{pasv}");
    let epsv = lines.next().unwrap();
    let port: u16 = epsv
        .split("|||")
        .nth(1)
        .and_then(|rest| rest.split('|').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {epsv}"));
    assert!((first..=last).contains(&port), "{epsv}");
}

/// An explicit gateway on loopback with `extra` settings; the error of a listing through it
/// as `USER anonymous@HOST:PORT` (the listing must fail).
fn explicit_login_fails(extra: &str, host: &str, port: u16) -> String {
    let yaml = format!(
        r#"
gateways:
  - name: explicit
    listen: "127.0.0.1:0"
    upstream: "user@host"
    server_side: {{ address: 127.0.0.1 }}
    data_ports: "{}"
{extra}
log: {{ level: warn }}
"#,
        data_ports(5)
    );
    let gateway = Gateway::start(&yaml);
    let addr = gateway.addr();
    let out = run(Command::new("python3")
        .arg(support("ftpclient.py"))
        .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
        .args([
            "--mode",
            "PASV",
            "--user",
            &format!("anonymous@{host}:{port}"),
        ])
        .arg("list"));
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn explicit_proxy_refuses_denied_upstreams() {
    // With the default deny list, USER name@127.0.0.1 must not reach loopback.
    let server = PyFtpd::start(&[]);
    let err = explicit_login_fails(
        &format!("    allow_server_ports: [{}]", server.port),
        "127.0.0.1",
        server.port,
    );
    assert!(err.contains("421") && err.contains("not allowed"), "{err}");
}

#[test]
fn explicit_proxy_never_dials_the_gateway_itself() {
    // Rule gateway_address: even with an empty deny list, none of the host's own
    // addresses is an upstream; a service there (here on a non-loopback address of this
    // host, found from its interfaces) is never contacted.
    let Some(own) = if_addrs::get_if_addrs()
        .unwrap()
        .into_iter()
        .map(|i| i.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI machines have an address"
        );
        eprintln!("SKIPPED explicit_proxy_never_dials_the_gateway_itself: no non-loopback address");
        return;
    };
    let victim = Victim::bind(&own.to_string(), 0);
    let port = victim.addr.port();
    let err = explicit_login_fails(
        &format!("    deny_servers: []\n    allow_server_ports: [{port}]"),
        &own.to_string(),
        port,
    );
    assert!(err.contains("421") && err.contains("not allowed"), "{err}");
    // And loopback, which the address list names too.
    let err = explicit_login_fails(
        &format!("    deny_servers: []\n    allow_server_ports: [{port}]"),
        "127.0.0.1",
        port,
    );
    assert!(err.contains("421") && err.contains("not allowed"), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        victim.connections(),
        0,
        "the gateway's own service was contacted"
    );
}

#[test]
fn explicit_proxy_refuses_ports_outside_its_allow_list() {
    // Rule server_port: not a tunnel to SMTP on an allowed host (here the server port is
    // not in the default list [21]).
    let server = PyFtpd::start(&[]);
    let err = explicit_login_fails(
        "    allow_servers: [\"127.0.0.1\"]",
        "127.0.0.1",
        server.port,
    );
    assert!(err.contains("530") && err.contains("not allowed"), "{err}");
}

macro_rules! conversions {
    ($($name:ident: $role:ident, $client:ident, $mode:ident, $server:expr, $server_mode:expr;)*) => {$(
        #[test]
        fn $name() {
            transfers_with(Role::$role, Client::$client, Mode::$mode, $server, $server_mode);
        }
    )*};
}

conversions! {
    // server_mode: passive — an active client, a server that refuses PORT/EPRT.
    to_passive_curl_port: Publish, Curl, Port, PASSIVE_ONLY, "passive";
    to_passive_curl_eprt: Publish, Curl, Eprt, PASSIVE_ONLY, "passive";
    to_passive_ftplib_port: Explicit, Ftplib, Port, PASSIVE_ONLY, "passive";
    to_passive_ipv6_ftplib_eprt: PublishV6, Ftplib, Eprt, PASSIVE_ONLY, "passive";
    // server_mode: active — a passive client, a server that refuses PASV/EPSV.
    to_active_curl_pasv: Publish, Curl, Pasv, ACTIVE_ONLY, "active";
    to_active_curl_epsv: Publish, Curl, Epsv, ACTIVE_ONLY, "active";
    to_active_ftplib_epsv: Explicit, Ftplib, Epsv, ACTIVE_ONLY, "active";
    to_active_ipv6_curl_epsv: PublishV6, Curl, Epsv, ACTIVE_ONLY, "active";
    // RFC 959-only server: EPSV/EPRT fall back to PASV/PORT (an IPv6 client has no other way).
    rfc959_server_curl_epsv: Publish, Curl, Epsv, RFC959_ONLY, "same";
    rfc959_server_ftplib_eprt: Publish, Ftplib, Eprt, RFC959_ONLY, "same";
    rfc959_server_ipv6_curl_epsv: PublishV6, Curl, Epsv, RFC959_ONLY, "same";
    rfc959_server_ipv6_curl_eprt: PublishV6, Curl, Eprt, RFC959_ONLY, "same";
    rfc959_server_ipv6_ftplib_epsv: PublishV6, Ftplib, Epsv, RFC959_ONLY, "same";
}
