//! Splitting a control-connection byte stream into whole lines, and Telnet clean-up.
//!
//! A line ends at LF (normally preceded by CR). Nothing is acted on until its terminator
//! has arrived, so a command split across TCP segments is read exactly as a server reads
//! it. Lines keep their terminator so that lines which need no rewrite are forwarded byte
//! for byte.

use std::borrow::Cow;

/// Why the framer gave up on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// More than the permitted number of bytes without a line terminator.
    #[error("line longer than {max} bytes")]
    TooLong {
        /// The limit, terminator included.
        max: usize,
    },
}

/// Accumulates bytes and hands out complete lines. Its buffer grows only as far as the
/// longest partial line seen and is released when it drains, so idle sessions stay small.
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    max: usize,
}

impl LineFramer {
    /// A framer that refuses lines longer than `max` bytes, terminator included.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Takes the next complete line (terminator included), if one has arrived.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(end) if end < self.max => {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if self.buf.is_empty() {
                    self.buf = Vec::new();
                }
                Ok(Some(line))
            }
            Some(_) => Err(LineError::TooLong { max: self.max }),
            None if self.buf.len() >= self.max => Err(LineError::TooLong { max: self.max }),
            None => Ok(None),
        }
    }

    /// Hands back every byte not yet returned as a line (for switching to a blind relay).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Whether bytes are waiting without a terminator.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

const IAC: u8 = 255;
const WILL: u8 = 251;
const DONT: u8 = 254;
/// Telnet command bytes are 240 (SE) to 255 (IAC).
const TELNET_COMMANDS: u8 = 240;

/// Telnet "interrupt process" and "data mark".
const IP: u8 = 244;
const DM: u8 = 242;

/// The Telnet Synch a client sent in front of a command (RFC 854; RFC 959 §4.1.3: `IAC
/// IP`, then `IAC` as TCP urgent data, then `DM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synch {
    /// `IAC IP IAC DM` all in band (the client sent no urgent data).
    InBand,
    /// `IAC IP DM` in band: the `IAC` between them came as TCP urgent data, which the
    /// kernel keeps out of band (BSD ftp(1), and every client that follows RFC 959).
    Urgent,
}

/// The Synch in front of `line`, if there is one, and the command behind it. The urgent
/// byte may have arrived in another read than the bytes around it: the line, framed
/// whole, still carries the in-band part.
pub fn synch(line: &[u8]) -> Option<(Synch, &[u8])> {
    match line {
        [IAC, IP, IAC, DM, rest @ ..] => Some((Synch::InBand, rest)),
        [IAC, IP, DM, rest @ ..] => Some((Synch::Urgent, rest)),
        _ => None,
    }
}

/// `line` without the Synch in front of it (the rest is cleaned as any line is).
fn after_synch(line: &[u8]) -> &[u8] {
    synch(line).map_or(line, |(_, rest)| rest)
}

