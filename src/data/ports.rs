//! The pool of data ports (`data_ports`) and the one-shot listeners bound from it.
//!
//! A port is leased while its listener is open and returns to the pool when the lease is
//! dropped: after the expected peer was accepted, on timeout, or on cancel.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use socket2::{Domain, Socket, Type};

use crate::config::PortRange;
use crate::plan::DataOpenError;
use crate::telemetry;

/// Backlog of a one-shot listener: room for the expected peer and a few intruders.
const DATA_BACKLOG: i32 = 8;

/// Data ports of one gateway.
#[derive(Debug)]
pub struct PortPool {
    gateway: Arc<str>,
    range: PortRange,
    transparent: bool,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    in_use: Vec<bool>,
    next: usize,
    leased: usize,
}

/// A port taken from the pool; it goes back when this is dropped.
#[derive(Debug)]
pub struct PortLease {
    pool: Arc<PortPool>,
    port: u16,
}

impl PortLease {
    /// The leased port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        let idx = usize::from(self.port - self.pool.range.first);
        if std::mem::replace(&mut st.in_use[idx], false) {
            st.leased -= 1;
            telemetry::data_ports_in_use(&self.pool.gateway, st.leased);
        }
    }
}

/// Where a new pool starts handing out ports: anywhere, so that a restarted ftpgate does
/// not announce the same ports as before, whose 4-tuples may still be in TIME_WAIT at the
/// peers (a server dialling from port 20 could not reuse them), and so that the first
/// ports are not predictable.
fn random_start(size: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    usize::try_from(random % size.max(1) as u64).unwrap_or(0)
}

impl PortPool {
    /// A pool over `range`. With `transparent`, listeners get `IP_TRANSPARENT`, so that
    /// TPROXY can deliver intercepted data connections to them.
    pub fn new(gateway: Arc<str>, range: PortRange, transparent: bool) -> Arc<Self> {
        telemetry::data_ports_size(&gateway, range.count());
        Arc::new(Self {
            gateway,
            range,
            transparent,
            state: Mutex::new(PoolState {
                in_use: vec![false; range.count()],
                next: random_start(range.count()),
                leased: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding this lock cannot leave the bitmap inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether listeners get `IP_TRANSPARENT`.
    pub fn transparent(&self) -> bool {
        self.transparent
    }

    /// Ports currently leased.
    pub fn leased(&self) -> usize {
        self.lock().leased
    }

    /// Ports in the pool.
    pub fn size(&self) -> usize {
        self.range.count()
    }

    fn take_free(self: &Arc<Self>, skip: &mut usize) -> Option<PortLease> {
        let mut st = self.lock();
        let n = st.in_use.len();
        while *skip < n {
            *skip += 1;
            let idx = st.next;
            st.next = (st.next + 1) % n;
            if !st.in_use[idx] {
                st.in_use[idx] = true;
                st.leased += 1;
                telemetry::data_ports_in_use(&self.gateway, st.leased);
                let port = self.range.first + u16::try_from(idx).ok()?;
                return Some(PortLease {
                    pool: Arc::clone(self),
                    port,
                });
            }
        }
        None
    }

    /// The next free port of the pool, without a listener (the kernel data path maps it).
    pub fn lease(self: &Arc<Self>) -> Result<PortLease, DataOpenError> {
        self.take_free(&mut 0).ok_or(DataOpenError::Exhausted)
    }

    /// Binds a listener on `ip` at the next free port of the pool, skipping ports that
    /// something else on the host holds.
    pub fn bind(
        self: &Arc<Self>,
        ip: IpAddr,
    ) -> Result<(std::net::TcpListener, PortLease), DataOpenError> {
        let mut tried = 0;
        while let Some(lease) = self.take_free(&mut tried) {
            match bind_listener(SocketAddr::new(ip, lease.port()), self.transparent) {
                Ok(listener) => return Ok((listener, lease)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(DataOpenError::Listen(format!("{ip}: {e}"))),
            }
        }
        Err(DataOpenError::Exhausted)
    }
}

fn bind_listener(addr: SocketAddr, transparent: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if transparent {
        // TPROXY hands these listeners connections for foreign addresses.
        crate::sys::set_transparent(&socket, addr.is_ipv6())?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(DATA_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn localhost() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[test]
    fn leases_return_and_exhaustion_is_reported() {
        // A tiny pool high in the ephemeral range; ports held elsewhere are skipped.
        let pool = PortPool::new(
            "test".into(),
            PortRange {
                first: 47_110,
                last: 47_112,
            },
            false,
        );
        let a = pool.bind(localhost()).unwrap();
        let b = pool.bind(localhost()).unwrap();
        let c = pool.bind(localhost()).unwrap();
        assert_eq!(pool.leased(), 3);
        assert_eq!(
            pool.bind(localhost()).unwrap_err(),
            DataOpenError::Exhausted
        );
        let freed = b.1.port();
        drop(b);
        assert_eq!(pool.leased(), 2);
        let d = pool.bind(localhost()).unwrap();
        assert_eq!(d.1.port(), freed);
        drop((a, c, d));
        assert_eq!(pool.leased(), 0);
    }

    #[test]
    fn ports_held_by_others_are_skipped() {
        let pool = PortPool::new(
            "test".into(),
            PortRange {
                first: 47_120,
                last: 47_121,
            },
            false,
        );
        let squatter = std::net::TcpListener::bind((localhost(), 47_120)).unwrap();
        let (_l, lease) = pool.bind(localhost()).unwrap();
        assert_eq!(lease.port(), 47_121);
        assert_eq!(pool.leased(), 1);
        drop(squatter);
    }
}
