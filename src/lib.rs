//! regionprobe: a Prometheus exporter for cross-region latency.
//!
//! The folders follow the data, and imports point one way, down this list:
//! - [`control`]: the one owner of what changes at run time (reloads, the ranking's ticks);
//! - `http`: `/metrics`, the status page, the JSON API, health and reload, behind `[web]`;
//!   `cmd`: the `rank` and `healthcheck` commands;
//! - `reflector`: the STAMP session-reflector's thread and counters;
//! - `targets`: one task per target (per shared tick for ICMP) on its schedule, the live state,
//!   and its series;
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
mod reflector;
mod targets;

pub use cmd::{healthcheck, rank};
pub use control::tune_allocator;
pub use http::Options;
pub use probe::{Reason, reasons};
pub use targets::Capacity;

use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::{Config, ConfigSource, Overrides};
use crate::control::{Control, ReloadMetrics};
use crate::http::{Guard, RenderCache, State};
use crate::metrics::Registry;
use crate::probe::Shared;
use crate::ranking::Ranker;
use crate::targets::{LiveTargets, SchedulerMetrics, SrvTargets, Supervisor, TargetFiles};

/// Runs the exporter on `listener` with `config` (read from `source`, which reloads re-read)
/// until `shutdown` completes, with the endpoint's default [`Options`]. Reloads come from
/// `POST /-/reload` and SIGHUP.
pub async fn run(
    source: ConfigSource,
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let startup = Startup {
        hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        overrides: Overrides::default(),
        options: Options::default(),
    };
    run_with(source, config, listener, shutdown, startup).await
}

/// What the binary sets up before loading the configuration, and the endpoint's options.
#[derive(Debug)]
pub struct Startup {
    /// The SIGHUP handler, installed before the first load so that an early SIGHUP cannot
    /// kill the process (it becomes a reload once running).
    pub hangup: tokio::signal::unix::Signal,
    /// `--web.listen-address` and `--web.config.file`, over every (re)loaded configuration.
    pub overrides: Overrides,
    /// The endpoint's connection cap, timeouts and `/-/reload` switch.
    pub options: Options,
}

/// Listen backlog: a burst of connections waits in the kernel instead of retrying SYNs after
/// a second (the kernel caps it at `net.core.somaxconn`, 4096 by default).
const BACKLOG: i32 = 4096;

/// [`run`] with the SIGHUP handler, the flags' overrides and the endpoint's options given.
///
/// The probes, the ranking and reloads run on the caller's runtime; the HTTP server runs on a
/// runtime of its own (one worker and its own blocking pool, threads named `http`), so nothing
/// a client does (the status page in a loop, slow readers, password floods) queues behind or
/// in front of a probe's timers and sockets.
pub async fn run_with(
    source: ConfigSource,
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    startup: Startup,
) -> std::io::Result<()> {
    let Startup {
        hangup,
        overrides,
        options,
    } = startup;
    let fd_limit = http::raise_fd_limit();

    // Each owner of state registers the families it exports.
    let mut registry = Registry::default();
    let shared = Shared::default();
    let live = LiveTargets::default();
    targets::register(&mut registry, live.clone(), shared.icmp.clone());
    let snapshot = ranking::initial(&config.exporter.region);
    ranking::register(&mut registry, snapshot.clone());
    let scheduler = SchedulerMetrics::register(&mut registry);
    let reloads = ReloadMetrics::register(&mut registry);
    let mut files = TargetFiles::register(&mut registry);
    let mut srv = SrvTargets::register(&mut registry);
    let web = Arc::new(Guard::new(&config.web));
    web.refusals().register(&mut registry);
    let mut reflectors = reflector::Reflectors::default();
    reflectors.register(&mut registry);
    registry.register_process();
    let registry = Arc::new(registry);
    reflectors.apply(config.reflector.as_ref());

    files.configure(&config.target_files);
    files.poll(&config);
    // The loaded configuration moves into `base`: a copy kept here would keep every target of
    // the first file alive after a reload dropped them.
    let base = Arc::new(config);
    let config = files.merged(&base);
    let mut supervisor = Supervisor::new(shared, scheduler, live.clone());
    // SRV names join at the control loop's first tick, once looked up.
    srv.configure(&config.target_srvs, supervisor.resolver());
    let diff = supervisor.apply(&config);
    tracing::info!(region = %config.exporter.region, targets = config.targets.len(), %diff, "configuration loaded from {}", source.name());
    tracing::info!("{}", targets::Capacity::of(&config));
    let renderings = Arc::new(RenderCache::default());
    reloads.mark(true, &renderings);

    let ranker = Ranker::new(&config.exporter.region, &config.ranking);
    tracing::info!(web = %http::describe_guard(&config.web), "web endpoint");
    let current = Arc::new(RwLock::new(Arc::new(config)));
    // Room for every request that can be in flight: those that queue during a reload join it.
    let (reload_tx, reload_rx) = mpsc::channel(1024);
    let state = Arc::new(State {
        metrics: registry,
        config: current.clone(),
        live: live.clone(),
        ranking: snapshot.clone(),
        reload: reload_tx,
        web: web.clone(),
        renderings: renderings.clone(),
        options,
    });
    let control = Control {
        source,
        overrides,
        supervisor,
        reloads,
        renderings,
        current,
        live,
        ranker,
        snapshot,
        web,
        reflectors,
        files,
        srv,
        base,
    };
    // The server's runtime: the listener moves to its reactor.
    let server = ServerRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(16)
            .thread_name("http")
            .enable_all()
            .build()?,
    ));
    let server = server.0.as_ref().expect("built above");
    let listener = listener.into_std()?;
    socket2::SockRef::from(&listener).listen(BACKLOG)?;
    let listener = {
        let _entered = server.enter();
        TcpListener::from_std(listener)?
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut served = server.spawn(http::serve(listener, state, fd_limit, async move {
        let _ = stopped.await;
    }));
    let finished = tokio::select! {
        () = shutdown => None,
        joined = &mut served => Some(joined),
        never = control.run(reload_rx, hangup) => match never {},
    };
    let joined = match finished {
        Some(joined) => joined,
        None => {
            let _ = stop.send(());
            served.await
        }
    };
    match joined {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => Err(std::io::Error::other(err)),
    }
    // Dropping the control loop drops the supervisor, which stops every target.
}

/// The server's runtime, shut down without waiting when `run` returns or is dropped (a
/// runtime dropped inside another one's task would panic).
struct ServerRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
