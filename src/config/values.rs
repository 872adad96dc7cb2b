//! Values with a syntax of their own (upstreams, port ranges, networks, durations),
//! parsed while deserializing so that a bad one is reported with its key path, line and
//! column; and the small enumerations of a gateway entry.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Deserializes values written as text through their `TryFrom<String>`, inside the field's
/// own deserializer, so that an error carries the field's key path and position.
struct TextVisitor<T>(std::marker::PhantomData<T>);

impl<T: TryFrom<String, Error = String>> serde::de::Visitor<'_> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        T::try_from(v.to_owned()).map_err(E::custom)
    }
}

macro_rules! deserialize_from_text {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(TextVisitor(std::marker::PhantomData))
            }
        }
    )*};
}

deserialize_from_text!(Upstream, PortRange, Net, HumanDuration);

/// How a gateway finds the server for a control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum Upstream {
    /// The connection's original destination (nftables REDIRECT or TPROXY).
    Transparent,
    /// Explicit proxy: the client logs in as `USER name@host[:port]`.
    Explicit,
    /// Publish one server: every connection goes to this host and port.
    Fixed {
        /// Host name or address literal.
        host: String,
        /// Control port.
        port: u16,
    },
}

impl TryFrom<String> for Upstream {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "transparent" => return Ok(Self::Transparent),
            "user@host" => return Ok(Self::Explicit),
            _ => {}
        }
        let expected =
            || format!("expected transparent, \"user@host\" or \"HOST:PORT\", found {s:?}");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest.split_once("]:").ok_or_else(expected)?;
            host.parse::<std::net::Ipv6Addr>().map_err(|_| expected())?;
            (host, port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or_else(expected)?;
            if host.is_empty() || host.contains(':') {
                return Err(expected());
            }
            (host, port)
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(expected)?;
        Ok(Self::Fixed {
            host: host.to_owned(),
            port,
        })
    }
}

impl From<Upstream> for String {
    fn from(u: Upstream) -> String {
        u.to_string()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transparent => f.write_str("transparent"),
            Self::Explicit => f.write_str("user@host"),
            Self::Fixed { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Fixed { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// An inclusive range of TCP ports, written `first-last` (or a single port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port, inclusive.
    pub last: u16,
}

impl PortRange {
    /// How many ports the range holds.
    pub fn count(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// Whether two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let expected = || format!("expected a port range like \"40000-40999\", found {s:?}");
        let (a, b) = s.split_once('-').unwrap_or((&s, &s));
        let first: u16 = a.trim().parse().map_err(|_| expected())?;
        let last: u16 = b.trim().parse().map_err(|_| expected())?;
        if first == 0 || last < first {
            return Err(expected());
        }
        Ok(Self { first, last })
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        format!("{}-{}", r.first, r.last)
    }
}

/// A network in CIDR notation; a bare address means just that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Net(pub IpNet);

impl Net {
    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl TryFrom<String> for Net {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map(Net)
            .map_err(|_| format!("expected an address or network like \"10.0.0.0/8\", found {s:?}"))
    }
}

impl From<Net> for String {
    fn from(n: Net) -> String {
        n.0.to_string()
    }
}

/// A duration written like `30s`, `15m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| format!("expected a duration like \"30s\" or \"15m\", found {s:?}: {e}"))
    }
}

impl From<HumanDuration> for String {
    fn from(d: HumanDuration) -> String {
        humantime::format_duration(d.0).to_string()
    }
}

/// How ftpgate opens data connections toward the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServerMode {
    /// The same mode the client chose.
    #[default]
    Same,
    /// Always passive toward the server.
    Passive,
    /// Always active toward the server.
    Active,
}

/// The source address of active-mode data connections toward clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientSource {
    /// The server's own address, bound with `IP_TRANSPARENT`.
    Server,
    /// `client_side.address`.
    Gateway,
}

/// The source address of ftpgate's connections toward a published server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServerSource {
    /// `server_side.address`.
    #[default]
    Gateway,
    /// The client's own address, bound with `IP_TRANSPARENT`: the server sees each client
    /// as behind DNAT (publish role only).
    Client,
}

/// What to do with `AUTH TLS`/`AUTH SSL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Answer the client with a refusal so that it falls back to plain FTP or stops.
    #[default]
    Refuse,
    /// Relay the encrypted control channel blindly.
    Passthrough,
    /// ftpgate is the TLS server toward clients, on the control and every data
    /// connection, and reads and rewrites the control channel as in plain FTP.
    Terminate,
}

/// TLS toward the server under `tls: terminate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// Plain FTP to the server (FTPS in front of a server that speaks only FTP).
    #[default]
    Plain,
    /// `AUTH TLS` to the server before the login.
    Explicit,
    /// TLS from the first byte (implicit FTPS).
    Implicit,
}

