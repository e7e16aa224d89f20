//! regionprobe: a Prometheus exporter for cross-region latency.
//!
//! Layout, in data-flow order:
//! - [`config`]: `exporter.toml` + `REGIONPROBE_*` env, validated into a [`config::Config`];
//! - [`targets`]: one task per target, diffed on reload; [`scheduler`]: when each probe runs;
//! - [`probe`]: the probers (`icmp`, `tcp`, `http`, `dns`), on top of [`pinger`] (shared ICMP
//!   sockets), [`resolve`] (host names, TTL-cached) and [`tls`] (rustls, certificate expiry);
//! - [`ranking`]: per-target sliding windows, region scores and ranks, the failover choice;
//! - [`metrics`]: every metric family; [`server`]: `/metrics`, health, reload.
//!
//! - [`healthcheck`]: `regionprobe healthcheck`, for containers without curl.
//!
//! The binary is thin: it parses flags, loads the config, binds, and calls [`run`].

pub mod config;
pub mod healthcheck;
pub mod metrics;
pub mod pinger;
pub mod probe;
pub mod ranking;
pub mod resolve;
pub mod scheduler;
pub mod server;
pub mod targets;
pub mod tls;

#[cfg(test)]
mod testing;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::{Config, ConfigSource};
use crate::metrics::Metrics;
use crate::probe::Shared;
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
    let metrics = Arc::new(Metrics::new(shared.icmp.clone()));
    let mut supervisor = Supervisor::new(shared, metrics.clone());
    let diff = supervisor.apply(&config);
    tracing::info!(region = %config.exporter.region, targets = config.targets.len(), %diff, "configuration loaded from {}", source.name());
    mark_reload(&metrics, true);

    let current = Arc::new(RwLock::new(Arc::new(config)));
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let state = Arc::new(State {
        metrics: metrics.clone(),
        config: current.clone(),
        reload: reload_tx,
    });
    let control = control_loop(source, supervisor, metrics, current, reload_rx, hangup);
    tokio::select! {
        served = server::serve(listener, state, shutdown) => served,
        never = control => match never {},
    }
    // Dropping the control loop drops the supervisor, which stops every target.
}

/// Applies reloads, one at a time, from HTTP requests and SIGHUP.
async fn control_loop(
    source: ConfigSource,
    mut supervisor: Supervisor,
    metrics: Arc<Metrics>,
    current: Arc<RwLock<Arc<Config>>>,
    mut requests: mpsc::Receiver<ReloadRequest>,
    mut hangup: tokio::signal::unix::Signal,
) -> std::convert::Infallible {
    loop {
        let reply = tokio::select! {
            Some(reply) = requests.recv() => Some(reply),
            Some(()) = hangup.recv() => None,
            // Both closed: the server is going away; wait to be dropped.
            else => std::future::pending().await,
        };
        let result = reload(&source, &mut supervisor, &metrics, &current);
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

fn reload(
    source: &ConfigSource,
    supervisor: &mut Supervisor,
    metrics: &Metrics,
    current: &RwLock<Arc<Config>>,
) -> Result<targets::Diff, String> {
    match source.load() {
        Ok(config) => {
            let running = current.read().expect("config lock").clone();
            if config.exporter.listen != running.exporter.listen {
                tracing::warn!(
                    running = %running.exporter.listen,
                    configured = %config.exporter.listen,
                    "exporter.listen changed; the new address takes effect after a restart"
                );
            }
            let diff = supervisor.apply(&config);
            tracing::info!(%diff, "configuration reloaded");
            *current.write().expect("config lock") = Arc::new(config);
            mark_reload(metrics, true);
            Ok(diff)
        }
        Err(err) => {
            tracing::error!(error = %err, "reload failed; keeping the running configuration");
            mark_reload(metrics, false);
            Err(err.to_string())
        }
    }
}

fn mark_reload(metrics: &Metrics, ok: bool) {
    metrics.reload_successful.set(i64::from(ok));
    if ok {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        metrics.reload_timestamp.set(now.as_secs_f64());
    }
}
