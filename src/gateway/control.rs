//! A control connection, the client's or the server's: plain TCP, or TLS over it with
//! ftpgate as the TLS server toward clients (`tls: terminate`) and as the TLS client
//! toward servers (`tls.upstream: explicit|implicit`). TLS is driven through rustls's own
//! I/O-free API on the socket's readiness, as the plain connection is, so an idle session
//! still holds no read buffer.

use std::io::{self, Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Bytes read from a control connection at a time.
const CONTROL_BUFFER: usize = 4096;

/// What one read found.
#[derive(Debug)]
pub(super) enum Read {
    /// Plain-text bytes (decrypted, under TLS).
    Data(Vec<u8>),
    /// Nothing yet (a partial TLS record, or a spurious wake-up).
    Nothing,
    /// The peer closed the connection (or sent TLS close_notify).
    Closed,
}

/// A control connection.
pub(super) struct ControlStream {
    tcp: TcpStream,
    tls: Option<Box<Connection>>,
    /// The client sent TLS close_notify.
    peer_closed: bool,
    /// Whether a TLS error is answered with an alert (not on the implicit port before
    /// its handshake: nothing is written there to a client that did not start TLS).
    alerts: bool,
}

impl ControlStream {
    /// A plain connection.
    pub fn plain(tcp: TcpStream) -> Self {
        Self {
            tcp,
            tls: None,
            peer_closed: false,
            alerts: true,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp.peer_addr()
    }

    /// ftpgate's address on it.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }

    /// Whether TLS protects it.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Waits until the socket has something to read.
    pub async fn readable(&self) -> io::Result<()> {
        self.tcp.readable().await
    }

    /// Reads what the socket has now. The buffer lives on the stack only for the read.
    pub async fn read(&mut self) -> io::Result<Read> {
        let mut buf = [0u8; CONTROL_BUFFER];
        let n = match self.tcp.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::Nothing),
            Err(e) => return Err(e),
        };
        if self.tls.is_none() {
            return Ok(if n == 0 {
                Read::Closed
            } else {
                Read::Data(buf[..n].to_vec())
            });
        }
        if n == 0 {
            return Ok(Read::Closed);
        }
        let plain = self.receive(&buf[..n]).await?;
        Ok(match (plain.is_empty(), self.peer_closed) {
            (false, _) => Read::Data(plain),
            (true, true) => Read::Closed,
            (true, false) => Read::Nothing,
        })
    }

    /// Feeds received TLS bytes to rustls; returns the plain text they carried. What
    /// rustls has to send in turn (alerts, session tickets) goes out before this returns.
    async fn receive(&mut self, mut bytes: &[u8]) -> io::Result<Vec<u8>> {
        if self.tls.is_none() {
            return Ok(bytes.to_vec());
        }
        let mut plain = Vec::new();
        while !bytes.is_empty() {
            let tls = self.tls.as_mut().expect("present");
            tls.read_tls(&mut bytes)?;
            match tls.process_new_packets() {
                Ok(state) => self.peer_closed |= state.peer_has_closed(),
                Err(e) => {
                    // The alert rustls queued tells the peer why.
                    if self.alerts {
                        let _ = self.flush().await;
                    }
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            let tls = self.tls.as_mut().expect("present");
            match tls.reader().read_to_end(&mut plain) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A close without close_notify: the plain text so far stands.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(e),
            }
        }
        self.flush().await?;
        Ok(plain)
    }

    /// Sends what rustls has queued.
    async fn flush(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        while tls.wants_write() {
            let mut out = Vec::new();
            tls.write_tls(&mut out)?;
            self.tcp.write_all(&out).await?;
        }
        Ok(())
    }

    /// Writes all of `bytes` (encrypted, under TLS).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.tls.as_mut() {
            None => self.tcp.write_all(bytes).await,
            Some(tls) => {
                tls.writer().write_all(bytes)?;
                self.flush().await
            }
        }
    }

    /// Writes the Telnet Synch and then `command` (RFC 959 §4.1.3): `IAC IP` in band,
    /// `IAC` as TCP urgent data (a server's SIGURG, or its `sockatmark`, finds it), then
    /// `DM` and the command. Under TLS urgent data would cut into a record: all of it
    /// goes in band there.
    pub async fn write_synch(&mut self, command: &[u8]) -> io::Result<()> {
        const IAC_IP: [u8; 2] = [0xff, 0xf4];
        const IAC: u8 = 0xff;
        const DM: u8 = 0xf2;
        let mut rest = vec![DM];
        rest.extend_from_slice(command);
        if self.tls.is_some() {
            let mut all = vec![IAC_IP[0], IAC_IP[1], IAC];
            all.extend_from_slice(&rest);
            return self.write_all(&all).await;
        }
        self.tcp.write_all(&IAC_IP).await?;
        loop {
            self.tcp.writable().await?;
            match self.tcp.try_io(tokio::io::Interest::WRITABLE, || {
                socket2::SockRef::from(&self.tcp).send_out_of_band(&[IAC])
            }) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        self.tcp.write_all(&rest).await
    }

    /// Ends the connection: TLS close_notify first (once the handshake is done), then
    /// the TCP FIN.
    pub async fn shutdown(&mut self) {
        if let Some(tls) = self.tls.as_mut().filter(|t| !t.is_handshaking()) {
            tls.send_close_notify();
            let _ = self.flush().await;
        }
        let _ = self.tcp.shutdown().await;
    }

    /// Makes the TLS handshake as the server, within `within`; returns the plain text
    /// the client already sent behind its handshake (none, usually). `implicit`: the
    /// implicit FTPS port, where a client that does not speak TLS gets no byte at all.
    pub async fn accept_tls(
        &mut self,
        config: Arc<ServerConfig>,
        within: Duration,
        implicit: bool,
    ) -> Result<Vec<u8>, String> {
        let conn = ServerConnection::new(config).map_err(|e| e.to_string())?;
        self.tls = Some(Box::new(conn.into()));
        self.alerts = !implicit;
        let result = self.handshake_within(within).await;
        self.alerts = true;
        result
    }

    /// Makes the TLS handshake as the client of a server named `name` (its certificate
    /// is checked against it), within `within`; returns the plain text that came with it.
    pub async fn connect_tls(
        &mut self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        within: Duration,
    ) -> Result<Vec<u8>, String> {
        let conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        self.tls = Some(Box::new(conn.into()));
        self.handshake_within(within).await
    }

    /// Drives the handshake of the connection just set up, giving up after `within`.
    async fn handshake_within(&mut self, within: Duration) -> Result<Vec<u8>, String> {
        tokio::time::timeout(within, self.handshake())
            .await
            .map_err(|_| format!("no TLS handshake within {within:?}"))?
            .map_err(|e| e.to_string())
    }

    async fn handshake(&mut self) -> io::Result<Vec<u8>> {
        let mut plain = Vec::new();
        loop {
            self.flush().await?;
            if !self.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
                return Ok(plain);
            }
            self.tcp.readable().await?;
            let mut buf = [0u8; CONTROL_BUFFER];
            let n = match self.tcp.try_read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the TLS handshake",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            plain.extend(self.receive(&buf[..n]).await?);
        }
    }
}
