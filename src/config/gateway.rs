//! One gateway entry (`gateways[]`): the raw schema, its defaults, and its resolution
//! into a checked [`GatewayConfig`], each check naming its key.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::values::RawTls;
use super::{
    ClientSource, Intercept, InterceptMethod, Net, PortRange, RelayMode, ServerMode, ServerSource,
    SideConfig, TlsPolicy, TlsSettings, Upstream, UpstreamTls,
};

/// A gateway entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
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
    server_source: ServerSource,
    #[serde(default)]
    allow_clients: Option<Vec<Net>>,
    #[serde(default)]
    deny_servers: Option<Vec<Net>>,
    #[serde(default)]
    allow_servers: Vec<Net>,
    #[serde(default)]
    allow_server_ports: Option<Vec<u16>>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    allow_privileged_ports: bool,
    #[serde(default)]
    relay: RelayMode,
    #[serde(default)]
    nat64_prefix: Option<Net>,
    #[serde(default)]
    intercept: Option<Intercept>,
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
    /// Source of the connections toward the server (publish role: `client` dials from
    /// each client's own address).
    pub server_source: ServerSource,
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
    /// `AUTH` policy, and TLS termination's settings.
    pub tls: TlsSettings,
    /// Accept data ports below 1024 from clients and servers (for a legacy peer); off by
    /// default, logged at start-up when on.
    pub allow_privileged_ports: bool,
    /// How data bytes are relayed.
    pub relay: RelayMode,
    /// Transparent role behind a NAT64 (RFC 6146): IPv6 destinations in this /96 (such as
    /// `64:ff9b::/96`) embed the IPv4 server to connect to (RFC 6052).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat64_prefix: Option<Net>,
    /// Transparent role: how the router hands connections over, and which server ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intercept: Option<Intercept>,
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

    /// Whether this gateway's sockets must be transparent (`IP_TRANSPARENT`): TPROXY
    /// delivers connections for foreign addresses, and `client_source: server` dials from
    /// the server's address. Both need `CAP_NET_ADMIN` and policy routing.
    pub fn needs_transparent_sockets(&self) -> bool {
        self.client_source == ClientSource::Server
            || self.server_source == ServerSource::Client
            || self.listens_transparently()
    }

    /// Whether its listeners must be transparent sockets (TPROXY hands them connections
    /// for foreign addresses).
    pub fn listens_transparently(&self) -> bool {
        self.intercept
            .as_ref()
            .is_some_and(|i| i.method == InterceptMethod::Tproxy)
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

/// The checked gateway of entry `g`; errors carry the key path `key` makes and what was
/// expected.
pub(super) fn resolve_gateway(
    g: RawGateway,
    key: &dyn Fn(&str) -> String,
) -> Result<GatewayConfig, (String, String)> {
    if g.name.trim().is_empty() {
        return Err((key("name"), "must not be empty".into()));
    }
    let client_side = client_side_of(&g, key)?;
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
    if let Some(problem) = g.nat64_prefix.and_then(|p| nat64_problem(p, &g)) {
        return Err((key("nat64_prefix"), problem));
    }
    check_server_source(&g, &client_side).map_err(|e| (key("server_source"), e))?;
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
    let allow_server_ports = server_ports_of(&g).map_err(|e| (key("allow_server_ports"), e))?;
    let tls = tls_of(&g, key)?;
    let intercept = match (g.upstream == Upstream::Transparent, g.intercept) {
        (true, i) => {
            let i = i.unwrap_or_default();
            if i.ports.is_empty() || i.ports.contains(&0) {
                return Err((
                    key("intercept.ports"),
                    "expected one or more server ports such as [21]".into(),
                ));
            }
            Some(i)
        }
        (false, None) => None,
        (false, Some(_)) => {
            return Err((
                key("intercept"),
                "only for upstream: transparent (the other roles are not intercepted)".into(),
            ))
        }
    };
    if g.relay == RelayMode::Kernel {
        for (name, side) in [
            ("client_side", &client_side),
            ("server_side", &g.server_side),
        ] {
            if side.address.is_unspecified() {
                return Err((
                    key(&format!("{name}.address")),
                    "relay: kernel needs a concrete address: the kernel maps data \
                     connections from and to it"
                        .into(),
                ));
            }
        }
    }
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
        server_source: g.server_source,
        allow_clients: g.allow_clients.unwrap_or_default(),
        deny_servers,
        allow_servers: g.allow_servers,
        allow_server_ports,
        tls,
        allow_privileged_ports: g.allow_privileged_ports,
        relay: g.relay,
        nat64_prefix: g.nat64_prefix,
        intercept,
    })
}

