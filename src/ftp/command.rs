//! Client command lines: a verb (case-insensitive) and an optional argument, with the
//! commands the gateway acts on typed.
//!
//! The grammar is strict, because a line the server reads differently from ftpgate is a
//! line ftpgate cannot vouch for: the verb starts at the first byte and is made of ASCII
//! letters; it ends the line or is followed by exactly one space and the argument; the
//! argument holds no control characters but TAB. Anything else is
//! [`Command::Malformed`] and is answered by the gateway, never forwarded (servers differ:
//! vsftpd answers `500` to a line that starts with a blank, pure-ftpd says nothing at all,
//! which would leave replies matched to the wrong commands). For the verbs ftpgate acts on,
//! trailing spaces of the argument are ignored and any other argument is refused, since
//! servers act on `PASV x` or `EPSV 1 ` as on `PASV` and `EPSV 1`. Every other well-formed
//! line is [`Command::Other`] and passes through unchanged.

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

/// A command that moves data over a data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferVerb {
    /// `RETR`: a file to the client.
    Retr,
    /// `LIST`: a listing to the client.
    List,
    /// `NLST`: a name list to the client.
    Nlst,
    /// `MLSD`: a machine listing to the client (RFC 3659).
    Mlsd,
    /// `STOR`: a file from the client.
    Stor,
    /// `STOU`: a file from the client, stored under a unique name.
    Stou,
    /// `APPE`: a file from the client, appended.
    Appe,
}

impl TransferVerb {
    const ALL: [TransferVerb; 7] = [
        TransferVerb::Retr,
        TransferVerb::List,
        TransferVerb::Nlst,
        TransferVerb::Mlsd,
        TransferVerb::Stor,
        TransferVerb::Stou,
        TransferVerb::Appe,
    ];

    /// The verb, upper case.
    pub fn name(self) -> &'static str {
        match self {
            TransferVerb::Retr => "RETR",
            TransferVerb::List => "LIST",
            TransferVerb::Nlst => "NLST",
            TransferVerb::Mlsd => "MLSD",
            TransferVerb::Stor => "STOR",
            TransferVerb::Stou => "STOU",
            TransferVerb::Appe => "APPE",
        }
    }

    /// Whether data flows from the client to the server.
    pub fn upload(self) -> bool {
        matches!(
            self,
            TransferVerb::Stor | TransferVerb::Stou | TransferVerb::Appe
        )
    }
}

