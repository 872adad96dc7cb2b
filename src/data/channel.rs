//! One data channel: accept the expected peer on a one-shot listener, dial the other end,
//! relay both directions with half-close, and report what happened to the session.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use super::ports::PortLease;
use crate::session::{ChannelId, DataEvent, DataPlan, DialSource, Side};
use crate::sys;
use crate::telemetry;

/// Relay buffer per direction.
const RELAY_BUFFER: usize = 64 * 1024;

/// Why a data channel ended without relaying.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Nobody (or only strangers) connected in time.
    #[error("no connection from {expected} within {timeout:?}")]
    AcceptTimeout {
        /// The peer that was expected.
        expected: IpAddr,
        /// How long it waited.
        timeout: Duration,
    },
    /// Accepting failed.
    #[error("accept: {0}")]
    Accept(io::Error),
    /// Dialling the other end failed or timed out.
    #[error("dial {to}: {source}")]
    Dial {
        /// Where to.
        to: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The relay broke (reset, write error).
    #[error("relay: {0}")]
    Relay(io::Error),
}

/// What a channel task needs besides its plan.
#[derive(Debug, Clone)]
pub struct ChannelContext {
    /// Gateway name, for logs and metrics.
    pub gateway: std::sync::Arc<str>,
    /// How long the listener waits, and how long a dial may take.
    pub timeout: Duration,
    /// Where events go: the session's event queue.
    pub events: mpsc::UnboundedSender<(ChannelId, DataEvent)>,
}

/// Runs a data channel to its end, reporting events. The lease (and with it the port) is
/// released as soon as the listener is no longer needed.
pub async fn run(
    id: ChannelId,
    listener: TcpListener,
    lease: PortLease,
    plan: DataPlan,
    ctx: ChannelContext,
) {
    let started = Instant::now();
    let outcome = establish_and_relay(id, listener, lease, &plan, &ctx).await;
    let event = match outcome {
        Ok((up, down)) => {
            tracing::info!(
                channel = id,
                bytes_to_server = up,
                bytes_to_client = down,
                seconds = started.elapsed().as_secs_f64(),
                "data channel finished"
            );
            DataEvent::Finished
        }
        Err(e) => {
            telemetry::data_failed(&ctx.gateway);
            DataEvent::Failed(e.to_string())
        }
    };
    // The session may be gone already; nothing to do then.
    let _ = ctx.events.send((id, event));
}

async fn establish_and_relay(
    id: ChannelId,
    listener: TcpListener,
    lease: PortLease,
    plan: &DataPlan,
    ctx: &ChannelContext,
) -> Result<(u64, u64), ChannelError> {
    let accepted = accept_expected(&listener, plan.expect_peer, ctx).await?;
    drop(listener);
    drop(lease);
    let dialed = tokio::time::timeout(ctx.timeout, dial(plan.dial, plan.dial_from))
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")))
        .map_err(|source| ChannelError::Dial {
            to: plan.dial,
            source,
        })?;
    let (client, server) = match plan.listener_faces {
        Side::Client => (accepted, dialed),
        Side::Server => (dialed, accepted),
    };
    let _ = ctx.events.send((id, DataEvent::Established));
    relay(id, client, server, ctx)
        .await
        .map_err(ChannelError::Relay)
}

/// Accepts connections until one comes from `expected`; others are closed at once and do
/// not use up the listener (DESIGN.md §6 rule 6).
async fn accept_expected(
    listener: &TcpListener,
    expected: IpAddr,
    ctx: &ChannelContext,
) -> Result<TcpStream, ChannelError> {
    let deadline = tokio::time::Instant::now() + ctx.timeout;
    loop {
        let accepted = tokio::time::timeout_at(deadline, listener.accept())
            .await
            .map_err(|_| ChannelError::AcceptTimeout {
                expected,
                timeout: ctx.timeout,
            })?;
        let (stream, peer) = accepted.map_err(ChannelError::Accept)?;
        if peer.ip().to_canonical() == expected.to_canonical() {
            return Ok(stream);
        }
        telemetry::refused(&ctx.gateway, "data_peer");
        tracing::warn!(rule = "data_peer", %peer, %expected, "closed data connection from an unexpected peer");
    }
}

/// Connects to `to`, starting from `from`.
pub async fn dial(to: SocketAddr, from: DialSource) -> io::Result<TcpStream> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    match from {
        DialSource::Bind(ip) if ip.is_unspecified() => {}
        DialSource::Bind(ip) => socket.bind(SocketAddr::new(ip, 0))?,
        DialSource::Transparent(ip) => {
            sys::set_transparent(&socket, ip.is_ipv6())?;
            socket.bind(SocketAddr::new(ip, 0))?;
        }
    }
    socket.connect(to).await
}

/// Relays until both directions have ended; returns bytes (client→server, server→client).
async fn relay(
    id: ChannelId,
    client: TcpStream,
    server: TcpStream,
    ctx: &ChannelContext,
) -> io::Result<(u64, u64)> {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    let upload = copy_half(client_rd, server_wr);
    let download = async {
        let n = copy_half(server_rd, client_wr).await;
        if n.is_ok() {
            let _ = ctx.events.send((id, DataEvent::ServerToClientDone));
        }
        n
    };
    // An error in either direction (a reset, say) ends both: the transfer is over.
    let (up, down) = tokio::try_join!(upload, download)?;
    telemetry::relayed(&ctx.gateway, up, down);
    Ok((up, down))
}

/// Copies one direction until EOF, then passes the FIN on.
async fn copy_half(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) -> io::Result<u64> {
    let mut buf = vec![0u8; RELAY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
    }
    // The peer may have closed entirely already; the FIN is then moot.
    let _ = to.shutdown().await;
    Ok(total)
}