/// `server_source: client` is for the publish role, with both sides in one family.
fn check_server_source(g: &RawGateway, client_side: &SideConfig) -> Result<(), String> {
    if g.server_source != ServerSource::Client {
        return Ok(());
    }
    if !matches!(g.upstream, Upstream::Fixed { .. }) {
        return Err(
            "client is for the publish role (upstream: \"HOST:PORT\"): in the transparent \
             and explicit roles the server is on the internet, where a client's address \
             cannot come from the router"
                .to_owned(),
        );
    }
    if client_side.address.to_canonical().is_ipv4()
        != g.server_side.address.to_canonical().is_ipv4()
    {
        return Err(
            "client needs the client and server sides in one address family (FTP64 \
             translates between families: an IPv6 client address cannot reach an IPv4 \
             server)"
                .to_owned(),
        );
    }
    Ok(())
}

/// The checked `tls` of entry `g`. The files are read when the gateway starts (and by
/// `ftpgate check`), see [`crate::tls`].
fn tls_of(g: &RawGateway, key: &dyn Fn(&str) -> String) -> Result<TlsSettings, (String, String)> {
    let Some(raw) = &g.tls else {
        return Ok(TlsSettings::of(TlsPolicy::Refuse));
    };
    let t = raw.resolve().map_err(|e| (key("tls"), e))?;
    if !t.terminates() {
        let extra = t.certificate.is_some()
            || t.key.is_some()
            || t.implicit_listen.is_some()
            || t.require
            || t.upstream != UpstreamTls::Plain
            || t.upstream_ca.is_some()
            || t.upstream_name.is_some();
        if extra {
            return Err((
                key("tls.mode"),
                "certificate, key, implicit_listen, require and upstream are for mode: terminate"
                    .into(),
            ));
        }
        return Ok(t);
    }
    if g.upstream == Upstream::Transparent {
        return Err((
            key("tls.mode"),
            "terminate is for the publish and explicit roles: ftpgate cannot present a \
             certificate for every server a transparent client reaches (passthrough can)"
                .into(),
        ));
    }
    for (name, value) in [("certificate", &t.certificate), ("key", &t.key)] {
        if value.is_none() {
            return Err((
                key(&format!("tls.{name}")),
                "required with mode: terminate (a PEM file)".into(),
            ));
        }
    }
    if t.implicit_listen == Some(g.listen) {
        return Err((
            key("tls.implicit_listen"),
            "must differ from listen (implicit FTPS is a listener of its own)".into(),
        ));
    }
    if t.upstream == UpstreamTls::Plain && (t.upstream_ca.is_some() || t.upstream_name.is_some()) {
        return Err((
            key("tls.upstream"),
            "upstream_ca and upstream_name are for upstream: explicit or implicit".into(),
        ));
    }
    Ok(t)
}

/// The client side: as written, or the listen address when that is not a wildcard.
fn client_side_of(
    g: &RawGateway,
    key: &dyn Fn(&str) -> String,
) -> Result<SideConfig, (String, String)> {
    match &g.client_side {
        Some(side) => Ok(side.clone()),
        None if g.listen.ip().is_unspecified() => Err((
            key("client_side.address"),
            format!("required when listen is {} (a wildcard)", g.listen.ip()),
        )),
        None => Ok(SideConfig {
            address: g.listen.ip(),
            announce: None,
            interface: None,
        }),
    }
}

/// What is wrong with `nat64_prefix` for this entry, if anything.
fn nat64_problem(prefix: Net, g: &RawGateway) -> Option<String> {
    if !matches!(prefix.0, IpNet::V6(net) if net.prefix_len() == 96) {
        return Some(format!(
            "{} is not an IPv6 /96 prefix such as 64:ff9b::/96",
            prefix.0
        ));
    }
    if g.upstream != Upstream::Transparent {
        return Some("needs upstream: transparent".to_owned());
    }
    if !g.server_side.address.is_ipv4() {
        return Some("needs an IPv4 server_side.address (the servers are IPv4)".to_owned());
    }
    (g.client_source == Some(ClientSource::Server)).then(|| {
        "cannot be combined with client_source: server (an IPv4 server address \
         cannot be the source toward IPv6 clients); use gateway"
            .to_owned()
    })
}

/// `allow_server_ports`: for the explicit role (default [`DEFAULT_SERVER_PORTS`]) only.
fn server_ports_of(g: &RawGateway) -> Result<Vec<u16>, String> {
    match (&g.upstream, &g.allow_server_ports) {
        (Upstream::Explicit, None) => Ok(DEFAULT_SERVER_PORTS.to_vec()),
        (Upstream::Explicit, Some(ports)) if ports.is_empty() || ports.contains(&0) => {
            Err("expected a list of ports from 1 to 65535".into())
        }
        (Upstream::Explicit, Some(ports)) => Ok(ports.clone()),
        (_, None) => Ok(Vec::new()),
        (_, Some(_)) => Err(
            "applies to upstream: \"user@host\" only (the other roles do not let clients choose the port)"
                .into(),
        ),
    }
}
