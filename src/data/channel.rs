//! One data channel: accept the expected peer on a one-shot listener, dial the other end,
//! relay both directions with half-close, and report what happened to the session. Under
//! `tls: terminate` with `PROT P` the client's connection is TLS (ftpgate the server, in
//! both modes), must resume its control connection's session (rule `tls_reuse`) and must
//! end with close_notify when it carried data: a cut upload is never a complete one.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use super::ports::PortLease;
#[cfg(target_os = "linux")]
use super::splice::{splice_until_eof, Pipe};
use crate::config::RelayMode;
use crate::plan::{ChannelId, DataEvent, DataPlan, DataStats, DialSource, Endpoint};
use crate::rules::Rule;
use crate::sys;
use crate::telemetry;
use crate::tls::UpstreamSession;

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
    /// The relay broke (reset, write error, a TLS stream cut without close_notify).
    #[error("relay: {0}")]
    Relay(io::Error),
    /// The client's TLS handshake on the data connection failed.
    #[error("TLS handshake with the client: {0}")]
    Tls(io::Error),
    /// The TLS handshake with the server on the data connection failed.
    #[error("TLS handshake with the server: {0}")]
    ServerTls(io::Error),
    /// The client's protected data connection did not resume the control connection's
    /// TLS session (rule `tls_reuse`).
    #[error("the client's protected data connection did not resume its control connection's TLS session (tls.require_reuse)")]
    TlsReuse,
}

/// TLS on the client's data connections: the session's configuration (its session cache
/// is the control connection's), and whether resuming that session is required.
#[derive(Debug, Clone)]
pub struct DataTls {
    /// The session's server configuration.
    pub config: Arc<rustls::ServerConfig>,
    /// `tls.require_reuse`.
    pub require_reuse: bool,
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
    /// How bytes are moved.
    pub relay: RelayMode,
    /// TLS toward the client, for channels whose plan asks for it.
    pub tls: Option<DataTls>,
    /// TLS toward the server, for channels whose plan asks for it.
    pub server_tls: Option<UpstreamSession>,
}

/// A data connection, plain or TLS, with its socket (to reset it when the relay breaks).
struct DataStream {
    io: Box<dyn AsyncStream>,
    socket: Option<socket2::Socket>,
}

/// What the relay needs of a connection.
trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

impl DataStream {
    fn plain(tcp: TcpStream) -> Self {
        let _ = tcp.set_nodelay(true);
        Self {
            socket: socket2::SockRef::from(&tcp).try_clone().ok(),
            io: Box::new(tcp),
        }
    }
}

/// A bound one-shot listener with the pool lease that holds its port.
#[derive(Debug)]
pub struct Listening {
    /// The listener.
    pub listener: TcpListener,
    /// Returns the port to the pool when dropped.
    pub lease: PortLease,
}

/// The listeners of one channel, one per [`Endpoint::Accept`] end of its plan.
#[derive(Debug, Default)]
pub struct Listeners {
    /// The client's end, if the client connects to ftpgate.
    pub client: Option<Listening>,
    /// The server's end, if the server connects to ftpgate.
    pub server: Option<Listening>,
}

/// Runs a data channel to its end, reporting events. The leases (and with them the ports)
/// are released as soon as the listeners are no longer needed.
pub async fn run(id: ChannelId, listeners: Listeners, plan: DataPlan, ctx: ChannelContext) {
    let mode = plan.client_mode();
    let outcome = establish_and_relay(id, listeners, &plan, &ctx, mode).await;
    let event = match outcome {
        Ok(stats) => {
            tracing::debug!(
                channel = id,
                bytes_to_server = stats.to_server,
                bytes_to_client = stats.to_client,
                seconds = stats.seconds,
                "data channel finished"
            );
            DataEvent::Finished(stats)
        }
        Err(e) => {
            match e {
                ChannelError::AcceptTimeout { .. } => {
                    telemetry::refused(&ctx.gateway, Rule::DataAcceptTimeout);
                    tracing::warn!(rule = %Rule::DataAcceptTimeout, channel = id, "{e}; data port closed");
                }
                ChannelError::TlsReuse => {
                    telemetry::refused(&ctx.gateway, Rule::TlsReuse);
                    tracing::warn!(rule = %Rule::TlsReuse, channel = id, "{e}; closed");
                }
                _ => {}
            }
            DataEvent::Failed(e.to_string())
        }
    };
    // The session may be gone already; nothing to do then.
    let _ = ctx.events.send((id, event));
}

