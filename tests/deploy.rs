//! Every shipped deploy file is checked: the nftables rule files parse (`nft -c`), the
//! systemd unit passes `systemd-analyze verify`, the configurations inside the Kubernetes
//! ConfigMap and the container image are valid, and every metric the Grafana dashboard
//! queries exists in a real scrape of a gateway that moved a file.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{data_ports, free_port, random_file, require, PyFtpd, Running};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Without the privilege a check needs: skipped loudly, or a failure under CI.
fn skip_unless(condition: bool, test: &str, why: &str) -> bool {
    if condition {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run {test}: {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    true
}

#[test]
fn nftables_files_parse() {
    if skip_unless(is_root(), "nftables_files_parse", "nft -c needs root") {
        return;
    }
    require("nft");
    let ns = format!("ftpgate-nftcheck-{}", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success());
    let mut checked = 0;
    for entry in std::fs::read_dir(repo("deploy/nftables")).unwrap() {
        let file = entry.unwrap().path();
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "-c", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    assert!(
        checked >= 3,
        "expected the outbound, TPROXY and publish rule files"
    );
}

#[test]
fn systemd_unit_verifies() {
    require("systemd-analyze");
    let unit = std::fs::read_to_string(repo("deploy/systemd/ftpgate.service")).unwrap();
    // verify checks that the binaries exist: point the unit at the one under test.
    let unit = unit.replace("/usr/local/bin/ftpgate", env!("CARGO_BIN_EXE_ftpgate"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ftpgate.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn kubernetes_configmap_holds_a_valid_configuration() {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/ftpgate.yaml")).unwrap();
    let mut configs = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
        if value["kind"] == "ConfigMap" {
            let config = value["data"]["ftpgate.yaml"].as_str().unwrap();
            ftpgate::config::Config::parse(config, "ConfigMap ftpgate").unwrap();
            configs += 1;
        }
        if value["kind"] == "DaemonSet" {
            let spec = &value["spec"]["template"]["spec"];
            assert_eq!(spec["hostNetwork"], true);
        }
    }
    assert_eq!(configs, 1);
}

#[test]
fn container_image_copies_what_exists_and_a_valid_configuration() {
    let text = std::fs::read_to_string(repo("deploy/container/Containerfile")).unwrap();
    let mut copies = 0;
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(repo(source).exists(), "{line}: {source} does not exist");
            copies += 1;
        }
        if parts[parts.len() - 1].ends_with(".yaml") {
            ftpgate::config::Config::load(&repo(parts[1])).unwrap();
        }
    }
    assert!(copies >= 4);
}

#[test]
fn every_metric_on_the_dashboard_exists_in_a_real_scrape() {
    let server = PyFtpd::start(&[]);
    random_file(&server.file("f.bin"), 100_000, 5);
    let (port, metrics_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ftpgate.yaml");
    std::fs::write(
        &config,
        format!(
            "gateways:\n  - name: dash\n    listen: \"127.0.0.1:{port}\"\n    upstream: \"127.0.0.1:{}\"\n    server_side: {{ address: 127.0.0.1 }}\n    data_ports: \"{}\"\nmetrics:\n  listen: \"127.0.0.1:{metrics_port}\"\n",
            server.port,
            data_ports(10)
        ),
    )
    .unwrap();
    let _gw = Running::start(&config);
    // One transfer, so that histograms have observations.
    require("curl");
    let ok = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            &format!("ftp://127.0.0.1:{port}/f.bin"),
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut http = TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut scrape = String::new();
    http.read_to_string(&mut scrape).unwrap();
    let exposed: std::collections::HashSet<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("ftpgate_"))
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();

    let dashboard = std::fs::read_to_string(repo("deploy/grafana/ftpgate.json")).unwrap();
    let dashboard: serde_yaml::Value = serde_yaml::from_str(&dashboard).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_sequence().unwrap() {
        for target in panel["targets"].as_sequence().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("ftpgate_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    exposed.contains(name.as_str()),
                    "panel {:?} queries {name}, which a scrape does not have",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 10);
}

#[test]
fn nftables_files_are_what_ftpgate_nft_prints_for_the_example_configs() {
    let mut compared = 0;
    for entry in std::fs::read_dir(repo("deploy/nftables")).unwrap() {
        let file = entry.unwrap().path();
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let config = format!("config/{stem}.yaml");
        assert!(
            repo(&config).exists(),
            "{}: every shipped rule file is generated from config/{stem}.yaml",
            file.display()
        );
        let out = Command::new(env!("CARGO_BIN_EXE_ftpgate"))
            .current_dir(repo("."))
            .args(["nft", "--full", "--config", &config])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shipped = std::fs::read_to_string(&file).unwrap();
        assert!(
            shipped == String::from_utf8_lossy(&out.stdout),
            "{} drifted from its configuration; regenerate it:\n  ftpgate nft --full --config {config} > deploy/nftables/{stem}.nft",
            file.display()
        );
        compared += 1;
    }
    assert!(compared >= 4, "outbound, outbound-tproxy, publish, router");
}
