//! The `regionprobe` binary: flags, logging, signals; everything else is the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use regionprobe::config::ConfigSource;
use regionprobe::rank::{self, Format, Progress};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The working directory's configuration file, used when there is no `--config`.
const LOCAL_CONFIG: &str = "exporter.toml";

const AFTER_HELP: &str = "\
Reloading: SIGHUP or `POST /-/reload` re-reads the configuration file and the environment;
an invalid file is refused and the running configuration keeps going. SIGTERM and SIGINT stop
gracefully.

Environment: REGIONPROBE_<SECTION>__<KEY> overrides a key of the file, e.g.
REGIONPROBE_EXPORTER__REGION=eu-west-1 sets exporter.region; errors in an override name the
variable. RUST_LOG sets the log filter when --log.level is not given.";

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Prometheus exporter for cross-region latency and failover ranking",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Configuration file. Without it: ./exporter.toml when the working directory has one,
    /// else the bundled exporter.toml.
    #[arg(
        long,
        visible_alias = "config.file",
        global = true,
        value_name = "PATH"
    )]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. :9537 or 127.0.0.1:9537; overrides exporter.listen.
    #[arg(long = "web.listen-address", global = true, value_name = "ADDRESS", value_parser = listen_address)]
    web_listen_address: Option<SocketAddr>,
    /// The exporter toolkit's web configuration (YAML: tls_server_config, basic_auth_users),
    /// read at every (re)load in place of the [web] section, which must then be empty.
    #[arg(
        long = "web.config.file",
        global = true,
        value_name = "PATH",
        env = "REGIONPROBE_WEB_CONFIG_FILE"
    )]
    web_config_file: Option<PathBuf>,
    /// Log format: text (human-readable), logfmt (key=value) or json.
    #[arg(long = "log.format", global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level (trace, debug, info, warn, error, off) or filter directives such as
    /// info,regionprobe=debug; overrides RUST_LOG.
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
    /// Probe only this replica's share of the targets: K of N replicas (e.g. 2/4), chosen by
    /// rendezvous hashing of the target names; overrides exporter.shard.
    #[arg(long, global = true, value_name = "K/N", value_parser = shard)]
    shard: Option<regionprobe::config::Shard>,
    /// Threads that run the probes (the control loop and the ranking run on the main thread,
    /// the HTTP server on one of its own). One carries 10,000 ICMP targets at 1 s; more only
    /// help when the probes' own work (TLS handshakes, HTTP bodies) needs more than a core.
    /// Each extra thread costs wake-ups even when idle: docs/scale.md, "Sixth round".
    #[arg(long = "runtime.workers", global = true, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: u16,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the exporter (the default).
    Run,
    /// Validate the configuration, print what it costs (probes/s, series, /metrics size,
    /// memory) and exit: 0 if valid, 1 with the error otherwise.
    CheckConfig {
        /// Also list the targets this replica probes (its shard's share), one per line.
        #[arg(long)]
        targets: bool,
    },
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

fn shard(text: &str) -> Result<regionprobe::config::Shard, String> {
    regionprobe::config::Shard::parse(text)
}

fn listen_address(text: &str) -> Result<SocketAddr, String> {
    regionprobe::config::parse_listen(text)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Logfmt,
    Json,
}

