//! The YAML configuration: schema, defaults, and validation into a typed, checked
//! [`Config`].
//!
//! Values with a syntax of their own (addresses, port ranges, durations, networks,
//! upstreams) are parsed while deserializing, so that serde_yaml reports a bad one with its
//! key path, line and column. Checks across fields run afterwards and name the key path.
//! Unknown keys are an error everywhere.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The configuration used by `ftpgate run` without `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/default.yaml");

/// Name shown in errors about the embedded default.
pub const EMBEDDED_NAME: &str = "<embedded default>";

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {error}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        error: std::io::Error,
    },
    /// The YAML does not match the schema (the message has key path, line and column).
    #[error("{file}: {error}")]
    Parse {
        /// The file.
        file: String,
        /// serde_yaml's error.
        error: serde_yaml::Error,
    },
    /// A value is well-formed but not acceptable.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// Key path, e.g. `gateways[0].data_ports`.
        key: String,
        /// What was expected.
        message: String,
    },
}

/// A checked configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One entry per listening socket.
    pub gateways: Vec<GatewayConfig>,
    /// Limits shared by all gateways.
    pub limits: Limits,
    /// Prometheus exporter; absent means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// Local admin socket for `ftpgate sessions`; absent means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// Logging.
    pub log: LogConfig,
}

/// The local admin socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Path of the Unix socket (created with mode 0600).
    pub socket: std::path::PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateways: Vec<RawGateway>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    metrics: Option<MetricsConfig>,
    #[serde(default)]
    admin: Option<AdminConfig>,
    #[serde(default)]
    log: LogConfig,
}

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

/// What to do with `AUTH TLS`/`AUTH SSL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Answer the client with a refusal so that it falls back to plain FTP or stops.
    #[default]
    Refuse,
    /// Relay the encrypted control channel blindly.
    Passthrough,
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
}

/// Addresses of one side of a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SideConfig {
    /// Data listeners for this side bind here; connections toward this side start here.
    pub address: IpAddr,
    /// Written into replies/commands for this side's peer (default: `address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    name: String,
    listen: SocketAddr,
    upstream: Upstream,
    #[serde(default)]
    client_side: Option<SideConfig>,
    server_side: SideConfig,
    #[serde(default = "default_data_ports")]
    data_ports: PortRange,
    #[serde(default)]
    server_mode: ServerMode,
    #[serde(default)]
    client_source: Option<ClientSource>,
    #[serde(default)]
    allow_clients: Option<Vec<Net>>,
    #[serde(default)]
    deny_servers: Option<Vec<Net>>,
    #[serde(default)]
    allow_servers: Vec<Net>,
    #[serde(default)]
    allow_server_ports: Option<Vec<u16>>,
    #[serde(default)]
    tls: TlsPolicy,
    #[serde(default)]
    allow_privileged_ports: bool,
    #[serde(default)]
    relay: RelayMode,
    #[serde(default)]
    nat64_prefix: Option<Net>,
}

fn default_data_ports() -> PortRange {
    PortRange {
        first: 40000,
        last: 40999,
    }
}

/// Server ports an explicit-proxy client may name unless `allow_server_ports` says
/// otherwise: the proxy is not a tunnel to SMTP or SSH.
pub const DEFAULT_SERVER_PORTS: &[u16] = &[21];

/// Upstreams never dialled unless `deny_servers` says otherwise: no pivot into the
/// gateway itself, link-local or multicast space.
pub const DEFAULT_DENY_SERVERS: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/3",
    "::/128",
    "::1/128",
    "fe80::/10",
    "ff00::/8",
];

