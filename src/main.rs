//! The `regionprobe` binary: flags, logging, signals; everything else is the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use regionprobe::config::ConfigSource;
use regionprobe::rank::{self, Format, Progress};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

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
    /// Most HTTP connections open at once (at most a quarter of the open-files limit is used,
    /// the rest is left to the probes). At the cap a new connection closes the longest-idle
    /// one, or gets a 503 if every connection has a request in flight.
    #[arg(long = "web.max-connections", global = true, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Whether POST /-/reload reloads the configuration (false: it answers 403). SIGHUP always
    /// reloads.
    #[arg(long = "web.enable-lifecycle", global = true, value_name = "BOOL", default_value_t = true, default_missing_value = "true", num_args = 0..=1, require_equals = true, action = clap::ArgAction::Set)]
    enable_lifecycle: bool,
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
    /// Probe the configured targets for a while, serving nothing, then print the regions
    /// ranked best first and the failover candidate.
    ///
    /// The candidate is simply the best region other than exporter.region with a finite score:
    /// hysteresis and hold judge a choice across rankings, and a one-shot run ranks once. The
    /// ranking window is stretched to cover the whole run. A progress bar shows on stderr when
    /// it is a terminal. Ctrl-C (or SIGTERM) stops early and prints what was gathered.
    ///
    /// Exit status: 0 if a region other than the own one answered, 1 if none did, 2 for a bad
    /// configuration or bad arguments.
    Rank {
        /// How long to probe, e.g. 30s, 2m.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = positive_duration)]
        duration: Duration,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// Exit status of `rank` for a bad configuration, as clap's for bad arguments.
const USAGE_ERROR: u8 = 2;

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than 0s".to_owned()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(err.to_string()),
    }
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
        Command::Rank { duration, format } => {
            // Warnings only by default: the ranking is the output.
            let progress = Progress::stderr();
            let logging = init_logging(
                cli.log_format,
                cli.log_level.as_deref(),
                "warn",
                progress.clone(),
            );
            if let Err(err) = logging {
                eprintln!("{err:#}");
                return ExitCode::from(USAGE_ERROR);
            }
            match source.load() {
                Ok(config) => rank(config, duration, format, progress),
                Err(err) => {
                    eprintln!("{err}");
                    ExitCode::from(USAGE_ERROR)
                }
            }
        }
        Command::Run => {
            if let Err(err) = init_logging(
                cli.log_format,
                cli.log_level.as_deref(),
                "info",
                std::io::stderr,
            ) {
                eprintln!("{err:#}");
                return ExitCode::FAILURE;
            }
            let options = regionprobe::Options {
                max_connections: cli.max_connections as usize,
                lifecycle: cli.enable_lifecycle,
                ..regionprobe::Options::default()
            };
            match run(source, options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs to `writer` (stderr, or through the progress bar) at `--log.level`, else `RUST_LOG`,
/// else `default`.
fn init_logging<W>(
    format: LogFormat,
    level: Option<&str>,
    default: &str,
    writer: W,
) -> anyhow::Result<()>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = match level {
        Some(level) => {
            EnvFilter::try_new(level).with_context(|| format!("invalid --log.level {level:?}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

#[tokio::main]
async fn run(source: ConfigSource, options: regionprobe::Options) -> anyhow::Result<()> {
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
    let scheme = if config.web.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        "regionprobe {} listening on {scheme}://{bound}",
        env!("CARGO_PKG_VERSION")
    );
    regionprobe::run_with(source, config, listener, shutdown, options).await?;
    tracing::info!("regionprobe stopped");
    Ok(())
}

#[tokio::main]
async fn rank(
    config: regionprobe::config::Config,
    duration: Duration,
    format: Format,
    progress: Progress,
) -> ExitCode {
    let stop = match shutdown_signal() {
        Ok(stop) => stop,
        Err(err) => {
            eprintln!("{err:#}");
            return ExitCode::FAILURE;
        }
    };
    let report = rank::run(config, duration, &progress, stop).await;
    if let Some(note) = report.interruption() {
        eprintln!("{note}");
    }
    if let Err(err) = report.write(format, &mut std::io::stdout().lock()) {
        eprintln!("cannot write the ranking: {err}");
        return ExitCode::FAILURE;
    }
    match report.failure() {
        None => ExitCode::SUCCESS,
        Some(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
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
