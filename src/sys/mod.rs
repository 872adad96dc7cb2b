//! Linux socket options and process limits the gateway needs, behind a small interface:
//! the original destination of a redirected connection, `IP_TRANSPARENT`, and the limit
//! on open files. Elsewhere they report "unsupported" and the roles that need them cannot
//! run. The netfilter netlink protocols of the kernel data path live in the submodules:
//! [`nftables`] (set elements), [`nflog`] (logged packets), [`conntrack`] (counters),
//! over the codec of [`nfnetlink`].

pub mod conntrack;
pub mod nflog;
pub mod nfnetlink;
pub mod nftables;
pub mod routing;

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;

/// Where a connection accepted by a transparent gateway was really going.
///
/// For nftables/iptables `REDIRECT` (and DNAT) that is the conntrack entry's original
/// destination (`SO_ORIGINAL_DST`); for TPROXY the socket's own local address already is
/// the original destination.
pub fn original_destination<'s>(socket: impl Into<SockRef<'s>>) -> io::Result<SocketAddr> {
    let sock: SockRef<'s> = socket.into();
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))?;
    match redirected_destination(&sock, local) {
        Ok(addr) => Ok(addr),
        // No NAT entry: either TPROXY delivered it (local address is the destination)
        // or the client connected to the gateway directly.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(local),
        Err(e) => Err(e),
    }
}

#[cfg(target_os = "linux")]
fn redirected_destination(sock: &SockRef<'_>, local: SocketAddr) -> io::Result<SocketAddr> {
    let addr = if local.is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

#[cfg(not(target_os = "linux"))]
fn redirected_destination(_: &SockRef<'_>, _: SocketAddr) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "original destination needs Linux",
    ))
}

/// Lets the socket bind a foreign address (`IP_TRANSPARENT`/`IPV6_TRANSPARENT`); needs
/// `CAP_NET_ADMIN` and policy routing that delivers the replies to this host.
#[cfg(target_os = "linux")]
pub fn set_transparent<'s>(socket: impl Into<SockRef<'s>>, ipv6: bool) -> io::Result<()> {
    let sock: SockRef<'s> = socket.into();
    if ipv6 {
        sock.set_ip_transparent_v6(true)
    } else {
        sock.set_ip_transparent_v4(true)
    }
}

/// Whether this process may make transparent sockets of a family (`CAP_NET_ADMIN`): the
/// check at start-up, so that a missing privilege is a start-up error and not a failure
/// at the first transfer.
pub fn probe_transparent(ipv6: bool) -> io::Result<()> {
    let domain = if ipv6 {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    set_transparent(&socket, ipv6)
}

/// Lets the socket bind a foreign address; unsupported off Linux.
#[cfg(not(target_os = "linux"))]
pub fn set_transparent<'s>(_: impl Into<SockRef<'s>>, _: bool) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "IP_TRANSPARENT needs Linux",
    ))
}

/// The limit on open file descriptors, before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the process started with.
    pub was: u64,
    /// The soft limit now.
    pub now: u64,
}

/// Raises the soft limit on open files to the hard limit: each session holds two sockets,
/// and a transfer four to six descriptors more.
pub fn raise_open_files_limit() -> io::Result<OpenFiles> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let was = limit.current.unwrap_or(u64::MAX);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).map_err(io::Error::from)?;
    }
    Ok(OpenFiles {
        was,
        now: limit.current.unwrap_or(u64::MAX),
    })
}
