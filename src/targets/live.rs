//! The running targets as the rest of the exporter sees them: each one's configuration, its
//! metric series, its sliding window of results (for the ranking) and its last result in words
//! (for the status page and `/api/v1/targets`). A target with `addresses = "all"` holds one
//! [`Slot`] per address instead: its own series, window and last result.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::series::TargetMetrics;
use crate::config::{AddressLabel, Addresses, Target};
use crate::probe::{Failure, Host, Outcome, Reason};
use crate::ranking::{Tally, Window};

/// Every live target by name; the supervisor writes it, scrapes, the ranker and the APIs read.
pub type LiveTargets = Arc<RwLock<BTreeMap<String, Arc<LiveTarget>>>>;

/// One running target.
#[derive(Debug)]
pub struct LiveTarget {
    /// The configuration's own copy, shared.
    pub config: Arc<Target>,
    /// The target's series; with `addresses = "all"`, only used (and exported) while the name
    /// has never resolved, to count that failure somewhere.
    pub metrics: Arc<TargetMetrics>,
    status: Mutex<Status>,
    /// `addresses = "all"`: one slot per address, by `address_index`.
    slots: RwLock<Vec<Arc<Slot>>>,
    /// The host name's resolution, as the target's task last saw it.
    pub resolution: Resolution,
    /// The ranking window, for the windows of new slots.
    ranking_window: Mutex<Duration>,
}

/// What the exporter shows of a host name's resolution.
#[derive(Debug, Default)]
pub struct Resolution {
    /// The host is a name (not an address): the resolution series exist.
    pub named: AtomicBool,
    /// Times the name's address set changed.
    pub changes: AtomicU64,
    /// The last good addresses are in use because the name no longer resolves.
    pub stale: AtomicBool,
}

/// One address of an `addresses = "all"` target.
#[derive(Debug)]
pub struct Slot {
    pub index: usize,
    pub address: IpAddr,
    pub metrics: Arc<TargetMetrics>,
    status: Mutex<Status>,
}

impl Slot {
    /// Records one probe, started at `started` (its tick).
    pub fn record(&self, started: Instant, result: &Result<Outcome, Failure>) {
        self.metrics.record(result);
        self.status
            .lock()
            .expect("status lock")
            .record(started, result);
    }

    pub fn with_status<T>(&self, read: impl FnOnce(&Status) -> T) -> T {
        read(&self.status.lock().expect("status lock"))
    }
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

impl Status {
    fn new(ranking_window: Duration, interval: Duration) -> Self {
        Status {
            window: Window::new(ranking_window, interval),
            last: None,
            last_success: None,
            last_failure: None,
        }
    }

    fn record(&mut self, started: Instant, result: &Result<Outcome, Failure>) {
        let now = SystemTime::now();
        let latency = result.as_ref().ok().map(|outcome| outcome.latency);
        match result {
            // Our own failure (no socket, no file descriptor): not the destination's loss.
            Err(failure) if failure.reason.is_local() => {
                self.window.record_local_failure(started);
            }
            _ => self.window.record(started, latency),
        }
        match result {
            Ok(_) => self.last_success = Some(now),
            Err(failure) => self.last_failure = Some((now, failure.clone())),
        }
        self.last = Some(LastResult {
            at: now,
            latency,
            reason: result.as_ref().err().map(|failure| failure.reason),
        });
    }
}

/// The outcome of a target's most recent probe.
#[derive(Clone, Debug)]
pub struct LastResult {
    pub at: SystemTime,
    pub latency: Option<Duration>,
    /// Why it failed; `None` for a success. The failure's detail is `Status::last_failure`'s
    /// (a copy here cost every target 48 bytes).
    pub reason: Option<Reason>,
}

impl LiveTarget {
    pub fn new(source_region: &Arc<str>, config: &Arc<Target>, ranking_window: Duration) -> Self {
        LiveTarget {
            metrics: Arc::new(TargetMetrics::new(source_region, config, None)),
            status: Mutex::new(Status::new(ranking_window, config.interval)),
            slots: RwLock::new(Vec::new()),
            resolution: Resolution::default(),
            ranking_window: Mutex::new(ranking_window),
            config: Arc::clone(config),
        }
    }

