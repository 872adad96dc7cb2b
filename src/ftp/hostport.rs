//! Codecs for the addresses FTP carries inside its payload.
//!
//! - `h1,h2,h3,h4,p1,p2`: the argument of `PORT` and the numbers of a `227` reply (RFC 959);
//! - `<d>af<d>addr<d>port<d>`: the argument of `EPRT` (RFC 2428 §2);
//! - `(|||port|)`: the port of a `229` reply (RFC 2428 §3).
//!
//! Parsers are strict: exactly six fields of one to three digits, octets 0–255, ports
//! 1–65535. Anything else is an error, never a guess.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;

use nom::bytes::complete::{tag, take_while_m_n};
use nom::combinator::{map_res, verify};
use nom::{IResult, Parser};

/// Why an address argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    /// The text does not have the shape the command or reply requires.
    #[error("malformed address: expected {expected}")]
    Malformed {
        /// What the parser was looking for.
        expected: &'static str,
    },
    /// Port 0 is not a port a peer can connect to.
    #[error("port 0 is not a valid data port")]
    PortZero,
    /// `EPRT` named an address family other than 1 (IPv4) or 2 (IPv6).
    #[error("unsupported network protocol {0} (1 = IPv4, 2 = IPv6)")]
    UnsupportedFamily(String),
}

fn octet(input: &[u8]) -> IResult<&[u8], u8> {
    map_res(
        take_while_m_n(1, 3, |b: u8| b.is_ascii_digit()),
        |d: &[u8]| {
            // Only ASCII digits reach here, so the text is valid UTF-8.
            std::str::from_utf8(d)
                .map_err(|_| ())
                .and_then(|s| s.parse::<u8>().map_err(|_| ()))
        },
    )
    .parse(input)
}

fn six_fields(input: &[u8]) -> IResult<&[u8], [u8; 6]> {
    let comma = || tag(&b","[..]);
    let (rest, (a, _, b, _, c, _, d, _, p1, _, p2)) = (
        octet,
        comma(),
        octet,
        comma(),
        octet,
        comma(),
        octet,
        comma(),
        octet,
        comma(),
        octet,
    )
        .parse(input)?;
    Ok((rest, [a, b, c, d, p1, p2]))
}

fn fields_to_addr(f: [u8; 6]) -> Result<SocketAddrV4, HostPortError> {
    let port = u16::from(f[4]) << 8 | u16::from(f[5]);
    if port == 0 {
        return Err(HostPortError::PortZero);
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::new(f[0], f[1], f[2], f[3]),
        port,
    ))
}

/// Parses the argument of `PORT`: exactly `h1,h2,h3,h4,p1,p2` and nothing else.
///
/// ```
/// use ftpgate::ftp::hostport::{encode_port_arg, parse_port_arg};
/// let addr = parse_port_arg(b"10,0,0,5,4,1").unwrap();
/// assert_eq!(addr.to_string(), "10.0.0.5:1025");
/// assert_eq!(encode_port_arg(addr), "10,0,0,5,4,1");
/// assert!(parse_port_arg(b"10,0,0,256,4,1").is_err());
/// ```
pub fn parse_port_arg(arg: &[u8]) -> Result<SocketAddrV4, HostPortError> {
    const EXPECTED: &str = "six comma-separated numbers 0-255 (h1,h2,h3,h4,p1,p2)";
    match six_fields(arg) {
        Ok((&[], f)) => fields_to_addr(f),
        _ => Err(HostPortError::Malformed { expected: EXPECTED }),
    }
}

/// Writes `addr` as `h1,h2,h3,h4,p1,p2`.
pub fn encode_port_arg(addr: SocketAddrV4) -> String {
    let [a, b, c, d] = addr.ip().octets();
    let [p1, p2] = addr.port().to_be_bytes();
    format!("{a},{b},{c},{d},{p1},{p2}")
}

/// Finds the address of a `227` reply in the text after the code.
///
/// Servers write the numbers in many ways: `(h1,...,p2)`, bare, after `=`, with text before
/// them. The first run of exactly six strict fields that is not part of a longer run of
/// digits and commas is taken. Returns the address and the byte range of the numbers in
/// `text`, so that a rewrite can replace just them.
///
/// ```
/// use ftpgate::ftp::hostport::find_227;
/// let text = b"Entering Passive Mode (192,168,1,2,19,137).";
/// let (addr, span) = find_227(text).unwrap();
/// assert_eq!(addr.to_string(), "192.168.1.2:5001");
/// assert_eq!(&text[span], b"192,168,1,2,19,137");
/// ```
pub fn find_227(text: &[u8]) -> Result<(SocketAddrV4, Range<usize>), HostPortError> {
    let is_field_byte = |b: u8| b.is_ascii_digit() || b == b',';
    for start in 0..text.len() {
        if !text[start].is_ascii_digit() || (start > 0 && is_field_byte(text[start - 1])) {
            continue;
        }
        if let Ok((rest, fields)) = six_fields(&text[start..]) {
            let end = text.len() - rest.len();
            if rest.first().is_some_and(|&b| is_field_byte(b)) {
                continue;
            }
            return Ok((fields_to_addr(fields)?, start..end));
        }
    }
    Err(HostPortError::Malformed {
        expected: "h1,h2,h3,h4,p1,p2 in the 227 reply",
    })
}

