//! The `regionprobe` binary: flags, logging, signals; everything else is the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use regionprobe::config::ConfigSource;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Prometheus exporter for cross-region latency and failover ranking"
)]
struct Cli {
    /// Configuration file; without it the bundled exporter.toml is used.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long = "log.format", global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter (e.g. debug, info,regionprobe=trace); overrides RUST_LOG.
    #[arg(long = "log.level", global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the exporter (the default).
    Run,
    /// Validate the configuration and exit: 0 if valid, 1 with the error otherwise.
    CheckConfig,
    /// Check a running exporter (GET /-/healthy, 2 s timeout): exit 0 if it answers 200, 1 otherwise.
    /// Without --url, asks the configuration's exporter.listen (0.0.0.0 and :: as loopback).
    Healthcheck {
        /// URL to ask instead, e.g. http://127.0.0.1:9537/-/healthy.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = match &cli.config {
        Some(path) => ConfigSource::File(path.clone()),
        None => ConfigSource::Bundled,
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => match source.load() {
            Ok(config) => {
                println!(
                    "{}: OK ({} targets, region {})",
                    source.name(),
                    config.targets.len(),
                    config.exporter.region
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::FAILURE
            }
        },
        Command::Healthcheck { url } => {
            match regionprobe::healthcheck::check(&source, url.as_deref()) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("unhealthy: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run => {
            if let Err(err) = init_logging(cli.log_format, cli.log_level.as_deref()) {
                eprintln!("{err:#}");
                return ExitCode::FAILURE;
            }
            match run(source) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(format: LogFormat, level: Option<&str>) -> anyhow::Result<()> {
    let filter = match level {
        Some(level) => {
            EnvFilter::try_new(level).with_context(|| format!("invalid --log.level {level:?}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

#[tokio::main]
async fn run(source: ConfigSource) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives while starting up still shuts down cleanly.
    let shutdown = shutdown_signal()?;
    let config = source.load()?;
    let listen = config.exporter.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {listen} (exporter.listen in {})",
                source.name()
            )
        })?;
    let bound = listener.local_addr()?;
    tracing::info!(
        "regionprobe {} listening on http://{bound}",
        env!("CARGO_PKG_VERSION")
    );
    regionprobe::run(source, config, listener, shutdown).await?;
    tracing::info!("regionprobe stopped");
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers; the future completes on either.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name} received; shutting down");
    })
}
