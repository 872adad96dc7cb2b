//! NFLOG: the packets the `log group` rule of ftpgate's table sends to user space (the
//! SYN, FIN and RST packets of kernel-path flows), so that ftpgate learns when a flow
//! starts and ends, and from their sequence numbers what it carried.

use std::io;
use std::net::IpAddr;

use netlink_sys::{Socket, SocketAddr};

use super::nfnetlink::{
    message, messages, Attrs, F_ACK, F_REQUEST, NETLINK_NETFILTER, SUBSYS_ULOG,
};

const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;

/// Bytes of each packet copied: enough for an IPv6 header and a TCP header with options.
const SNAPLEN: u32 = 120;

/// A TCP packet of a kernel-path flow, as the forward hook saw it (after DNAT, before
/// SNAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedPacket {
    /// Source address and port.
    pub src: (IpAddr, u16),
    /// Destination address and port.
    pub dst: (IpAddr, u16),
    /// Its sequence number.
    pub seq: u32,
    /// Bytes of TCP payload it carries (a `FIN` may come with the last data).
    pub payload: u32,
    /// `SYN` is set.
    pub syn: bool,
    /// `FIN` is set.
    pub fin: bool,
    /// `RST` is set.
    pub rst: bool,
}

/// A socket bound to one NFLOG group.
#[derive(Debug)]
pub struct Nflog {
    socket: Socket,
}

impl Nflog {
    /// Binds NFLOG group `group`, copying the packets' headers.
    pub fn bind(group: u16) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        // A burst of flows must not overflow the queue (ENOBUFS loses events).
        socket.set_rx_buf_sz(4 * 1024 * 1024)?;
        let kind = (u16::from(SUBSYS_ULOG) << 8) | NFULNL_MSG_CONFIG;
        let mut mode = SNAPLEN.to_be_bytes().to_vec();
        mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
        let config = Attrs::new()
            .put(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND])
            .put(NFULA_CFG_MODE, &mode)
            .put(NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
        socket.send(&message(kind, F_REQUEST | F_ACK, 1, 0, group, &config), 0)?;
        let mut buf = vec![0u8; 4096];
        let n = socket.recv(&mut &mut buf[..], 0)?;
        for msg in messages(&buf[..n]) {
            if let Some(code) = msg.error_code().filter(|&c| c != 0) {
                return Err(io::Error::from_raw_os_error(-code));
            }
        }
        // Reads wake up now and then, so that a reader can notice it is no longer needed.
        socket2::SockRef::from(&socket)
            .set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
        Ok(Self { socket })
    }

    /// Waits for what arrives (`WouldBlock`/`TimedOut` after a second without any).
    pub fn read(&self, buf: &mut Vec<u8>) -> io::Result<Vec<LoggedPacket>> {
        buf.resize(256 * 1024, 0);
        let n = self.socket.recv(&mut &mut buf[..], 0)?;
        Ok(parse(&buf[..n]))
    }
}

/// The logged TCP packets in a buffer of NFLOG messages.
pub fn parse(buf: &[u8]) -> Vec<LoggedPacket> {
    let packet_kind = (u16::from(SUBSYS_ULOG) << 8) | NFULNL_MSG_PACKET;
    messages(buf)
        .filter(|m| m.kind == packet_kind)
        .filter_map(|m| tcp_packet(m.attrs().find(NFULA_PAYLOAD)?))
        .collect()
}

/// The addresses, ports, sequence number and flags of an IPv4 or IPv6 TCP packet.
fn tcp_packet(ip: &[u8]) -> Option<LoggedPacket> {
    let word = |at: usize| Some(u16::from_be_bytes([*ip.get(at)?, *ip.get(at + 1)?]));
    // (source, destination, offset of the TCP header, length of the IP packet)
    let (src, dst, header, total): (IpAddr, IpAddr, usize, usize) = match ip.first()? >> 4 {
        4 => {
            let header = usize::from(ip[0] & 0x0f) * 4;
            if *ip.get(9)? != 6 || header < 20 {
                return None;
            }
            let addr = |at: usize| -> Option<IpAddr> {
                Some(IpAddr::from(<[u8; 4]>::try_from(ip.get(at..at + 4)?).ok()?))
            };
            (addr(12)?, addr(16)?, header, usize::from(word(2)?))
        }
        6 => {
            if *ip.get(6)? != 6 {
                return None;
            }
            let addr = |at: usize| -> Option<IpAddr> {
                Some(IpAddr::from(
                    <[u8; 16]>::try_from(ip.get(at..at + 16)?).ok()?,
                ))
            };
            (addr(8)?, addr(24)?, 40, 40 + usize::from(word(4)?))
        }
        _ => return None,
    };
    let tcp = ip.get(header..)?;
    let flags = *tcp.get(13)?;
    let tcp_header = usize::from(tcp[12] >> 4) * 4;
    let payload = total.checked_sub(header + tcp_header)?;
    Some(LoggedPacket {
        src: (src, u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: (dst, u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?])),
        seq: u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?),
        payload: u32::try_from(payload).ok()?,
        fin: flags & 0x01 != 0,
        syn: flags & 0x02 != 0,
        rst: flags & 0x04 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_headers_of_both_families_are_read() {
        let mut v4 = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 1, 10,
        ];
        v4.extend_from_slice(&[0x9c, 0x41, 0x75, 0x31, 0, 0, 1, 0, 0, 0, 0, 0, 0x50, 0x11]);
        let p = tcp_packet(&v4).unwrap();
        assert_eq!(p.src, ("10.0.0.2".parse().unwrap(), 40001));
        assert_eq!(p.dst, ("10.0.1.10".parse().unwrap(), 30001));
        assert_eq!((p.seq, p.payload), (256, 0));
        assert!(p.fin && !p.syn && !p.rst);
        // A FIN with the last 1000 bytes of data (only the headers are copied).
        let mut with_data = v4.clone();
        with_data[2..4].copy_from_slice(&1040u16.to_be_bytes());
        assert_eq!(tcp_packet(&with_data).unwrap().payload, 1000);
        let mut v6 = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8].repeat(4)[..16]);
        v6.extend_from_slice(&[0xfe; 16]);
        v6.extend_from_slice(&[0, 21, 0, 22, 0, 0, 0, 9, 0, 0, 0, 0, 0x50, 0x02]);
        let p = tcp_packet(&v6).unwrap();
        assert_eq!((p.src.1, p.dst.1, p.seq, p.syn), (21, 22, 9, true));
        assert_eq!(p.payload, 0);
        assert!(tcp_packet(&v4[..30]).is_none(), "a cut header is no packet");
        let mut udp = v4.clone();
        udp[9] = 17;
        assert!(tcp_packet(&udp).is_none());
    }
}
