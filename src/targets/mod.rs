//! The running targets: one task each (ICMP targets: one per group that shares a tick, see
//! [`batch`]), started, kept or stopped as configurations arrive.
//!
//! Applying a configuration diffs it against what runs: a target whose resolved config is
//! unchanged keeps its task, schedule and series; a removed one stops and its series vanish;
//! a new or changed one starts fresh. Below the supervisor: [`schedule`] (when each probe
//! runs), [`live`] (each target's state as the rest of the exporter reads it), [`series`]
//! (its metric series) and [`collector`] (which encodes them at scrape time).

mod batch;
mod capacity;
mod collector;
mod files;
mod histogram;
mod labels;
mod live;
mod schedule;
mod series;
mod srv;
mod text;

pub use capacity::Capacity;
pub use collector::register;
pub use files::TargetFiles;
pub use live::{LastResult, LiveTarget, LiveTargets, tally};
pub use schedule::SchedulerMetrics;
pub use srv::SrvTargets;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use crate::config::{Addresses, Config, Target};
use crate::probe::{Failure, Probe, Reason, Shared};
use batch::{Batches, Membership};
use live::Slot;
use schedule::{Schedule, Ticker};

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
    /// Shared by every target's series (their `source_region`).
    region: Arc<str>,
    ranking_window: Duration,
    shared: Shared,
    scheduler: SchedulerMetrics,
    live: LiveTargets,
    running: HashMap<String, Running>,
    /// The ICMP targets' shared tasks (see [`batch`]).
    batches: Batches,
}

#[derive(Debug)]
struct Running {
    live: Arc<LiveTarget>,
    /// Dropping it stops the target's probes.
    _task: Task,
}

