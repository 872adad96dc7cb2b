//! Shared helpers for integration tests: real FTP peers (pyftpdlib, curl, ftplib), an
//! in-process gateway on loopback, and files checked by SHA-256.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use sha2::{Digest, Sha256};

/// Where the Python helpers live.
pub fn support(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(script)
}

/// Fails (not skips) when a peer program is missing: `tests/run` installs them all.
pub fn require(program: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed; run tests/run, which installs it (see README)"
    );
}

/// A pyftpdlib server serving a temporary directory.
pub struct PyFtpd {
    child: Child,
    /// The control port on 127.0.0.1.
    pub port: u16,
    /// The served directory.
    pub root: tempfile::TempDir,
}

impl PyFtpd {
    /// Starts a server on 127.0.0.1 with extra arguments for ftpserver.py.
    pub fn start(extra: &[&str]) -> Self {
        require("python3");
        let root = tempfile::tempdir().unwrap();
        let mut child = Command::new("python3")
            .arg(support("ftpserver.py"))
            .arg("--root")
            .arg(root.path())
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start pyftpdlib");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!("pyftpdlib did not start (is it installed? pip install pyftpdlib): {line:?}")
            });
        Self { child, port, root }
    }

    /// Path of a file in the served directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
}

impl Drop for PyFtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway running in-process on its own runtime thread.
pub struct Gateway {
    /// Bound control addresses by gateway name.
    pub addrs: Vec<(String, SocketAddr)>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Starts every gateway of a YAML configuration.
    pub fn start(yaml: &str) -> Self {
        let config = ftpgate::config::Config::parse(yaml, "test.yaml").expect("test config");
        ftpgate::telemetry::init_logging(&config.log);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let gw = ftpgate::gateway::Gateways::start(&config).await.unwrap();
                addrs_tx.send(gw.local_addrs()).unwrap();
                let mut stop_rx = stop_rx;
                let _ = stop_rx.wait_for(|stop| *stop).await;
                gw.shutdown(Duration::from_secs(5)).await;
            });
        });
        let addrs = addrs_rx.recv().expect("gateway started");
        Self {
            addrs,
            stop,
            thread: Some(thread),
        }
    }

    /// The first gateway's control address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A data-port range of `n` ports that no other test in this process uses.
pub fn data_ports(n: u16) -> String {
    static NEXT: AtomicU16 = AtomicU16::new(41000);
    let first = NEXT.fetch_add(n, Ordering::SeqCst);
    format!("{}-{}", first, first + n - 1)
}

/// Writes `size` pseudo-random bytes (seeded) and returns their SHA-256.
pub fn random_file(path: &Path, size: usize, seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        // xorshift64*: fast, deterministic, incompressible enough for transfer tests.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        data.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    data.truncate(size);
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&data))
        .unwrap();
    hex(&Sha256::digest(&data))
}

/// SHA-256 of a file, hex.
pub fn sha256(path: &Path) -> String {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex(&Sha256::digest(&data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a command with a timeout; panics with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command (killed after 120 s) and returns its output.
pub fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// The four data-connection modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pasv,
    Epsv,
    Port,
    Eprt,
}

impl Mode {
    /// The name ftpclient.py takes.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pasv => "PASV",
            Mode::Epsv => "EPSV",
            Mode::Port => "PORT",
            Mode::Eprt => "EPRT",
        }
    }

    /// curl options that force this mode (`active_addr` for PORT/EPRT).
    pub fn curl_args(self, active_addr: &str) -> Vec<String> {
        let v: Vec<&str> = match self {
            Mode::Pasv => vec!["--ftp-pasv", "--disable-epsv"],
            Mode::Epsv => vec!["--ftp-pasv"],
            Mode::Port => vec!["--ftp-port", active_addr, "--disable-eprt"],
            Mode::Eprt => vec!["--ftp-port", active_addr],
        };
        v.into_iter().map(String::from).collect()
    }
}

/// A raw FTP control connection.
pub struct Control {
    reader: BufReader<TcpStream>,
    /// The socket, for writing raw bytes.
    pub writer: TcpStream,
}

impl Control {
    /// Connects (10 s read timeout).
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// Reads one whole reply (multi-line aware); "" at end of stream.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            let b = line.as_bytes();
            let first = all.as_bytes();
            let multi = first.len() > 3 && first[3] == b'-';
            if !multi || (b.len() > 3 && b[3] == b' ' && b[..3] == first[..3]) {
                return all;
            }
        }
    }

    /// Sends one command line and reads its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }

    /// Reads the greeting and logs in anonymously.
    pub fn login(&mut self) {
        assert!(self.reply().starts_with("220"));
        assert!(self.cmd("USER anonymous").starts_with("331"));
        assert!(self.cmd("PASS x@").starts_with("230"));
    }
}

/// A listener standing for a third host that must never be contacted.
pub struct Victim {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<(usize, Vec<u8>)>>,
}

impl Victim {
    /// Listens on `ip:port` (port 0: any) and records every connection and byte.
    pub fn bind(ip: &str, port: u16) -> Self {
        let listener = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), port)).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new((0, Vec::new())));
        let rec = Arc::clone(&received);
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                rec.lock().unwrap().0 += 1;
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                rec.lock().unwrap().1.extend_from_slice(&buf);
            }
        });
        Self { addr, received }
    }

    /// Connections received so far.
    pub fn connections(&self) -> usize {
        self.received.lock().unwrap().0
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> usize {
        self.received.lock().unwrap().1.len()
    }
}

