//! End-to-end tests in network namespaces: LAN, router, internet and DMZ, with the
//! router's forward chain closed so that only ftpgate carries FTP, vsftpd as the server,
//! curl and lftp as clients. The topology, rule files and cells live in
//! `tests/e2e/netns.py`; this test runs it against the freshly built binary.
//!
//! Needs root. Without root it is skipped with a loud message, except under CI
//! (`CI` set), where a skip would hide missing coverage and so fails instead.

use std::process::Command;

#[test]
fn netns_end_to_end() {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    let is_root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    if !is_root {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the network-namespace tests as root"
        );
        eprintln!("SKIPPED netns_end_to_end: needs root for network namespaces and nftables");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/netns.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--ftpgate", env!("CARGO_BIN_EXE_ftpgate")])
        .output()
        .expect("run tests/e2e/netns.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "network-namespace cells failed:\n{stdout}\n{stderr}"
    );
}
