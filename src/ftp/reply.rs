//! Server replies: single lines and multi-line replies assembled per RFC 959 §4.2.
//!
//! A multi-line reply opens with `ddd-` and ends at the first line that starts with the same
//! code followed by a space; inner lines may start with anything, digits included. A reply
//! keeps its raw bytes so that it can be forwarded unchanged.

/// One complete reply as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, or `None` for a line that is not a reply at all.
    pub code: Option<u16>,
    /// Every line of the reply, terminators included.
    pub raw: Vec<u8>,
    /// Where the last line (the one that carries the code and a space) starts in `raw`.
    pub last_line: usize,
}

impl Reply {
    /// A `1xx` reply: more replies follow for the same command.
    pub fn is_preliminary(&self) -> bool {
        matches!(self.code, Some(100..=199))
    }

    /// A reply that completes a command (`2xx`–`5xx`).
    pub fn is_final(&self) -> bool {
        matches!(self.code, Some(200..=599))
    }

    /// The text of the last line after `ddd ` (without the terminator).
    pub fn last_text(&self) -> &[u8] {
        let line = &self.raw[self.last_line..];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.get(4..).unwrap_or_default()
    }

    /// Offset of [`Reply::last_text`] within `raw`.
    pub fn last_text_offset(&self) -> usize {
        (self.last_line + 4).min(self.raw.len())
    }
}

/// Reads the code of a reply line and whether it opens a multi-line reply.
fn line_code(line: &[u8]) -> Option<(u16, bool)> {
    let [a, b, c, rest @ ..] = line else {
        return None;
    };
    if !(b'1'..=b'5').contains(a) || !b.is_ascii_digit() || !c.is_ascii_digit() {
        return None;
    }
    let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
    match rest.first() {
        Some(b'-') => Some((code, true)),
        Some(b' ' | b'\r' | b'\n') | None => Some((code, false)),
        Some(_) => None,
    }
}

/// Bounds on one reply, so that a server cannot grow a session's memory by never ending a
/// multi-line reply (DESIGN.md §6.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Bytes of one reply, every line and terminator included.
    pub max_bytes: usize,
    /// Lines of one reply.
    pub max_lines: usize,
}

/// Why a reply was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The reply grew past [`ReplyLimits::max_bytes`].
    #[error("a reply longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The reply grew past [`ReplyLimits::max_lines`].
    #[error("a reply of more than {max} lines")]
    TooManyLines {
        /// The limit.
        max: usize,
    },
}

#[derive(Debug)]
struct OpenReply {
    code: u16,
    raw: Vec<u8>,
    lines: usize,
}

/// Collects server lines into replies, within [`ReplyLimits`].
#[derive(Debug)]
pub struct ReplyAssembler {
    open: Option<OpenReply>,
    limits: ReplyLimits,
}

impl ReplyAssembler {
    /// An assembler that refuses replies beyond `limits`.
    pub fn new(limits: ReplyLimits) -> Self {
        Self { open: None, limits }
    }

    /// Feeds one line (terminator included); returns a reply when one is complete.
    pub fn push_line(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        if let Some(open) = &mut self.open {
            if open.raw.len() + line.len() > self.limits.max_bytes {
                return Err(ReplyError::TooLong {
                    max: self.limits.max_bytes,
                });
            }
            if open.lines >= self.limits.max_lines {
                return Err(ReplyError::TooManyLines {
                    max: self.limits.max_lines,
                });
            }
            let last_line = open.raw.len();
            open.raw.extend_from_slice(line);
            open.lines += 1;
            return Ok(match line_code(line) {
                Some((c, false)) if c == open.code => self.open.take().map(|o| Reply {
                    code: Some(o.code),
                    raw: o.raw,
                    last_line,
                }),
                _ => None,
            });
        }
        if line.len() > self.limits.max_bytes {
            return Err(ReplyError::TooLong {
                max: self.limits.max_bytes,
            });
        }
        Ok(match line_code(line) {
            Some((code, true)) => {
                self.open = Some(OpenReply {
                    code,
                    raw: line.to_vec(),
                    lines: 1,
                });
                None
            }
            code => Some(Reply {
                code: code.map(|(c, _)| c),
                raw: line.to_vec(),
                last_line: 0,
            }),
        })
    }

