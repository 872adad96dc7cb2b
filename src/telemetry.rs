//! Metric names and log setup, in one place so that dashboards and docs have one source.
//!
//! Metrics (Prometheus names):
//! - `ftpgate_sessions_total{gateway,outcome}`: control sessions ended (`ok`, `error`) or
//!   refused at admission (`refused`);
//! - `ftpgate_sessions_active{gateway}`: control sessions open now;
//! - `ftpgate_refusals_total{gateway,reason}`: refusals by the rule that fired;
//! - `ftpgate_data_channels_total{gateway,mode,outcome}`: data channels ended, by `active`/
//!   `passive` and `ok`/`failed`;
//! - `ftpgate_data_setup_seconds{gateway,mode}`: histogram, port announced → both ends up;
//! - `ftpgate_rewrites_total{gateway,kind}`: `PORT`, `EPRT`, `227`, `229` rewritten;
//! - `ftpgate_upstream_connect_failures_total{gateway}`: upstream control connects failed;
//! - `ftpgate_build_info{version}`: 1;
//! - `ftpgate_relayed_bytes_total{gateway,direction}`: data bytes relayed
//!   (`direction` = `to_server` or `to_client`);
//! - `ftpgate_data_ports_in_use{gateway}` and `ftpgate_data_ports{gateway}`: leased data
//!   ports and the size of the pool.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

// Metric names used in more than one place (recording and zero-initialisation).
const SESSIONS_TOTAL: &str = "ftpgate_sessions_total";
const SESSIONS_ACTIVE: &str = "ftpgate_sessions_active";
const REFUSALS_TOTAL: &str = "ftpgate_refusals_total";
const DATA_CHANNELS_TOTAL: &str = "ftpgate_data_channels_total";
const REWRITES_TOTAL: &str = "ftpgate_rewrites_total";
const RELAYED_BYTES_TOTAL: &str = "ftpgate_relayed_bytes_total";
const UPSTREAM_CONNECT_FAILURES_TOTAL: &str = "ftpgate_upstream_connect_failures_total";
const DATA_SETUP_SECONDS: &str = "ftpgate_data_setup_seconds";

/// Histogram buckets of `ftpgate_data_setup_seconds`: from 100 µs to the 30 s of the
/// default `data_accept_timeout`.
const SETUP_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat, RelayMode};
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

