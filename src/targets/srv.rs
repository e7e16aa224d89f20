//! `[[target_srv]]` at run time: a task per SRV name resolves it on its TTL (within
//! `[resolver]`'s bounds; every `min_ttl` while it fails) and hands the records to the control
//! loop, which turns them into targets at its next tick. A failed lookup keeps the last good
//! targets for the answer's TTL plus `[resolver] keep_last_good`, then drops them (as a host
//! name's last good addresses); `regionprobe_target_srv_valid{name}` is 0 and the log says why
//! until it resolves.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, Target, TargetSrv, srv_targets};
use crate::metrics::Registry;
use crate::probe::resolve::Resolver;

/// A lookup's records and their TTL, or why it failed.
type Records = Option<Result<(Vec<(String, u16)>, Duration), String>>;

/// The SRV names and their last good targets.
#[derive(Debug)]
pub struct SrvTargets {
    entries: Vec<Entry>,
    /// What the collector shows: (name, valid, targets).
    shown: Arc<Mutex<Vec<(String, bool, usize)>>>,
}

#[derive(Debug)]
struct Entry {
    srv: TargetSrv,
    records: watch::Receiver<Records>,
    task: JoinHandle<()>,
    /// The last good records, to re-check names against the other targets at every poll.
    last: Vec<(String, u16)>,
    good: Vec<Arc<Target>>,
    /// Until when `good` outlives failed lookups: the last good answer's TTL plus
    /// `keep_last_good`.
    good_until: Option<Instant>,
    /// Its `keep_last_good` is read at each answer: a reload applies it after `configure`.
    resolver: Resolver,
    valid: bool,
    problem: Option<String>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SrvTargets {
    pub fn register(registry: &mut Registry) -> Self {
        let shown = Arc::new(Mutex::new(Vec::new()));
        registry.register_collector(SrvCollector {
            shown: shown.clone(),
        });
        SrvTargets {
            entries: Vec::new(),
            shown,
        }
    }

    /// Takes the SRV names of a newly (re)loaded configuration: each is looked up again at
    /// once; a name that stays keeps its last good targets meanwhile.
    pub fn configure(&mut self, srvs: &[TargetSrv], resolver: &Resolver) {
        let mut old = std::mem::take(&mut self.entries);
        self.entries = srvs
            .iter()
            .map(|srv| {
                let (tx, rx) = watch::channel(None);
                let task = tokio::spawn(watch_srv(srv.name.clone(), resolver.clone(), tx));
                let kept = old.iter_mut().find(|e| e.srv.name == srv.name);
                let (last, good, good_until) = kept.map_or_else(Default::default, |e| {
                    (
                        std::mem::take(&mut e.last),
                        std::mem::take(&mut e.good),
                        e.good_until,
                    )
                });
                Entry {
                    srv: srv.clone(),
                    records: rx,
                    task,
                    last,
                    good,
                    good_until,
                    resolver: resolver.clone(),
                    valid: false,
                    problem: None,
                }
            })
            .collect();
    }

    /// Takes the records that arrived; true when the targets changed. `taken`: the names of
    /// the other targets (inline and from files), which SRV targets must not take.
    pub fn poll<'a>(&mut self, taken: impl Iterator<Item = &'a str>) -> bool {
        if !self
            .entries
            .iter()
            .any(|e| e.records.has_changed().unwrap_or(false))
        {
            return false;
        }
        let mut taken: HashSet<String> = taken.map(str::to_owned).collect();
        let mut changed = false;
        for entry in &mut self.entries {
            changed |= entry.poll(&taken);
            taken.extend(entry.good.iter().map(|t| t.name.clone()));
        }
        *self.shown.lock().expect("srv lock") = self
            .entries
            .iter()
            .map(|e| (e.srv.name.clone(), e.valid, e.good.len()))
            .collect();
        changed
    }

    /// Adds every SRV name's last good targets to `config`.
    pub fn extend(&self, config: &mut Config) {
        config
            .targets
            .extend(self.entries.iter().flat_map(|e| e.good.iter().cloned()));
    }
}

impl Entry {
    fn poll(&mut self, taken: &HashSet<String>) -> bool {
        if !self.records.has_changed().unwrap_or(false) {
            return false;
        }
        let records = self.records.borrow_and_update().clone();
        let result = match records {
            None => return false,
            Some(Err(problem)) => Err(problem),
            Some(Ok((records, ttl))) => srv_targets(&self.srv, &records).map(|targets| {
                let keep = self.resolver.params().keep_last_good;
                self.good_until = Some(Instant::now() + ttl + keep);
                self.last = records;
                targets
                    .into_iter()
                    .filter(|t| {
                        let free = !taken.contains(&t.name);
                        if !free {
                            tracing::warn!(srv = %self.srv.name, target = %t.name, "SRV target skipped: the name is already a target");
                        }
                        free
                    })
                    .collect::<Vec<_>>()
            }),
        };
        match result {
            Ok(targets) => {
                let changed = targets != self.good;
                if changed {
                    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
                    tracing::info!(srv = %self.srv.name, targets = ?names, "SRV targets changed");
                }
                if changed {
                    // Unchanged: the running targets keep sharing the same copies.
                    self.good = targets;
                }
                self.valid = true;
                self.problem = None;
                changed
            }
            Err(problem) => {
                self.valid = false;
                let now = Instant::now();
                match self.good_until {
                    Some(until) if now >= until => {
                        tracing::error!(srv = %self.srv.name, %problem, dropped = self.good.len(), "SRV lookup failed, and its last good targets are too old to keep; dropping them");
                        self.good_until = None;
                        self.last.clear();
                        self.problem = Some(problem);
                        !std::mem::take(&mut self.good).is_empty()
                    }
                    _ => {
                        if self.problem.as_deref() != Some(problem.as_str()) {
                            let left = self.good_until.map_or(Duration::ZERO, |until| {
                                Duration::from_secs(until.duration_since(now).as_secs())
                            });
                            tracing::error!(srv = %self.srv.name, %problem, kept = self.good.len(), keep_for = %humantime::format_duration(left), "SRV lookup failed; keeping the last good targets");
                            self.problem = Some(problem);
                        }
                        false
                    }
                }
            }
        }
    }
}

/// Looks `name` up forever: again after the answer's TTL, or `min_ttl` after a failure.
async fn watch_srv(name: String, resolver: Resolver, tx: watch::Sender<Records>) {
    loop {
        let result = resolver.srv(&name).await;
        let wait = match &result {
            Ok((_, ttl)) => *ttl,
            Err(_) => resolver.params().min_ttl,
        };
        if tx.send(Some(result)).is_err() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// `regionprobe_target_srv_valid` and `regionprobe_target_srv_targets`.
#[derive(Debug)]
struct SrvCollector {
    shown: Arc<Mutex<Vec<(String, bool, usize)>>>,
}

impl Collector for SrvCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shown = self.shown.lock().expect("srv lock").clone();
        let mut family = encoder.encode_descriptor(
            "regionprobe_target_srv_valid",
            "1 if the [[target_srv]] name's last lookup succeeded, 0 if it failed (its last good targets keep running for at most [resolver] keep_last_good).",
            None,
            MetricType::Gauge,
        )?;
        for (name, valid, _) in &shown {
            let labels = [("name", name.as_str())];
            ConstGauge::new(i64::from(*valid)).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "regionprobe_target_srv_targets",
            "Targets from the SRV name's last good lookup.",
            None,
            MetricType::Gauge,
        )?;
        for (name, _, targets) in &shown {
            let labels = [("name", name.as_str())];
            ConstGauge::new(*targets as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