async fn establish_and_relay(
    id: ChannelId,
    listeners: Listeners,
    plan: &DataPlan,
    ctx: &ChannelContext,
    mode: &'static str,
) -> Result<DataStats, ChannelError> {
    let opened = Instant::now();
    let client = connect_end(&plan.client, listeners.client.as_ref(), ctx);
    let server = connect_end(&plan.server, listeners.server.as_ref(), ctx);
    let (client, server) = match (&plan.client, &plan.server) {
        // Active mode: dial the client only once the server has connected for a transfer.
        (Endpoint::Dial { .. }, Endpoint::Accept { .. }) => {
            let server = server.await?;
            (client.await?, server)
        }
        // Passive mode: connect to the server's data port while the client is on its way,
        // as a direct client does right after PASV; the handshake leaves the critical path.
        // The conversions (dial both, accept both) also wait for both at once.
        _ => tokio::try_join!(client, server)?,
    };
    drop(listeners);
    // Established at the TCP level: a `150` waiting for the client's connection goes out
    // now; an FTPS client may wait for it before its handshake.
    let _ = ctx.events.send((id, DataEvent::Established));
    let established = Instant::now();
    telemetry::data_setup_seconds(&ctx.gateway, mode, (established - opened).as_secs_f64());
    let (to_server, to_client) = if plan.client_tls || plan.server_tls {
        let (client, server) = tokio::try_join!(
            client_side_tls(
                client,
                plan.client_tls.then_some(ctx.tls.as_ref()).flatten(),
                ctx
            ),
            server_side_tls(
                server,
                plan.server_tls.then_some(ctx.server_tls.as_ref()).flatten(),
                ctx
            ),
        )?;
        relay_tls(id, client, server, ctx).await
    } else {
        relay(id, client, server, ctx).await
    }
    .map_err(ChannelError::Relay)?;
    Ok(DataStats {
        to_server,
        to_client,
        seconds: established.elapsed().as_secs_f64(),
        counted: true,
    })
}

/// Gets one end's connection: accepted on its listener, or dialled.
async fn connect_end(
    end: &Endpoint,
    listening: Option<&Listening>,
    ctx: &ChannelContext,
) -> Result<TcpStream, ChannelError> {
    match (end, listening) {
        (Endpoint::Accept { peer, .. }, Some(l)) => accept_expected(&l.listener, *peer, ctx).await,
        (Endpoint::Dial { to, from }, _) => dial(*to, *from, ctx.timeout)
            .await
            .map_err(|source| ChannelError::Dial { to: *to, source }),
        (Endpoint::Accept { .. }, None) => Err(ChannelError::Accept(io::Error::new(
            io::ErrorKind::NotConnected,
            "no listener for an accepting end",
        ))),
    }
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
        telemetry::refused(&ctx.gateway, Rule::DataPeer);
        tracing::warn!(rule = %Rule::DataPeer, %peer, %expected, "closed data connection from an unexpected peer");
    }
}

/// Connects to `to`, starting from `from`, giving up (`TimedOut`) after `within`.
pub async fn dial(to: SocketAddr, from: DialSource, within: Duration) -> io::Result<TcpStream> {
    in_time(within, connect(to, from)).await
}

/// `io`, or a `TimedOut` error once `within` has passed.
async fn in_time<T>(
    within: Duration,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(within, io)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")))
}

