//! FTPS termination (`tls: mode: terminate`) with real clients on loopback: curl (explicit
//! and implicit FTPS, passive and active), lftp, and Python probes for what no well-behaved
//! client does (a command behind `AUTH TLS`, a cut upload, a data connection that does not
//! resume the control session, plain text on the implicit port). The server behind is
//! pyftpdlib speaking plain FTP; every file is checked by SHA-256.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    config_file, data_ports, free_port, random_file, require, run, sha256, support, PyFtpd, Running,
};

/// A self-signed certificate for 127.0.0.1 and its key, made with openssl.
struct Cert {
    dir: tempfile::TempDir,
}

impl Cert {
    fn new() -> Self {
        require("openssl");
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("openssl")
            .current_dir(dir.path())
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-subj",
                "/CN=ftpgate-test",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

struct Lab {
    server: PyFtpd,
    cert: Cert,
    gw: Running,
    port: u16,
    implicit: u16,
    _config: (tempfile::TempDir, PathBuf),
}

impl Lab {
    /// pyftpdlib behind a publish gateway that terminates TLS; `tls` adds keys.
    fn start(tls: &str) -> Self {
        let server = PyFtpd::start(&[]);
        let cert = Cert::new();
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
            .arg(self.cert.cert())
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
            lab.cert.cert().display(),
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
        lab.cert.cert().to_str().unwrap(),
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
        lab.cert.cert().to_str().unwrap(),
        "cut.bin",
    ]);
    // The data connection itself was admitted (it resumed the session); only its end
    // without close_notify makes the server's 226 a 426.
    assert!(seen.contains("STOR: 426") && seen.contains("close_notify"), "{seen}");
    assert!(!lab.gw.log().join("\n").contains("rule=tls_reuse"));
    lab.gw.wait_for("outcome=\"failed\"");
}

#[test]
fn a_data_connection_that_does_not_resume_the_session_is_refused_unless_allowed() {
    let lab = Lab::start("");
    random_file(&lab.server.file("f.bin"), 100_000, 5);
    let port = lab.port.to_string();
    let ca = lab.cert.cert();
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
    let ca = lab.cert.cert();
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
    let cert = Cert::new();
    let other = Cert::new();
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
    std::fs::copy(lab.cert.cert(), &first).unwrap();
    let list = |ca: &Path| {
        let out = run(Command::new("curl")
            .args(["-sS", "--max-time", "10", "--ssl-reqd", "--cacert"])
            .arg(ca)
            .arg(format!("ftp://127.0.0.1:{}/", lab.port)));
        out.status.success()
    };
    assert!(list(&first));
    // The operator renews the certificate in place and reloads.
    let renewed = Cert::new();
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
    assert!(list(&renewed.cert()));
}
