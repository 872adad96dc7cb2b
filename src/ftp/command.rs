//! Client command lines: a verb (case-insensitive) and an optional argument, with the
//! commands the gateway acts on typed. Everything else is [`Command::Other`] and passes
//! through untouched.

use std::net::{SocketAddr, SocketAddrV4};

use nom::bytes::complete::{tag, take_while_m_n};
use nom::combinator::{opt, rest};
use nom::sequence::preceded;
use nom::{IResult, Parser};

use super::hostport::{parse_eprt_arg, parse_port_arg, HostPortError};

/// The protocol an `EPSV` asks for (RFC 2428 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpsvArg {
    /// Plain `EPSV`: the control connection's protocol.
    Any,
    /// `EPSV 1`.
    V4,
    /// `EPSV 2`.
    V6,
    /// `EPSV ALL`: from now on the client uses only `EPSV`.
    All,
}

/// The argument of the RFC 6384 `ALGS` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlgsArg {
    /// `ALGS STATUS64`: is IPv6/IPv4 translation on?
    Status64,
    /// `ALGS ENABLE64`.
    Enable64,
    /// `ALGS DISABLE64`.
    Disable64,
    /// Anything else.
    Unknown,
}

/// A client command as far as the gateway cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `PORT h1,h2,h3,h4,p1,p2` with a well-formed address.
    Port(SocketAddrV4),
    /// `EPRT |af|addr|port|` with a well-formed address.
    Eprt(SocketAddr),
    /// `PORT` or `EPRT` whose argument is malformed.
    BadAddress {
        /// `PORT` or `EPRT`.
        verb: &'static str,
        /// What was wrong.
        error: HostPortError,
    },
    /// `PASV`.
    Pasv,
    /// `EPSV` with its argument; an unknown argument is [`Command::Other`].
    Epsv(EpsvArg),
    /// `USER name`.
    User(&'a [u8]),
    /// `AUTH mechanism` (TLS, SSL, …).
    Auth(&'a [u8]),
    /// `QUIT`.
    Quit,
    /// `ABOR` (Telnet `IAC IP IAC DM` in front of it already removed).
    Abor,
    /// `REIN`.
    Rein,
    /// `ALGS` (RFC 6384), answered by the gateway.
    Algs(AlgsArg),
    /// Any other line, including ones that are not commands at all.
    Other,
}

/// A command line split into its verb and argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandLine<'a> {
    /// The verb as sent (compare case-insensitively).
    pub verb: &'a [u8],
    /// The text after the first space, if any.
    pub arg: Option<&'a [u8]>,
}

fn command_line(input: &[u8]) -> IResult<&[u8], CommandLine<'_>> {
    let (input, verb) = take_while_m_n(1, 16, |b: u8| b.is_ascii_alphabetic()).parse(input)?;
    let (input, arg) = opt(preceded(tag(&b" "[..]), rest)).parse(input)?;
    Ok((input, CommandLine { verb, arg }))
}

/// Splits a cleaned line (no terminator, no Telnet sequences) into verb and argument.
/// Returns `None` for a line that does not start with a verb.
pub fn split_command(line: &[u8]) -> Option<CommandLine<'_>> {
    match command_line(line) {
        Ok((&[], cl)) => Some(cl),
        _ => None,
    }
}

/// Parses a cleaned line into a [`Command`].
pub fn parse_command(line: &[u8]) -> Command<'_> {
    let Some(CommandLine { verb, arg }) = split_command(line) else {
        return Command::Other;
    };
    let is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
    let arg_or_empty = arg.unwrap_or_default();
    if is("PORT") {
        match parse_port_arg(arg_or_empty) {
            Ok(addr) => Command::Port(addr),
            Err(error) => Command::BadAddress {
                verb: "PORT",
                error,
            },
        }
    } else if is("EPRT") {
        match parse_eprt_arg(arg_or_empty) {
            Ok(addr) => Command::Eprt(addr),
            Err(error) => Command::BadAddress {
                verb: "EPRT",
                error,
            },
        }
    } else if is("PASV") && arg.is_none() {
        Command::Pasv
    } else if is("EPSV") {
        match arg.map(<[u8]>::to_ascii_uppercase).as_deref() {
            None => Command::Epsv(EpsvArg::Any),
            Some(b"1") => Command::Epsv(EpsvArg::V4),
            Some(b"2") => Command::Epsv(EpsvArg::V6),
            Some(b"ALL") => Command::Epsv(EpsvArg::All),
            Some(_) => Command::Other,
        }
    } else if is("USER") {
        Command::User(arg_or_empty)
    } else if is("AUTH") {
        Command::Auth(arg_or_empty)
    } else if is("QUIT") {
        Command::Quit
    } else if is("ABOR") {
        Command::Abor
    } else if is("REIN") {
        Command::Rein
    } else if is("ALGS") {
        Command::Algs(match arg.map(<[u8]>::to_ascii_uppercase).as_deref() {
            Some(b"STATUS64") => AlgsArg::Status64,
            Some(b"ENABLE64") => AlgsArg::Enable64,
            Some(b"DISABLE64") => AlgsArg::Disable64,
            _ => AlgsArg::Unknown,
        })
    } else {
        Command::Other
    }
}