    /// Records one probe everywhere it counts, started at `started` (its tick: the ranking
    /// window times samples by their ticks, so their gaps are the interval, give or take the
    /// scheduler's lag, whatever each probe took).
    pub fn record(&self, started: Instant, result: &Result<Outcome, Failure>) {
        self.metrics.record(result);
        self.status
            .lock()
            .expect("status lock")
            .record(started, result);
    }

    /// Everything the end of one probe of an `addresses = "first"` target updates: the name's
    /// resolution state (from the probe's `host`), the series and window ([`Self::record`]),
    /// and the log line of a change of state (`was_up` is the caller's memory of the last one).
    pub fn settle(
        &self,
        host: Option<&Host>,
        started: Instant,
        result: &Result<Outcome, Failure>,
        was_up: &mut Option<bool>,
    ) {
        if let Some(host) = host {
            self.note_resolution(host.is_name(), host.changes(), host.is_stale());
        }
        self.record(started, result);
        log_change(&self.config, result, was_up);
    }

    /// Runs `read` on the status under its lock; keep it short (it blocks the target's task).
    pub fn with_status<T>(&self, read: impl FnOnce(&Status) -> T) -> T {
        read(&self.status.lock().expect("status lock"))
    }

    /// The address slots (empty unless `addresses = "all"` and the name resolved).
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots.read().expect("slots lock").clone()
    }

    /// Runs `read` on every status that holds the target's results: its own, or each of its
    /// addresses' once it has some.
    pub fn for_each_status(&self, mut read: impl FnMut(&Status)) {
        let slots = self.slots();
        if slots.is_empty() {
            self.with_status(read);
        } else {
            for slot in slots {
                slot.with_status(&mut read);
            }
        }
    }

    /// The series to export: the target's own, or each address's once it has some.
    pub fn series(&self) -> Vec<Arc<TargetMetrics>> {
        let slots = self.slots.read().expect("slots lock");
        if slots.is_empty() {
            vec![self.metrics.clone()]
        } else {
            slots.iter().map(|slot| slot.metrics.clone()).collect()
        }
    }

    /// Makes the slots match `addresses` (already cut to `max_addresses`): an address that
    /// stays keeps its slot, index and series; a new one takes the lowest free index. Returns
    /// the slots in index order.
    pub fn assign(&self, addresses: &[IpAddr]) -> Vec<Arc<Slot>> {
        let ranking_window = *self.ranking_window.lock().expect("window lock");
        let label = match self.config.addresses {
            Addresses::All { label, .. } => label,
            Addresses::First => AddressLabel::Index,
        };
        let mut slots = self.slots.write().expect("slots lock");
        slots.retain(|slot| addresses.contains(&slot.address));
        for address in addresses {
            if slots.iter().any(|slot| slot.address == *address) {
                continue;
            }
            let index = (0..)
                .find(|i| slots.iter().all(|slot| slot.index != *i))
                .expect("a free index");
            let value = match label {
                AddressLabel::Index => ("address_index", index.to_string()),
                AddressLabel::Address => ("address", address.to_string()),
            };
            slots.push(Arc::new(Slot {
                index,
                address: *address,
                metrics: Arc::new(TargetMetrics::new(
                    &self.metrics.labels.source_region,
                    &self.config,
                    Some(value),
                )),
                status: Mutex::new(Status::new(ranking_window, self.config.interval)),
            }));
        }
        slots.sort_by_key(|slot| slot.index);
        slots.clone()
    }

    /// A new ranking window length: the samples start over.
    pub fn reset_window(&self, ranking_window: Duration) {
        *self.ranking_window.lock().expect("window lock") = ranking_window;
        self.status.lock().expect("status lock").window =
            Window::new(ranking_window, self.config.interval);
        for slot in self.slots() {
            slot.status.lock().expect("status lock").window =
                Window::new(ranking_window, self.config.interval);
        }
    }