/// One listening socket and how its sessions are handled, with every default resolved.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayConfig {
    /// Label in logs and metrics.
    pub name: String,
    /// Where control connections arrive.
    pub listen: SocketAddr,
    /// How the server is found.
    pub upstream: Upstream,
    /// Addresses toward clients.
    pub client_side: SideConfig,
    /// Addresses toward servers.
    pub server_side: SideConfig,
    /// Ports for data listeners.
    pub data_ports: PortRange,
    /// How data connections toward the server are opened.
    pub server_mode: ServerMode,
    /// Source of active-mode data connections toward clients.
    pub client_source: ClientSource,
    /// Control connections from elsewhere are refused; empty means from anywhere.
    pub allow_clients: Vec<Net>,
    /// Upstreams never dialled (transparent and explicit roles).
    pub deny_servers: Vec<Net>,
    /// Upstreams dialled although `deny_servers` or the gateway's own addresses would refuse
    /// them: the operator's explicit exceptions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_servers: Vec<Net>,
    /// Explicit role: the server ports a client may name in `USER name@host:port`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_server_ports: Vec<u16>,
    /// `AUTH` policy.
    pub tls: TlsPolicy,
    /// Accept data ports below 1024 from clients and servers (for a legacy peer); off by
    /// default, logged at start-up when on.
    pub allow_privileged_ports: bool,
    /// How data bytes are relayed.
    pub relay: RelayMode,
    /// Transparent role behind a NAT64 (RFC 6146): IPv6 destinations in this /96 (such as
    /// `64:ff9b::/96`) embed the IPv4 server to connect to (RFC 6052).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat64_prefix: Option<Net>,
}

impl GatewayConfig {
    /// The IPv4 server a NAT64-synthesized destination stands for, if `nat64_prefix`
    /// covers it.
    pub fn nat64_server(&self, dst: IpAddr) -> Option<IpAddr> {
        let prefix = self.nat64_prefix?;
        match dst {
            IpAddr::V6(v6) if prefix.contains(dst) => {
                let o = v6.octets();
                Some(IpAddr::from([o[12], o[13], o[14], o[15]]))
            }
            _ => None,
        }
    }

    /// The address written into `227`/`229` replies to clients.
    pub fn client_announce(&self) -> IpAddr {
        self.client_side
            .announce
            .unwrap_or(self.client_side.address)
    }

    /// The address written into `PORT`/`EPRT` commands to servers.
    pub fn server_announce(&self) -> IpAddr {
        self.server_side
            .announce
            .unwrap_or(self.server_side.address)
    }

    /// Whether a control connection from `ip` is allowed.
    pub fn client_allowed(&self, ip: IpAddr) -> bool {
        self.allow_clients.is_empty() || self.allow_clients.iter().any(|n| n.contains(ip))
    }

    /// Whether `ip` is one of the operator's exceptions in `allow_servers`.
    pub fn server_excepted(&self, ip: IpAddr) -> bool {
        self.allow_servers.iter().any(|n| n.contains(ip))
    }

    /// Whether dialling the server `ip` is allowed by `deny_servers` (transparent and
    /// explicit roles); `allow_servers` overrides it.
    pub fn server_allowed(&self, ip: IpAddr) -> bool {
        self.server_excepted(ip) || !self.deny_servers.iter().any(|n| n.contains(ip))
    }
}

/// Limits shared by all gateways.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Control sessions at once, all gateways together.
    pub max_sessions: usize,
    /// Control sessions at once from one client IP.
    pub max_sessions_per_client: usize,
    /// A control connection without traffic (and no transfer) is closed after this.
    pub idle_timeout: HumanDuration,
    /// An announced data port waits this long for its peer; dials give up after it too.
    pub data_accept_timeout: HumanDuration,
    /// Longest client control line, CRLF included.
    pub max_line: usize,
    /// After SIGTERM/SIGINT, open sessions and transfers get this long to finish.
    pub shutdown_grace: HumanDuration,
    /// An unfinished client line may wait this long for its end.
    pub line_timeout: HumanDuration,
    /// Bytes of one server reply (a multi-line reply with every line); also the longest
    /// server line.
    pub max_reply_bytes: usize,
    /// Lines of one server reply.
    pub max_reply_lines: usize,
    /// Commands a client may send before their replies came (pipelining depth).
    pub max_pipelined_commands: usize,
    /// IPv4 clients are counted together per network of this prefix length for
    /// `max_sessions_per_client` (32: per address).
    pub client_prefix_v4: u8,
    /// IPv6 clients are counted together per network of this prefix length (64: one host
    /// owns its /64).
    pub client_prefix_v6: u8,
}

