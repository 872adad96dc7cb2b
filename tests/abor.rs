//! ABOR as RFC 959 §4.1.3 and BSD ftp(1) send it (`IAC IP`, `IAC` as TCP urgent data,
//! `DM ABOR`) and as a plain line, in passive and active mode, compared reply for reply
//! with the same client talking to the same server directly: vsftpd with
//! `async_abor_enable=YES` (it acts on the urgent data during a transfer) and with its
//! default, and pyftpdlib. The publish and explicit roles on loopback.

mod common;

use std::process::Command;

use common::{config_file, data_ports, free_port, run, support, PyFtpd, Running, Vsftpd};

/// Size of the file being aborted: far more than the socket buffers hold.
const BIG: u64 = 256 << 20;

#[derive(Debug, PartialEq)]
struct Seen {
    replies: Vec<u64>,
    bytes: u64,
    after: String,
}

fn probe(port: u16, mode: &str, form: &str, user: &str) -> Seen {
    let out = run(Command::new("python3").arg(support("abor_probe.py")).args([
        "127.0.0.1",
        &port.to_string(),
        mode,
        form,
        "big.bin",
        user,
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "probe: {e}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Seen {
        replies: v["replies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect(),
        bytes: v["bytes"].as_u64().unwrap(),
        after: v["after"].as_str().unwrap().to_owned(),
    }
}

/// A publish gateway and an explicit proxy for a server on `server_port`; their ports.
fn gateways(server_port: u16) -> (Running, u16, u16, (tempfile::TempDir, std::path::PathBuf)) {
    let (publish, explicit) = (free_port(), free_port());
    let yaml = format!(
        "gateways:\n  - name: pub\n    listen: \"127.0.0.1:{publish}\"\n    upstream: \"127.0.0.1:{server_port}\"\n    server_side: {{ address: 127.0.0.1 }}\n    data_ports: \"{}\"\n  - name: proxy\n    listen: \"127.0.0.1:{explicit}\"\n    upstream: \"user@host\"\n    server_side: {{ address: 127.0.0.1 }}\n    data_ports: \"{}\"\n    allow_servers: [\"127.0.0.1/32\"]\n    allow_server_ports: [{server_port}]\n",
        data_ports(10),
        data_ports(10)
    );
    let config = config_file("abor.yaml", &yaml);
    let gw = Running::start(&config.1);
    (gw, publish, explicit, config)
}

/// Both forms, both modes: the replies through ftpgate are the direct ones, the session
/// goes on; returns what was seen directly, per case.
fn same_as_direct(server_port: u16, what: &str) -> Vec<(String, Seen)> {
    let (gw, publish, explicit, _config) = gateways(server_port);
    let proxy_user = format!("anonymous@127.0.0.1:{server_port}");
    let mut direct_seen = Vec::new();
    for mode in ["passive", "active"] {
        for form in ["urgent", "plain"] {
            let direct = probe(server_port, mode, form, "anonymous");
            assert_eq!(
                direct.after, "ok",
                "{what} {mode} {form} direct: {direct:?}"
            );
            for (role, port, user) in [
                ("publish", publish, "anonymous"),
                ("explicit", explicit, proxy_user.as_str()),
            ] {
                let through = probe(port, mode, form, user);
                assert_eq!(
                    through.replies,
                    direct.replies,
                    "{what} {role} {mode} {form}: through ftpgate {through:?}, direct {direct:?}\n{}",
                    gw.log().join("\n")
                );
                assert_eq!(
                    through.after, "ok",
                    "{what} {role} {mode} {form}: {through:?}"
                );
                // An aborted transfer stops early through ftpgate when it does directly.
                if direct.bytes < BIG {
                    assert!(
                        through.bytes < BIG,
                        "{what} {role} {mode} {form}: {through:?}"
                    );
                }
            }
            direct_seen.push((format!("{mode} {form}"), direct));
        }
    }
    direct_seen
}

#[test]
fn vsftpd_with_async_abor_sees_the_urgent_abor_and_stops_the_transfer() {
    let Some(server) = Vsftpd::start("async_abor_enable=YES\n") else {
        return;
    };
    std::fs::File::create(server.root().join("big.bin"))
        .unwrap()
        .set_len(BIG)
        .unwrap();
    let direct = same_as_direct(server.port, "vsftpd async_abor_enable=YES");
    // The point of the urgent form: vsftpd stops the transfer early (426, 226).
    for (case, seen) in direct.iter().filter(|(c, _)| c.ends_with("urgent")) {
        assert!(seen.bytes < BIG, "{case}: {seen:?}");
        assert_eq!(seen.replies, vec![426, 226], "{case}");
    }
}

#[test]
fn vsftpd_with_its_default_answers_abor_after_the_transfer() {
    let Some(server) = Vsftpd::start("") else {
        return;
    };
    std::fs::File::create(server.root().join("big.bin"))
        .unwrap()
        .set_len(BIG)
        .unwrap();
    same_as_direct(server.port, "vsftpd default");
}

#[test]
fn pyftpdlib_answers_both_forms_as_directly() {
    let server = PyFtpd::start(&[]);
    std::fs::File::create(server.file("big.bin"))
        .unwrap()
        .set_len(BIG)
        .unwrap();
    same_as_direct(server.port, "pyftpdlib");
}

/// pure-ftpd on loopback, serving `root` as the anonymous home: it chroots to the ftp
/// account's home, so a mount namespace of its own binds `root` over it (needs root).
struct PureFtpd {
    child: std::process::Child,
    port: u16,
}

impl PureFtpd {
    fn start(root: &std::path::Path) -> Option<Self> {
        let binary = format!(
            "{}/target/peers/pure-ftpd/usr/sbin/pure-ftpd",
            env!("CARGO_MANIFEST_DIR")
        );
        let uid = run(Command::new("id").arg("-u"));
        let root_user = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        if !root_user || !std::path::Path::new(&binary).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the pure-ftpd ABOR test (root, and tests/run unpacks pure-ftpd)"
            );
            eprintln!("SKIPPED pure-ftpd ABOR test: needs root and {binary}");
            return None;
        }
        let home = run(Command::new("getent").args(["passwd", "ftp"]));
        let home = String::from_utf8_lossy(&home.stdout)
            .split(':')
            .nth(5)
            .unwrap_or("/srv/ftp")
            .to_owned();
        let port = free_port();
        let passive = free_port();
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", "mount --bind \"$1\" \"$2\" && exec \"$3\" -S \"127.0.0.1,$4\" -e -H -A -p \"$5:$5\"", "pure-ftpd"])
            .arg(root)
            .arg(&home)
            .arg(&binary)
            .arg(port.to_string())
            .arg(passive.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(Self { child, port })
    }
}

impl Drop for PureFtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pure_ftpd_answers_both_forms_as_directly() {
    let root = tempfile::tempdir().unwrap();
    let mut perms = std::fs::metadata(root.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(root.path(), perms).unwrap();
    std::fs::File::create(root.path().join("big.bin"))
        .unwrap()
        .set_len(BIG)
        .unwrap();
    let Some(server) = PureFtpd::start(root.path()) else {
        return;
    };
    same_as_direct(server.port, "pure-ftpd");
}
