//! regionprobe: a Prometheus exporter for cross-region latency.
//!
//! Layout, in data-flow order:
//! - [`config`]: `exporter.toml` + `REGIONPROBE_*` env, validated into a [`config::Config`];
//! - [`targets`]: one task per target, diffed on reload; [`scheduler`]: when each probe runs;
//! - [`probe`]: the probers (`icmp`, `tcp`, `http`, `dns`), on top of [`pinger`] (shared ICMP
//!   sockets), [`resolve`] (host names, TTL-cached) and [`tls`] (rustls, certificate expiry);
//! - [`live`]: each running target's config, series, window and last result;
//! - [`ranking`]: sliding windows, region scores and ranks, the failover choice (pure);
//!   [`ranker`] keeps it current, every second;
//! - [`metrics`]: every metric family; [`server`]: `/metrics`, health, reload, and the
//!   [`api`] (JSON) and [`status_page`] (HTML) views of the ranking and the targets, behind
//!   [`web`] (TLS, client certificates and basic auth from `[web]`).
//!
//! - [`healthcheck`]: `regionprobe healthcheck`, for containers without curl.
//! - [`rank`]: `regionprobe rank`, the one-shot latency benchmark: probes, no server, a ranking.
//!
//! The binary is thin: it parses flags, loads the config, binds, and calls [`run`].

pub mod api;
pub mod config;
pub mod healthcheck;
pub mod live;
pub mod metrics;
pub mod pinger;
pub mod probe;
pub mod rank;
pub mod ranker;
pub mod ranking;
pub mod resolve;
pub mod scheduler;
pub mod scrape;
pub mod server;
pub mod status_page;
pub mod targets;
pub mod tls;
pub mod web;

#[cfg(test)]
mod testing;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::{Config, ConfigSource};
use crate::live::LiveTargets;
use crate::metrics::Metrics;
use crate::probe::Shared;
use crate::ranker::{Ranker, SharedSnapshot};
use crate::server::{ReloadRequest, State};
use crate::targets::Supervisor;

/// Runs the exporter on `listener` with `config` (read from `source`, which reloads re-read)
/// until `shutdown` completes. Reloads come from `POST /-/reload` and SIGHUP.
pub async fn run(
    source: ConfigSource,
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Installed before anything else so an early SIGHUP cannot kill the process.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let shared = Shared::default();
    let live = LiveTargets::default();
    let snapshot = ranker::initial(&config.exporter.region);
    let metrics = Arc::new(Metrics::new(
        shared.icmp.clone(),
        live.clone(),
        snapshot.clone(),
    ));
    let mut supervisor = Supervisor::new(shared, metrics.clone(), live.clone());
    let diff = supervisor.apply(&config);
    tracing::info!(region = %config.exporter.region, targets = config.targets.len(), %diff, "configuration loaded from {}", source.name());
    mark_reload(&metrics, true);

    let ranker = Ranker::new(&config.exporter.region, &config.ranking);
    let web = Arc::new(web::Guard::new(&config.web));
    tracing::info!(web = %web::describe(&config.web), "web endpoint");
    let current = Arc::new(RwLock::new(Arc::new(config)));
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let state = Arc::new(State {
        metrics: metrics.clone(),
        config: current.clone(),
        live: live.clone(),
        ranking: snapshot.clone(),
        reload: reload_tx,
        web: web.clone(),
        scrapes: scrape::Scrapes::default(),
    });
    let control = Control {
        source,
        supervisor,
        metrics,
        current,
        live,
        ranker,
        snapshot,
        web,
    };
    tokio::select! {
        served = server::serve(listener, state, shutdown) => served,
        never = control.run(reload_rx, hangup) => match never {},
    }
    // Dropping the control loop drops the supervisor, which stops every target.
}

/// The one owner of everything that changes: the targets (reloads) and the ranking (ticks).
struct Control {
    source: ConfigSource,
    supervisor: Supervisor,
    metrics: Arc<Metrics>,
    current: Arc<RwLock<Arc<Config>>>,
    live: LiveTargets,
    ranker: Ranker,
    snapshot: SharedSnapshot,
    web: Arc<web::Guard>,
}

impl Control {
    /// Ranks every [`ranker::PERIOD`]; applies reloads from HTTP requests and SIGHUP, one at
    /// a time, between rankings.
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        mut hangup: tokio::signal::unix::Signal,
    ) -> std::convert::Infallible {
        let mut ticks = tokio::time::interval(ranker::PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let snapshot = self.ranker.rank(&self.live);
                    *self.snapshot.write().expect("snapshot lock") = Arc::new(snapshot);
                }
                Some(reply) = requests.recv() => {
                    let result = self.reload();
                    let _ = reply.send(result);
                }
                Some(()) = hangup.recv() => {
                    let _ = self.reload();
                }
            }
        }
    }

    fn reload(&mut self) -> Result<targets::Diff, String> {
        match self.source.load() {
            Ok(config) => {
                let running = self.current.read().expect("config lock").clone();
                if config.exporter.listen != running.exporter.listen {
                    tracing::warn!(
                        running = %running.exporter.listen,
                        configured = %config.exporter.listen,
                        "exporter.listen changed; the new address takes effect after a restart"
                    );
                }
                let diff = self.supervisor.apply(&config);
                self.web.apply(&config.web);
                self.ranker
                    .reconfigure(&config.exporter.region, &config.ranking);
                tracing::info!(%diff, "configuration reloaded");
                *self.current.write().expect("config lock") = Arc::new(config);
                mark_reload(&self.metrics, true);
                Ok(diff)
            }
            Err(err) => {
                tracing::error!(error = %err, "reload failed; keeping the running configuration");
                mark_reload(&self.metrics, false);
                Err(err.to_string())
            }
        }
    }
}

fn mark_reload(metrics: &Metrics, ok: bool) {
    metrics.reload_successful.set(i64::from(ok));
    metrics.bump_generation();
    if ok {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        metrics.reload_timestamp.set(now.as_secs_f64());
    }
}