impl Limits {
    /// The group a client is counted in for `max_sessions_per_client`: its network of
    /// `client_prefix_v4` or `client_prefix_v6` bits (IPv4-mapped IPv6 counts as IPv4).
    pub fn client_group(&self, ip: IpAddr) -> IpNet {
        let ip = ip.to_canonical();
        let len = match ip {
            IpAddr::V4(_) => self.client_prefix_v4,
            IpAddr::V6(_) => self.client_prefix_v6,
        };
        IpNet::new(ip, len).map_or_else(|_| IpNet::from(ip), |n| n.trunc())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 10_000,
            max_sessions_per_client: 64,
            idle_timeout: HumanDuration(Duration::from_secs(15 * 60)),
            data_accept_timeout: HumanDuration(Duration::from_secs(30)),
            max_line: 2048,
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            line_timeout: HumanDuration(Duration::from_secs(30)),
            max_reply_bytes: 64 * 1024,
            max_reply_lines: 1024,
            max_pipelined_commands: 64,
            client_prefix_v4: 32,
            client_prefix_v6: 64,
        }
    }
}

/// Prometheus exporter settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP listener serving `/metrics`.
    pub listen: SocketAddr,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Session and transfer events.
    #[default]
    Info,
    /// Protocol details.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level as a tracing filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: LogLevel,
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            file: file.clone(),
            error,
        })?;
        Self::parse(&text, &file)
    }

    /// The embedded default configuration.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::parse(EMBEDDED_DEFAULT, EMBEDDED_NAME)
    }

    /// Parses and checks YAML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|error| ConfigError::Parse {
            file: file.to_owned(),
            error,
        })?;
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            message,
        };
        if raw.gateways.is_empty() {
            return Err(invalid(
                "gateways".into(),
                "at least one gateway is required".into(),
            ));
        }
        let l = &raw.limits;
        if !(64..=65536).contains(&l.max_line) {
            return Err(invalid(
                "limits.max_line".into(),
                "expected 64 to 65536 bytes".into(),
            ));
        }
        if l.max_sessions == 0 || l.max_sessions_per_client == 0 {
            return Err(invalid(
                "limits".into(),
                "max_sessions and max_sessions_per_client must be at least 1".into(),
            ));
        }
        if l.data_accept_timeout.0.is_zero()
            || l.idle_timeout.0.is_zero()
            || l.line_timeout.0.is_zero()
        {
            return Err(invalid(
                "limits".into(),
                "timeouts must be longer than zero".into(),
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&l.max_reply_bytes) {
            return Err(invalid(
                "limits.max_reply_bytes".into(),
                "expected 1024 to 16777216 bytes".into(),
            ));
        }
        for (key, value, max) in [
            ("max_reply_lines", l.max_reply_lines, 1_000_000),
            ("max_pipelined_commands", l.max_pipelined_commands, 10_000),
        ] {
            if !(1..=max).contains(&value) {
                return Err(invalid(
                    format!("limits.{key}"),
                    format!("expected 1 to {max}"),
                ));
            }
        }
        if l.client_prefix_v4 > 32 || l.client_prefix_v6 > 128 {
            return Err(invalid(
                "limits".into(),
                "client_prefix_v4 is at most 32 and client_prefix_v6 at most 128".into(),
            ));
        }
        let mut gateways: Vec<GatewayConfig> = Vec::new();
        for (i, g) in raw.gateways.into_iter().enumerate() {
            let key = |field: &str| format!("gateways[{i}].{field}");
            let gw = resolve_gateway(g, &key).map_err(|(k, m)| invalid(k, m))?;
            if let Some(other) = gateways.iter().find(|o| o.name == gw.name) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is used twice", other.name),
                ));
            }
            if let Some(other) = gateways.iter().find(|o| o.listen == gw.listen) {
                return Err(invalid(
                    key("listen"),
                    format!(
                        "{} is already the listen address of {:?}",
                        gw.listen, other.name
                    ),
                ));
            }
            if let Some(other) = gateways
                .iter()
                .find(|o| o.data_ports.overlaps(&gw.data_ports))
            {
                return Err(invalid(
                    key("data_ports"),
                    format!("overlaps the data ports of {:?}", other.name),
                ));
            }
            gateways.push(gw);
        }
        Ok(Config {
            gateways,
            limits: raw.limits,
            metrics: raw.metrics,
            admin: raw.admin,
            log: raw.log,
        })
    }

    /// The effective configuration as YAML (for `ftpgate check`).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