/// Where a target's probes run; held only to be dropped.
#[derive(Debug)]
enum Task {
    /// A task of its own, aborted on drop.
    Own { _task: AbortOnDrop },
    /// A place in a group's task (ICMP), withdrawn on drop.
    Grouped { _membership: Membership },
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Supervisor {
    pub fn new(shared: Shared, scheduler: SchedulerMetrics, live: LiveTargets) -> Self {
        // A random phase per process: sidecars started in the same millisecond (a rollout)
        // still probe a shared target at different moments.
        let phase = schedule::BATCH.mul_f64(rand::random::<f64>());
        Supervisor {
            anchor: Instant::now() + phase,
            region: Arc::from(""),
            ranking_window: Duration::ZERO,
            shared,
            scheduler,
            live,
            running: HashMap::new(),
            batches: Batches::default(),
        }
    }

    /// The probes' resolver (also the SRV names').
    pub fn resolver(&self) -> &crate::probe::resolve::Resolver {
        &self.shared.resolver
    }

    /// Makes the probes' resolver read its configuration (`/etc/resolv.conf`) again.
    pub fn reload_resolver(&self) {
        self.shared.resolver.reload();
    }

    /// Points `config`'s targets that equal a running one at the running one's configuration,
    /// so a reload keeps one copy of each unchanged target, not two.
    pub fn share(&self, config: &mut Config) {
        for target in &mut config.targets {
            if let Some(running) = self.running.get(&target.name)
                && running.live.config == *target
            {
                *target = running.live.config.clone();
            }
        }
    }

    /// Makes the running targets match `config`.
    pub fn apply(&mut self, config: &Config) -> Diff {
        let mut diff = Diff::default();
        self.shared.resolver.set_params(config.resolver);
        let region_changed = *self.region != *config.exporter.region;
        if region_changed {
            self.region = Arc::from(config.exporter.region.as_str());
        }
        let window_changed = self.ranking_window != config.ranking.window;
        self.ranking_window = config.ranking.window;

        let wanted: HashMap<&str, &Arc<Target>> = config
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut live = self.live.write().expect("live targets lock");
        self.running.retain(|name, running| {
            let keep = !region_changed
                && wanted
                    .get(name.as_str())
                    .is_some_and(|wanted| **wanted == running.live.config);
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
            let kind = target.probe.kind();
            let (live, shared, region) = (
                target_live.clone(),
                self.shared.clone(),
                self.region.clone(),
            );
            // Spawned apart, not behind one `match` in one task: that task's future would be
            // as large as the larger of the two, for every target.
            let task = match target.addresses {
                Addresses::First if Batches::grouped(kind) => {
                    let probe = Probe::new(&target.probe, &shared, &region);
                    Task::Grouped {
                        _membership: self.batches.join(schedule, live, probe, &self.scheduler),
                    }
                }
                Addresses::First => {
                    let ticker = Ticker::new(schedule, self.scheduler.lateness(kind));
                    let probe = Probe::new(&target.probe, &shared, &region);
                    Task::Own {
                        _task: AbortOnDrop(tokio::spawn(first_address(ticker, live, probe))),
                    }
                }
                Addresses::All { max, .. } => {
                    let ticker = Ticker::new(schedule, self.scheduler.lateness(kind));
                    Task::Own {
                        _task: AbortOnDrop(tokio::spawn(all_addresses(
                            ticker, live, shared, max, region,
                        ))),
                    }
                }
            };
            self.running.insert(
                target.name.clone(),
                Running {
                    live: target_live,
                    _task: task,
                },
            );
        }
        diff.added = count - diff.unchanged - diff.changed;
        shrink(&mut self.running);
        self.batches.prune();
        diff
    }
}

/// Gives back a map's room once a reload left it mostly empty (a map never shrinks on its
/// own), so the memory of a shrinking reload can go back to the system.
fn shrink<V>(map: &mut HashMap<String, V>) {
    if map.capacity() > 4 * map.len() + 64 {
        map.shrink_to(2 * map.len());
    }
}

/// One probe, bounded by the target's timeout.
///
/// The callers run it boxed, allocated for the probe and freed after it: a task's future is as
/// large as its largest state, and between ticks (nearly all of its life) a target's task only
/// waits for the next one. Inline, the timeout's timer and the probe's state made every ICMP
/// target's task cell 1,280 bytes; boxed, the task holds only what lives across ticks.
async fn bounded(probe: &mut Probe, limit: Duration) -> Result<crate::probe::Outcome, Failure> {
    match timeout(limit, probe.run()).await {
        Ok(result) => result,
        Err(_) => Err(probe.timed_out(limit)),
    }
}

/// One target, forever: probe on schedule, bounded by the timeout, record, log state changes.
/// `addresses = "first"`: the probe resolves its host itself and probes the first address.
///
/// The probe is made by the caller: its task then holds neither the shared state nor the
/// region it was made from, for the whole life of the target.
async fn first_address(mut ticker: Ticker, live: Arc<LiveTarget>, mut probe: Probe) {
    let target = &live.config;
    let mut was_up: Option<bool> = None;
    loop {
        let started = ticker.tick().await;
        let result = Box::pin(bounded(&mut probe, target.timeout)).await;
        live.settle(probe.host(), started, &result, &mut was_up);
    }
}

/// `addresses = "all"`: the task resolves the name (on its TTL) and probes every address at
/// once each tick, one prober pinned to each address, each recording into its own slot.
async fn all_addresses(
    mut ticker: Ticker,
    live: Arc<LiveTarget>,
    shared: Shared,
    max: usize,
    region: Arc<str>,
) {
    let target = &live.config;
    // This prober only resolves: its host follows the name's TTL and keeps the last good
    // addresses when the name server fails.
    let mut names = Probe::new(&target.probe, &shared, &region);
    let mut probes: Vec<(Arc<Slot>, Probe)> = Vec::new();
    let mut was: Option<(usize, usize)> = None;
    let mut warned_cut = false;
    loop {
        let started = ticker.tick().await;
        let Some(host) = names.host_mut() else {
            // Validation allows `addresses` only for kinds with a host.
            return;
        };
        let resolved =
            match Box::pin(timeout(target.timeout, host.addresses(&shared.resolver))).await {
                Ok(Ok(addresses)) => Ok(addresses),
                Ok(Err(detail)) => Err(Failure::new(Reason::Resolve, detail)),
                Err(_) => Err(Failure::new(
                    Reason::Resolve,
                    format!(
                        "no DNS answer within {}",
                        humantime::format_duration(target.timeout)
                    ),
                )),
            };
        live.note_resolution(host.is_name(), host.changes(), host.is_stale());
        let mut addresses = match resolved {
            Ok(addresses) => addresses,
            Err(failure) => {
                // Every address we knew fails (or the target's own series, if none yet).
                if probes.is_empty() {
                    live.record(started, &Err(failure.clone()));
                } else {
                    for (slot, _) in &probes {
                        slot.record(started, &Err(failure.clone()));
                    }
                }
                if was != Some((0, probes.len())) {
                    tracing::warn!(target = %target.name, region = %target.region, reason = failure.reason.as_str(), detail = %failure.detail, "target down");
                }
                was = Some((0, probes.len()));
                continue;
            }
        };
        // Sorted, so that a cut to `max` keeps the same addresses whatever order DNS answers in.
        addresses.sort();
        addresses.dedup();
        if addresses.len() > max {
            if !warned_cut {
                tracing::warn!(target = %target.name, resolved = addresses.len(), max_addresses = max, "the name has more addresses than max_addresses; probing the lowest");
                warned_cut = true;
            }
            addresses.truncate(max);
        }
        let slots = live.assign(&addresses);
        probes.retain(|(slot, _)| slots.iter().any(|s| Arc::ptr_eq(s, slot)));
        for slot in &slots {
            if !probes.iter().any(|(s, _)| Arc::ptr_eq(s, slot)) {
                let mut probe = Probe::new(&target.probe, &shared, &region);
                if let Some(host) = probe.host_mut() {
                    host.pin(slot.address);
                }
                probes.push((slot.clone(), probe));
            }
        }
        probes.sort_by_key(|(slot, _)| slot.index);
        let results =
            futures_util::future::join_all(probes.iter_mut().map(|(slot, probe)| async move {
                let result = bounded(probe, target.timeout).await;
                slot.record(started, &result);
                (slot.address, result)
            }))
            .await;
        let up = results.iter().filter(|(_, r)| r.is_ok()).count();
        let now = (up, results.len());
        if was != Some(now) {
            let failing: Vec<String> = results
                .iter()
                .filter_map(|(address, r)| {
                    r.as_ref()
                        .err()
                        .map(|f| format!("{address}: {} ({})", f.reason.as_str(), f.detail))
                })
                .collect();
            match up {
                0 => {
                    tracing::warn!(target = %target.name, region = %target.region, failing = ?failing, "target down: no address answers");
                }
                up if up < results.len() => {
                    tracing::warn!(target = %target.name, region = %target.region, up, addresses = results.len(), failing = ?failing, "target degraded: some addresses fail");
                }
                _ if was.is_some() => {
                    tracing::info!(target = %target.name, region = %target.region, addresses = results.len(), "target up: every address answers");
                }
                _ => {}
            }
        }
        was = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(second_host: &str) -> Config {
        let text = format!(
            "[exporter]\nregion = \"eu\"\n\
             [[target]]\nname = \"a\"\nregion = \"us\"\nprobe = \"icmp\"\nhost = \"127.0.0.1\"\n\
             [[target]]\nname = \"b\"\nregion = \"us\"\nprobe = \"icmp\"\nhost = \"{second_host}\"\n"
        );
        crate::config::parse("t.toml", &text, Some(Default::default())).unwrap()
    }

    /// A running target and the configuration share one copy of its settings, across reloads.
    #[tokio::test]
    async fn a_target_has_one_copy_of_its_configuration() {
        let mut registry = crate::metrics::Registry::default();
        let live = LiveTargets::default();
        let mut supervisor = Supervisor::new(
            Shared::default(),
            SchedulerMetrics::register(&mut registry),
            live.clone(),
        );
        let first = config("127.0.0.2");
        supervisor.apply(&first);
        let running = |name: &str| live.read().unwrap()[name].config.clone();
        assert!(Arc::ptr_eq(&running("a"), &first.targets[0]));
        drop(first);

        // A reload parses the file anew: what did not change is pointed at the running copy.
        let mut second = config("127.0.0.3");
        assert!(!Arc::ptr_eq(&running("a"), &second.targets[0]));
        supervisor.share(&mut second);
        assert!(Arc::ptr_eq(&running("a"), &second.targets[0]));
        assert!(!Arc::ptr_eq(&running("b"), &second.targets[1]), "b changed");
        let diff = supervisor.apply(&second);
        assert_eq!((diff.unchanged, diff.changed), (1, 1));
        assert!(Arc::ptr_eq(&running("b"), &second.targets[1]));
        assert_eq!(
            Arc::strong_count(&second.targets[0]),
            3,
            "the configuration, the target and its series' labels"
        );
    }

    /// A target's own task holds only what lives across ticks (docs/scale.md): its ticker,
    /// its prober (the other kinds' probers are boxed, so the enum stays the ICMP prober's
    /// size) and the wait for the next tick. 10,000 targets: every 100 bytes here is a MiB.
    /// (ICMP targets run in groups now, see `batch`; measured with one, the largest prober.)
    #[tokio::test]
    async fn a_targets_own_task_stays_small() {
        let mut registry = crate::metrics::Registry::default();
        let scheduler = SchedulerMetrics::register(&mut registry);
        let config = config("127.0.0.2");
        let target = &config.targets[0];
        let live = Arc::new(LiveTarget::new(&"eu".into(), target, config.ranking.window));
        let schedule = Schedule::spread(Instant::now(), target.interval, 0, 1);
        let ticker = Ticker::new(schedule, scheduler.lateness(target.probe.kind()));
        let probe = Probe::new(&target.probe, &Shared::default(), "eu");
        assert!(
            std::mem::size_of::<Probe>() <= 112,
            "Probe is {} bytes",
            std::mem::size_of::<Probe>()
        );
        let task = first_address(ticker, live, probe);
        // 552 bytes in a debug build, less optimised; it was 728 with TCP and DNS inline.
        let size = std::mem::size_of_val(&task);
        assert!(size <= 600, "the task's future is {size} bytes");
    }
}