/// A line without its terminator (LF, or CR LF).
fn body(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Copies `line` without Telnet command sequences (RFC 854); `IAC IAC`, a literal 255,
/// becomes one byte when `unescape`, else stays as sent.
fn without_telnet(line: &[u8], unescape: bool, out: &mut Vec<u8>) {
    let mut i = 0;
    while i < line.len() {
        match (line[i], line.get(i + 1)) {
            (IAC, Some(&IAC)) => {
                out.push(IAC);
                if !unescape {
                    out.push(IAC);
                }
                i += 2;
            }
            (IAC, Some(&cmd)) if (WILL..=DONT).contains(&cmd) => i += 3,
            (IAC, Some(&cmd)) if cmd >= TELNET_COMMANDS => i += 2,
            // A lone IAC: its data mark was taken out of band by the kernel.
            (IAC, _) => i += 1,
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
}

/// Removes the line terminator and Telnet command sequences (RFC 854) from a line.
///
/// Clients send `IAC IP IAC DM` (Telnet "interrupt process" and "data mark") in front of
/// `ABOR`; option negotiation (`IAC WILL x` …) is three bytes; `IAC IAC` is a literal 255.
pub fn clean_line(line: &[u8]) -> Cow<'_, [u8]> {
    let line = after_synch(body(line));
    if !line.contains(&IAC) {
        return Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len());
    without_telnet(line, true, &mut out);
    Cow::Owned(out)
}

/// The bytes to forward for a client line, so that the server reads the command ftpgate
/// parsed: Telnet command sequences removed (`IAC IAC` kept as sent) and the terminator
/// CR LF. Servers differ on both (pure-ftpd ignores a line that starts with `IAC NOP`,
/// pyftpdlib waits for a CR before a LF), and a line the server ignores or joins to the
/// next one would leave replies matched to the wrong commands. A plain line comes back
/// unchanged, byte for byte.
pub fn wire_line(line: &[u8]) -> Cow<'_, [u8]> {
    let text = after_synch(body(line));
    if !text.contains(&IAC) && line.len() == text.len() + 2 {
        return Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(text.len() + 2);
    without_telnet(text, false, &mut out);
    out.extend_from_slice(b"\r\n");
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_synch_is_found_whole_when_its_bytes_came_in_separate_reads() {
        // BSD ftp's ABOR: IAC IP in band, IAC as urgent data (out of band, so absent
        // here), DM ABOR in band; the reads stop at the urgent mark, so they come apart.
        let mut f = LineFramer::new(64);
        f.push(b"\xff\xf4");
        assert_eq!(f.next_line(), Ok(None));
        f.push(b"\xf2ABOR\r\n");
        let line = f.next_line().unwrap().unwrap();
        assert_eq!(synch(&line), Some((Synch::Urgent, &b"ABOR\r\n"[..])));
        assert_eq!(&*clean_line(&line), b"ABOR");
        assert_eq!(&*wire_line(&line), b"ABOR\r\n");
        let in_band = b"\xff\xf4\xff\xf2STAT\r\n";
        assert_eq!(synch(in_band), Some((Synch::InBand, &b"STAT\r\n"[..])));
        assert_eq!(&*clean_line(in_band), b"STAT");
        // A DM byte elsewhere is data (a file name in another encoding).
        assert_eq!(synch(b"RETR \xf2x\r\n"), None);
        assert_eq!(&*clean_line(b"\xf2ABOR\r\n"), b"\xf2ABOR");
    }

    #[test]
    fn frames_across_segments() {
        let mut f = LineFramer::new(64);
        f.push(b"PO");
        assert_eq!(f.next_line(), Ok(None));
        f.push(b"RT 1,2,3,4,5,6\r");
        assert_eq!(f.next_line(), Ok(None));
        f.push(b"\nNOOP\r\nQU");
        assert_eq!(f.next_line().unwrap().unwrap(), b"PORT 1,2,3,4,5,6\r\n");
        assert_eq!(f.next_line().unwrap().unwrap(), b"NOOP\r\n");
        assert_eq!(f.next_line(), Ok(None));
        assert!(f.has_partial());
        assert_eq!(f.take_rest(), b"QU");
    }

    #[test]
    fn limit_counts_the_terminator() {
        let mut f = LineFramer::new(8);
        f.push(b"NOOP123\r\n");
        assert_eq!(f.next_line(), Err(LineError::TooLong { max: 8 }));
        let mut f = LineFramer::new(8);
        f.push(b"NOOP12\r\n");
        assert_eq!(f.next_line().unwrap().unwrap(), b"NOOP12\r\n");
        let mut f = LineFramer::new(8);
        f.push(b"AAAAAAAAAAAA");
        assert_eq!(f.next_line(), Err(LineError::TooLong { max: 8 }));
    }

    #[test]
    fn telnet_sequences_before_abor() {
        assert_eq!(&*clean_line(b"\xff\xf4\xff\xf2ABOR\r\n"), b"ABOR");
        assert_eq!(&*clean_line(b"\xff\xf4\xffABOR\r\n"), b"ABOR");
        assert_eq!(&*clean_line(b"\xff\xfb\x01NOOP\r\n"), b"NOOP");
        assert_eq!(&*clean_line(b"RETR a\xff\xffb\r\n"), b"RETR a\xffb");
        assert_eq!(&*clean_line(b"NOOP\n"), b"NOOP");
    }

    #[test]
    fn forwarded_lines_are_what_ftpgate_parsed() {
        assert!(matches!(
            wire_line(b"RETR a b\r\n"),
            Cow::Borrowed(b"RETR a b\r\n")
        ));
        assert_eq!(&*wire_line(b"NOOP\n"), b"NOOP\r\n");
        assert_eq!(&*wire_line(b"\xff\xf1NOOP\r\n"), b"NOOP\r\n");
        assert_eq!(&*wire_line(b"\xff\xfb\x01NOOP\n"), b"NOOP\r\n");
        assert_eq!(&*wire_line(b"RETR a\xff\xffb\r\n"), b"RETR a\xff\xffb\r\n");
    }

    proptest! {
        #[test]
        fn wire_lines_parse_like_the_line(line in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut line = line;
            line.retain(|&b| b != b'\n');
            line.push(b'\n');
            let wire = wire_line(&line);
            prop_assert!(wire.ends_with(b"\r\n"));
            prop_assert_eq!(clean_line(&wire), clean_line(&line));
        }

        #[test]
        fn framing_reassembles_any_split(lines in proptest::collection::vec("[ -~]{0,30}", 0..8), cut in 0usize..300) {
            let stream: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
            let cut = cut.min(stream.len());
            let mut f = LineFramer::new(64);
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                f.push(part);
                while let Some(line) = f.next_line().unwrap() {
                    got.push(String::from_utf8(clean_line(&line).into_owned()).unwrap());
                }
            }
            prop_assert_eq!(got, lines);
        }

        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut f = LineFramer::new(32);
            for c in chunks {
                f.push(&c);
                while let Ok(Some(line)) = f.next_line() {
                    let _ = clean_line(&line);
                }
            }
        }
    }
}