async fn connect(to: SocketAddr, from: DialSource) -> io::Result<TcpStream> {
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
/// When the relay breaks, both connections are reset rather than closed, so that neither
/// peer takes a cut transfer for a complete one.
async fn relay(
    id: ChannelId,
    mut client: TcpStream,
    mut server: TcpStream,
    ctx: &ChannelContext,
) -> io::Result<(u64, u64)> {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let relayed = match ctx.relay {
        #[cfg(target_os = "linux")]
        RelayMode::Splice => match (Pipe::new(), Pipe::new()) {
            (Ok(up_pipe), Ok(down_pipe)) => {
                both_ways(
                    id,
                    ctx,
                    splice_half(&client, &server, &up_pipe),
                    splice_half(&server, &client, &down_pipe),
                )
                .await
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        _ => {
            let (client_rd, client_wr) = client.split();
            let (server_rd, server_wr) = server.split();
            both_ways(
                id,
                ctx,
                copy_half(client_rd, server_wr),
                copy_half(server_rd, client_wr),
            )
            .await
        }
    };
    let (up, down) = relayed.inspect_err(|_| {
        reset(&client);
        reset(&server);
    })?;
    telemetry::relayed(&ctx.gateway, up, down);
    Ok((up, down))
}

/// The TLS handshake on the client's data connection (ftpgate the server); with
/// `require_reuse`, only a resumption of the control connection's session is accepted:
/// the session's cache holds nothing else.
async fn accept_tls(
    client: TcpStream,
    tls: &DataTls,
    within: Duration,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, ChannelError> {
    let _ = client.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config));
    let stream = in_time(within, acceptor.accept(client))
        .await
        .map_err(ChannelError::Tls)?;
    let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    if tls.require_reuse && !resumed {
        reset(stream.get_ref().0);
        return Err(ChannelError::TlsReuse);
    }
    Ok(stream)
}

/// The client's connection: TLS with ftpgate as the server when `tls` is given.
async fn client_side_tls(
    client: TcpStream,
    tls: Option<&DataTls>,
    ctx: &ChannelContext,
) -> Result<DataStream, ChannelError> {
    match tls {
        Some(tls) => {
            let socket = socket2::SockRef::from(&client).try_clone().ok();
            let stream = accept_tls(client, tls, ctx.timeout).await?;
            Ok(DataStream {
                io: Box::new(stream),
                socket,
            })
        }
        None => Ok(DataStream::plain(client)),
    }
}

/// The server's connection: TLS with ftpgate as the client when `tls` is given,
/// resuming the control connection's session.
async fn server_side_tls(
    server: TcpStream,
    tls: Option<&UpstreamSession>,
    ctx: &ChannelContext,
) -> Result<DataStream, ChannelError> {
    let Some(up) = tls else {
        return Ok(DataStream::plain(server));
    };
    let _ = server.set_nodelay(true);
    let socket = socket2::SockRef::from(&server).try_clone().ok();
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&up.config));
    let stream = in_time(ctx.timeout, connector.connect(up.name.clone(), server))
        .await
        .map_err(ChannelError::ServerTls)?;
    Ok(DataStream {
        io: Box::new(stream),
        socket,
    })
}

