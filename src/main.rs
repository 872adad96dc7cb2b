//! The `ftpgate` command: parse arguments, load the configuration, run until a signal.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ftpgate::config::{Config, EMBEDDED_NAME};
use ftpgate::firewall::{self, host::LocalHost, live::ChainRef, live::LiveRuleset};
use ftpgate::gateway::Gateways;
use sd_notify::NotifyState;

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
        /// Print nothing when the configuration is valid (errors still go to stderr).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Print the nftables rules this configuration needs: ftpgate's own table, and its
    /// accepts joined to the operator's input and forward chains.
    Nft {
        /// YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The operator's input chain to join, as "FAMILY TABLE CHAIN" (default: the
        /// running ruleset's input base chains whose policy drops).
        #[arg(long, value_name = "FAMILY TABLE CHAIN")]
        input_chain: Option<ChainRef>,
        /// The operator's forward chain to join (default: those of the running ruleset
        /// that drop).
        #[arg(long, value_name = "FAMILY TABLE CHAIN")]
        forward_chain: Option<ChainRef>,
        /// A whole ruleset for a router that has none, instead.
        #[arg(long, conflicts_with_all = ["input_chain", "forward_chain"])]
        full: bool,
        /// Load the rules with `nft -f` instead of printing them.
        #[arg(long)]
        apply: bool,
        /// The running ruleset as `nft -j list ruleset` printed it (default: ask nft).
        #[arg(long, value_name = "FILE")]
        ruleset: Option<PathBuf>,
    },
    /// List live sessions and their data channels (needs `admin.socket` in the config).
    Sessions {
        /// The admin socket.
        #[arg(long, default_value = "/run/ftpgate/admin.sock")]
        socket: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config, quiet } => check(&config, quiet),
        Command::Sessions { socket } => ftpgate::admin::fetch(&socket)
            .map(|snapshot| print!("{snapshot}"))
            .map_err(anyhow::Error::from),
        Command::Run { config } => run(config),
        Command::Nft {
            config,
            input_chain,
            forward_chain,
            full,
            apply,
            ruleset,
        } => {
            let mut command = format!("ftpgate nft --config {}", config.display());
            for (flag, chain) in [
                ("--input-chain", &input_chain),
                ("--forward-chain", &forward_chain),
            ] {
                if let Some(c) = chain {
                    command += &format!(" {flag} \"{c}\"");
                }
            }
            if full {
                command += " --full";
            }
            let opts = firewall::Options {
                input: input_chain,
                forward: forward_chain,
                full,
                command,
            };
            nft(&config, &opts, ruleset.as_deref(), apply)
        }
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

fn check(path: &PathBuf, quiet: bool) -> anyhow::Result<()> {
    let config = load(Some(path))?;
    // The files of tls: terminate, as the gateway will read them.
    ftpgate::tls::check(&config).with_context(|| path.display().to_string())?;
    if !quiet {
        print!("{}", config.to_yaml());
    }
    Ok(())
}

/// `ftpgate nft`: generates the rules; prints or loads them; notes go to stderr.
fn nft(
    path: &Path,
    opts: &firewall::Options,
    ruleset: Option<&Path>,
    apply: bool,
) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    // The running ruleset: which chains to join, and whether they already jump to ours.
    let live = match (opts.full, ruleset) {
        (true, _) => None,
        (false, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            Some(LiveRuleset::from_json(&text)?)
        }
        (false, None) => match LiveRuleset::read() {
            Ok(live) => Some(live),
            // Without it, named chains still work (the jump is then always written).
            Err(e) if opts.input.is_some() || opts.forward.is_some() => {
                eprintln!("ftpgate nft: {e}; the jumps are written unconditionally");
                None
            }
            Err(e) => return Err(e.into()),
        },
    };
    let generated = firewall::generate(&config, opts, live.as_ref(), &LocalHost)?;
    for note in &generated.notes {
        eprintln!("ftpgate nft: {note}");
    }
    if !apply {
        print!("{}", generated.text);
        return Ok(());
    }
    ftpgate::sys::nftables::load(&generated.text)
        .map_err(anyhow::Error::msg)
        .context("nft -f refused the rules")?;
    eprintln!("ftpgate nft: loaded");
    Ok(())
}

fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(path.as_ref())?;
    ftpgate::telemetry::init_logging(&config.log);
    open_files_limit(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve(config, path))
}

/// Serves until SIGTERM/SIGINT; SIGHUP re-reads the configuration.
async fn serve(mut config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    if let Some(m) = &config.metrics {
        ftpgate::telemetry::install_metrics(m.listen)?;
    }
    let mut gateways = Gateways::start(&config).await?;
    if let Some(admin) = &config.admin {
        ftpgate::admin::serve(&admin.socket, gateways.registry()).await?;
    }
    let (mut term, mut int, mut hup) = (
        signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
    );
    let source = path
        .as_ref()
        .map_or_else(|| EMBEDDED_NAME.to_owned(), |p| p.display().to_string());
    tracing::info!(config = %source, "ftpgate ready");
    systemd(&[NotifyState::Ready]);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                systemd(&[NotifyState::Reloading]);
                match load(path.as_ref()) {
                    Ok(new) => match gateways.reload(&new).await {
                        Ok(()) => {
                            if new.metrics.as_ref().map(|m| m.listen) != config.metrics.as_ref().map(|m| m.listen)
                                || new.admin.as_ref().map(|a| &a.socket) != config.admin.as_ref().map(|a| &a.socket)
                                || new.log.format != config.log.format
                                || new.log.level != config.log.level
                            {
                                tracing::warn!("metrics, admin and log settings change only on restart");
                            }
                            tracing::info!(config = %source, "configuration reloaded");
                            config = new;
                        }
                        Err(e) => tracing::error!(error = %e, "reload failed; keeping the running configuration"),
                    },
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "reload failed; keeping the running configuration"),
                }
                systemd(&[NotifyState::Ready]);
            }
        }
    }
    systemd(&[NotifyState::Stopping]);
    let grace = config.limits.shutdown_grace.0;
    tracing::info!(
        sessions = gateways.active_sessions(),
        grace = %humantime::format_duration(grace),
        "shutting down: no new sessions; waiting for open ones"
    );
    gateways.shutdown(grace).await;
    Ok(())
}

/// Raises the soft limit on open files and says what it allows.
fn open_files_limit(config: &Config) {
    // Two sockets per session; a transfer adds a listener, two sockets and two pipes.
    const PER_TRANSFER: u64 = 8;
    match ftpgate::sys::raise_open_files_limit() {
        Ok(limit) => {
            let sessions = limit.now / PER_TRANSFER;
            tracing::info!(
                open_files = limit.now,
                raised_from = limit.was,
                sessions_with_a_transfer = sessions,
                "open files limit"
            );
            if sessions < config.limits.max_sessions as u64 {
                tracing::warn!(
                    max_sessions = config.limits.max_sessions,
                    sessions_with_a_transfer = sessions,
                    "the open files limit allows fewer busy sessions than limits.max_sessions; \
                     beyond it new connections get 421 (raise LimitNOFILE)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// Tells systemd (Type=notify) what is happening; nothing when not run by systemd.
fn systemd(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
