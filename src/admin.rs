//! The live view of sessions (`ftpgate sessions`, like `conntrack -L` for the kernel
//! helper): a registry the shell keeps up to date, and a local Unix socket that writes a
//! snapshot of it to whoever connects.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use crate::plan::ChannelId;

/// Why the admin socket could not be served.
#[derive(Debug, thiserror::Error)]
#[error("admin socket {path}: {error}")]
pub struct AdminError {
    /// The configured path.
    pub path: PathBuf,
    /// Why.
    pub error: io::Error,
}

/// What `ftpgate sessions` shows of one data channel.
#[derive(Debug, Clone)]
struct ChannelView {
    mode: &'static str,
    port: u16,
    state: &'static str,
}

/// What `ftpgate sessions` shows of one control session.
#[derive(Debug, Clone)]
struct SessionView {
    gateway: Arc<str>,
    client: SocketAddr,
    server: Option<SocketAddr>,
    /// ftpgate's end of the connection to the server (the client's own address with
    /// `server_source: client`).
    source: Option<SocketAddr>,
    started: Instant,
    channels: BTreeMap<ChannelId, ChannelView>,
}

/// Live sessions of all gateways.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<BTreeMap<u64, SessionView>>,
}

/// One session's place in the registry; removes it when dropped.
#[derive(Debug)]
pub struct Entry {
    registry: Arc<Registry>,
    id: u64,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, SessionView>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session.
    pub fn open(self: &Arc<Self>, id: u64, gateway: Arc<str>, client: SocketAddr) -> Entry {
        self.lock().insert(
            id,
            SessionView {
                gateway,
                client,
                server: None,
                source: None,
                started: Instant::now(),
                channels: BTreeMap::new(),
            },
        );
        Entry {
            registry: Arc::clone(self),
            id,
        }
    }

    /// The snapshot `ftpgate sessions` prints: a line per session, a line per channel.
    pub fn render(&self) -> String {
        let sessions = self.lock();
        let mut out = String::new();
        for (id, s) in sessions.iter() {
            let server = s.server.map_or_else(|| "-".to_owned(), |a| a.to_string());
            let source = s.source.map_or_else(|| "-".to_owned(), |a| a.to_string());
            let _ = writeln!(
                out,
                "session id={id} gateway={} client={} server={server} source={source} age={}s",
                s.gateway,
                s.client,
                s.started.elapsed().as_secs()
            );
            for (cid, c) in &s.channels {
                let _ = writeln!(
                    out,
                    "  data id={cid} mode={} port={} state={}",
                    c.mode, c.port, c.state
                );
            }
        }
        let _ = writeln!(out, "{} session(s)", sessions.len());
        out
    }
}

impl Entry {
    fn update(&self, f: impl FnOnce(&mut SessionView)) {
        if let Some(s) = self.registry.lock().get_mut(&self.id) {
            f(s);
        }
    }

    /// The upstream is connected.
    pub fn server(&self, addr: SocketAddr, source: Option<SocketAddr>) {
        self.update(|s| {
            s.server = Some(addr);
            s.source = source;
        });
    }

    /// A data channel was announced on `port`.
    pub fn channel_opened(&self, id: ChannelId, mode: &'static str, port: u16) {
        self.update(|s| {
            s.channels.insert(
                id,
                ChannelView {
                    mode,
                    port,
                    state: "listening",
                },
            );
        });
    }

    /// A data channel changed state (`relaying`, `server-done`).
    pub fn channel_state(&self, id: ChannelId, state: &'static str) {
        self.update(|s| {
            if let Some(c) = s.channels.get_mut(&id) {
                c.state = state;
            }
        });
    }

    /// A data channel ended.
    pub fn channel_closed(&self, id: ChannelId) {
        self.update(|s| {
            s.channels.remove(&id);
        });
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// Serves snapshots on a Unix socket at `path` (mode 0600; a stale socket file is
/// replaced). Runs until the task is dropped.
pub async fn serve(path: &Path, registry: Arc<Registry>) -> Result<(), AdminError> {
    let err = |error| AdminError {
        path: path.to_owned(),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    tokio::spawn(async move {
        loop {
            if let Ok((mut conn, _)) = listener.accept().await {
                let snapshot = registry.render();
                let _ = conn.write_all(snapshot.as_bytes()).await;
            }
        }
    });
    Ok(())
}

/// Why `ftpgate sessions` got no snapshot, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("cannot read sessions from {path}: {error}{}", hint(.error))]
pub struct FetchError {
    /// The socket asked.
    pub path: PathBuf,
    /// Why.
    pub error: io::Error,
}

/// What an operator should check after `error`.
fn hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::NotFound => {
            " (is ftpgate running with `admin: { socket: PATH }` in its configuration? \
             pass that path with --socket)"
        }
        io::ErrorKind::ConnectionRefused => {
            " (the socket file is there but nobody listens: ftpgate is not running, \
             or this file is left from an earlier run)"
        }
        io::ErrorKind::PermissionDenied => " (run as the user ftpgate runs as, or root)",
        _ => "",
    }
}

/// Reads a snapshot from the admin socket at `path` (for `ftpgate sessions`).
pub fn fetch(path: &Path) -> Result<String, FetchError> {
    use std::io::Read;
    let err = |error| FetchError {
        path: path.to_owned(),
        error,
    };
    let mut s = String::new();
    std::os::unix::net::UnixStream::connect(path)
        .map_err(err)?
        .read_to_string(&mut s)
        .map_err(err)?;
    Ok(s)
}
