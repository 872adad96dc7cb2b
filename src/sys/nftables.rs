//! ftpgate's nftables at run time: elements of its sets and maps, added and deleted in
//! nf_tables batches over one netlink socket kept open (no process per transfer); and
//! whole rule files, loaded with `nft -f` (at start-up, exit and `ftpgate nft --apply`).
//!
//! Keys and values of concatenated set types are each field padded to 4 bytes: an IPv4
//! address (4 bytes), an IPv6 address (16), a port (2, big-endian, then 2 zero bytes).

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};

use super::nfnetlink::{
    message, messages, Attrs, F_ACK, F_CREATE, F_REQUEST, MSG_BATCH_BEGIN, MSG_BATCH_END,
    NETLINK_NETFILTER, NLMSG_ERROR, SUBSYS_NFTABLES,
};

/// The name of ftpgate's table (family `inet`).
pub const TABLE: &str = "ftpgate";

const NFPROTO_INET: u8 = 1;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
/// Like `DELSETELEM`, but an element that is gone is no error (Linux 6.3 and later).
const NFT_MSG_DESTROYSETELEM: u16 = 30;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;
const ENOENT: i32 = 2;
const EINVAL: i32 = 22;
const EOPNOTSUPP: i32 = 95;

/// Loads `text` with `nft -f -`; the error is what nft said.
pub fn load(text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// One field of a concatenated key or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// An address (IPv4-mapped addresses count as IPv4).
    Addr(IpAddr),
    /// A port.
    Port(u16),
}

/// The bytes of a concatenation of `fields`.
pub fn concat(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        match f {
            Field::Addr(ip) => match ip.to_canonical() {
                IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
                IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
            },
            Field::Port(p) => {
                out.extend_from_slice(&p.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
        }
    }
    out
}

/// An element of a set or map of ftpgate's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The set or map.
    pub set: &'static str,
    /// Its key.
    pub key: Vec<u8>,
    /// For a map: its value.
    pub data: Option<Vec<u8>>,
    /// When it expires by itself (the set has `flags timeout`).
    pub timeout: Option<Duration>,
}

impl Element {
    fn attrs(&self) -> Attrs {
        let mut elem = Attrs::new().nest(
            NFTA_SET_ELEM_KEY,
            Attrs::new().put(NFTA_DATA_VALUE, &self.key),
        );
        if let Some(data) = &self.data {
            elem = elem.nest(NFTA_SET_ELEM_DATA, Attrs::new().put(NFTA_DATA_VALUE, data));
        }
        if let Some(t) = self.timeout {
            let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
            elem = elem.put_u64_be(NFTA_SET_ELEM_TIMEOUT, ms);
        }
        Attrs::new()
            .put_str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
            .put_str(NFTA_SET_ELEM_LIST_SET, self.set)
            .nest(
                NFTA_SET_ELEM_LIST_ELEMENTS,
                Attrs::new().nest(NFTA_LIST_ELEM, elem),
            )
    }
}

/// A netlink socket to nf_tables.
#[derive(Debug)]
pub struct Nftables {
    socket: Mutex<Socket>,
    seq: AtomicU32,
    /// The kernel knows `DESTROYSETELEM` (until it says otherwise).
    destroy: AtomicBool,
}

impl Nftables {
    /// Opens the socket.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        // The kernel answers at once; never wait forever for it.
        socket2::SockRef::from(&socket).set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(Self {
            socket: Mutex::new(socket),
            seq: AtomicU32::new(1),
            destroy: AtomicBool::new(true),
        })
    }

    /// Adds `elements` in one transaction: all of them, or none.
    pub fn add(&self, elements: &[Element]) -> io::Result<()> {
        self.transaction(NFT_MSG_NEWSETELEM, F_CREATE, elements)
    }

    /// Deletes `elements`; ones that are gone already (used, expired) are no error. A
    /// batch the kernel refuses costs it a grace period (milliseconds), so callers leave
    /// out elements they know are gone, for kernels before 6.3 that cannot ignore them.
    pub fn delete(&self, elements: &[Element]) -> io::Result<()> {
        if self.destroy.load(Ordering::Relaxed) {
            match self.transaction(NFT_MSG_DESTROYSETELEM, 0, elements) {
                Err(e) if matches!(e.raw_os_error(), Some(EINVAL | EOPNOTSUPP)) => {
                    tracing::debug!("no DESTROYSETELEM in this kernel; deleting elements instead");
                    self.destroy.store(false, Ordering::Relaxed);
                }
                done => return done,
            }
        }
        match self.transaction(NFT_MSG_DELSETELEM, 0, elements) {
            Err(e) if e.raw_os_error() == Some(ENOENT) => {
                // The transaction failed as a whole: delete what is left one by one.
                for element in elements {
                    match self.transaction(NFT_MSG_DELSETELEM, 0, std::slice::from_ref(element)) {
                        Err(e) if e.raw_os_error() != Some(ENOENT) => return Err(e),
                        _ => {}
                    }
                }
                Ok(())
            }
            other => other,
        }
    }

    /// One nf_tables batch with a message per element; waits for every acknowledgement.
    fn transaction(&self, kind: u16, flags: u16, elements: &[Element]) -> io::Result<()> {
        if elements.is_empty() {
            return Ok(());
        }
        let first = self.seq.fetch_add(
            u32::try_from(elements.len() + 2).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        let none = Attrs::new();
        let mut batch = message(
            MSG_BATCH_BEGIN,
            F_REQUEST,
            first,
            0,
            u16::from(SUBSYS_NFTABLES),
            &none,
        );
        let msg_kind = (u16::from(SUBSYS_NFTABLES) << 8) | kind;
        for (i, element) in elements.iter().enumerate() {
            let seq = first + 1 + i as u32;
            batch.extend(message(
                msg_kind,
                F_REQUEST | F_ACK | flags,
                seq,
                NFPROTO_INET,
                0,
                &element.attrs(),
            ));
        }
        let last = first + 1 + elements.len() as u32;
        batch.extend(message(
            MSG_BATCH_END,
            F_REQUEST,
            last,
            0,
            u16::from(SUBSYS_NFTABLES),
            &none,
        ));
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        socket.send(&batch, 0)?;
        let mut pending = elements.len();
        let mut error = None;
        let mut buf = vec![0u8; 16 * 1024];
        while pending > 0 {
            let n = socket.recv(&mut &mut buf[..], 0)?;
            for msg in messages(&buf[..n]) {
                if msg.kind != NLMSG_ERROR || msg.seq < first || msg.seq > last {
                    continue;
                }
                let failed = msg
                    .error_code()
                    .filter(|&code| code != 0)
                    .map(|code| io::Error::from_raw_os_error(-code));
                if msg.seq == first || msg.seq == last {
                    // The batch itself was refused (no permission, no nf_tables).
                    return failed.map_or(Ok(()), Err);
                }
                pending -= 1;
                error = error.or(failed);
            }
        }
        error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_fields_are_padded_to_registers() {
        let key = concat(&[
            Field::Addr("10.0.0.2".parse().unwrap()),
            Field::Addr("::ffff:203.0.113.1".parse().unwrap()),
            Field::Port(40001),
        ]);
        assert_eq!(key, [10, 0, 0, 2, 203, 0, 113, 1, 0x9c, 0x41, 0, 0]);
        let v6 = concat(&[Field::Addr("2001:db8::1".parse().unwrap())]);
        assert_eq!(v6.len(), 16);
    }
}
