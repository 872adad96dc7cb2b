//! The `ftpgate` command line: configuration checks, start-up errors, shutdown.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;

use common::config_file;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ftpgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ftpgate"))
}

/// Runs `ftpgate VERB --config FILE` to completion.
fn ftpgate_on(verb: &str, file: &Path) -> std::process::Output {
    ftpgate()
        .args([verb, "--config"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn every_shipped_configuration_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let out = ftpgate_on("check", &path);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.contains("gateways:") && printed.contains("limits:"));
        checked += 1;
    }
    assert!(checked >= 4, "expected the example configurations");
}

#[test]
fn a_bad_configuration_is_named_precisely() {
    let (_dir, file) = config_file(
        "bad.yaml",
        "gateways:\n  - name: x\n    listen: \"127.0.0.1:2121\"\n    upstream: \"h:21\"\n    server_side: { address: 127.0.0.1 }\n    data_ports: \"9-1\"\n",
    );
    let out = ftpgate_on("check", &file);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("gateways[0].data_ports"), "{err}");
    assert!(err.contains("line 6"), "{err}");
    // `run` refuses it the same way, before binding anything.
    let out = ftpgate_on("run", &file);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn an_address_in_use_stops_start_up_with_a_clear_error() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let (_dir, file) = config_file(
        "busy.yaml",
        &format!("gateways:\n  - name: busy\n    listen: \"127.0.0.1:{port}\"\n    upstream: \"127.0.0.1:21\"\n    server_side: {{ address: 127.0.0.1 }}\n"),
    );
    let out = ftpgate_on("run", &file);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway \"busy\": cannot listen on 127.0.0.1:") && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn sigterm_stops_the_gateway_cleanly() {
    let (_dir, file) = config_file(
        "ok.yaml",
        "gateways:\n  - name: ok\n    listen: \"127.0.0.1:0\"\n    upstream: \"127.0.0.1:21\"\n    server_side: { address: 127.0.0.1 }\n",
    );
    let mut child = ftpgate()
        .args(["run", "--config"])
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("ftpgate ready") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "exited before ready"
        );
    }
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn check_quiet_prints_nothing_for_a_valid_configuration_and_errors_for_a_bad_one() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let out = ftpgate()
        .args(["check", "--quiet", "--config"])
        .arg(dir.join("outbound.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    let (_d, bad) = config_file("bad.yaml", "gateways: []\nlimits: { max_sessions: 0 }\n");
    let out = ftpgate()
        .args(["check", "--quiet", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        !out.stderr.is_empty(),
        "a bad configuration is still reported"
    );
}

#[test]
fn sessions_says_what_to_check_when_there_is_no_socket_or_nobody_listens() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let out = ftpgate()
        .args(["sessions", "--socket"])
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("admin: { socket: PATH }") && err.contains("--socket"),
        "{err}"
    );
    // A socket file left from an earlier run: nobody listens on it.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = ftpgate()
        .args(["sessions", "--socket"])
        .arg(&stale)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("nobody listens") && err.contains("not running"),
        "{err}"
    );
}
