//! The YAML configuration: schema, defaults, and validation into a typed, checked
//! [`Config`].
//!
//! Values with a syntax of their own (addresses, port ranges, durations, networks,
//! upstreams) are parsed while deserializing ([`values`]), so that serde_yaml reports a
//! bad one with its key path, line and column. Checks across fields run afterwards and
//! name the key path ([`gateway`], [`limits`]). Unknown keys are an error everywhere.

mod gateway;
mod limits;
mod values;

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use gateway::{GatewayConfig, DEFAULT_DENY_SERVERS, DEFAULT_SERVER_PORTS};
pub use limits::Limits;
pub use values::{
    ClientSource, HumanDuration, Intercept, InterceptMethod, Interface, Net, PortRange, RelayMode,
    ServerMode, ServerSource, SideConfig, TlsPolicy, TlsSettings, Upstream, UpstreamTls,
};

use gateway::{resolve_gateway, RawGateway};

/// The configuration used by `ftpgate run` without `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.yaml");

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
    /// The kernel data path's nftables settings (used by `relay: kernel` gateways).
    pub kernel: KernelConfig,
    /// Policy routing for transparent sockets (TPROXY, `client_source: server`).
    pub policy_routing: PolicyRouting,
    /// Logging.
    pub log: LogConfig,
}

/// Policy routing for transparent sockets: packets that belong to one of ftpgate's
/// transparent sockets (or that TPROXY hands to it) carry this firewall mark and are
/// routed to the host itself by a rule ftpgate installs at start and removes at exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyRouting {
    /// The firewall mark (`meta mark`) of those packets.
    pub mark: u32,
    /// The routing table that delivers them locally.
    pub table: u32,
}

impl Default for PolicyRouting {
    fn default() -> Self {
        Self {
            mark: 1,
            table: 100,
        }
    }
}

/// The kernel data path's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    /// The conntrack mark of the flows the kernel path forwards, in the high 16 bits
    /// (ftpgate matches `ct mark and 0xffff0000`): the operator's forward chain accepts
    /// them with one rule.
    pub mark: u32,
    /// The NFLOG group that reports those flows' start and end to ftpgate.
    pub log_group: u16,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            mark: 0x4647_0000,
            log_group: 4647,
        }
    }
}

impl KernelConfig {
    /// The part of the conntrack mark ftpgate owns.
    pub const MASK: u32 = 0xffff_0000;
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
    kernel: KernelConfig,
    #[serde(default)]
    policy_routing: PolicyRouting,
    #[serde(default)]
    log: LogConfig,
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
        let invalid = |(key, message): (String, String)| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            message,
        };
        if raw.gateways.is_empty() {
            return Err(invalid((
                "gateways".into(),
                "at least one gateway is required".into(),
            )));
        }
        raw.limits.check().map_err(invalid)?;
        if raw.kernel.mark == 0 || raw.kernel.mark & !KernelConfig::MASK != 0 {
            return Err(invalid((
                "kernel.mark".into(),
                "expected a non-zero mark in the high 16 bits, such as 0x46470000".into(),
            )));
        }
        let r = raw.policy_routing;
        if r.mark == 0 {
            return Err(invalid((
                "policy_routing.mark".into(),
                "expected a non-zero firewall mark".into(),
            )));
        }
        if r.table == 0 || (253..=255).contains(&r.table) {
            return Err(invalid((
                "policy_routing.table".into(),
                "expected a routing table of ftpgate's own (not 0, 253 default, 254 main, 255 local)".into(),
            )));
        }
        let gateways = resolve_gateways(raw.gateways).map_err(invalid)?;
        Ok(Config {
            gateways,
            limits: raw.limits,
            metrics: raw.metrics,
            admin: raw.admin,
            kernel: raw.kernel,
            policy_routing: raw.policy_routing,
            log: raw.log,
        })
    }

    /// The effective configuration as YAML (for `ftpgate check`).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// Every gateway entry, checked, and checked against the others: names, listen addresses
