//! End-to-end tests in network namespaces (LAN, router, internet, DMZ), driven from
//! `cargo test`; the labs themselves live in `tests/e2e/`:
//! - `netns.py`: the three roles with the router's forward chain closed, and the same
//!   topology with a plain NAT router where active outbound and passive publish fail;
//! - `interop.py`: roles x servers (vsftpd, pure-ftpd, pyftpdlib) x clients (curl, lftp,
//!   ftplib) through ftpgate and, side by side, the kernel's FTP helper; 40 parallel
//!   sessions per role; a server and a client killed mid-transfer;
//! - `faults.py`: peer death in each direction and mode, data-port and file-descriptor
//!   exhaustion and recovery, a churn soak, reloads under load, loss and delay
//!   (`FTPGATE_FAULTS_LONG=1` makes the soak five minutes);
//! - `kernel_path.py`: `relay: kernel`'s security rules against a server that accepts any
//!   data connection, the bytes bypassing ftpgate (CPU, `conntrack -L`, exact logs),
//!   short active listings, and start-up without CAP_NET_ADMIN;
//! - `router.py`: a router with its own accept-based firewall; `ftpgate nft --apply` and
//!   the systemd unit's commands as written; all three roles at once from
//!   `config/router.yaml`; a simulated reboot; start-up refused without privileges;
//! - `server_source.py`: the publish role with `server_source: client`: vsftpd and
//!   pure-ftpd see each internet client's own address, as behind the kernel helper's DNAT.
//!
//! Needs root. Without root each test is skipped with a loud message, except under CI
//! (`CI` set), where a skip would hide missing coverage and so fails instead.

use std::process::Command;
use std::sync::Mutex;

/// The labs share the machine's two cores; running them one at a time keeps timing sane.
static LAB: Mutex<()> = Mutex::new(());

fn run_lab(script: &str) {
    let _one_at_a_time = LAB.lock().unwrap_or_else(|p| p.into_inner());
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the network-namespace tests as root"
        );
        eprintln!("SKIPPED {script}: needs root for network namespaces and nftables");
        return;
    }
    let path = format!("{}/tests/e2e/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&path)
        .args(["--ftpgate", env!("CARGO_BIN_EXE_ftpgate")])
        .output()
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn roles_end_to_end() {
    run_lab("netns.py");
}

#[test]
fn interop_matrix_with_kernel_helper() {
    run_lab("interop.py");
}

#[test]
fn faults_end_to_end() {
    run_lab("faults.py");
}

#[test]
fn kernel_data_path() {
    run_lab("kernel_path.py");
}

#[test]
fn router_with_its_own_firewall() {
    run_lab("router.py");
}

#[test]
fn published_server_sees_the_client() {
    run_lab("server_source.py");
}
