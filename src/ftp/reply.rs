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

/// Collects server lines into replies.
#[derive(Debug, Default)]
pub struct ReplyAssembler {
    open: Option<(u16, Vec<u8>)>,
}

impl ReplyAssembler {
    /// Feeds one line (terminator included); returns a reply when one is complete.
    pub fn push_line(&mut self, line: &[u8]) -> Option<Reply> {
        if let Some((code, raw)) = &mut self.open {
            let last_line = raw.len();
            raw.extend_from_slice(line);
            return match line_code(line) {
                Some((c, false)) if c == *code => {
                    let (code, raw) = self.open.take()?;
                    Some(Reply {
                        code: Some(code),
                        raw,
                        last_line,
                    })
                }
                _ => None,
            };
        }
        match line_code(line) {
            Some((code, true)) => {
                self.open = Some((code, line.to_vec()));
                None
            }
            code => Some(Reply {
                code: code.map(|(c, _)| c),
                raw: line.to_vec(),
                last_line: 0,
            }),
        }
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

    #[test]
    fn single_line() {
        let mut a = ReplyAssembler::default();
        let r = a
            .push_line(b"227 Entering Passive Mode (1,2,3,4,5,6)\r\n")
            .unwrap();
        assert_eq!(r.code, Some(227));
        assert_eq!(r.last_text(), b"Entering Passive Mode (1,2,3,4,5,6)");
        assert!(r.is_final());
        let r = a.push_line(b"150\r\n").unwrap();
        assert!(r.is_preliminary());
        assert_eq!(r.last_text(), b"");
    }

    #[test]
    fn multi_line_with_digit_lines_inside() {
        let mut a = ReplyAssembler::default();
        assert!(a.push_line(b"211-Features:\r\n").is_none());
        assert!(a
            .push_line(b"227 Entering Passive Mode (6,6,6,6,6,6)\r\n")
            .is_none());
        assert!(a.push_line(b"211-still inside\r\n").is_none());
        assert!(a.in_multiline());
        let r = a.push_line(b"211 End\r\n").unwrap();
        assert_eq!(r.code, Some(211));
        assert_eq!(r.last_text(), b"End");
        assert_eq!(&r.raw[r.last_line..], b"211 End\r\n");
        assert!(r.raw.starts_with(b"211-Features:\r\n227 Entering"));
    }

    #[test]
    fn not_a_reply() {
        let mut a = ReplyAssembler::default();
        assert_eq!(a.push_line(b"hello\r\n").unwrap().code, None);
        assert_eq!(a.push_line(b"600 x\r\n").unwrap().code, None);
        assert_eq!(a.push_line(b"2000 x\r\n").unwrap().code, None);
    }

    proptest! {
        #[test]
        fn multi_line_roundtrip(code in 100u16..600, inner in proptest::collection::vec("[ -~]{0,20}", 0..5)) {
            let mut a = ReplyAssembler::default();
            let mut raw = format!("{code}-first\r\n").into_bytes();
            prop_assert!(a.push_line(&raw).is_none());
            for l in &inner {
                let line = format!(" {l}\r\n");
                raw.extend_from_slice(line.as_bytes());
                prop_assert!(a.push_line(line.as_bytes()).is_none());
            }
            let last = format!("{code} last\r\n");
            raw.extend_from_slice(last.as_bytes());
            let r = a.push_line(last.as_bytes()).unwrap();
            prop_assert_eq!(r.code, Some(code));
            prop_assert_eq!(r.raw, raw);
        }

        #[test]
        fn arbitrary_lines_never_panic(lines: Vec<Vec<u8>>) {
            let mut a = ReplyAssembler::default();
            for l in lines {
                if let Some(r) = a.push_line(&l) {
                    let _ = r.last_text();
                }
            }
        }
    }
}