    /// Copies the host's resolution state for the exporter to show.
    pub fn note_resolution(&self, named: bool, changes: u64, stale: bool) {
        self.resolution.named.store(named, Ordering::Relaxed);
        self.resolution.changes.store(changes, Ordering::Relaxed);
        self.resolution.stale.store(stale, Ordering::Relaxed);
    }
}

/// Logs a target's change of state after a probe: down at its first failure (and at start),
/// up again at its first success after one; every other probe at debug or trace level.
fn log_change(target: &Target, result: &Result<Outcome, Failure>, was_up: &mut Option<bool>) {
    match result {
        Err(failure) if *was_up != Some(false) => {
            tracing::warn!(target = %target.name, region = %target.region, reason = failure.reason.as_str(), detail = %failure.detail, "target down");
        }
        Err(failure) => {
            tracing::debug!(target = %target.name, reason = failure.reason.as_str(), detail = %failure.detail, "probe failed");
        }
        Ok(_) if *was_up == Some(false) => {
            tracing::info!(target = %target.name, region = %target.region, "target up again");
        }
        Ok(outcome) => {
            tracing::trace!(target = %target.name, latency = ?outcome.latency, "probe ok");
        }
    }
    *was_up = Some(result.is_ok());
}

/// Every live target's window, by region, for the ranking at `now` (scored at `quantile`). The
/// addresses of an `addresses = "all"` target count as one target whose samples are all of theirs:
/// it is down when every address is, degraded when some are.
pub fn tally(live: &LiveTargets, quantile: f64, now: Instant) -> Tally {
    let mut tally = Tally::new(quantile);
    for target in live.read().expect("live targets lock").values() {
        let config = &target.config;
        let slots = target.slots();
        if slots.is_empty() {
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
        } else {
            let guards: Vec<_> = slots
                .iter()
                .map(|slot| slot.status.lock().expect("status lock"))
                .collect();
            let windows: Vec<&Window> = guards.iter().map(|status| &status.window).collect();
            tally.add_all(
                &config.region,
                &config.name,
                &windows,
                now,
                config.down_after,
                target.metrics.replication_lag(),
            );
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(lines: &str) -> Arc<Target> {
        let text = format!(
            "[[target]]\nname = \"lb\"\nregion = \"eu\"\nprobe = \"icmp\"\nhost = \"lb.example.test\"\n{lines}"
        );
        crate::config::parse("t.toml", &text, Some(Default::default()))
            .unwrap()
            .targets
            .remove(0)
    }

    type Label = Option<(&'static str, String)>;

    fn labels(slots: &[Arc<Slot>]) -> Vec<(usize, String, Label)> {
        slots
            .iter()
            .map(|s| {
                (
                    s.index,
                    s.address.to_string(),
                    s.metrics.labels.address.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn an_address_keeps_its_index_and_series_while_it_stays() {
        let live = LiveTarget::new(
            &"here".into(),
            &target("addresses = \"all\""),
            Duration::from_secs(60),
        );
        let ip = |last: u8| IpAddr::from([192, 0, 2, last]);
        let first = live.assign(&[ip(1), ip(2), ip(3)]);
        first[1].record(
            Instant::now(),
            &Err(Failure::new(crate::probe::Reason::Timeout, "x")),
        );
        let second = live.assign(&[ip(2), ip(4)]);
        let index = |n: usize| Some(("address_index", n.to_string()));
        assert_eq!(
            labels(&second),
            vec![
                (0, "192.0.2.4".to_owned(), index(0)),
                (1, "192.0.2.2".to_owned(), index(1)),
            ],
            "the new address takes the lowest free index"
        );
        assert!(Arc::ptr_eq(&first[1], &second[1]), "same series");
        assert_eq!(second[1].metrics.probes.get(), 1);
        assert_eq!(
            live.series().len(),
            2,
            "the target's own series is not exported"
        );

        let by_address = LiveTarget::new(
            &"here".into(),
            &target("addresses = \"all\"\naddress_label = \"address\""),
            Duration::from_secs(60),
        );
        let slots = by_address.assign(&[ip(9)]);
        assert_eq!(
            slots[0].metrics.labels.address,
            Some(("address", "192.0.2.9".to_owned()))
        );
    }
}