fn port_number(input: &[u8]) -> IResult<&[u8], u16> {
    verify(
        map_res(
            take_while_m_n(1, 5, |b: u8| b.is_ascii_digit()),
            |d: &[u8]| {
                std::str::from_utf8(d)
                    .map_err(|_| ())
                    .and_then(|s| s.parse::<u16>().map_err(|_| ()))
            },
        ),
        |p: &u16| *p != 0,
    )
    .parse(input)
}

/// RFC 2428 delimiters: printable ASCII other than digits (a digit would be ambiguous).
fn is_delimiter(b: u8) -> bool {
    (33..=126).contains(&b) && !b.is_ascii_digit()
}

/// Parses the argument of `EPRT`: `<d><af><d><address><d><port><d>`.
///
/// ```
/// use ftpgate::ftp::hostport::{encode_eprt_arg, parse_eprt_arg};
/// let addr = parse_eprt_arg(b"|2|2001:DB8::1|2121|").unwrap();
/// // Written back in RFC 5952 canonical text.
/// assert_eq!(encode_eprt_arg(addr), "|2|2001:db8::1|2121|");
/// ```
pub fn parse_eprt_arg(arg: &[u8]) -> Result<SocketAddr, HostPortError> {
    const EXPECTED: &str = "<d>af<d>address<d>port<d> with af 1 or 2";
    let malformed = HostPortError::Malformed { expected: EXPECTED };
    let (&d, _) = arg.split_first().ok_or(malformed.clone())?;
    if !is_delimiter(d) || arg.last() != Some(&d) {
        return Err(malformed);
    }
    let parts: Vec<&[u8]> = arg.split(|&b| b == d).collect();
    // "|1|a|p|" splits into ["", "1", "a", "p", ""].
    let [empty_head, af, addr, port, empty_tail] = parts[..] else {
        return Err(malformed);
    };
    if !empty_head.is_empty() || !empty_tail.is_empty() {
        return Err(malformed);
    }
    let addr = std::str::from_utf8(addr).map_err(|_| malformed.clone())?;
    let ip: IpAddr = match af {
        b"1" => addr
            .parse::<Ipv4Addr>()
            .map_err(|_| malformed.clone())?
            .into(),
        b"2" => addr
            .parse::<Ipv6Addr>()
            .map_err(|_| malformed.clone())?
            .into(),
        other => {
            return Err(HostPortError::UnsupportedFamily(
                String::from_utf8_lossy(other).into_owned(),
            ))
        }
    };
    if !port.is_empty() && port.iter().all(|&b| b == b'0') {
        return Err(HostPortError::PortZero);
    }
    match port_number(port) {
        Ok((&[], p)) => Ok(SocketAddr::new(ip, p)),
        _ => Err(malformed),
    }
}

/// Writes `addr` as an `EPRT` argument with `|` delimiters; IPv6 in RFC 5952 text.
pub fn encode_eprt_arg(addr: SocketAddr) -> String {
    let af = if addr.is_ipv4() { 1 } else { 2 };
    format!("|{af}|{}|{}|", addr.ip(), addr.port())
}