    /// Whether a multi-line reply is still open.
    pub fn in_multiline(&self) -> bool {
        self.open.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: ReplyLimits = ReplyLimits {
        max_bytes: 4096,
        max_lines: 64,
    };

    fn assembler() -> ReplyAssembler {
        ReplyAssembler::new(LIMITS)
    }

    /// `push_line` for a line that stays within the limits.
    fn push(a: &mut ReplyAssembler, line: &[u8]) -> Option<Reply> {
        a.push_line(line).expect("within the limits")
    }

    #[test]
    fn single_line() {
        let mut a = assembler();
        let r = push(&mut a, b"227 Entering Passive Mode (1,2,3,4,5,6)\r\n").unwrap();
        assert_eq!(r.code, Some(227));
        assert_eq!(r.last_text(), b"Entering Passive Mode (1,2,3,4,5,6)");
        assert!(r.is_final());
        let r = push(&mut a, b"150\r\n").unwrap();
        assert!(r.is_preliminary());
        assert_eq!(r.last_text(), b"");
    }

    #[test]
    fn multi_line_with_digit_lines_inside() {
        let mut a = assembler();
        assert!(push(&mut a, b"211-Features:\r\n").is_none());
        assert!(push(&mut a, b"227 Entering Passive Mode (6,6,6,6,6,6)\r\n").is_none());
        assert!(push(&mut a, b"211-still inside\r\n").is_none());
        assert!(a.in_multiline());
        let r = push(&mut a, b"211 End\r\n").unwrap();
        assert_eq!(r.code, Some(211));
        assert_eq!(r.last_text(), b"End");
        assert_eq!(&r.raw[r.last_line..], b"211 End\r\n");
        assert!(r.raw.starts_with(b"211-Features:\r\n227 Entering"));
    }

    #[test]
    fn not_a_reply() {
        let mut a = assembler();
        assert_eq!(push(&mut a, b"hello\r\n").unwrap().code, None);
        assert_eq!(push(&mut a, b"600 x\r\n").unwrap().code, None);
        assert_eq!(push(&mut a, b"2000 x\r\n").unwrap().code, None);
    }

    #[test]
    fn a_reply_that_never_ends_is_cut_off_at_its_limits() {
        // Rule reply_too_long: bytes of one reply, every line counted.
        let mut a = assembler();
        let line = b"220-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n";
        let mut taken = 0;
        let err = loop {
            match a.push_line(line) {
                Ok(None) => taken += 1,
                Ok(Some(r)) => panic!("{r:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(err, ReplyError::TooLong { max: 4096 });
        assert_eq!(taken, 4096 / line.len());
        // Rule reply_too_many_lines: short lines hit the line limit first.
        let mut a = assembler();
        let err = loop {
            if let Err(e) = a.push_line(b"211-\r\n") {
                break e;
            }
        };
        assert_eq!(err, ReplyError::TooManyLines { max: 64 });
        // One line alone longer than a reply may be.
        let mut a = assembler();
        let long = vec![b'x'; 5000];
        assert_eq!(a.push_line(&long), Err(ReplyError::TooLong { max: 4096 }));
    }

    proptest! {
        #[test]
        fn multi_line_roundtrip(code in 100u16..600, inner in proptest::collection::vec("[ -~]{0,20}", 0..5)) {
            let mut a = assembler();
            let mut raw = format!("{code}-first\r\n").into_bytes();
            prop_assert!(push(&mut a, &raw).is_none());
            for l in &inner {
                let line = format!(" {l}\r\n");
                raw.extend_from_slice(line.as_bytes());
                prop_assert!(push(&mut a, line.as_bytes()).is_none());
            }
            let last = format!("{code} last\r\n");
            raw.extend_from_slice(last.as_bytes());
            let r = push(&mut a, last.as_bytes()).unwrap();
            prop_assert_eq!(r.code, Some(code));
            prop_assert_eq!(r.raw, raw);
        }

        #[test]
        fn arbitrary_lines_never_panic(lines: Vec<Vec<u8>>) {
            let mut a = ReplyAssembler::new(ReplyLimits { max_bytes: 64, max_lines: 4 });
            for l in lines {
                if let Ok(Some(r)) = a.push_line(&l) {
                    prop_assert!(r.raw.len() <= 64);
                    let _ = r.last_text();
                }
            }
        }
    }
}
