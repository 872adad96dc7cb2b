//! Finding and reaching the server of a session: the original destination of a
//! transparent connection, name resolution for the explicit and publish roles, and the
//! rules on who may be dialled (`deny_servers`, never the gateway itself, rule 14).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::GatewayConfig;
use crate::data::channel;
use crate::plan::DialSource;
use crate::rules::Rule;
use crate::telemetry;

use super::GatewayContext;

/// How long connecting to an upstream control port may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a session's control connection goes.
#[derive(Debug)]
pub(super) enum Target {
    /// An address (the transparent role's original destination).
    Addr(SocketAddr),
    /// A host name or address literal and a port, resolved when connecting.
    Name(String, u16),
}

/// The server a transparently redirected connection was going to, or why it is refused.
pub(super) fn transparent_target(
    ctx: &GatewayContext,
    stream: &TcpStream,
) -> Result<SocketAddr, (Rule, String)> {
    let dst = crate::sys::original_destination(stream).map_err(|e| {
        (
            Rule::NotRedirected,
            format!("cannot read the original destination: {e}"),
        )
    })?;
    // A connection made to ftpgate's own port rather than redirected to it would make
    // ftpgate dial itself. (With TPROXY the local address is the original destination.)
    let listen = ctx.listen_addr;
    if dst.port() == listen.port() && (listen.ip().is_unspecified() || dst.ip() == listen.ip()) {
        return Err((
            Rule::NotRedirected,
            "this port only serves redirected connections".into(),
        ));
    }
    // Behind a NAT64 the client dialled the IPv4 server's synthesized IPv6 address.
    let dst = match ctx.cfg.nat64_server(dst.ip()) {
        Some(v4) => SocketAddr::new(v4, dst.port()),
        None => dst,
    };
    match upstream_refusal(&ctx.cfg, dst.ip()) {
        Some(rule) => Err((rule, format!("server {} is not allowed", dst.ip()))),
        None => Ok(dst),
    }
}

/// The rule that forbids dialling `ip` as an upstream (transparent and explicit roles), if
/// one does: `deny_servers`, or one of the gateway's own addresses (no pivot into the
/// gateway itself); `allow_servers` lists the operator's exceptions.
pub(super) fn upstream_refusal(cfg: &GatewayConfig, ip: IpAddr) -> Option<Rule> {
    let ip = ip.to_canonical();
    if cfg.server_excepted(ip) {
        None
    } else if !cfg.server_allowed(ip) {
        Some(Rule::DenyServers)
    } else if is_own_address(ip) {
        Some(Rule::GatewayAddress)
    } else {
        None
    }
}

/// Whether `ip` is an address of this host (any interface), or the unspecified address.
fn is_own_address(ip: IpAddr) -> bool {
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    match if_addrs::get_if_addrs() {
        Ok(addrs) => addrs.iter().any(|a| a.ip().to_canonical() == ip),
        Err(e) => {
            // Without the list, refuse rather than risk a pivot into the gateway.
            tracing::warn!(error = %e, "cannot list local addresses; refusing the upstream");
            true
        }
    }
}

/// Resolves and connects to an upstream from `from`, trying each address in turn; with
/// `checked`, each address must pass [`upstream_refusal`] (the explicit role, where the
/// client named it).
pub(super) async fn connect_upstream(
    target: Target,
    from: DialSource,
    checked: Option<&GatewayContext>,
) -> Result<TcpStream, String> {
    let from_ip = match from {
        DialSource::Bind(ip) | DialSource::Transparent(ip) => ip,
    };
    let candidates: Vec<SocketAddr> = match target {
        Target::Addr(a) => vec![a],
        Target::Name(host, port) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    let mut last = String::from("no address to connect to");
    for addr in candidates {
        if let Some(ctx) = checked {
            if let Some(rule) = upstream_refusal(&ctx.cfg, addr.ip()) {
                telemetry::refused(&ctx.name, rule);
                tracing::warn!(%rule, server = %addr, "refused upstream");
                last = format!("server {} is not allowed", addr.ip());
                continue;
            }
        }
        if !from_ip.is_unspecified() && from_ip.is_ipv4() != addr.is_ipv4() {
            last = format!("{addr} is not reachable from {from_ip}");
            continue;
        }
        match channel::dial(addr, from, UPSTREAM_CONNECT_TIMEOUT).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_never_dials_itself() {
        // Rule gateway_address, whatever deny_servers says; allow_servers is the exception.
        let mut cfg = crate::config::Config::parse(
            "gateways:\n  - name: x\n    listen: \"127.0.0.1:2121\"\n    upstream: \"user@host\"\n    server_side: { address: 127.0.0.1 }\n    deny_servers: []\n",
            "t.yaml",
        )
        .unwrap()
        .gateways
        .remove(0);
        for ip in ["127.0.0.1", "::1", "0.0.0.0", "::ffff:127.0.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                upstream_refusal(&cfg, ip),
                Some(Rule::GatewayAddress),
                "{ip}"
            );
        }
        if let Some(iface) = if_addrs::get_if_addrs()
            .unwrap()
            .into_iter()
            .find(|i| !i.is_loopback())
        {
            assert_eq!(
                upstream_refusal(&cfg, iface.ip()),
                Some(Rule::GatewayAddress),
                "{}",
                iface.ip()
            );
        }
        assert_eq!(upstream_refusal(&cfg, "192.0.2.10".parse().unwrap()), None);
        cfg.allow_servers = vec![crate::config::Net::try_from("127.0.0.1".to_owned()).unwrap()];
        assert_eq!(upstream_refusal(&cfg, "127.0.0.1".parse().unwrap()), None);
        cfg.deny_servers = vec![crate::config::Net::try_from("192.0.2.0/24".to_owned()).unwrap()];
        assert_eq!(
            upstream_refusal(&cfg, "192.0.2.10".parse().unwrap()),
            Some(Rule::DenyServers)
        );
    }
}
