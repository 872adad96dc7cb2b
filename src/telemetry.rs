//! Metric names and log setup, in one place so that dashboards and docs have one source.
//!
//! Metrics (Prometheus names):
//! - `ftpgate_sessions_total{gateway}`: control sessions accepted;
//! - `ftpgate_sessions_active{gateway}`: control sessions open now;
//! - `ftpgate_refusals_total{gateway,reason}`: refusals by the rule that fired;
//! - `ftpgate_data_channels_failed_total{gateway}`: data channels that ended without relaying;
//! - `ftpgate_relayed_bytes_total{gateway,direction}`: data bytes relayed
//!   (`direction` = `to_server` or `to_client`);
//! - `ftpgate_data_ports_in_use{gateway}` and `ftpgate_data_ports{gateway}`: leased data
//!   ports and the size of the pool.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::rules::Rule;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The Prometheus listener could not be installed (address in use, …).
    #[error("metrics listener {addr}: {message}")]
    Metrics {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
}

/// Logs to stderr in the configured format; `RUST_LOG` overrides the level.
pub fn init_logging(cfg: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(cfg.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Serves `/metrics` on `addr`. Must run inside the tokio runtime.
pub fn install_metrics(addr: SocketAddr) -> Result<(), TelemetryError> {
    // Bind here first so that an unusable address is reported at start-up, not later.
    std::net::TcpListener::bind(addr).map_err(|e| TelemetryError::Metrics {
        addr,
        message: e.to_string(),
    })?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| TelemetryError::Metrics {
            addr,
            message: e.to_string(),
        })
}

/// A control session was accepted.
pub fn session_opened(gateway: &str) {
    metrics::counter!("ftpgate_sessions_total", "gateway" => gateway.to_owned()).increment(1);
    metrics::gauge!("ftpgate_sessions_active", "gateway" => gateway.to_owned()).increment(1.0);
}

/// A control session ended.
pub fn session_closed(gateway: &str) {
    metrics::gauge!("ftpgate_sessions_active", "gateway" => gateway.to_owned()).decrement(1.0);
}

/// A security rule refused or neutralised something.
pub fn refused(gateway: &str, rule: Rule) {
    metrics::counter!("ftpgate_refusals_total", "gateway" => gateway.to_owned(), "reason" => rule.name())
        .increment(1);
}

/// A data channel failed before or while relaying.
pub fn data_failed(gateway: &str) {
    metrics::counter!("ftpgate_data_channels_failed_total", "gateway" => gateway.to_owned())
        .increment(1);
}

/// Bytes a finished data channel relayed.
pub fn relayed(gateway: &str, to_server: u64, to_client: u64) {
    metrics::counter!("ftpgate_relayed_bytes_total", "gateway" => gateway.to_owned(), "direction" => "to_server")
        .increment(to_server);
    metrics::counter!("ftpgate_relayed_bytes_total", "gateway" => gateway.to_owned(), "direction" => "to_client")
        .increment(to_client);
}

/// The number of leased data ports changed.
pub fn data_ports_in_use(gateway: &str, leased: usize) {
    metrics::gauge!("ftpgate_data_ports_in_use", "gateway" => gateway.to_owned())
        .set(leased as f64);
}

/// The size of a gateway's data-port pool.
pub fn data_ports_size(gateway: &str, size: usize) {
    metrics::gauge!("ftpgate_data_ports", "gateway" => gateway.to_owned()).set(size as f64);
}
