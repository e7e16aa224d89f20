//! The running targets: one task each, started, kept or stopped as configurations arrive.
//!
//! Applying a configuration diffs it against what runs: a target whose resolved config is
//! unchanged keeps its task, schedule and series; a removed one stops and its series vanish;
//! a new or changed one starts fresh. Below the supervisor: [`schedule`] (when each probe
//! runs), [`live`] (each target's state as the rest of the exporter reads it), [`series`]
//! (its metric series) and [`collector`] (which encodes them at scrape time).

mod capacity;
mod collector;
mod live;
mod schedule;
mod series;

pub use capacity::Capacity;
pub use collector::register;
pub use live::{LiveTarget, LiveTargets, tally};
pub use schedule::SchedulerMetrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use crate::config::{Config, Target};
use crate::probe::{Probe, Shared};
use schedule::{Lateness, Schedule, Ticker};

/// What [`Supervisor::apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub unchanged: usize,
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} added, {} removed, {} changed, {} unchanged",
            self.added, self.removed, self.changed, self.unchanged
        )
    }
}

/// Owns the target tasks.
#[derive(Debug)]
pub struct Supervisor {
    /// All schedules are aligned to this instant, across reloads.
    anchor: Instant,
    region: String,
    ranking_window: Duration,
    shared: Shared,
    scheduler: SchedulerMetrics,
    live: LiveTargets,
    running: HashMap<String, Running>,
}

#[derive(Debug)]
struct Running {
    live: Arc<LiveTarget>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Supervisor {
    pub fn new(shared: Shared, scheduler: SchedulerMetrics, live: LiveTargets) -> Self {
        // A random phase per process: sidecars started in the same millisecond (a rollout)
        // still probe a shared target at different moments.
        let phase = schedule::BATCH.mul_f64(rand::random::<f64>());
        Supervisor {
            anchor: Instant::now() + phase,
            region: String::new(),
            ranking_window: Duration::ZERO,
            shared,
            scheduler,
            live,
            running: HashMap::new(),
        }
    }

    /// Makes the running targets match `config`.
    /// Makes the probes' resolver read its configuration (`/etc/resolv.conf`) again.
    pub fn reload_resolver(&self) {
        self.shared.resolver.reload();
    }

    pub fn apply(&mut self, config: &Config) -> Diff {
        let mut diff = Diff::default();
        let region_changed = self.region != config.exporter.region;
        self.region = config.exporter.region.clone();
        let window_changed = self.ranking_window != config.ranking.window;
        self.ranking_window = config.ranking.window;

        let wanted: HashMap<&str, &Target> = config
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut live = self.live.write().expect("live targets lock");
        self.running.retain(|name, running| {
            let keep = !region_changed && wanted.get(name.as_str()) == Some(&&running.live.config);
            if !keep {
                live.remove(name);
                if wanted.contains_key(name.as_str()) {
                    diff.changed += 1;
                } else {
                    diff.removed += 1;
                }
            } else if window_changed {
                running.live.reset_window(config.ranking.window);
            }
            keep
        });

        let count = config.targets.len();
        for (index, target) in config.targets.iter().enumerate() {
            if self.running.contains_key(&target.name) {
                diff.unchanged += 1;
                continue;
            }
            let target_live =
                Arc::new(LiveTarget::new(&self.region, target, config.ranking.window));
            live.insert(target.name.clone(), target_live.clone());
            let schedule = Schedule::spread(self.anchor, target.interval, index, count);
            let lateness = self.scheduler.lateness(target.probe.kind());
            let task = tokio::spawn(target_task(
                schedule,
                lateness,
                target_live.clone(),
                self.shared.clone(),
            ));
            self.running.insert(
                target.name.clone(),
                Running {
                    live: target_live,
                    task,
                },
            );
        }
        diff.added = count - diff.unchanged - diff.changed;
        diff
    }
}

/// One target, forever: probe on schedule, bounded by the timeout, record, log state changes.
async fn target_task(
    schedule: Schedule,
    lateness: Lateness,
    live: Arc<LiveTarget>,
    shared: Shared,
) {
    let target = &live.config;
    let mut probe = Probe::new(&target.probe, &shared);
    let mut ticker = Ticker::new(schedule, lateness);
    let mut was_up: Option<bool> = None;
    loop {
        ticker.tick().await;
        let result = match timeout(target.timeout, probe.run()).await {
            Ok(result) => result,
            Err(_) => Err(probe.timed_out(target.timeout)),
        };
        live.record(&result);
        match &result {
            Err(failure) if was_up != Some(false) => {
                tracing::warn!(target = %target.name, region = %target.region, reason = failure.reason.as_str(), detail = %failure.detail, "target down");
            }
            Err(failure) => {
                tracing::debug!(target = %target.name, reason = failure.reason.as_str(), detail = %failure.detail, "probe failed");
            }
            Ok(_) if was_up == Some(false) => {
                tracing::info!(target = %target.name, region = %target.region, "target up again");
            }
            Ok(outcome) => {
                tracing::trace!(target = %target.name, latency = ?outcome.latency, "probe ok");
            }
        }
        was_up = Some(result.is_ok());
    }
}
