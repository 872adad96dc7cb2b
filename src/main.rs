//! The `ftpgate` command: parse arguments, load the configuration, run until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ftpgate::config::Config;
use ftpgate::gateway::Gateways;
use tokio::sync::watch;

/// How long open sessions may take to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "ftpgate",
    version,
    about = "FTP application-layer gateway for NAT edge routers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (without --config: the embedded default, an explicit proxy on 127.0.0.1:2121).
    Run {
        /// YAML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print the effective configuration.
    Check {
        /// YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::embedded()?,
    })
}

fn check(path: &PathBuf) -> anyhow::Result<()> {
    let config = load(Some(path))?;
    print!("{}", config.to_yaml());
    Ok(())
}

fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(path.as_ref())?;
    ftpgate::telemetry::init_logging(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        if let Some(m) = &config.metrics {
            ftpgate::telemetry::install_metrics(m.listen)?;
        }
        let gateways = Gateways::bind(&config).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: no new sessions; waiting for open ones");
            let _ = stop_tx.send(true);
        });
        tracing::info!(config = %path.as_ref().map_or("<embedded default>".into(), |p| p.display().to_string()), "ftpgate ready");
        gateways.run(stop_rx, SHUTDOWN_GRACE).await;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