fn main() -> ExitCode {
    regionprobe::tune_allocator();
    let cli = Cli::parse();
    let (source, chosen) = match &cli.config {
        Some(path) => (ConfigSource::File(path.clone()), None),
        None if Path::new(LOCAL_CONFIG).is_file() => (
            ConfigSource::File(PathBuf::from(LOCAL_CONFIG)),
            Some(format!(
                "no --config: using {LOCAL_CONFIG} of the working directory ({})",
                std::env::current_dir()
                    .map(|dir| dir.join(LOCAL_CONFIG).display().to_string())
                    .unwrap_or_else(|_| LOCAL_CONFIG.to_owned())
            )),
        ),
        None => (
            ConfigSource::Bundled,
            Some(format!(
                "no --config and no {LOCAL_CONFIG} in the working directory: using the bundled exporter.toml"
            )),
        ),
    };
    let overrides = regionprobe::config::Overrides {
        listen: cli.web_listen_address,
        web_config_file: cli.web_config_file.clone(),
        shard: cli.shard,
    };
    let load = |source: &ConfigSource| overrides.load(source);
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig { targets } => match load(&source) {
            Ok(config) => {
                println!(
                    "{}: OK ({} targets, region {})",
                    source.name(),
                    config.targets.len(),
                    config.exporter.region
                );
                println!("{}", regionprobe::Capacity::of(&config));
                if targets {
                    for target in &config.targets {
                        println!("target {}", target.name);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::FAILURE
            }
        },
        Command::Healthcheck { url } => {
            match regionprobe::healthcheck::check(&source, url.as_deref(), &overrides) {
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
            match load(&source) {
                Ok(config) => match runtime(cli.workers) {
                    Ok(runtime) => runtime.block_on(rank(config, duration, format, progress)),
                    Err(err) => {
                        eprintln!("{err:#}");
                        ExitCode::FAILURE
                    }
                },
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
            if let Some(chosen) = chosen {
                tracing::info!("{chosen}");
            }
            let options = regionprobe::Options {
                max_connections: cli.max_connections as usize,
                lifecycle: cli.enable_lifecycle,
                ..regionprobe::Options::default()
            };
            let served = runtime(cli.workers)
                .and_then(|runtime| runtime.block_on(run(source, overrides.clone(), options)));
            match served {
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
            check_log_levels(level).with_context(|| format!("invalid --log.level {level:?}"))?;
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
        LogFormat::Logfmt => builder.event_format(Logfmt).init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Every directive of a filter (`info`, `regionprobe=debug`, `regionprobe::probe[span]=trace`)
/// must end in a known level: EnvFilter reads a bare misspelt level (`warning`) as a target
/// name and silences everything else.
fn check_log_levels(filter: &str) -> anyhow::Result<()> {
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // The level follows the last `=` outside a span's `[...]` field filter.
        let mut depth = 0usize;
        let mut split = None;
        for (at, c) in directive.char_indices() {
            match c {
                '[' | '{' => depth += 1,
                ']' | '}' => depth = depth.saturating_sub(1),
                '=' if depth == 0 => split = Some(at),
                _ => {}
            }
        }
        let level = match split {
            Some(at) => &directive[at + 1..],
            None => directive,
        };
        if !LOG_LEVELS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(level))
        {
            anyhow::bail!(
                "unknown level \"{level}\"; expected one of {}, or directives such as info,regionprobe=debug",
                LOG_LEVELS.join(", ")
            );
        }
    }
    Ok(())
}

/// logfmt lines: `ts=... level=info target=regionprobe msg="..." key=value`.
#[derive(Debug)]
struct Logfmt;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Logfmt
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        let mut ts = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut ts))?;
        let meta = event.metadata();
        let mut fields = LogfmtFields::default();
        event.record(&mut fields);
        write!(
            writer,
            "ts={} level={} target={}",
            logfmt_value(&ts),
            meta.level().as_str().to_ascii_lowercase(),
            logfmt_value(meta.target())
        )?;
        if let Some(message) = &fields.message {
            write!(writer, " msg={}", logfmt_value(message))?;
        }
        writeln!(writer, "{}", fields.rest)
    }
}

#[derive(Default)]
struct LogfmtFields {
    message: Option<String>,
    rest: String,
}

impl tracing::field::Visit for LogfmtFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.push(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.push(field, format!("{value:?}"));
    }
}

impl LogfmtFields {
    fn push(&mut self, field: &tracing::field::Field, value: String) {
        if field.name() == "message" {
            self.message = Some(value);
        } else {
            use std::fmt::Write as _;
            let _ = write!(self.rest, " {}={}", field.name(), logfmt_value(&value));
        }
    }
}

/// A logfmt value: bare when it has no space, quote, `=` or control character, else quoted.
fn logfmt_value(value: &str) -> String {
    let bare = !value.is_empty()
        && !value
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control());
    if bare {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The probes' runtime: `workers` threads named `probe` (its blocking pool's are
/// `probe-blocking`), plus the thread that calls it (the control loop: reloads, the ranking).
///
/// Not tokio's default of one worker per CPU the process may use: a sidecar on a 64-core node
/// would start 64, and every idle worker is woken to look for work whenever a reply wakes a
/// probe. At 1,000 ICMP targets two workers made 40% more system calls than one (futex and
/// eventfd wake-ups) for the same probes.
fn runtime(workers: u16) -> anyhow::Result<tokio::runtime::Runtime> {
    // tokio starts the workers first, as it builds the runtime, before anything can ask its
    // blocking pool for a thread: the first `workers` threads are the workers.
    let started = std::sync::atomic::AtomicUsize::new(0);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(workers))
        .thread_name_fn(move || {
            let nth = started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if nth < usize::from(workers) {
                "probe".to_owned()
            } else {
                "probe-blocking".to_owned()
            }
        })
        .enable_all()
        .build()
        .context("starting the probes' runtime")
}

async fn run(
    source: ConfigSource,
    overrides: regionprobe::config::Overrides,
    options: regionprobe::Options,
) -> anyhow::Result<()> {
    // Handlers first, before the (possibly long) load: a SIGHUP that arrives while starting
    // up is kept for the control loop (a reload once running) instead of killing the process,
    // and a SIGTERM still shuts down cleanly.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let shutdown = shutdown_signal()?;
    let config = overrides.load(&source)?;
    let listen = config.exporter.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {listen} ({})",
                match overrides.listen {
                    Some(_) => "--web.listen-address".to_owned(),
                    None => format!("exporter.listen in {}", source.name()),
                }
            )
        })?;
    let bound = listener.local_addr()?;
    let scheme = if config.web.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        "probes run on {} worker thread(s) (--runtime.workers)",
        tokio::runtime::Handle::current().metrics().num_workers()
    );
    tracing::info!(
        "regionprobe {} listening on {scheme}://{bound}",
        env!("CARGO_PKG_VERSION")
    );
    let startup = regionprobe::Startup {
        hangup,
        overrides,
        options,
    };
    regionprobe::run_with(source, config, listener, shutdown, startup).await?;
    tracing::info!("regionprobe stopped");
    Ok(())
}

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
