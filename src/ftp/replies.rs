//! The replies ftpgate writes itself, each built here from its code and text: one place
//! that says what the gateway answers and with which RFC 959 code (`2xx` done, `4xx`
//! try again, `5xx` refused; `421` closes the connection).

use std::fmt::Display;
use std::net::{IpAddr, SocketAddrV4};

use super::hostport::encode_port_arg;

/// A reply of ftpgate's own: a code and a text, one line or several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    code: u16,
    text: String,
}

impl Response {
    /// A reply with `code` (100–599) and `text`; a text of several lines (separated by
    /// `\n`) becomes a multi-line reply (RFC 959 §4.2).
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        debug_assert!((100..600).contains(&code), "reply code {code}");
        Self {
            code,
            text: text.into(),
        }
    }

    /// Its code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// Its text (lines separated by `\n`).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The bytes on the wire: `ddd text` CR LF, or `ddd-first` … `ddd last` for several
    /// lines (inner lines that could be mistaken for the end get a leading space).
    pub fn to_bytes(&self) -> Vec<u8> {
        let code = self.code;
        let lines: Vec<&str> = self.text.lines().collect();
        match lines.as_slice() {
            [] => format!("{code} \r\n").into_bytes(),
            [one] => format!("{code} {one}\r\n").into_bytes(),
            [first, inner @ .., last] => {
                let mut out = format!("{code}-{first}\r\n");
                for line in inner {
                    if line.starts_with(&code.to_string()) {
                        out.push(' ');
                    }
                    out.push_str(line);
                    out.push_str("\r\n");
                }
                out.push_str(&format!("{code} {last}\r\n"));
                out.into_bytes()
            }
        }
    }

    // ---- 2xx: done -------------------------------------------------------------------

    /// `200` to `EPSV ALL`, which ftpgate answers itself (RFC 2428 §4).
    pub fn epsv_all_accepted() -> Self {
        Self::new(200, "EPSV ALL accepted.")
    }

    /// `200` to `ALGS ENABLE64`/`DISABLE64` (RFC 6384).
    pub fn translation_switched(enabled: bool) -> Self {
        let state = if enabled { "enabled" } else { "disabled" };
        Self::new(200, format!("FTP64 translation {state}."))
    }

    /// `216` to `ALGS STATUS64` (RFC 6384).
    pub fn translation_status(enabled: bool) -> Self {
        Self::new(216, if enabled { "ENABLED" } else { "DISABLED" })
    }

    /// `200` to a client's `PORT`/`EPRT` under `server_mode: passive`.
    pub fn port_taken_for_later(verb: &str) -> Self {
        Self::new(
            200,
            format!("{verb} command successful; ftpgate connects when the transfer starts."),
        )
    }

    /// The explicit proxy's greeting.
    pub fn proxy_greeting() -> Self {
        Self::new(220, "ftpgate proxy ready: log in as USER name@host[:port]")
    }

    /// `221` to `QUIT` before an explicit login.
    pub fn goodbye() -> Self {
        Self::new(221, "Goodbye.")
    }

    /// `227` announcing `addr` (RFC 959).
    pub fn entering_passive(addr: SocketAddrV4) -> Self {
        Self::new(
            227,
            format!("Entering Passive Mode ({}).", encode_port_arg(addr)),
        )
    }

    /// `229` announcing `port` (RFC 2428 §3).
    pub fn entering_extended_passive(port: u16) -> Self {
        Self::new(229, format!("Entering Extended Passive Mode (|||{port}|)"))
    }

    // ---- 421: closing ----------------------------------------------------------------

    /// `421` when the upstream cannot be reached or is not allowed.
    pub fn cannot_connect(target: &str, reason: impl Display) -> Self {
        Self::new(421, format!("Cannot connect to {target}: {reason}."))
    }

    /// `421` when the server refused the session in its greeting.
    pub fn refused_by_server(host: &str, code: u16, text: impl Display) -> Self {
        Self::new(421, format!("{host} refused the session: {code} {text}"))
    }

    /// `421` after `limits.idle_timeout`.
    pub fn idle_timeout() -> Self {
        Self::new(421, "Idle timeout; closing control connection.")
    }

    /// `421` after `limits.line_timeout`.
    pub fn line_timeout() -> Self {
        Self::new(421, "Timeout waiting for the end of a command line.")
    }

    /// `421` to a client that talked before its greeting.
    pub fn early_data() -> Self {
        Self::new(421, "Protocol violation: data before greeting.")
    }

    /// `421` when a bounded queue of the session overflowed.
    pub fn too_many(what: &str) -> Self {
        Self::new(421, format!("Too many {what}; closing."))
    }

    /// `421` when the server broke a reply bound.
    pub fn server_sent(what: impl Display) -> Self {
        Self::new(421, format!("The server sent {what}."))
    }

    /// `421` when the server closed its control connection while the client awaited a reply.
    pub fn server_closed() -> Self {
        Self::new(
            421,
            "Service not available: the server closed the control connection.",
        )
    }

    /// `421` when ftpgate shuts down.
    pub fn shutting_down() -> Self {
        Self::new(421, "Service shutting down; closing control connection.")
    }

    /// `421` as a line too long or one with NUL ends the session.
    pub fn closing(why: impl Display) -> Self {
        Self::new(421, format!("Closing: {why}."))
    }

    /// `421` at admission: a session limit was reached.
    pub fn too_many_connections() -> Self {
        Self::new(421, "Too many connections; try again later.")
    }

    /// `421` at admission: the process is out of file descriptors.
    pub fn out_of_descriptors() -> Self {
        Self::new(
            421,
            "The gateway is out of file descriptors; try again later.",
        )
    }

    /// `421` at admission for another reason.
    pub fn refused_connection(why: impl Display) -> Self {
        Self::new(421, format!("{why}."))
    }

    // ---- 425/426: data connections -----------------------------------------------------

    /// `425` when no data connection can be had.
    pub fn cannot_open_data(why: impl Display) -> Self {
        Self::new(425, format!("Cannot open data connection: {why}."))
    }

    /// `425` to a server's passive reply that cannot be read.
    pub fn unreadable_passive_reply() -> Self {
        Self::new(425, "Cannot parse the server's passive reply.")
    }

    /// `425` to a server's passive reply with a port below 1024.
    pub fn privileged_passive_port() -> Self {
        Self::new(425, "Refused: the server offered a data port below 1024.")
    }

    /// `425` to `PASV` when ftpgate's client side announces IPv6.
    pub fn pasv_needs_ipv4() -> Self {
        Self::new(425, "PASV needs an IPv4 address; use EPSV.")
    }

    /// `426` for a transfer that broke (never the server's success reply).
    pub fn transfer_aborted(why: impl Display) -> Self {
        Self::new(426, format!("Connection closed; transfer aborted: {why}."))
    }

    // ---- 5xx: refused ------------------------------------------------------------------

    /// `500` to a line the server might read otherwise than ftpgate.
    pub fn syntax_error(why: impl Display) -> Self {
        Self::new(500, format!("Syntax error: {why}."))
    }

    /// `500` to a line longer than `limits.max_line`.
    pub fn line_too_long() -> Self {
        Self::new(500, "Command line too long.")
    }

    /// `500` to a line with NUL.
    pub fn nul_in_line() -> Self {
        Self::new(500, "NUL in command line.")
    }

    /// `501` to an argument a typed verb does not take.
    pub fn unexpected_argument(verb: &str) -> Self {
        Self::new(501, format!("{verb}: unexpected argument."))
    }

    /// `501` to a malformed `PORT`/`EPRT`.
    pub fn bad_address(verb: &str, error: impl Display) -> Self {
        Self::new(501, format!("{verb} refused: {error}."))
    }

    /// `501` to an `ALGS` argument other than RFC 6384's.
    pub fn algs_usage() -> Self {
        Self::new(501, "ALGS takes STATUS64, ENABLE64 or DISABLE64.")
    }

    /// `502` to `LPRT`/`LPSV`/`SPSV`.
    pub fn not_supported(verb: &str) -> Self {
        Self::new(
            502,
            format!("{verb} is not supported through this gateway; use EPSV, PASV, EPRT or PORT."),
        )
    }

    /// `503` to `PASV`/`PORT`/`EPRT` after `EPSV ALL` (RFC 2428 §4).
    pub fn only_epsv_after_epsv_all() -> Self {
        Self::new(503, "Only EPSV is allowed after EPSV ALL.")
    }

    /// `504` to a `PORT`/`EPRT` naming another host than the client (FTP bounce).
    pub fn bounce_refused(verb: &str, client: IpAddr) -> Self {
        Self::new(
            504,
            format!("{verb} refused: the address must be your own ({client})."),
        )
    }

    /// `504` to a `PORT`/`EPRT` naming a port below 1024.
    pub fn privileged_port_refused(verb: &str) -> Self {
        Self::new(
            504,
            format!("{verb} refused: data ports below 1024 are not allowed."),
        )
    }

    /// `522` to `EPSV` for a family ftpgate does not announce (RFC 2428 §3).
    pub fn protocol_not_supported(ours: u8) -> Self {
        Self::new(
            522,
            format!("Network protocol not supported, use ({ours})."),
        )
    }

    /// `530` to anything but `USER name@host` before an explicit login.
    pub fn log_in_first() -> Self {
        Self::new(530, "Log in with USER name@host[:port] first.")
    }

    /// `530` to a `USER` that names no proxy target.
    pub fn bad_login(why: impl Display) -> Self {
        Self::new(530, format!("{why}."))
    }

    /// `530` to an explicit login naming a server port outside `allow_server_ports`.
    pub fn port_not_allowed(port: u16, allowed: &[u16]) -> Self {
        let allowed: Vec<String> = allowed.iter().map(u16::to_string).collect();
        Self::new(
            530,
            format!(
                "Port {port} is not allowed through this proxy (allowed: {}).",
                allowed.join(", ")
            ),
        )
    }

    /// `534` to `AUTH` before an explicit login.
    pub fn tls_not_before_login() -> Self {
        Self::new(
            534,
            "TLS is not available before USER name@host through this proxy.",
        )
    }

    /// `534` to `AUTH` under `tls: refuse`.
    pub fn tls_refused() -> Self {
        Self::new(534, "TLS is refused by this gateway's policy.")
    }

    /// `234` to `AUTH TLS`/`SSL` under `tls: terminate`: the handshake follows.
    pub fn auth_ok(mechanism: &str) -> Self {
        Self::new(
            234,
            format!("AUTH {mechanism} successful; proceed with the handshake."),
        )
    }

    /// `504` to `AUTH` with a mechanism other than TLS/SSL.
    pub fn auth_mechanism_unknown() -> Self {
        Self::new(504, "AUTH: only TLS and SSL are supported.")
    }

    /// `503` to `AUTH` on a protected control connection, or behind unanswered commands.
    pub fn auth_out_of_sequence(why: &str) -> Self {
        Self::new(503, format!("AUTH refused: {why}."))
    }

    /// `503` to `PBSZ`/`PROT` before `AUTH`.
    pub fn tls_first(verb: &str) -> Self {
        Self::new(
            503,
            format!("{verb} needs a protected control connection (AUTH TLS first)."),
        )
    }

    /// `200` to `PBSZ`: only 0 makes sense over TLS (RFC 4217 §9).
    pub fn pbsz_ok() -> Self {
        Self::new(200, "PBSZ=0")
    }

    /// `200` to `PROT C`/`P`.
    pub fn prot_ok(private: bool) -> Self {
        Self::new(
            200,
            if private {
                "Protection level set to Private."
            } else {
                "Protection level set to Clear."
            },
        )
    }

    /// `536`/`504` to `PROT S`, `PROT E` or an unknown level.
    pub fn prot_unsupported(level: &str) -> Self {
        match level {
            "S" | "E" => Self::new(536, format!("PROT {level} is not supported.")),
            _ => Self::new(504, "PROT: expected C or P."),
        }
    }

    /// `534` to `CCC`: the control connection stays protected.
    pub fn ccc_refused() -> Self {
        Self::new(534, "CCC refused: the control connection stays protected.")
    }

    /// `421`: the server's control connection could not be secured (`tls.upstream`).
    pub fn upstream_tls_failed(why: &str) -> Self {
        Self::new(421, format!("Cannot reach the server over TLS: {why}."))
    }

    /// `530` to `USER` before `AUTH TLS` under `tls.require`.
    pub fn tls_login_required() -> Self {
        Self::new(530, "Log in over TLS: send AUTH TLS first.")
    }

    /// `521` to a data command before `PROT P` under `tls.require`.
    pub fn data_protection_required() -> Self {
        Self::new(
            521,
            "Data connections must be protected: send PROT P first.",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftp::reply::{ReplyAssembler, ReplyLimits};

    #[test]
    fn single_and_multi_line_replies_read_back_as_one_reply() {
        assert_eq!(
            Response::entering_extended_passive(50000).to_bytes(),
            b"229 Entering Extended Passive Mode (|||50000|)\r\n"
        );
        let multi = Response::new(211, "Features:\n EPSV\n211 looks like an end\nEnd");
        assert_eq!(
            multi.to_bytes(),
            b"211-Features:\r\n EPSV\r\n 211 looks like an end\r\n211 End\r\n"
        );
        let mut a = ReplyAssembler::new(ReplyLimits {
            max_bytes: 1024,
            max_lines: 16,
        });
        let bytes = multi.to_bytes();
        let mut got = None;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            got = a.push_line(line).unwrap();
        }
        let reply = got.expect("one complete reply");
        assert_eq!((reply.code, reply.raw), (Some(211), bytes));
    }

    #[test]
    fn every_reply_has_the_code_its_meaning_calls_for() {
        assert_eq!(Response::cannot_open_data("no free data port").code(), 425);
        assert_eq!(Response::transfer_aborted("reset").code(), 426);
        assert_eq!(Response::shutting_down().code(), 421);
        assert_eq!(
            Response::bounce_refused("PORT", [10, 0, 0, 5].into()).code(),
            504
        );
        assert_eq!(
            Response::port_not_allowed(25, &[21, 2100]).to_bytes(),
            b"530 Port 25 is not allowed through this proxy (allowed: 21, 2100).\r\n"
        );
    }
}
