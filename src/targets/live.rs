//! The running targets as the rest of the exporter sees them: each one's configuration, its
//! metric series, its sliding window of results (for the ranking) and its last result in words
//! (for the status page and `/api/v1/targets`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::series::TargetMetrics;
use crate::config::Target;
use crate::probe::{Failure, Outcome};
use crate::ranking::{Tally, Window};

/// Every live target by name; the supervisor writes it, scrapes, the ranker and the APIs read.
pub type LiveTargets = Arc<RwLock<BTreeMap<String, Arc<LiveTarget>>>>;

/// One running target.
#[derive(Debug)]
pub struct LiveTarget {
    pub config: Target,
    pub metrics: TargetMetrics,
    status: Mutex<Status>,
}

/// What the APIs show of a target besides its configuration.
#[derive(Debug)]
pub struct Status {
    pub window: Window,
    pub last: Option<LastResult>,
    pub last_success: Option<SystemTime>,
    /// The most recent failure, even if probes succeeded since.
    pub last_failure: Option<(SystemTime, Failure)>,
}

/// The outcome of a target's most recent probe.
#[derive(Clone, Debug)]
pub struct LastResult {
    pub at: SystemTime,
    pub latency: Option<Duration>,
    /// `reason` and detail of a failure.
    pub failure: Option<Failure>,
}

impl LiveTarget {
    pub fn new(source_region: &str, config: &Target, ranking_window: Duration) -> Self {
        LiveTarget {
            metrics: TargetMetrics::new(source_region, config),
            status: Mutex::new(Status {
                window: Window::new(ranking_window, config.interval),
                last: None,
                last_success: None,
                last_failure: None,
            }),
            config: config.clone(),
        }
    }

    /// Records one probe everywhere it counts.
    pub fn record(&self, result: &Result<Outcome, Failure>) {
        self.metrics.record(result);
        let now = SystemTime::now();
        let mut status = self.status.lock().expect("status lock");
        let latency = result.as_ref().ok().map(|outcome| outcome.latency);
        match result {
            // Our own failure (no socket, no file descriptor): not the destination's loss.
            Err(failure) if failure.reason.is_local() => {
                status.window.record_local_failure(Instant::now());
            }
            _ => status.window.record(Instant::now(), latency),
        }
        match result {
            Ok(_) => status.last_success = Some(now),
            Err(failure) => status.last_failure = Some((now, failure.clone())),
        }
        status.last = Some(LastResult {
            at: now,
            latency,
            failure: result.as_ref().err().cloned(),
        });
    }

    /// Runs `read` on the status under its lock; keep it short (it blocks the target's task).
    pub fn with_status<T>(&self, read: impl FnOnce(&Status) -> T) -> T {
        read(&self.status.lock().expect("status lock"))
    }

    /// A new ranking window length: the samples start over.
    pub fn reset_window(&self, ranking_window: Duration) {
        self.status.lock().expect("status lock").window =
            Window::new(ranking_window, self.config.interval);
    }
}

/// Every live target's window, by region, for the ranking at `now`.
pub fn tally(live: &LiveTargets, now: Instant) -> Tally {
    let mut tally = Tally::new();
    for target in live.read().expect("live targets lock").values() {
        let config = &target.config;
        target.with_status(|status| {
            tally.add(
                &config.region,
                &config.name,
                &status.window,
                now,
                config.down_after,
                target.metrics.replication_lag(),
            );
        });
    }
    tally
}