/// Finds the port of a `229` reply: the first `<d><d><d>port<d>` in the text.
/// Returns the port and the byte range of its digits.
pub fn find_229(text: &[u8]) -> Result<(u16, Range<usize>), HostPortError> {
    for start in 0..text.len().saturating_sub(4) {
        let d = text[start];
        if !is_delimiter(d) || text[start + 1] != d || text[start + 2] != d {
            continue;
        }
        let digits = &text[start + 3..];
        let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 || digits.get(len) != Some(&d) {
            continue;
        }
        return match port_number(&digits[..len]) {
            Ok((&[], port)) => Ok((port, start + 3..start + 3 + len)),
            _ if digits[..len].iter().all(|&b| b == b'0') => Err(HostPortError::PortZero),
            _ => Err(HostPortError::Malformed {
                expected: "a port 1-65535 in the 229 reply",
            }),
        };
    }
    Err(HostPortError::Malformed {
        expected: "(|||port|) in the 229 reply",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn port_arg_strict() {
        assert_eq!(
            parse_port_arg(b"10,0,0,5,4,1").unwrap(),
            "10.0.0.5:1025".parse().unwrap()
        );
        for bad in [
            &b"256,0,0,1,4,1"[..],
            b"10,0,0,5,4",
            b"10,0,0,5,4,1,7",
            b"10,0,0,5,0,0",
            b"-1,0,0,5,4,1",
            b"10,0,0,5,4,1000",
            b"10,0,0,5,4,1 ",
            b" 10,0,0,5,4,1",
            b"10,,0,5,4,1",
            b"",
            b"99999999999999999999,0,0,1,1,1",
        ] {
            assert!(
                parse_port_arg(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_port_arg(b"10,0,0,5,0,0"),
            Err(HostPortError::PortZero)
        );
    }

    #[test]
    fn reply_227_forms() {
        let cases: [&[u8]; 5] = [
            b"Entering Passive Mode (192,168,1,2,19,137).",
            b"Entering Passive Mode 192,168,1,2,19,137",
            b"=192,168,1,2,19,137",
            b"PASV ok (192,168,1,2,19,137)",
            b"Entering Passive Mode (192,168,1,2,19,137)",
        ];
        for text in cases {
            let (addr, span) = find_227(text).unwrap();
            assert_eq!(addr, "192.168.1.2:5001".parse().unwrap());
            assert_eq!(&text[span], b"192,168,1,2,19,137");
        }
        assert!(find_227(b"Entering Passive Mode (192,168,1,2,19)").is_err());
        assert!(find_227(b"Entering Passive Mode (1,192,168,1,2,19,137)").is_err());
        assert!(find_227(b"Entering Passive Mode (300,168,1,2,19,137)").is_err());
        assert_eq!(find_227(b"(10,0,0,1,0,0)"), Err(HostPortError::PortZero));
    }

    #[test]
    fn eprt_forms() {
        assert_eq!(
            parse_eprt_arg(b"|1|132.235.1.2|6275|").unwrap(),
            "132.235.1.2:6275".parse().unwrap()
        );
        assert_eq!(
            parse_eprt_arg(b"!2!1080::8:800:200C:417A!5282!").unwrap(),
            "[1080::8:800:200c:417a]:5282".parse().unwrap()
        );
        for bad in [
            &b"|3|1.2.3.4|5|"[..],
            b"|1|1.2.3.4|0|",
            b"|1|1.2.3.4|65536|",
            b"|1|::1|5|",
            b"|2|1.2.3.4|5|",
            b"|1|1.2.3.4|5",
            b"1|1|1.2.3.4|5|",
            b"|1|1.2.3.4|5||",
            b"5|1|1.2.3.4|5|",
            b"",
        ] {
            assert!(
                parse_eprt_arg(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_eprt_arg(b"|1|1.2.3.4|0|"),
            Err(HostPortError::PortZero)
        );
    }

    #[test]
    fn reply_229_forms() {
        let text = b"Entering Extended Passive Mode (|||6446|)";
        let (port, span) = find_229(text).unwrap();
        assert_eq!(port, 6446);
        assert_eq!(&text[span], b"6446");
        assert_eq!(find_229(b"ok (!!!21!)").unwrap().0, 21);
        assert!(find_229(b"Entering Extended Passive Mode (|||70000|)").is_err());
        assert!(find_229(b"Entering Extended Passive Mode (||6446|)").is_err());
        assert_eq!(find_229(b"(|||0|)"), Err(HostPortError::PortZero));
    }

    proptest! {
        #[test]
        fn port_roundtrip(ip: [u8; 4], port in 1u16..) {
            let addr = SocketAddrV4::new(Ipv4Addr::from(ip), port);
            prop_assert_eq!(parse_port_arg(encode_port_arg(addr).as_bytes()), Ok(addr));
            let text = format!("Entering Passive Mode ({}).", encode_port_arg(addr));
            prop_assert_eq!(find_227(text.as_bytes()).map(|(a, _)| a), Ok(addr));
        }

        #[test]
        fn eprt_roundtrip(addr: SocketAddr) {
            let addr = match addr {
                SocketAddr::V6(v6) => SocketAddr::new((*v6.ip()).into(), v6.port()),
                v4 => v4,
            };
            prop_assume!(addr.port() != 0);
            prop_assert_eq!(parse_eprt_arg(encode_eprt_arg(addr).as_bytes()), Ok(addr));
        }

        #[test]
        fn epsv_reply_roundtrip(port in 1u16..) {
            let text = format!("Entering Extended Passive Mode (|||{port}|)");
            prop_assert_eq!(find_229(text.as_bytes()).map(|(p, _)| p), Ok(port));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let _ = parse_port_arg(&bytes);
            let _ = parse_eprt_arg(&bytes);
            let _ = find_227(&bytes);
            let _ = find_229(&bytes);
        }
    }
}