/// [`relay`] when either connection is TLS: copied (TLS cannot be spliced). A TLS peer's
/// sending must end with close_notify; a bare FIN after bytes is a cut transfer.
async fn relay_tls(
    id: ChannelId,
    client: DataStream,
    server: DataStream,
    ctx: &ChannelContext,
) -> io::Result<(u64, u64)> {
    let DataStream {
        io: client_io,
        socket: client_socket,
    } = client;
    let DataStream {
        io: server_io,
        socket: server_socket,
    } = server;
    let (client_rd, client_wr) = tokio::io::split(client_io);
    let (server_rd, server_wr) = tokio::io::split(server_io);
    let relayed = both_ways(
        id,
        ctx,
        with_context(
            copy_half(TruncationCheck::new(client_rd), server_wr),
            "client to server",
        ),
        with_context(
            copy_half(TruncationCheck::new(server_rd), client_wr),
            "server to client",
        ),
    )
    .await;
    let (up, down) = relayed.inspect_err(|_| {
        for socket in [&client_socket, &server_socket].into_iter().flatten() {
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
    })?;
    telemetry::relayed(&ctx.gateway, up, down);
    Ok((up, down))
}

/// Names the direction in a relay error.
async fn with_context(
    half: impl std::future::Future<Output = io::Result<u64>>,
    what: &str,
) -> io::Result<u64> {
    half.await
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// A TLS reader whose end without close_notify is an error only once bytes came: a
/// download's client that just closes has sent nothing to cut.
struct TruncationCheck<R> {
    inner: R,
    seen: bool,
}

impl<R> TruncationCheck<R> {
    fn new(inner: R) -> Self {
        Self { inner, seen: false }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for TruncationCheck<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e))
                if e.kind() == io::ErrorKind::UnexpectedEof && !this.seen =>
            {
                std::task::Poll::Ready(Ok(()))
            }
            std::task::Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                std::task::Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the TLS data connection ended without close_notify (a cut transfer)",
                )))
            }
            std::task::Poll::Ready(Ok(())) => {
                this.seen |= buf.filled().len() > before;
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Makes the socket's close send a reset (`SO_LINGER` 0).
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Runs both directions; reports the end of the server-to-client one as soon as it comes.
/// An error in either direction (a reset, say) ends both: the transfer is over.
async fn both_ways(
    id: ChannelId,
    ctx: &ChannelContext,
    upload: impl std::future::Future<Output = io::Result<u64>>,
    download: impl std::future::Future<Output = io::Result<u64>>,
) -> io::Result<(u64, u64)> {
    let download = async {
        let n = download.await?;
        let _ = ctx.events.send((id, DataEvent::ServerToClientDone));
        Ok(n)
    };
    tokio::try_join!(upload, download)
}

/// Splices one direction until EOF, then passes the FIN on.
#[cfg(target_os = "linux")]
async fn splice_half(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<u64> {
    let n = splice_until_eof(from, to, pipe).await?;
    // The peer may have closed entirely already; the FIN is then moot.
    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
    Ok(n)
}

/// Copies one direction until EOF, then passes the FIN on.
async fn copy_half(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> io::Result<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortRange;
    use crate::data::ports::PortPool;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    struct Started {
        port: u16,
        events: mpsc::UnboundedReceiver<(ChannelId, DataEvent)>,
        pool: std::sync::Arc<PortPool>,
    }

    /// Starts a channel whose listener faces the client and which dials `server`.
    async fn start(
        server: SocketAddr,
        expect_peer: IpAddr,
        timeout: Duration,
        relay: RelayMode,
    ) -> Started {
        let pool = PortPool::new(
            "test".into(),
            PortRange {
                first: 47_200,
                last: 47_219,
            },
            false,
        );
        let (listener, lease) = pool.bind(LOCAL).unwrap();
        let port = lease.port();
        let (tx, events) = mpsc::unbounded_channel();
        let plan = DataPlan {
            client: Endpoint::Accept {
                on: LOCAL,
                peer: expect_peer,
            },
            server: Endpoint::Dial {
                to: server,
                from: DialSource::Bind(LOCAL),
            },
            client_tls: false,
            server_tls: false,
        };
        let ctx = ChannelContext {
            gateway: "test".into(),
            timeout,
            events: tx,
            relay,
            tls: None,
            server_tls: None,
        };
        let listeners = Listeners {
            client: Some(Listening {
                listener: TcpListener::from_std(listener).unwrap(),
                lease,
            }),
            server: None,
        };
        tokio::spawn(run(7, listeners, plan, ctx));
        Started { port, events, pool }
    }

    #[tokio::test]
    async fn copy_relays_both_ways_with_half_close_and_reports_in_order() {
        half_close_round_trip(RelayMode::Copy).await;
    }

    #[tokio::test]
    async fn splice_relays_both_ways_with_half_close_and_reports_in_order() {
        half_close_round_trip(RelayMode::Splice).await;
    }

    async fn half_close_round_trip(relay: RelayMode) {
        let server = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let timeout = Duration::from_secs(5);
        let mut ch = start(server.local_addr().unwrap(), LOCAL, timeout, relay).await;
        let mut client = TcpStream::connect((LOCAL, ch.port)).await.unwrap();
        let (mut upstream, _) = server.accept().await.unwrap();
        assert_eq!(ch.events.recv().await, Some((7, DataEvent::Established)));
        assert_eq!(ch.pool.leased(), 0, "the port returns once the peer is in");

        // Upload, then the client half-closes: the server sees EOF but can still answer.
        let upload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = tokio::spawn(async move {
            client.write_all(&upload).await.unwrap();
            client.shutdown().await.unwrap();
            (client, upload)
        });
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        let (mut client, upload) = writer.await.unwrap();
        assert_eq!(got, upload);

        // Download after the half-close, then the server closes.
        let download: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
        let expected = download.clone();
        let writer = tokio::spawn(async move {
            upstream.write_all(&download).await.unwrap();
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, expected);

        assert_eq!(
            ch.events.recv().await,
            Some((7, DataEvent::ServerToClientDone))
        );
        match ch.events.recv().await {
            Some((7, DataEvent::Finished(stats))) => {
                assert_eq!((stats.to_server, stats.to_client), (3_000_000, 5_000_000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn strangers_are_closed_without_using_up_the_listener() {
        let server = TcpListener::bind((LOCAL, 0)).await.unwrap();
        // Expect a peer address that the test's own connections do not have.
        let expected: IpAddr = "127.0.0.2".parse().unwrap();
        let timeout = Duration::from_secs(5);
        let mut ch = start(
            server.local_addr().unwrap(),
            expected,
            timeout,
            RelayMode::Splice,
        )
        .await;
        let mut stranger = TcpStream::connect((LOCAL, ch.port)).await.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(stranger.read(&mut buf).await.unwrap(), 0, "closed at once");
        // The expected peer still gets in.
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind((expected, 0).into()).unwrap();
        let _client = socket.connect((LOCAL, ch.port).into()).await.unwrap();
        let _ = server.accept().await.unwrap();
        assert_eq!(ch.events.recv().await, Some((7, DataEvent::Established)));
    }

    #[tokio::test]
    async fn an_unused_listener_times_out_and_frees_its_port() {
        // The server side is there (and gets dialled early); the client never comes.
        let server = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let timeout = Duration::from_millis(200);
        let mut ch = start(
            server.local_addr().unwrap(),
            LOCAL,
            timeout,
            RelayMode::Copy,
        )
        .await;
        assert_eq!(ch.pool.leased(), 1);
        match ch.events.recv().await {
            Some((7, DataEvent::Failed(reason))) => {
                assert!(reason.contains("no connection"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ch.pool.leased(), 0);
    }
}