/// Lets a burst of log lines through per interval and counts the rest, so that a flood
/// (refused connections, a failing `accept`) cannot grow the log faster than the
/// interval allows. The count of lines held back goes out with the next line let through;
/// metrics stay exact either way.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    interval: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    window: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// At most `burst` lines per `interval`.
    pub const fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst,
            interval,
            state: Mutex::new(LimiterState {
                window: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(held back)` when a line may be logged now, with the number of lines held
    /// back since the last one; `None` when this one is only counted.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(st.window, Some(start) if now < start + self.interval) {
            st.window = Some(now);
            st.logged = 0;
        }
        if st.logged < self.burst {
            st.logged += 1;
            Some(std::mem::take(&mut st.suppressed))
        } else {
            st.suppressed += 1;
            None
        }
    }
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
        .set_buckets_for_metric(Matcher::Full(DATA_SETUP_SECONDS.into()), &SETUP_BUCKETS)
        .and_then(|b| b.install())
        .map_err(|e| TelemetryError::Metrics {
            addr,
            message: e.to_string(),
        })
}

/// A control session was admitted.
pub fn session_opened(gateway: &str) {
    metrics::gauge!(SESSIONS_ACTIVE, "gateway" => gateway.to_owned()).increment(1.0);
}

/// A control session ended (`outcome`: `ok`, `error`) or was refused (`refused`, without a
/// matching [`session_opened`]).
pub fn session_closed(gateway: &str, outcome: &'static str) {
    if outcome != "refused" {
        metrics::gauge!(SESSIONS_ACTIVE, "gateway" => gateway.to_owned()).decrement(1.0);
    }
    metrics::counter!(SESSIONS_TOTAL, "gateway" => gateway.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// A security rule refused or neutralised something.
pub fn refused(gateway: &str, rule: Rule) {
    metrics::counter!(REFUSALS_TOTAL, "gateway" => gateway.to_owned(), "reason" => rule.name())
        .increment(1);
}

/// A data channel ended; `mode` is `active` or `passive`.
pub fn data_channel_done(gateway: &str, mode: &'static str, path: &'static str, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    metrics::counter!(DATA_CHANNELS_TOTAL, "gateway" => gateway.to_owned(), "mode" => mode, "path" => path, "outcome" => outcome)
        .increment(1);
}

/// Time from announcing a data port to both ends being connected.
pub fn data_setup_seconds(gateway: &str, mode: &'static str, seconds: f64) {
    metrics::histogram!(DATA_SETUP_SECONDS, "gateway" => gateway.to_owned(), "mode" => mode)
        .record(seconds);
}

/// An address-carrying line was rewritten.
pub fn rewrote(gateway: &str, kind: &'static str) {
    metrics::counter!(REWRITES_TOTAL, "gateway" => gateway.to_owned(), "kind" => kind).increment(1);
}

/// The upstream control connection could not be made.
pub fn upstream_connect_failed(gateway: &str) {
    metrics::counter!(UPSTREAM_CONNECT_FAILURES_TOTAL, "gateway" => gateway.to_owned())
        .increment(1);
}

/// The running version, as a constant 1 with labels.
pub fn build_info() {
    metrics::gauge!("ftpgate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Bytes a finished data channel relayed.
pub fn relayed(gateway: &str, to_server: u64, to_client: u64) {
    metrics::counter!(RELAYED_BYTES_TOTAL, "gateway" => gateway.to_owned(), "direction" => "to_server")
        .increment(to_server);
    metrics::counter!(RELAYED_BYTES_TOTAL, "gateway" => gateway.to_owned(), "direction" => "to_client")
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

/// Creates every labelled series of a gateway at zero, so that dashboards and alerts see
/// `0` rather than no data before the first event.
pub fn gateway_started(gateway: &str) {
    let g = || gateway.to_owned();
    for outcome in ["ok", "error", "refused"] {
        metrics::counter!(SESSIONS_TOTAL, "gateway" => g(), "outcome" => outcome).increment(0);
    }
    for rule in Rule::ALL {
        metrics::counter!(REFUSALS_TOTAL, "gateway" => g(), "reason" => rule.name()).increment(0);
    }
    for mode in ["active", "passive"] {
        for path in [RelayMode::Kernel, RelayMode::Splice, RelayMode::Copy] {
            for outcome in ["ok", "failed"] {
                metrics::counter!(DATA_CHANNELS_TOTAL, "gateway" => g(), "mode" => mode, "path" => path.name(), "outcome" => outcome)
                    .increment(0);
            }
        }
    }
    for kind in ["PORT", "EPRT", "227", "229"] {
        metrics::counter!(REWRITES_TOTAL, "gateway" => g(), "kind" => kind).increment(0);
    }
    for direction in ["to_server", "to_client"] {
        metrics::counter!(RELAYED_BYTES_TOTAL, "gateway" => g(), "direction" => direction)
            .increment(0);
    }
    metrics::counter!(UPSTREAM_CONNECT_FAILURES_TOTAL, "gateway" => g()).increment(0);
    metrics::gauge!(SESSIONS_ACTIVE, "gateway" => g()).increment(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_log_lines_is_cut_to_a_burst_per_interval() {
        let limiter = LogLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let admitted: Vec<Option<u64>> = (0..10).map(|_| limiter.admit_at(t0)).collect();
        assert_eq!(admitted[..3], [Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));
        // The next window's first line reports the seven held back.
        assert_eq!(limiter.admit_at(t0 + Duration::from_secs(10)), Some(7));
        assert_eq!(limiter.admit_at(t0 + Duration::from_secs(11)), Some(0));
    }
}