/// Why a line is not a command line ftpgate can vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineSyntax {
    /// The line does not start with a verb of ASCII letters (leading blank, digit, …).
    #[error("a command line starts with a verb of letters")]
    NoVerb,
    /// The verb is followed by something else than one space (a TAB, a CR, a digit, …).
    #[error("the verb must be followed by one space or the end of the line")]
    Separator,
    /// The argument holds a control character (a bare CR, an escape, …).
    #[error("control characters are not allowed in a command line")]
    ControlCharacter,
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
    /// `EPSV` with its argument.
    Epsv(EpsvArg),
    /// A verb ftpgate acts on, with an argument it does not take (`PASV x`, `EPSV 7`).
    BadArgument {
        /// The verb, upper case.
        verb: &'static str,
    },
    /// A data-connection verb ftpgate does not implement (`LPRT`, `LPSV`, `SPSV`): refused,
    /// since a server that knows it would open a data connection ftpgate does not see.
    Unsupported(&'static str),
    /// `USER name`.
    User(&'a [u8]),
    /// `AUTH mechanism` (TLS, SSL, …).
    Auth(&'a [u8]),
    /// `PBSZ size` (RFC 4217).
    Pbsz(&'a [u8]),
    /// `PROT level` (RFC 4217): `C`, `S`, `E` or `P`.
    Prot(&'a [u8]),
    /// `CCC`: clear the control channel (RFC 4217).
    Ccc,
    /// `FEAT` (RFC 2389).
    Feat,
    /// `QUIT`.
    Quit,
    /// `ABOR` (Telnet `IAC IP IAC DM` in front of it already removed).
    Abor,
    /// `REIN`.
    Rein,
    /// `ALGS` (RFC 6384), answered by the gateway.
    Algs(AlgsArg),
    /// A command that moves data, with its argument as sent (the file; may be empty).
    Transfer {
        /// Which one.
        verb: TransferVerb,
        /// Its argument.
        arg: &'a [u8],
    },
    /// `REST`: the restart point of the transfer command that follows.
    Rest,
    /// A line with nothing in it (after Telnet commands were removed).
    Empty,
    /// A line that is not a well-formed command line.
    Malformed(LineSyntax),
    /// Any other well-formed command line.
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

/// Longest verb accepted (RFC 959 verbs have three or four letters).
const MAX_VERB: usize = 16;

fn command_line(input: &[u8]) -> IResult<&[u8], CommandLine<'_>> {
    let (input, verb) =
        take_while_m_n(1, MAX_VERB, |b: u8| b.is_ascii_alphabetic()).parse(input)?;
    let (input, arg) = opt(preceded(tag(&b" "[..]), rest)).parse(input)?;
    Ok((input, CommandLine { verb, arg }))
}

/// Splits a cleaned line (no terminator, no Telnet sequences) into verb and argument,
/// by the strict grammar of this module.
pub fn split_command(line: &[u8]) -> Result<CommandLine<'_>, LineSyntax> {
    let cl = match command_line(line) {
        Ok((&[], cl)) => cl,
        Ok(_) => return Err(LineSyntax::Separator),
        Err(_) => return Err(LineSyntax::NoVerb),
    };
    if cl
        .arg
        .unwrap_or_default()
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(LineSyntax::ControlCharacter);
    }
    Ok(cl)
}

/// The argument of a verb ftpgate acts on: trailing spaces do not count.
fn typed_arg(arg: Option<&[u8]>) -> Option<&[u8]> {
    let arg = arg?;
    let end = arg.iter().rposition(|&b| b != b' ')? + 1;
    Some(&arg[..end])
}

/// Parses a cleaned line into a [`Command`].
pub fn parse_command(line: &[u8]) -> Command<'_> {
    if line.is_empty() {
        return Command::Empty;
    }
    let CommandLine { verb, arg } = match split_command(line) {
        Ok(cl) => cl,
        Err(e) => return Command::Malformed(e),
    };
    let is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
    let typed = typed_arg(arg);
    let upper = || typed.map(<[u8]>::to_ascii_uppercase);
    if is("PORT") {
        match parse_port_arg(typed.unwrap_or_default()) {
            Ok(addr) => Command::Port(addr),
            Err(error) => Command::BadAddress {
                verb: "PORT",
                error,
            },
        }
    } else if is("EPRT") {
        match parse_eprt_arg(typed.unwrap_or_default()) {
            Ok(addr) => Command::Eprt(addr),
            Err(error) => Command::BadAddress {
                verb: "EPRT",
                error,
            },
        }
    } else if is("PASV") {
        match typed {
            None => Command::Pasv,
            Some(_) => Command::BadArgument { verb: "PASV" },
        }
    } else if is("EPSV") {
        match upper().as_deref() {
            None => Command::Epsv(EpsvArg::Any),
            Some(b"1") => Command::Epsv(EpsvArg::V4),
            Some(b"2") => Command::Epsv(EpsvArg::V6),
            Some(b"ALL") => Command::Epsv(EpsvArg::All),
            Some(_) => Command::BadArgument { verb: "EPSV" },
        }
    } else if is("LPRT") {
        Command::Unsupported("LPRT")
    } else if is("LPSV") {
        Command::Unsupported("LPSV")
    } else if is("SPSV") {
        Command::Unsupported("SPSV")
    } else if is("USER") {
        Command::User(arg.unwrap_or_default())
    } else if is("AUTH") {
        Command::Auth(arg.unwrap_or_default())
    } else if is("PBSZ") {
        Command::Pbsz(typed.unwrap_or_default())
    } else if is("PROT") {
        Command::Prot(typed.unwrap_or_default())
    } else if is("CCC") {
        Command::Ccc
    } else if is("FEAT") {
        Command::Feat
    } else if is("QUIT") {
        Command::Quit
    } else if is("ABOR") {
        Command::Abor
    } else if is("REIN") {
        Command::Rein
    } else if is("ALGS") {
        Command::Algs(match upper().as_deref() {
            Some(b"STATUS64") => AlgsArg::Status64,
            Some(b"ENABLE64") => AlgsArg::Enable64,
            Some(b"DISABLE64") => AlgsArg::Disable64,
            _ => AlgsArg::Unknown,
        })
    } else if is("REST") {
        Command::Rest
    } else if let Some(verb) = TransferVerb::ALL.into_iter().find(|v| is(v.name())) {
        Command::Transfer {
            verb,
            arg: arg.unwrap_or_default(),
        }
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
        assert_eq!(
            parse_command(b"EPSV 7"),
            Command::BadArgument { verb: "EPSV" }
        );
        assert_eq!(parse_command(b"USER bob"), Command::User(b"bob"));
        assert_eq!(parse_command(b"AUTH TLS"), Command::Auth(b"TLS"));
        assert_eq!(parse_command(b"PBSZ 0"), Command::Pbsz(b"0"));
        assert_eq!(parse_command(b"prot P"), Command::Prot(b"P"));
        assert_eq!(parse_command(b"CCC"), Command::Ccc);
        assert_eq!(parse_command(b"abor"), Command::Abor);
        assert_eq!(
            parse_command(b"RETR x"),
            Command::Transfer {
                verb: TransferVerb::Retr,
                arg: b"x"
            }
        );
        assert_eq!(
            parse_command(b"stor a\tb  "),
            Command::Transfer {
                verb: TransferVerb::Stor,
                arg: b"a\tb  "
            }
        );
        assert_eq!(
            parse_command(b"LIST"),
            Command::Transfer {
                verb: TransferVerb::List,
                arg: b""
            }
        );
        assert_eq!(parse_command(b"REST 100"), Command::Rest);
        assert_eq!(parse_command(b"SYST"), Command::Other);
        assert_eq!(parse_command(b""), Command::Empty);
    }

    #[test]
    fn servers_act_on_trailing_spaces_so_typed_verbs_ignore_them() {
        // vsftpd and pure-ftpd answer `PASV ` and `EPSV 1 ` with 227/229.
        assert_eq!(parse_command(b"PASV "), Command::Pasv);
        assert_eq!(parse_command(b"PASV   "), Command::Pasv);
        assert_eq!(parse_command(b"EPSV 1 "), Command::Epsv(EpsvArg::V4));
        assert_eq!(
            parse_command(b"PORT 10,0,0,1,4,0 "),
            Command::Port("10.0.0.1:1024".parse().unwrap())
        );
        // ... and act on `PASV x` as on PASV: ftpgate refuses it instead of guessing.
        assert_eq!(
            parse_command(b"PASV x"),
            Command::BadArgument { verb: "PASV" }
        );
    }

    #[test]
    fn lines_servers_read_differently_are_malformed() {
        for (line, why) in [
            (&b" PORT 10,0,0,1,4,0"[..], LineSyntax::NoVerb),
            (b"\tPASV", LineSyntax::NoVerb),
            (b" AUTH TLS", LineSyntax::NoVerb),
            (b"227 (1,2,3,4,5,6)", LineSyntax::NoVerb),
            (b"PORT\t10,0,0,1,4,0", LineSyntax::Separator),
            (b"PASV\t", LineSyntax::Separator),
            (b"NOOP\rPASV", LineSyntax::Separator),
            (b"N\x01OOP", LineSyntax::Separator),
            (b"ABCDEFGHIJKLMNOPQ", LineSyntax::Separator),
            (b"NOOP x\rPORT 1,2,3,4,5,6", LineSyntax::ControlCharacter),
            (b"RETR a\x1bb", LineSyntax::ControlCharacter),
        ] {
            assert_eq!(parse_command(line), Command::Malformed(why), "{line:?}");
        }
    }

    #[test]
    fn long_address_verbs_are_not_implemented() {
        assert_eq!(
            parse_command(b"LPRT 4,4,127,0,0,1,2,4,1"),
            Command::Unsupported("LPRT")
        );
        assert_eq!(parse_command(b"lpsv"), Command::Unsupported("LPSV"));
        assert_eq!(parse_command(b"SPSV"), Command::Unsupported("SPSV"));
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
