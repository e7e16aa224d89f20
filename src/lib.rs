//! regionprobe: a Prometheus exporter for cross-region latency.
//!
//! The folders follow the data, and imports point one way, down this list:
//! - [`control`]: the one owner of what changes at run time (reloads, the ranking's ticks);
//! - `http`: `/metrics`, the status page, the JSON API, health and reload, behind `[web]`;
//!   `cmd`: the `rank` and `healthcheck` commands;
//! - `targets`: one task per target on its schedule, the live state, and its series;
//! - `ranking`: the pure engine (windows, scores, failover hysteresis) and the task state
//!   that keeps it current;
//! - `probe`: the probers, one file per kind, with the shared ICMP engine, name resolution and
//!   client TLS;
//! - `metrics`: label sets, histogram shapes, exposition formats; [`config`]: the validated
//!   configuration, loaded from `exporter.toml` and `REGIONPROBE_*`.
//!
//! The binary is thin: it parses flags, loads the config, binds, and calls [`run`]. How one
//! probe result travels, and why the pieces are cut as they are: `docs/design.md`.

mod cmd;
pub mod config;
mod control;
mod http;
mod metrics;
mod probe;
mod ranking;
mod targets;

pub use cmd::{healthcheck, rank};
pub use probe::{Reason, reasons};

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::{Config, ConfigSource};
use crate::control::{Control, ReloadMetrics};
use crate::http::{Guard, RenderCache, State};
use crate::metrics::Registry;
use crate::probe::Shared;
use crate::ranking::Ranker;
use crate::targets::{LiveTargets, SchedulerMetrics, Supervisor};

/// Runs the exporter on `listener` with `config` (read from `source`, which reloads re-read)
/// until `shutdown` completes. Reloads come from `POST /-/reload` and SIGHUP.
pub async fn run(
    source: ConfigSource,
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let startup = Startup {
        hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        listen_override: None,
    };
    run_with(source, config, listener, shutdown, startup).await
}

/// What the binary sets up before loading the configuration.
#[derive(Debug)]
pub struct Startup {
    /// The SIGHUP handler, installed before the first load so that an early SIGHUP cannot
    /// kill the process (it becomes a reload once running).
    pub hangup: tokio::signal::unix::Signal,
    /// `--web.listen-address`: replaces `exporter.listen` of every (re)loaded configuration.
    pub listen_override: Option<SocketAddr>,
}

/// [`run`] with the SIGHUP handler and the flags' overrides given.
pub async fn run_with(
    source: ConfigSource,
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    startup: Startup,
) -> std::io::Result<()> {
    let Startup {
        hangup,
        listen_override,
    } = startup;

    // Each owner of state registers the families it exports.
    let mut registry = Registry::default();
    let shared = Shared::default();
    let live = LiveTargets::default();
    targets::register(&mut registry, live.clone(), shared.icmp.clone());
    let snapshot = ranking::initial(&config.exporter.region);
    ranking::register(&mut registry, snapshot.clone());
    let scheduler = SchedulerMetrics::register(&mut registry);
    let reloads = ReloadMetrics::register(&mut registry);
    registry.register_process();
    let registry = Arc::new(registry);

    let mut supervisor = Supervisor::new(shared, scheduler, live.clone());
    let diff = supervisor.apply(&config);
    tracing::info!(region = %config.exporter.region, targets = config.targets.len(), %diff, "configuration loaded from {}", source.name());
    let renderings = Arc::new(RenderCache::default());
    reloads.mark(true, &renderings);

    let ranker = Ranker::new(&config.exporter.region, &config.ranking);
    let web = Arc::new(Guard::new(&config.web));
    tracing::info!(web = %http::describe_guard(&config.web), "web endpoint");
    let current = Arc::new(RwLock::new(Arc::new(config)));
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let state = Arc::new(State {
        metrics: registry,
        config: current.clone(),
        live: live.clone(),
        ranking: snapshot.clone(),
        reload: reload_tx,
        web: web.clone(),
        renderings: renderings.clone(),
    });
    let control = Control {
        source,
        listen_override,
        supervisor,
        reloads,
        renderings,
        current,
        live,
        ranker,
        snapshot,
        web,
    };
    tokio::select! {
        served = http::serve(listener, state, shutdown) => served,
        never = control.run(reload_rx, hangup) => match never {},
    }
    // Dropping the control loop drops the supervisor, which stops every target.
}