/// A gateway's `tls`: the short forms `refuse` and `passthrough`, or a mapping whose
/// `mode` may also be `terminate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// What to do with `AUTH`.
    #[serde(default)]
    pub mode: TlsPolicy,
    /// PEM certificate chain presented to clients (`terminate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<std::path::PathBuf>,
    /// PEM private key of the certificate (`terminate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<std::path::PathBuf>,
    /// A second listener where TLS starts at once (implicit FTPS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit_listen: Option<SocketAddr>,
    /// Plain-text login and unprotected data are refused (`530`, `521`).
    #[serde(default)]
    pub require: bool,
    /// A protected data connection must resume its control connection's TLS session.
    #[serde(default = "yes")]
    pub require_reuse: bool,
    /// TLS toward the server.
    #[serde(default)]
    pub upstream: UpstreamTls,
    /// CA certificates (PEM) the server's certificate is checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ca: Option<std::path::PathBuf>,
    /// The name checked in the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_name: Option<String>,
}

fn yes() -> bool {
    true
}

impl TlsSettings {
    /// The settings of a short form.
    pub fn of(mode: TlsPolicy) -> Self {
        Self {
            mode,
            require_reuse: true,
            ..Self::default()
        }
    }

    /// Whether the gateway terminates TLS.
    pub fn terminates(&self) -> bool {
        self.mode == TlsPolicy::Terminate
    }
}

/// `tls` as written: a word or a mapping.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawTls {
    /// `tls: refuse` or `tls: passthrough`.
    Word(String),
    /// `tls: { mode: …, … }`.
    Mapping(serde_yaml::Mapping),
}

impl RawTls {
    /// The settings, or what is wrong with them.
    pub(super) fn resolve(&self) -> Result<TlsSettings, String> {
        match self {
            RawTls::Word(w) => match w.as_str() {
                "refuse" => Ok(TlsSettings::of(TlsPolicy::Refuse)),
                "passthrough" => Ok(TlsSettings::of(TlsPolicy::Passthrough)),
                "terminate" => Err(
                    "terminate needs a mapping: { mode: terminate, certificate: PEM, key: PEM }"
                        .into(),
                ),
                other => Err(format!(
                    "expected refuse, passthrough or a mapping with mode: terminate (got {other:?})"
                )),
            },
            RawTls::Mapping(m) => serde_yaml::from_value(serde_yaml::Value::Mapping(m.clone()))
                .map_err(|e| e.to_string()),
        }
    }
}

/// How data-connection bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// `splice(2)` through a pipe: bytes stay in the kernel (Linux; elsewhere `copy`).
    #[default]
    Splice,
    /// Read into a buffer and write it out: portable.
    Copy,
    /// nftables forwards the data connection (DNAT/SNAT per announced port); ftpgate
    /// never touches its bytes. Channels the kernel cannot carry use `splice`.
    Kernel,
}

impl RelayMode {
    /// The name in metrics and logs (`path=`).
    pub fn name(self) -> &'static str {
        match self {
            RelayMode::Splice => "splice",
            RelayMode::Copy => "copy",
            RelayMode::Kernel => "kernel",
        }
    }
}

/// Addresses of one side of a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SideConfig {
    /// Data listeners for this side bind here; connections toward this side start here.
    pub address: IpAddr,
    /// Written into replies/commands for this side's peer (default: `address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<IpAddr>,
    /// The network interface this side's peers are behind, for the firewall rules
    /// `ftpgate nft` writes (default: the interface that holds `address`, found when the
    /// rules are generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<Interface>,
}

/// A network interface name, as nftables matches it (`iifname`/`oifname`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Interface(pub String);

impl TryFrom<String> for Interface {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        let ok = (1..16).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@:".contains(c));
        if ok {
            Ok(Self(name))
        } else {
            Err(format!(
                "expected an interface name of 1 to 15 letters, digits or ._-@: (got {name:?})"
            ))
        }
    }
}

impl From<Interface> for String {
    fn from(i: Interface) -> String {
        i.0
    }
}

impl std::fmt::Display for Interface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the transparent role's router hands connections to ftpgate (it only changes the
/// rules `ftpgate nft` writes, and whether listeners must be transparent sockets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intercept {
    /// `redirect` (NAT; the original destination from conntrack) or `tproxy` (no NAT;
    /// transparent sockets, policy routing).
    #[serde(default)]
    pub method: InterceptMethod,
    /// The server ports whose connections are intercepted.
    #[serde(default = "default_intercept_ports")]
    pub ports: Vec<u16>,
}

fn default_intercept_ports() -> Vec<u16> {
    vec![21]
}

impl Default for Intercept {
    fn default() -> Self {
        Self {
            method: InterceptMethod::default(),
            ports: default_intercept_ports(),
        }
    }
}

/// See [`Intercept::method`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InterceptMethod {
    /// nftables `redirect`.
    #[default]
    Redirect,
    /// nftables `tproxy`.
    Tproxy,
}