fn resolve_gateway(
    g: RawGateway,
    key: &dyn Fn(&str) -> String,
) -> Result<GatewayConfig, (String, String)> {
    if g.name.trim().is_empty() {
        return Err((key("name"), "must not be empty".into()));
    }
    let client_side = match g.client_side {
        Some(side) => side,
        None if g.listen.ip().is_unspecified() => {
            return Err((
                key("client_side.address"),
                format!("required when listen is {} (a wildcard)", g.listen.ip()),
            ))
        }
        None => SideConfig {
            address: g.listen.ip(),
            announce: None,
        },
    };
    for (name, side) in [
        ("client_side", &client_side),
        ("server_side", &g.server_side),
    ] {
        let announce = side.announce.unwrap_or(side.address);
        if announce.is_unspecified() {
            return Err((
                key(&format!("{name}.announce")),
                format!(
                    "{announce} cannot be announced to a peer; set {name}.announce to a reachable address"
                ),
            ));
        }
    }
    if let Some(prefix) = g.nat64_prefix {
        let problem = match prefix.0 {
            IpNet::V6(net) if net.prefix_len() == 96 => None,
            _ => Some(format!(
                "{} is not an IPv6 /96 prefix such as 64:ff9b::/96",
                prefix.0
            )),
        }
        .or_else(|| {
            (g.upstream != Upstream::Transparent).then(|| "needs upstream: transparent".to_owned())
        })
        .or_else(|| {
            (!g.server_side.address.is_ipv4())
                .then(|| "needs an IPv4 server_side.address (the servers are IPv4)".to_owned())
        })
        .or_else(|| {
            (g.client_source == Some(ClientSource::Server)).then(|| {
                "cannot be combined with client_source: server (an IPv4 server address \
                 cannot be the source toward IPv6 clients); use gateway"
                    .to_owned()
            })
        });
        if let Some(problem) = problem {
            return Err((key("nat64_prefix"), problem));
        }
    }
    let client_source = g.client_source.unwrap_or(match g.upstream {
        Upstream::Transparent if g.nat64_prefix.is_none() => ClientSource::Server,
        _ => ClientSource::Gateway,
    });
    if client_source == ClientSource::Server && g.upstream != Upstream::Transparent {
        return Err((
            key("client_source"),
            "`server` needs upstream: transparent (the router must own the server's route)".into(),
        ));
    }
    let allow_server_ports = match (&g.upstream, g.allow_server_ports) {
        (Upstream::Explicit, None) => DEFAULT_SERVER_PORTS.to_vec(),
        (Upstream::Explicit, Some(ports)) if ports.is_empty() || ports.contains(&0) => {
            return Err((
                key("allow_server_ports"),
                "expected a list of ports from 1 to 65535".into(),
            ))
        }
        (Upstream::Explicit, Some(ports)) => ports,
        (_, None) => Vec::new(),
        (_, Some(_)) => {
            return Err((
                key("allow_server_ports"),
                "applies to upstream: \"user@host\" only (the other roles do not let clients choose the port)".into(),
            ))
        }
    };
    let deny_servers = match g.deny_servers {
        Some(list) => list,
        None => DEFAULT_DENY_SERVERS
            .iter()
            .map(|s| Net::try_from((*s).to_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| (key("deny_servers"), e))?,
    };
    Ok(GatewayConfig {
        name: g.name,
        listen: g.listen,
        upstream: g.upstream,
        client_side,
        server_side: g.server_side,
        data_ports: g.data_ports,
        server_mode: g.server_mode,
        client_source,
        allow_clients: g.allow_clients.unwrap_or_default(),
        deny_servers,
        allow_servers: g.allow_servers,
        allow_server_ports,
        tls: g.tls,
        allow_privileged_ports: g.allow_privileged_ports,
        relay: g.relay,
        nat64_prefix: g.nat64_prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
gateways:
  - name: pub
    listen: "127.0.0.1:2121"
    upstream: "10.0.0.5:21"
    server_side: { address: 127.0.0.1 }
"#;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded().unwrap();
        assert_eq!(c.gateways[0].upstream, Upstream::Explicit);
        assert_eq!(c.gateways[0].listen, "127.0.0.1:2121".parse().unwrap());
    }

    #[test]
    fn defaults_are_filled() {
        let c = Config::parse(MINIMAL, "t.yaml").unwrap();
        let g = &c.gateways[0];
        assert_eq!(
            g.client_side.address,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(g.data_ports.count(), 1000);
        assert_eq!(g.client_source, ClientSource::Gateway);
        assert_eq!(c.limits.max_line, 2048);
        assert_eq!(c.limits.idle_timeout.0, Duration::from_secs(900));
        assert!(!g.server_allowed("127.0.0.1".parse().unwrap()));
        assert!(g.client_allowed("192.0.2.1".parse().unwrap()));
        // The printed configuration reads back to the same thing.
        let again = Config::parse(&c.to_yaml(), "printed").unwrap();
        assert_eq!(again.to_yaml(), c.to_yaml());
    }

    #[test]
    fn upstream_forms() {
        let up = |s: &str| Upstream::try_from(s.to_owned());
        assert_eq!(up("transparent"), Ok(Upstream::Transparent));
        assert_eq!(up("user@host"), Ok(Upstream::Explicit));
        assert_eq!(
            up("[2001:db8::10]:21"),
            Ok(Upstream::Fixed {
                host: "2001:db8::10".into(),
                port: 21
            })
        );
        assert_eq!(
            up("ftp.example.org:2121").unwrap().to_string(),
            "ftp.example.org:2121"
        );
        assert!(up("2001:db8::10:21").is_err());
        assert!(up("host").is_err());
        assert!(up("host:0").is_err());
    }

    #[test]
    fn nat64_prefix_maps_synthesized_destinations_and_is_validated() {
        const NAT64: &str = r#"
gateways:
  - name: out64
    listen: "[2001:db8:6::1]:2196"
    upstream: transparent
    client_side: { address: "2001:db8:6::1" }
    server_side: { address: 203.0.113.1 }
    nat64_prefix: "64:ff9b::/96"
"#;
        let c = Config::parse(NAT64, "t.yaml").unwrap();
        let g = &c.gateways[0];
        assert_eq!(g.client_source, ClientSource::Gateway);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            g.nat64_server(ip("64:ff9b::cb00:710a")),
            Some(ip("203.0.113.10"))
        );
        assert_eq!(g.nat64_server(ip("2001:db8:b::10")), None);
        assert_eq!(g.nat64_server(ip("203.0.113.10")), None);
        for (change, why) in [
            (("64:ff9b::/96", "64:ff9b::/64"), "/96"),
            (
                ("upstream: transparent", "upstream: \"10.0.0.5:21\""),
                "transparent",
            ),
            (
                ("address: 203.0.113.1", "address: \"2001:db8:b::1\""),
                "IPv4",
            ),
            (
                (
                    "    nat64_prefix",
                    "    client_source: server\n    nat64_prefix",
                ),
                "client_source",
            ),
        ] {
            let e = error_of(&NAT64.replace(change.0, change.1));
            assert!(
                e.contains("gateways[0].nat64_prefix") && e.contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn limits_of_issue_11_have_defaults_and_are_checked() {
        let c = Config::parse(MINIMAL, "t.yaml").unwrap();
        let l = &c.limits;
        assert_eq!(
            (
                l.max_reply_bytes,
                l.max_reply_lines,
                l.max_pipelined_commands
            ),
            (65536, 1024, 64)
        );
        assert_eq!(l.line_timeout.0, Duration::from_secs(30));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            l.client_group(ip("2001:db8:1:2:3:4:5:6")),
            "2001:db8:1:2::/64".parse().unwrap()
        );
        assert_eq!(
            l.client_group(ip("::ffff:192.0.2.7")),
            "192.0.2.7/32".parse().unwrap()
        );
        for (bad, key) in [
            ("  max_reply_bytes: 10", "limits.max_reply_bytes"),
            (
                "  max_pipelined_commands: 0",
                "limits.max_pipelined_commands",
            ),
            ("  client_prefix_v6: 129", "limits"),
            ("  line_timeout: 0s", "limits"),
        ] {
            let e = error_of(&format!("{MINIMAL}limits:\n{bad}\n"));
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn server_port_allow_list_is_for_the_explicit_role() {
        let explicit = MINIMAL.replace("\"10.0.0.5:21\"", "\"user@host\"");
        let c = Config::parse(&explicit, "t.yaml").unwrap();
        assert_eq!(c.gateways[0].allow_server_ports, vec![21]);
        let c = Config::parse(
            &format!("{explicit}    allow_server_ports: [21, 2121]\n"),
            "t.yaml",
        )
        .unwrap();
        assert_eq!(c.gateways[0].allow_server_ports, vec![21, 2121]);
        let e = error_of(&format!("{explicit}    allow_server_ports: []\n"));
        assert!(e.contains("gateways[0].allow_server_ports"), "{e}");
        let e = error_of(&format!("{MINIMAL}    allow_server_ports: [21]\n"));
        assert!(e.contains("user@host"), "{e}");
    }

    fn error_of(yaml: &str) -> String {
        Config::parse(yaml, "bad.yaml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_key_and_line() {
        let e = error_of(&MINIMAL.replace("upstream:", "upstrem:"));
        assert!(e.starts_with("bad.yaml: "), "{e}");
        assert!(e.contains("unknown field `upstrem`"), "{e}");
        assert!(e.contains("line 5"), "{e}");

        let e = error_of(&MINIMAL.replace("127.0.0.1:2121", "127.0.0.1"));
        assert!(e.contains("gateways[0].listen"), "{e}");

        let e = error_of(&format!("{MINIMAL}    data_ports: \"5-2\"\n"));
        assert!(
            e.contains("gateways[0].data_ports") && e.contains("40000-40999"),
            "{e}"
        );

        let e = error_of(&format!("{MINIMAL}limits:\n  idle_timeout: soon\n"));
        assert!(
            e.contains("limits.idle_timeout") && e.contains("duration"),
            "{e}"
        );

        let e = error_of(&format!("{MINIMAL}    allow_clients: [\"10.0.0.0/33\"]\n"));
        assert!(e.contains("gateways[0].allow_clients[0]"), "{e}");

        let e = error_of(&format!("{MINIMAL}    tls: maybe\n"));
        assert!(
            e.contains("gateways[0].tls") && e.contains("passthrough"),
            "{e}"
        );

        let e = error_of(&format!("{MINIMAL}limits:\n  max_line: 10\n"));
        assert_eq!(e, "bad.yaml: limits.max_line: expected 64 to 65536 bytes");

        let e = error_of(&MINIMAL.replace("127.0.0.1 }", "0.0.0.0 }"));
        assert!(e.contains("gateways[0].server_side.announce"), "{e}");

        let two = format!(
            "{MINIMAL}{}",
            &MINIMAL["\ngateways:\n".len()..].replace("2121", "2122")
        );
        let e = error_of(&two);
        assert!(e.contains("gateways[1].name"), "{e}");

        let e = error_of("gateways: []\n");
        assert!(e.contains("at least one gateway"), "{e}");
    }
}