/// and data ports are each a gateway's own.
fn resolve_gateways(raw: Vec<RawGateway>) -> Result<Vec<GatewayConfig>, (String, String)> {
    let mut gateways: Vec<GatewayConfig> = Vec::new();
    for (i, g) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("gateways[{i}].{field}");
        let gw = resolve_gateway(g, &key)?;
        if let Some(other) = gateways.iter().find(|o| o.name == gw.name) {
            return Err((key("name"), format!("{:?} is used twice", other.name)));
        }
        if let Some(other) = gateways.iter().find(|o| o.listen == gw.listen) {
            return Err((
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
            return Err((
                key("data_ports"),
                format!("overlaps the data ports of {:?}", other.name),
            ));
        }
        gateways.push(gw);
    }
    Ok(gateways)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::time::Duration;

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
    fn server_source_client_is_for_the_publish_role_in_one_family() {
        let c = Config::parse(&format!("{MINIMAL}    server_source: client\n"), "t.yaml").unwrap();
        assert_eq!(c.gateways[0].server_source, ServerSource::Client);
        assert!(c.gateways[0].needs_transparent_sockets());
        let transparent = MINIMAL.replace("\"10.0.0.5:21\"", "transparent");
        let e = error_of(&format!("{transparent}    server_source: client\n"));
        assert!(
            e.contains("gateways[0].server_source") && e.contains("publish role"),
            "{e}"
        );
        let explicit = MINIMAL.replace("\"10.0.0.5:21\"", "\"user@host\"");
        let e = error_of(&format!("{explicit}    server_source: client\n"));
        assert!(e.contains("gateways[0].server_source"), "{e}");
        let ftp64 = MINIMAL.replace("127.0.0.1 }", "\"2001:db8::1\" }");
        let e = error_of(&format!("{ftp64}    server_source: client\n"));
        assert!(e.contains("server_source") && e.contains("family"), "{e}");
        let c = Config::parse(MINIMAL, "t.yaml").unwrap();
        assert_eq!(c.gateways[0].server_source, ServerSource::Gateway);
    }

    #[test]
    fn router_keys_interface_intercept_and_policy_routing() {
        let e = error_of(&MINIMAL.replace("127.0.0.1 }", "127.0.0.1, interface: \"wan 0\" }"));
        assert!(
            e.contains("gateways[0].server_side") && e.contains("interface name"),
            "{e}"
        );
        let e = error_of(&format!("{MINIMAL}    intercept: {{ method: tproxy }}\n"));
        assert!(
            e.contains("gateways[0].intercept") && e.contains("transparent"),
            "{e}"
        );
        let transparent = MINIMAL.replace("\"10.0.0.5:21\"", "transparent");
        let e = error_of(&format!("{transparent}    intercept: {{ ports: [] }}\n"));
        assert!(e.contains("gateways[0].intercept.ports"), "{e}");
        let e = error_of(&format!("{transparent}    intercept: {{ method: nat }}\n"));
        assert!(e.contains("tproxy"), "{e}");
        // A transparent gateway is intercepted by redirect of port 21 unless told; its
        // active-mode dials come from the server's address (a transparent socket).
        let c = Config::parse(&transparent, "t.yaml").unwrap();
        let g = &c.gateways[0];
        assert_eq!(g.intercept, Some(Intercept::default()));
        assert!(!g.listens_transparently() && g.needs_transparent_sockets());
        let c = Config::parse(
            &format!("{transparent}    intercept: {{ method: tproxy, ports: [21, 990] }}\npolicy_routing: {{ mark: 7, table: 77 }}\n"),
            "t.yaml",
        )
        .unwrap();
        assert!(c.gateways[0].listens_transparently());
        assert_eq!(
            c.gateways[0].intercept.as_ref().unwrap().ports,
            vec![21, 990]
        );
        assert_eq!((c.policy_routing.mark, c.policy_routing.table), (7, 77));
        let e = error_of(&format!("{MINIMAL}policy_routing: {{ mark: 0 }}\n"));
        assert!(e.contains("policy_routing"), "{e}");
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
