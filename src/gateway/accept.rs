//! Accepting control connections: the accept loop (with a descriptor in reserve for when
//! the process runs out, rule `fd_exhausted`), then admission (`allow_clients`, session
//! limits, the transparent role's original destination) and the session's task.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::config::Upstream;
use crate::ftp::replies::Response;
use crate::rules::Rule;
use crate::telemetry::{self, LogLimiter};

use super::connection::Connection;
use super::control::ControlStream;
use super::upstream::{transparent_target, Target};
use super::GatewayContext;
use crate::tls::SessionTls;

/// Refused connections are logged at most this often (rule logs are rate-limited,
/// DESIGN.md §6.15); `ftpgate_refusals_total` counts every one.
static ADMISSION_LOG: LogLimiter = LogLimiter::new(10, Duration::from_secs(10));

/// Accept failures are logged at most this often, with the number held back.
static ACCEPT_LOG: LogLimiter = LogLimiter::new(1, Duration::from_secs(10));

/// One descriptor held in reserve: when the process runs out, it is given up for a moment
/// to accept a waiting connection and answer it `421` instead of leaving it unanswered.
static RESERVE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Session ids, unique in this process, for logs.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

fn reserve() -> MutexGuard<'static, Option<std::fs::File>> {
    RESERVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the reserve descriptor (once per process) if it is not held yet.
pub(super) fn fill_reserve() {
    let mut reserve = reserve();
    if reserve.is_none() {
        *reserve = std::fs::File::open("/dev/null").ok();
    }
}

/// Accepts one waiting connection with the reserve descriptor and answers it `421`;
/// returns whether there was one to answer.
fn shed_with_reserve(listener: &TcpListener, gateway: &str) -> bool {
    let mut reserve = reserve();
    if reserve.take().is_none() {
        return false;
    }
    let shed = match socket2::SockRef::from(listener).accept() {
        Ok((conn, _)) => {
            let _ = conn.send(&Response::out_of_descriptors().to_bytes());
            telemetry::refused(gateway, Rule::FdExhausted);
            telemetry::session_closed(gateway, "refused");
            true
        }
        Err(_) => false,
    };
    *reserve = std::fs::File::open("/dev/null").ok();
    shed
}

/// Whether an accept failed for want of file descriptors (per process or system-wide).
fn out_of_descriptors(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE))
}

/// Accepts control connections until aborted; each gets a task of its own. `implicit`:
/// the implicit FTPS listener, where TLS starts with the first byte.
pub(super) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ArcSwap<GatewayContext>>,
    implicit: bool,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(10);
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u64;
    loop {
        let error = match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = MIN_BACKOFF;
                tokio::spawn(admit(ctx.load_full(), stream, peer, implicit));
                continue;
            }
            Err(e) => e,
        };
        failures += 1;
        let name = Arc::clone(&ctx.load().name);
        let exhausted = out_of_descriptors(&error);
        let shed = exhausted && shed_with_reserve(&listener, &name);
        if ACCEPT_LOG.admit().is_some() {
            if exhausted {
                tracing::error!(gateway = %name, %error, failures, rule = %Rule::FdExhausted,
                    "out of file descriptors: new connections are answered 421 until sessions end");
            } else {
                tracing::error!(gateway = %name, %error, failures, "accept failed");
            }
            failures = 0;
        }
        if !shed {
            // Nothing could be answered: wait for sessions to end instead of spinning.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// The implicit FTPS listener's handshake, before a byte is written: the session's TLS
/// and the plain text that came with the handshake; `None` when there was no handshake
/// (the client is closed then, without a word).
async fn implicit_tls(
    ctx: &GatewayContext,
    client: &mut ControlStream,
) -> Option<(Option<SessionTls>, Vec<u8>)> {
    let tls = match ctx.tls.as_ref()?.session() {
        Ok(tls) => tls,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up this session's TLS");
            return None;
        }
    };
    let within = ctx.limits.line_timeout.0;
    match client
        .accept_tls(Arc::clone(&tls.control), within, true)
        .await
    {
        Ok(early) => Some((Some(tls), early)),
        Err(why) => {
            tracing::info!(error = %why, "implicit FTPS: no TLS handshake; closed");
            client.shutdown().await;
            None
        }
    }
}

/// Counts and (rate-limited) logs a connection refused before its session started.
fn refuse_connection(ctx: &GatewayContext, peer: SocketAddr, rule: Rule, what: &str) {
    telemetry::refused(&ctx.name, rule);
    telemetry::session_closed(&ctx.name, "refused");
    if let Some(suppressed) = ADMISSION_LOG.admit() {
        tracing::warn!(gateway = %ctx.name, client = %peer, %rule, suppressed, "{what}");
    }
}

/// Admits a control connection (or refuses it) and runs its session to the end. On the
/// implicit FTPS listener nothing is written before the TLS handshake completed: a
/// refused client is closed without a word, and so is one that speaks plain text.
async fn admit(ctx: Arc<GatewayContext>, mut stream: TcpStream, peer: SocketAddr, implicit: bool) {
    let client_ip = peer.ip().to_canonical();
    if !ctx.cfg.client_allowed(client_ip) {
        refuse_connection(&ctx, peer, Rule::AllowClients, "refused control connection");
        return;
    }
    let ticket = match ctx.admission.admit(client_ip, &ctx.limits) {
        Ok(t) => t,
        Err(limit) => {
            refuse_connection(&ctx, peer, limit, "session limit reached");
            if !implicit {
                let _ = stream
                    .write_all(&Response::too_many_connections().to_bytes())
                    .await;
            }
            return;
        }
    };
    let target = match &ctx.cfg.upstream {
        Upstream::Transparent => match transparent_target(&ctx, &stream) {
            Ok(t) => Some(Target::Addr(t)),
            Err((rule, why)) => {
                refuse_connection(&ctx, peer, rule, &why);
                let _ = stream
                    .write_all(&Response::refused_connection(&why).to_bytes())
                    .await;
                return;
            }
        },
        Upstream::Fixed { host, port } => Some(Target::Name(host.clone(), *port)),
        Upstream::Explicit => None,
    };
    telemetry::session_opened(&ctx.name);
    let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "session",
        id,
        gateway = %ctx.name,
        client = %peer,
        server = tracing::field::Empty
    );
    let entry = ctx.registry.open(id, Arc::clone(&ctx.name), peer);
    let outcome = async {
        tracing::info!("session opened");
        let mut client = ControlStream::plain(stream);
        // Explicit FTPS sets up its TLS at AUTH; implicit FTPS before anything else.
        let (tls, early) = if implicit {
            match implicit_tls(&ctx, &mut client).await {
                Some(secured) => secured,
                None => return "error",
            }
        } else {
            (None, Vec::new())
        };
        // Built here and moved into run(): the task holds one connection, not copies.
        let connection = Connection::new(Arc::clone(&ctx), client, peer, target, entry, tls, early);
        match connection.run().await {
            None => {
                tracing::info!("session closed");
                "ok"
            }
            Some(why) => {
                tracing::info!(error = %why, "session ended");
                "error"
            }
        }
    }
    .instrument(span)
    .await;
    telemetry::session_closed(&ctx.name, outcome);
    drop(ticket);
}
