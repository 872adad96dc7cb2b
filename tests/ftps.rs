//! FTPS termination (`tls: mode: terminate`) with real clients on loopback: curl (explicit
//! and implicit FTPS), lftp (passive and active), and Python probes for what no
//! well-behaved client does (a command behind `AUTH TLS`, a cut upload, a data connection
//! that does not resume the control session, plain text on the implicit port). Behind it,
//! pyftpdlib speaking plain FTP, and vsftpd speaking FTPS with its defaults
//! (`require_ssl_reuse=YES`) for `tls.upstream: explicit|implicit`, its certificate
//! checked against a CA; every file is checked by SHA-256.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    config_file, data_ports, free_port, random_file, require, run, sha256, support, PyFtpd,
    Running, Vsftpd,
};

/// A CA and a server certificate it signed for 127.0.0.1 (what `upstream_ca` checks).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        require("openssl");
        let dir = tempfile::tempdir().unwrap();
        let sh = |script: &str| {
            let out = Command::new("sh")
                .current_dir(dir.path())
                .args(["-ec", script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout server.key -out server.csr -subj /CN=ftp.internal.test 2>/dev/null
            printf 'subjectAltName=IP:127.0.0.1,DNS:ftp.internal.test\\nbasicConstraints=CA:FALSE\\n' > ext
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -out server.pem -days 2 -extfile ext 2>/dev/null");
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The server's certificate chain.
    fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server's key.
    fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The CA that signed it (what clients check against).
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

struct Lab {
    server: PyFtpd,
    cert: Pki,
    gw: Running,
    port: u16,
    implicit: u16,
    _config: (tempfile::TempDir, PathBuf),
}

impl Lab {
    /// pyftpdlib behind a publish gateway that terminates TLS; `tls` adds keys.
    fn start(tls: &str) -> Self {
        let server = PyFtpd::start(&[]);
        let cert = Pki::new();
        let (port, implicit) = (free_port(), free_port());
        let yaml = format!(
            "gateways:\n  - name: ftps\n    listen: \"127.0.0.1:{port}\"\n    upstream: \"127.0.0.1:{}\"\n    server_side: {{ address: 127.0.0.1 }}\n    data_ports: \"{}\"\n    tls:\n      mode: terminate\n      certificate: {}\n      key: {}\n      implicit_listen: \"127.0.0.1:{implicit}\"\n{tls}log:\n  level: debug\n",
            server.port,
            data_ports(20),
            cert.cert().display(),
            cert.key().display(),
        );
        let config = config_file("ftps.yaml", &yaml);
        let gw = Running::start(&config.1);
        Self {
            server,
            cert,
            gw,
            port,
            implicit,
            _config: config,
        }
    }

    fn curl(&self, url: &str, args: &[&str]) -> std::process::Output {
        require("curl");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "--cacert"])
            .arg(self.cert.ca())
            .args(args)
            .arg(url);
        run(&mut cmd)
    }

    fn probe(&self, args: &[&str]) -> String {
        let out = run(Command::new("python3")
            .arg(support("ftps_probe.py"))
            .args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Downloads `down.bin` and uploads a file through `url` with curl `mode_args`; both
/// checked by SHA-256.
fn round_trip(lab: &Lab, url: &str, mode_args: &[&str], tag: &str) {
    let down_sha = random_file(&lab.server.file("down.bin"), 3 << 20, 7);
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("got.bin");
    let out = lab.curl(
        &format!("{url}down.bin"),
        &[mode_args, &["-o", got.to_str().unwrap()]].concat(),
    );
    assert!(
        out.status.success(),
        "{tag} RETR: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&got), down_sha, "{tag} RETR");
    let up = dir.path().join("up.bin");
    let up_sha = random_file(&up, (2 << 20) + 5, 9);
    let name = format!("up-{tag}.bin");
    let out = lab.curl(
        &format!("{url}{name}"),
        &[mode_args, &["-T", up.to_str().unwrap()]].concat(),
    );
    assert!(
        out.status.success(),
        "{tag} STOR: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&lab.server.file(&name)), up_sha, "{tag} STOR");
}

/// curl passive only: curl 7.87–7.88 (Debian 12) never starts TLS on an active-mode
/// data connection it accepted (curl/curl#10666); lftp covers active mode below.
#[test]
fn curl_explicit_and_implicit_ftps() {
    let lab = Lab::start("");
    let explicit = format!("ftp://127.0.0.1:{}/", lab.port);
    let implicit = format!("ftps://127.0.0.1:{}/", lab.implicit);
    for (url, kind) in [(&explicit, "explicit"), (&implicit, "implicit")] {
        let ssl: &[&str] = if kind == "explicit" {
            &["--ssl-reqd"]
        } else {
            &[]
        };
        round_trip(
            &lab,
            url,
            &[ssl, &["--ftp-pasv"]].concat(),
            &format!("{kind}-epsv"),
        );
        round_trip(
            &lab,
            url,
            &[ssl, &["--ftp-pasv", "--disable-epsv"]].concat(),
            &format!("{kind}-pasv"),
        );
    }
    // curl resumes the control session on every data connection: nothing was refused.
    let log = lab.gw.log().join("\n");
    assert!(!log.contains("rule=tls_reuse"), "{log}");
}

/// lftp (GnuTLS), passive and active: downloads and uploads on one session, each data
/// connection resuming the control connection's TLS session.
#[test]
fn lftp_over_explicit_ftps_passive_and_active() {
    require("lftp");
    let lab = Lab::start("");
    let down_sha = random_file(&lab.server.file("down.bin"), 1 << 20, 3);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.bin");
    let up_sha = random_file(&up, 700_001, 4);
    for passive in ["on", "off"] {
        let got = dir.path().join(format!("got-{passive}.bin"));
        let script = format!(
            "set ssl:ca-file {}; set ftp:ssl-force true; set ftp:ssl-protect-data true; \
             set ftp:passive-mode {passive}; set net:max-retries 1; set net:timeout 10; \
             open -u anonymous,x@ -p {} 127.0.0.1; put {} -o up-{passive}.bin; \
             get down.bin -o {}; put {} -o up2-{passive}.bin",
            lab.cert.ca().display(),
            lab.port,
            up.display(),
            got.display(),
            up.display()
        );
        let out = run(Command::new("lftp").args(["-c", &script]));
        assert!(
            out.status.success(),
            "passive-mode {passive}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sha256(&got), down_sha, "passive-mode {passive}");
        for name in [format!("up-{passive}.bin"), format!("up2-{passive}.bin")] {
            assert_eq!(sha256(&lab.server.file(&name)), up_sha, "{name}");
        }
    }
    let log = lab.gw.log().join("\n");
    assert!(!log.contains("rule=tls_reuse"), "{log}");
    assert_eq!(log.matches("path=\"tls\"").count(), 6, "{log}");
}

#[test]
fn a_command_behind_auth_tls_is_discarded_never_run() {
    let lab = Lab::start("");
    std::fs::write(lab.server.file("victim.txt"), b"keep me").unwrap();
    let port = lab.port.to_string();
    let seen = lab.probe(&[
        "inject",
        "127.0.0.1",
        &port,
        lab.cert.ca().to_str().unwrap(),
    ]);
    assert!(seen.contains("AUTH: 234"), "{seen}");
    assert!(
        seen.contains("PASS: 230"),
        "the session goes on inside TLS: {seen}"
    );
    assert!(lab.server.file("victim.txt").exists(), "DELE ran: {seen}");
    lab.gw.wait_for("rule=tls_injection");
}

#[test]
fn a_cut_protected_upload_is_never_reported_complete() {
    let lab = Lab::start("");
    let port = lab.port.to_string();
    let seen = lab.probe(&[
        "truncate",
        "127.0.0.1",
        &port,
        lab.cert.ca().to_str().unwrap(),
        "cut.bin",
    ]);
    // The data connection itself was admitted (it resumed the session); only its end
    // without close_notify makes the server's 226 a 426.
    assert!(
        seen.contains("STOR: 426") && seen.contains("close_notify"),
        "{seen}"
    );
    assert!(!lab.gw.log().join("\n").contains("rule=tls_reuse"));
    lab.gw.wait_for("outcome=\"failed\"");
}

#[test]
fn a_data_connection_that_does_not_resume_the_session_is_refused_unless_allowed() {
    let lab = Lab::start("");
    random_file(&lab.server.file("f.bin"), 100_000, 5);
    let port = lab.port.to_string();
    let ca = lab.cert.ca();
    let args = ["noreuse", "127.0.0.1", &port, ca.to_str().unwrap(), "f.bin"];
    // Python's ftplib does not resume sessions on data connections (as vsftpd's
    // require_ssl_reuse, ftpgate refuses it by default).
    let seen = lab.probe(&args);
    assert!(seen.contains("RETR: failed"), "{seen}");
    lab.gw.wait_for("rule=tls_reuse");
    drop(lab);
    let lab = Lab::start("      require_reuse: false\n");
    random_file(&lab.server.file("f.bin"), 100_000, 5);
    let port = lab.port.to_string();
    let ca = lab.cert.ca();
    let seen = lab.probe(&["noreuse", "127.0.0.1", &port, ca.to_str().unwrap(), "f.bin"]);
    assert!(seen.contains("RETR: ok 100000"), "{seen}");
}

#[test]
fn the_implicit_port_says_nothing_to_plain_text() {
    let lab = Lab::start("");
    let port = lab.implicit.to_string();
    let seen = lab.probe(&["plain", "127.0.0.1", &port]);
    assert!(
        seen.contains("got: b''"),
        "nothing before a handshake: {seen}"
    );
}

#[test]
fn require_refuses_plain_logins_and_clear_data() {
    let lab = Lab::start("      require: true\n");
    let plain = lab.curl(&format!("ftp://127.0.0.1:{}/", lab.port), &[]);
    assert!(!plain.status.success());
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("530"),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    // --ssl-control: TLS for the login, clear data: refused with 521.
    let clear = lab.curl(
        &format!("ftp://127.0.0.1:{}/", lab.port),
        &["--ftp-ssl-control", "-v"],
    );
    let err = String::from_utf8_lossy(&clear.stderr);
    assert!(!clear.status.success() && err.contains("521"), "{err}");
    lab.gw.wait_for("rule=tls_required");
}

#[test]
fn check_names_a_missing_or_mismatched_certificate() {
    let cert = Pki::new();
    let other = Pki::new();
    let gateway = |certificate: &Path, key: &Path| {
        format!(
            "gateways:\n  - name: ftps\n    listen: \"127.0.0.1:2121\"\n    upstream: \"127.0.0.1:21\"\n    server_side: {{ address: 127.0.0.1 }}\n    tls: {{ mode: terminate, certificate: {}, key: {} }}\n",
            certificate.display(),
            key.display()
        )
    };
    let check = |yaml: &str| {
        let (_d, file) = config_file("t.yaml", yaml);
        Command::new(env!("CARGO_BIN_EXE_ftpgate"))
            .args(["check", "--quiet", "--config"])
            .arg(&file)
            .output()
            .unwrap()
    };
    assert!(check(&gateway(&cert.cert(), &cert.key())).status.success());
    let missing = check(&gateway(Path::new("/nonexistent.pem"), &cert.key()));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("gateways[0].tls.certificate") && err.contains("/nonexistent.pem"),
        "{err}"
    );
    let mismatched = check(&gateway(&cert.cert(), &other.key()));
    let err = String::from_utf8_lossy(&mismatched.stderr);
    assert!(
        err.contains("gateways[0].tls.key") && err.contains("does not go with"),
        "{err}"
    );
    let not_pem = check(&gateway(&cert.cert(), &cert.cert()));
    let err = String::from_utf8_lossy(&not_pem.stderr);
    assert!(
        err.contains("gateways[0].tls.key") && err.contains("not a PEM private key"),
        "{err}"
    );
}

#[test]
fn sighup_gives_new_sessions_the_new_certificate_and_refuses_a_broken_one() {
    let lab = Lab::start("");
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.pem");
    std::fs::copy(lab.cert.ca(), &first).unwrap();
    let list = |ca: &Path| {
        let out = run(Command::new("curl")
            .args(["-sS", "--max-time", "10", "--ssl-reqd", "--cacert"])
            .arg(ca)
            .arg(format!("ftp://127.0.0.1:{}/", lab.port)));
        out.status.success()
    };
    assert!(list(&first));
    // The operator renews the certificate in place and reloads.
    let renewed = Pki::new();
    std::fs::copy(renewed.cert(), lab.cert.cert()).unwrap();
    std::fs::copy(renewed.key(), lab.cert.key()).unwrap();
    let seen = lab.gw.lines();
    lab.gw.signal("HUP");
    lab.gw.wait_for_after(seen, "gateway updated");
    assert!(
        list(&renewed.cert()),
        "new sessions get the renewed certificate"
    );
    assert!(!list(&first), "the old one is no longer presented");
    // A broken key on reload is refused; the running certificate stays.
    std::fs::write(lab.cert.key(), b"not a key").unwrap();
    let seen = lab.gw.lines();
    lab.gw.signal("HUP");
    lab.gw.wait_for_after(seen, "not a PEM private key");
    assert!(list(&renewed.ca()));
}

/// vsftpd with FTPS required for everything (`require_ssl_reuse=YES`, its default).
fn vsftpd_ftps(pki: &Pki, implicit: bool) -> Option<Vsftpd> {
    Vsftpd::start(&format!(
        "ssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=YES\n\
         force_anon_data_ssl=YES\nrequire_ssl_reuse=YES\nimplicit_ssl={}\n\
         rsa_cert_file={}\nrsa_private_key_file={}\n",
        if implicit { "YES" } else { "NO" },
        pki.path("server.pem"),
        pki.path("server.key"),
    ))
}

/// A gateway that terminates TLS toward curl and speaks TLS to vsftpd (`upstream`).
fn gateway_to_vsftpd(
    pki: &Pki,
    server: &Vsftpd,
    upstream: &str,
    extra: &str,
) -> (Running, u16, (tempfile::TempDir, PathBuf)) {
    let port = free_port();
    let yaml = format!(
        "gateways:\n  - name: ftps\n    listen: \"127.0.0.1:{port}\"\n    upstream: \"127.0.0.1:{}\"\n    server_side: {{ address: 127.0.0.1 }}\n    data_ports: \"{}\"\n    tls:\n      mode: terminate\n      certificate: {}\n      key: {}\n      upstream: {upstream}\n      upstream_ca: {}\n{extra}log:\n  level: debug\n",
        server.port,
        data_ports(20),
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let config = config_file("up.yaml", &yaml);
    let gw = Running::start(&config.1);
    (gw, port, config)
}

#[test]
fn tls_to_vsftpd_explicit_and_implicit_with_its_session_reuse_check() {
    let pki = Pki::new();
    for upstream in ["explicit", "implicit"] {
        let Some(server) = vsftpd_ftps(&pki, upstream == "implicit") else {
            return;
        };
        let (gw, port, _config) = gateway_to_vsftpd(&pki, &server, upstream, "");
        let down_sha = random_file(&server.root().join("down.bin"), 3 << 20, 11);
        let dir = tempfile::tempdir().unwrap();
        let ca = pki.path("ca.pem");
        for (mode, args) in [
            ("epsv", vec!["--ftp-pasv"]),
            ("pasv", vec!["--ftp-pasv", "--disable-epsv"]),
        ] {
            // Several transfers on one session: each data connection to vsftpd must resume.
            let got = dir.path().join(format!("got-{upstream}-{mode}.bin"));
            let up = dir.path().join("up.bin");
            let up_sha = random_file(&up, (1 << 20) + 3, 12);
            let url = format!("ftp://127.0.0.1:{port}/");
            for (what, file, remote) in [
                ("-o", &got, "down.bin".to_owned()),
                ("-T", &up, format!("upload/up-{mode}.bin")),
            ] {
                let out = run(Command::new("curl")
                    .args(["-sS", "--max-time", "20", "--ssl-reqd", "--cacert", &ca])
                    .args(&args)
                    .arg(what)
                    .arg(file)
                    .arg(format!("{url}{remote}")));
                assert!(
                    out.status.success(),
                    "{upstream} {mode} {what}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    gw.log().join("\n")
                );
            }
            assert_eq!(sha256(&got), down_sha, "{upstream} {mode} RETR");
            let stored = server.root().join(format!("upload/up-{mode}.bin"));
            assert_eq!(sha256(&stored), up_sha, "{upstream} {mode} STOR");
        }
        // One session, many data connections (lftp): every one resumes toward vsftpd
        // (require_ssl_reuse) with the newest ticket, uploads and downloads alike.
        require("lftp");
        let up = dir.path().join("up.bin");
        let up_sha = random_file(&up, 300_001, 13);
        let script = format!(
            "set ssl:ca-file {ca}; set ftp:ssl-force true; set ftp:ssl-protect-data true; \
             set net:max-retries 1; set net:timeout 10; open -u anonymous,x@ -p {port} 127.0.0.1; \
             get down.bin -o {d}/l1.bin; put {u} -o upload/l1.bin; get down.bin -o {d}/l2.bin; \
             put {u} -o upload/l2.bin; cls upload; get down.bin -o {d}/l3.bin",
            d = dir.path().display(),
            u = up.display()
        );
        let out = run(Command::new("lftp").args(["-c", &script]));
        assert!(
            out.status.success(),
            "{upstream} lftp: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            gw.log().join("\n")
        );
        for n in ["l1", "l2", "l3"] {
            assert_eq!(
                sha256(&dir.path().join(format!("{n}.bin"))),
                down_sha,
                "{n}"
            );
        }
        for n in ["l1", "l2"] {
            let stored = server.root().join(format!("upload/{n}.bin"));
            assert_eq!(sha256(&stored), up_sha, "{n}");
        }
        let log = gw.log().join("\n");
        assert!(log.contains("tls=true") || upstream == "explicit", "{log}");
        assert!(log.contains("server control connection protected") || upstream == "implicit");
    }
}

#[test]
fn a_server_whose_certificate_does_not_check_out_ends_the_session_before_the_login() {
    let pki = Pki::new();
    let Some(server) = vsftpd_ftps(&pki, false) else {
        return;
    };
    // The certificate is for 127.0.0.1 and ftp.internal.test, not for this name.
    let (gw, port, _config) = gateway_to_vsftpd(
        &pki,
        &server,
        "explicit",
        "      upstream_name: other.test\n",
    );
    let mut c = common::Control::connect(format!("127.0.0.1:{port}").parse().unwrap());
    let greeting = c.reply();
    assert!(
        greeting.starts_with("421 Cannot reach the server over TLS"),
        "{greeting}"
    );
    gw.wait_for("no TLS toward the server");
    assert!(!gw.log().join("\n").contains("USER"));
}

#[test]
fn a_server_that_refuses_auth_tls_ends_the_session_before_the_login() {
    // pyftpdlib without TLS answers AUTH with 500.
    let server = PyFtpd::start(&[]);
    let pki = Pki::new();
    let port = free_port();
    let yaml = format!(
        "gateways:\n  - name: ftps\n    listen: \"127.0.0.1:{port}\"\n    upstream: \"127.0.0.1:{}\"\n    server_side: {{ address: 127.0.0.1 }}\n    tls: {{ mode: terminate, certificate: {}, key: {}, upstream: explicit, upstream_ca: {} }}\n",
        server.port,
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let config = config_file("t.yaml", &yaml);
    let _gw = Running::start(&config.1);
    let mut c = common::Control::connect(format!("127.0.0.1:{port}").parse().unwrap());
    let greeting = c.reply();
    assert!(
        greeting.starts_with("421 ") && greeting.contains("AUTH TLS"),
        "{greeting}"
    );
}

#[test]
fn the_explicit_proxy_terminates_tls_before_the_client_names_its_server() {
    let server = PyFtpd::start(&[]);
    let down_sha = random_file(&server.file("down.bin"), 1 << 20, 21);
    let cert = Pki::new();
    let port = free_port();
    let yaml = format!(
        "gateways:\n  - name: proxy\n    listen: \"127.0.0.1:{port}\"\n    upstream: \"user@host\"\n    server_side: {{ address: 127.0.0.1 }}\n    data_ports: \"{}\"\n    allow_servers: [\"127.0.0.1/32\"]\n    allow_server_ports: [{}]\n    tls: {{ mode: terminate, certificate: {}, key: {}, require: true }}\n",
        data_ports(10),
        server.port,
        cert.cert().display(),
        cert.key().display(),
    );
    let config = config_file("proxy.yaml", &yaml);
    let _gw = Running::start(&config.1);
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("got.bin");
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "20", "--ssl-reqd", "--cacert"])
        .arg(cert.ca())
        .arg("-o")
        .arg(&got)
        .arg(format!(
            "ftp://anonymous%40127.0.0.1%3A{}:x@127.0.0.1:{port}/down.bin",
            server.port
        )));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&got), down_sha);
}

#[test]
fn only_tls_1_2_and_1_3_are_spoken() {
    let lab = Lab::start("");
    let connect = |version: &str| {
        // SECLEVEL=0: the client really offers the old versions (OpenSSL 3 would not).
        let out = run(Command::new("openssl")
            .args([
                "s_client",
                version,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
                "-connect",
            ])
            .arg(format!("127.0.0.1:{}", lab.implicit))
            .arg("-CAfile")
            .arg(lab.cert.ca()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for version in ["-tls1_2", "-tls1_3"] {
        let seen = connect(version);
        assert!(
            seen.contains("Verification: OK") || seen.contains("Verify return code: 0"),
            "{version}: {seen}"
        );
    }
    for version in ["-tls1", "-tls1_1"] {
        let seen = connect(version);
        assert!(
            seen.contains("Cipher is (NONE)"),
            "{version} must not be spoken: {seen}"
        );
    }
}

/// One protected control session made with rustls, idle in the explicit login phase.
fn tls_session(
    addr: std::net::SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use std::io::{BufRead, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut r = std::io::BufReader::new(tcp.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    tcp.write_all(b"AUTH TLS\r\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("234"), "{line}");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::clone(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"NOOP\r\n").unwrap();
    let mut reply = [0u8; 64];
    let n = std::io::Read::read(&mut tls, &mut reply).unwrap();
    assert!(
        reply[..n].starts_with(b"530"),
        "{:?}",
        String::from_utf8_lossy(&reply[..n])
    );
    tls
}

#[test]
fn idle_protected_sessions_cost_bounded_memory() {
    use rustls::pki_types::pem::PemObject;
    let pki = Pki::new();
    let yaml = format!(
        "gateways:\n  - name: idle\n    listen: \"127.0.0.1:0\"\n    upstream: \"user@host\"\n    server_side: {{ address: 127.0.0.1 }}\n    tls: {{ mode: terminate, certificate: {}, key: {} }}\nlimits: {{ max_sessions_per_client: 2000 }}\nlog: {{ level: info }}\n",
        pki.cert().display(),
        pki.key().display()
    );
    let (_dir, config) = config_file("idle.yaml", &yaml);
    let gw = Running::start(&config);
    let addr = gw.listening("idle");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(pki.ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    // Warm up (the first handshakes allocate what every later one reuses).
    let warm: Vec<_> = (0..20).map(|_| tls_session(addr, &client)).collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let baseline = common::rss_kib(gw.child.id());
    const SESSIONS: u64 = 400;
    let sessions: Vec<_> = (0..SESSIONS).map(|_| tls_session(addr, &client)).collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let per_session = (common::rss_kib(gw.child.id()).saturating_sub(baseline) * 1024) / SESSIONS;
    println!("{SESSIONS} idle TLS sessions: {per_session} bytes of RSS each");
    drop((warm, sessions));
    assert!(
        per_session < 48 * 1024,
        "{per_session} bytes of RSS per idle TLS session (budget 48 KiB)"
    );
}