/// Where an explicit-proxy login (`USER name@host[:port]`) wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyLogin {
    /// The user name to replay to the server.
    pub user: Vec<u8>,
    /// Host name or address literal (brackets removed).
    pub host: String,
    /// Control port, 21 unless given.
    pub port: u16,
}

/// Why a `USER` argument is not a proxy login.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyLoginError {
    /// No `@` separates a user from a host.
    #[error("expected USER name@host[:port]")]
    NoHost,
    /// The host part is empty or not a valid host name or address.
    #[error("invalid host {0:?}")]
    BadHost(String),
    /// The port is not 1–65535.
    #[error("invalid port {0:?}")]
    BadPort(String),
}

/// Splits `name@host[:port]` at the last `@` (user names may themselves contain `@`).
/// IPv6 literals are bracketed: `name@[2001:db8::1]:2121`.
pub fn parse_proxy_login(arg: &[u8]) -> Result<ProxyLogin, ProxyLoginError> {
    let at = arg
        .iter()
        .rposition(|&b| b == b'@')
        .ok_or(ProxyLoginError::NoHost)?;
    let (user, target) = (&arg[..at], &arg[at + 1..]);
    if user.is_empty() {
        return Err(ProxyLoginError::NoHost);
    }
    let target = std::str::from_utf8(target)
        .map_err(|_| ProxyLoginError::BadHost(String::from_utf8_lossy(target).into_owned()))?;
    let (host, port) = if let Some(inner) = target.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| ProxyLoginError::BadHost(target.to_owned()))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(ProxyLoginError::BadHost(host.to_owned()));
        }
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| ProxyLoginError::BadPort(p.to_owned()))?,
                ),
            ),
        }
    } else {
        match target.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (target, None),
        }
    };
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    if !valid_host {
        return Err(ProxyLoginError::BadHost(host.to_owned()));
    }
    let port = match port {
        None => 21,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| ProxyLoginError::BadPort(p.to_owned()))?,
    };
    Ok(ProxyLogin {
        user: user.to_vec(),
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn typed_commands() {
        assert_eq!(
            parse_command(b"port 10,0,0,1,4,0"),
            Command::Port("10.0.0.1:1024".parse().unwrap())
        );
        assert_eq!(
            parse_command(b"EPRT |2|::1|2000|"),
            Command::Eprt("[::1]:2000".parse().unwrap())
        );
        assert!(matches!(
            parse_command(b"PORT 10,0,0,1,4"),
            Command::BadAddress { verb: "PORT", .. }
        ));
        assert!(matches!(
            parse_command(b"PORT"),
            Command::BadAddress { verb: "PORT", .. }
        ));
        assert_eq!(parse_command(b"PaSv"), Command::Pasv);
        assert_eq!(parse_command(b"EPSV"), Command::Epsv(EpsvArg::Any));
        assert_eq!(parse_command(b"EPSV 2"), Command::Epsv(EpsvArg::V6));
        assert_eq!(parse_command(b"epsv all"), Command::Epsv(EpsvArg::All));
        assert_eq!(parse_command(b"EPSV 7"), Command::Other);
        assert_eq!(parse_command(b"USER bob"), Command::User(b"bob"));
        assert_eq!(parse_command(b"AUTH TLS"), Command::Auth(b"TLS"));
        assert_eq!(parse_command(b"abor"), Command::Abor);
        assert_eq!(parse_command(b"RETR x"), Command::Other);
        assert_eq!(parse_command(b"227 (1,2,3,4,5,6)"), Command::Other);
        assert_eq!(parse_command(b""), Command::Other);
    }

    #[test]
    fn proxy_logins() {
        let l = parse_proxy_login(b"anonymous@ftp.example.org").unwrap();
        assert_eq!(
            (l.user.as_slice(), l.host.as_str(), l.port),
            (&b"anonymous"[..], "ftp.example.org", 21)
        );
        let l = parse_proxy_login(b"me@corp@10.1.2.3:2121").unwrap();
        assert_eq!(
            (l.user.as_slice(), l.host.as_str(), l.port),
            (&b"me@corp"[..], "10.1.2.3", 2121)
        );
        let l = parse_proxy_login(b"u@[2001:db8::1]:21").unwrap();
        assert_eq!((l.host.as_str(), l.port), ("2001:db8::1", 21));
        assert_eq!(parse_proxy_login(b"bob"), Err(ProxyLoginError::NoHost));
        assert_eq!(parse_proxy_login(b"@host"), Err(ProxyLoginError::NoHost));
        assert!(parse_proxy_login(b"u@").is_err());
        assert!(parse_proxy_login(b"u@host:0").is_err());
        assert!(parse_proxy_login(b"u@host:x").is_err());
        assert!(parse_proxy_login(b"u@ho st").is_err());
        assert!(parse_proxy_login(b"u@[1.2.3.4]").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_lines_never_panic(line: Vec<u8>) {
            let _ = parse_command(&line);
            let _ = parse_proxy_login(&line);
        }
    }
}
