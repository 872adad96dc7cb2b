//! ctnetlink: reading one conntrack entry's counters by its original tuple, so that the
//! kernel data path knows how many bytes a flow carried (with `nf_conntrack_acct` on).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

use super::nfnetlink::{
    be_u64, message, messages, AttrIter, Attrs, F_ACK, F_REQUEST, NETLINK_NETFILTER,
};

const SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const ENOENT: i32 = 2;

/// What conntrack counted in one direction of a flow (IP headers included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

/// A ctnetlink socket.
#[derive(Debug)]
pub struct Conntrack {
    socket: Socket,
    seq: u32,
}

impl Conntrack {
    /// Opens the socket.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind(&NetlinkAddr::new(0, 0))?;
        socket2::SockRef::from(&socket).set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(Self { socket, seq: 1 })
    }

    /// The counters (original, reply direction) of the TCP flow whose original tuple is
    /// `src` → `dst`; `None` when there is no such entry, or it has no counters
    /// (accounting off).
    pub fn counters(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> io::Result<Option<(Counter, Counter)>> {
        self.seq = self.seq.wrapping_add(1);
        let (family, request) = request(src, dst);
        let kind = (SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
        let msg = message(kind, F_REQUEST | F_ACK, self.seq, family, 0, &request);
        self.socket.send(&msg, 0)?;
        let mut found = None;
        let mut buf = vec![0u8; 8 * 1024];
        loop {
            let n = self.socket.recv(&mut &mut buf[..], 0)?;
            for msg in messages(&buf[..n]).filter(|m| m.seq == self.seq) {
                if msg.kind == (SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
                    found = counters(msg.attrs());
                }
                match msg.error_code() {
                    Some(0) => return Ok(found),
                    Some(code) if -code == ENOENT => return Ok(None),
                    Some(code) => return Err(io::Error::from_raw_os_error(-code)),
                    None => {}
                }
            }
        }
    }
}

/// The attributes of a request for the entry of `src` → `dst`, with its address family.
fn request(src: SocketAddr, dst: SocketAddr) -> (u8, Attrs) {
    let (family, ips) = match (src.ip().to_canonical(), dst.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (
            AF_INET,
            Attrs::new()
                .put(CTA_IP_V4_SRC, &s.octets())
                .put(CTA_IP_V4_DST, &d.octets()),
        ),
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            (
                AF_INET6,
                Attrs::new()
                    .put(CTA_IP_V6_SRC, &v6(s))
                    .put(CTA_IP_V6_DST, &v6(d)),
            )
        }
    };
    let proto = Attrs::new()
        .put(CTA_PROTO_NUM, &[IPPROTO_TCP])
        .put(CTA_PROTO_SRC_PORT, &src.port().to_be_bytes())
        .put(CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
    let tuple = Attrs::new()
        .nest(CTA_TUPLE_IP, ips)
        .nest(CTA_TUPLE_PROTO, proto);
    (family, Attrs::new().nest(CTA_TUPLE_ORIG, tuple))
}

/// The counters of an entry's attributes.
fn counters(attrs: AttrIter<'_>) -> Option<(Counter, Counter)> {
    let direction = |kind| {
        let c = AttrIter::of(attrs.clone().find(kind)?);
        Some(Counter {
            packets: be_u64(c.clone().find(CTA_COUNTERS_PACKETS)?)?,
            bytes: be_u64(c.find(CTA_COUNTERS_BYTES)?)?,
        })
    };
    Some((
        direction(CTA_COUNTERS_ORIG)?,
        direction(CTA_COUNTERS_REPLY)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_the_original_tuple() {
        let (family, attrs) = request(
            "10.0.0.2:50000".parse().unwrap(),
            "203.0.113.1:40001".parse().unwrap(),
        );
        assert_eq!(family, AF_INET);
        let tuple = AttrIter::of(attrs.bytes()).find(CTA_TUPLE_ORIG).unwrap();
        let ip = AttrIter::of(tuple).find(CTA_TUPLE_IP).unwrap();
        assert_eq!(
            AttrIter::of(ip).find(CTA_IP_V4_DST),
            Some(&[203, 0, 113, 1][..])
        );
        let proto = AttrIter::of(tuple).find(CTA_TUPLE_PROTO).unwrap();
        assert_eq!(
            AttrIter::of(proto).find(CTA_PROTO_DST_PORT),
            Some(&40001u16.to_be_bytes()[..])
        );
        let (family, _) = request(
            "[2001:db8::5]:1".parse().unwrap(),
            "[2001:db8::1]:2".parse().unwrap(),
        );
        assert_eq!(family, AF_INET6);
    }

    #[test]
    fn counters_read_back_from_an_entry() {
        let counter = |p: u64, b: u64| {
            Attrs::new()
                .put_u64_be(CTA_COUNTERS_PACKETS, p)
                .put_u64_be(CTA_COUNTERS_BYTES, b)
        };
        let entry = Attrs::new()
            .nest(CTA_COUNTERS_ORIG, counter(3, 160))
            .nest(CTA_COUNTERS_REPLY, counter(700, 1_000_000));
        let got = counters(AttrIter::of(entry.bytes())).unwrap();
        assert_eq!(
            got.1,
            Counter {
                packets: 700,
                bytes: 1_000_000
            }
        );
        assert_eq!(counters(AttrIter::of(&[])), None);
    }
}