/// The address a `227` reply announces (the numbers in its parentheses).
pub fn pasv_address(reply: &str) -> std::net::SocketAddrV4 {
    let (open, close) = (reply.find('(').unwrap(), reply.find(')').unwrap());
    let n: Vec<u16> = reply[open + 1..close]
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect();
    let ip = std::net::Ipv4Addr::new(n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8);
    std::net::SocketAddrV4::new(ip, n[4] * 256 + n[5])
}

/// `h1,h2,h3,h4,p1,p2` for an IPv4 socket address.
pub fn port_arg(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}")
    };
    let [a, b, c, d] = v4.ip().octets();
    format!("{a},{b},{c},{d},{},{}", v4.port() >> 8, v4.port() & 0xff)
}

/// A hostile (or just scripted) FTP server on 127.0.0.1: greets, records every line it
/// receives, and answers each with what `reply` returns for it.
pub struct Scripted {
    /// Its control address.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    /// Starts serving; every connection gets its own thread.
    pub fn start(reply: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        let reply = Arc::new(reply);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = Arc::clone(&received);
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let rec = Arc::clone(&rec);
                let reply = Arc::clone(&reply);
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let _ = w.write_all(b"220 scripted server\r\n");
                    for line in BufReader::new(s).split(b'\n').map_while(Result::ok) {
                        let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                        rec.lock().unwrap().push(line.clone());
                        if w.write_all(reply(&line).as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, received }
    }

    /// Every line received so far, on all connections.
    pub fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

/// The binary, running, with its log lines collected.
pub struct Running {
    /// The process.
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Starts `ftpgate run --config CONFIG` and waits until it is ready.
    pub fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[])
    }

    /// Like [`Running::start`], with extra environment variables.
    pub fn start_with_env(config: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ftpgate"))
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let running = Self { child, log };
        running.wait_for("ftpgate ready");
        running
    }

    /// Waits (10 s at most) until a log line contains `text`, counting only lines that
    /// came after `skip` lines.
    pub fn wait_for_after(&self, skip: usize, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .log
                .lock()
                .unwrap()
                .iter()
                .skip(skip)
                .any(|l| l.contains(text))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no log line with {text:?}:\n{}",
            self.log.lock().unwrap().join("\n")
        );
    }

    /// Waits (10 s at most) for a log line containing `text`.
    pub fn wait_for(&self, text: &str) {
        self.wait_for_after(0, text);
    }

    /// Log lines so far.
    pub fn lines(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server on 127.0.0.1 that runs `handle` on its first connection, in a thread.
pub fn serve_once(handle: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((s, _)) = listener.accept() {
            handle(s);
        }
    });
    addr
}

/// Writes `unit` again and again, `total` bytes at most; returns how many were written
/// before the peer closed.
pub fn flood(mut to: impl Write, unit: &[u8], total: usize) -> usize {
    let mut sent = 0;
    let block = unit.repeat((64 * 1024 / unit.len()).max(1));
    while sent < total {
        match to.write_all(&block) {
            Ok(()) => sent += block.len(),
            Err(_) => break,
        }
    }
    sent
}

/// The resident set size of a process, in KiB (from /proc).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Writes a configuration into a fresh temporary directory (kept alive by the guard).
pub fn config_file(name: &str, yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, yaml).unwrap();
    (dir, file)
}

impl Running {
    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The control address the log says gateway `name` listens on.
    pub fn listening(&self, name: &str) -> SocketAddr {
        self.wait_for("gateway listening");
        self.log()
            .iter()
            .filter(|l| l.contains("gateway listening") && l.contains(&format!("gateway={name}")))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("listen="))
                    .and_then(|a| a.parse().ok())
            })
            .unwrap_or_else(|| panic!("no listen address for {name}"))
    }
}

/// vsftpd on loopback as the launching user (`run_as_launching_user`), anonymous with
/// uploads into `upload/`; `extra` adds configuration lines. `None` (skipped loudly, a
/// failure under CI) when the binary is missing: `tests/run` unpacks it into
/// `target/peers`.
pub struct Vsftpd {
    child: Child,
    /// The control port.
    pub port: u16,
    root: tempfile::TempDir,
    _conf: tempfile::TempDir,
}

impl Vsftpd {
    /// Starts vsftpd with `extra` configuration lines.
    pub fn start(extra: &str) -> Option<Self> {
        let binary = std::env::var("VSFTPD").ok().unwrap_or_else(|| {
            format!(
                "{}/target/peers/vsftpd/usr/sbin/vsftpd",
                env!("CARGO_MANIFEST_DIR")
            )
        });
        if !Path::new(&binary).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the vsftpd tests: {binary} is missing (tests/run unpacks it)"
            );
            eprintln!("SKIPPED: {binary} is missing (tests/run unpacks vsftpd into target/peers)");
            return None;
        }
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("upload")).unwrap();
        let conf = tempfile::tempdir().unwrap();
        let empty = conf.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let port = free_port();
        let passive = free_port();
        let text = format!(
            "listen=YES\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\n\
             run_as_launching_user=YES\nanonymous_enable=YES\nlocal_enable=NO\n\
             anon_root={}\nno_anon_password=YES\nwrite_enable=YES\nanon_upload_enable=YES\n\
             anon_umask=022\npasv_enable=YES\npasv_min_port={passive}\npasv_max_port={passive}\n\
             port_enable=YES\nconnect_from_port_20=NO\nsecure_chroot_dir={}\n\
             seccomp_sandbox=NO\nxferlog_enable=NO\ndirmessage_enable=NO\n{extra}",
            root.path().display(),
            empty.display(),
        );
        let file = conf.path().join("vsftpd.conf");
        std::fs::write(&file, text).unwrap();
        let child = Command::new(binary)
            .arg(&file)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            port,
            root,
            _conf: conf,
        })
    }

    /// The served directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
