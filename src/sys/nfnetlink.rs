//! A small codec for nfnetlink, the netlink family of netfilter: the messages ftpgate sends
//! (elements of its nftables sets, the NFLOG configuration) and those it reads (acks, NFLOG
//! packets with their conntrack entry). Netlink messages are a 16-byte header, a 4-byte
//! `nfgenmsg`, then attributes: length, type and value, each padded to 4 bytes.
//!
//! No crate covers nf_tables set elements under terms the project can ship (rustables is
//! GPL-3; nftnl and mnl link the GPL libnftnl and LGPL libmnl), so the few attributes
//! ftpgate needs are encoded here; the socket is `netlink-sys`'s (MIT).

/// `NETLINK_NETFILTER`.
pub const NETLINK_NETFILTER: isize = 12;
/// Subsystem of nf_tables messages.
pub const SUBSYS_NFTABLES: u8 = 10;
/// Subsystem of NFLOG messages.
pub const SUBSYS_ULOG: u8 = 4;
/// `NFNL_MSG_BATCH_BEGIN`.
pub const MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
pub const MSG_BATCH_END: u16 = 0x11;
/// `NLMSG_ERROR`: an error, or with code 0 an acknowledgement.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
pub const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST`.
pub const F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`.
pub const F_ACK: u16 = 0x4;
/// `NLM_F_CREATE`.
pub const F_CREATE: u16 = 0x400;
/// `NLA_F_NESTED`.
const F_NESTED: u16 = 0x8000;
/// Attribute type bits (the rest are flags).
const TYPE_MASK: u16 = 0x3fff;

/// Attributes being built.
#[derive(Debug, Default, Clone)]
pub struct Attrs(Vec<u8>);

impl Attrs {
    /// No attributes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends attribute `kind` with `value`.
    pub fn put(mut self, kind: u16, value: &[u8]) -> Self {
        self.push(kind, value);
        self
    }

    fn push(&mut self, kind: u16, value: &[u8]) {
        let len = u16::try_from(4 + value.len()).expect("attribute under 64 KiB");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(align(self.0.len()), 0);
    }

    /// Appends a NUL-terminated string.
    pub fn put_str(self, kind: u16, value: &str) -> Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(kind, &bytes)
    }

    /// Appends a big-endian `u64` (nf_tables timeouts, in milliseconds).
    pub fn put_u64_be(self, kind: u16, value: u64) -> Self {
        self.put(kind, &value.to_be_bytes())
    }

    /// Appends the nested attributes `inner`.
    pub fn nest(mut self, kind: u16, inner: Attrs) -> Self {
        self.push(kind | F_NESTED, &inner.0);
        self
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message: header, `nfgenmsg` (`family`, version 0, `res_id`), attributes.
pub fn message(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &Attrs) -> Vec<u8> {
    let len = 16 + 4 + attrs.0.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&u32::try_from(len).expect("small message").to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(&attrs.0);
    out
}

/// One message read back: its type, sequence number, and what follows its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received<'a> {
    /// The message type.
    pub kind: u16,
    /// The sequence number it answers.
    pub seq: u32,
    /// The payload after the 16-byte header.
    pub payload: &'a [u8],
}

impl Received<'_> {
    /// For an `NLMSG_ERROR`: the error code (0 is an acknowledgement).
    pub fn error_code(&self) -> Option<i32> {
        (self.kind == NLMSG_ERROR)
            .then(|| self.payload.get(..4))
            .flatten()
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// For an nfnetlink message: its attributes (after the `nfgenmsg`).
    pub fn attrs(&self) -> AttrIter<'_> {
        AttrIter(self.payload.get(4..).unwrap_or_default())
    }
}

/// The messages in a buffer read from the socket.
pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = Received<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            return None;
        }
        let msg = Received {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[16..len],
        };
        buf = &buf[align(len).min(buf.len())..];
        Some(msg)
    })
}

/// Attributes: `(type, value)`, the nested flag removed from the type.
#[derive(Debug, Clone)]
pub struct AttrIter<'a>(&'a [u8]);

impl<'a> AttrIter<'a> {
    /// Attributes of an attribute's value.
    pub fn of(value: &'a [u8]) -> Self {
        Self(value)
    }

    /// The value of the first attribute of type `kind`.
    pub fn find(self, kind: u16) -> Option<&'a [u8]> {
        self.into_iter().find_map(|(k, v)| (k == kind).then_some(v))
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        if len < 4 || len > b.len() {
            self.0 = &[];
            return None;
        }
        let kind = u16::from_ne_bytes([b[2], b[3]]) & TYPE_MASK;
        self.0 = &b[align(len).min(b.len())..];
        Some((kind, &b[4..len]))
    }
}

/// A big-endian `u64` attribute value.
pub fn be_u64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_attributes_read_back() {
        let attrs = Attrs::new()
            .put_str(1, "ftpgate")
            .nest(3, Attrs::new().put(1, &[1, 2, 3]))
            .put_u64_be(4, 30_000);
        let msg = message(12, F_REQUEST | F_ACK, 7, 1, 0, &attrs);
        assert_eq!(msg.len() % 4, 0);
        let got: Vec<Received<'_>> = messages(&msg).collect();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].kind, got[0].seq), (12, 7));
        let all: Vec<(u16, &[u8])> = got[0].attrs().collect();
        assert_eq!(all[0], (1, &b"ftpgate\0"[..]));
        assert_eq!(AttrIter::of(all[1].1).find(1), Some(&[1u8, 2, 3][..]));
        assert_eq!(be_u64(all[2].1), Some(30_000));
    }

    #[test]
    fn truncated_input_ends_the_iteration() {
        let msg = message(1, 0, 1, 0, 0, &Attrs::new().put(1, b"abcdef"));
        assert_eq!(messages(&msg[..msg.len() - 3]).count(), 0);
        assert_eq!(AttrIter::of(&[8, 0, 1, 0, 1]).count(), 0);
        let mut ack = vec![0u8; 36];
        ack[..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(messages(&ack).next().unwrap().error_code(), Some(0));
    }
}
