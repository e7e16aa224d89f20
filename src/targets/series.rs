//! One target's series: the histograms, counters and gauges its probes record into, held by
//! the target itself so the hot path touches its own atomics and never a label-map lookup.
//! Removing a target drops its series with it. [`super::collector`] encodes them.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::config::{ProbeKind, Target};
use crate::metrics::{TargetLabels, latency_histogram};
use crate::probe::{self, Failure, Outcome, Phase, Reason, ReplicationReport};

/// One target's per-phase histograms, for the phases its probe kind reports.
#[derive(Debug)]
pub(super) struct PhaseHistograms {
    pub(super) kind: ProbeKind,
    pub(super) histograms: Vec<(Phase, Histogram)>,
}

impl PhaseHistograms {
    fn of(target: &Target) -> Option<Self> {
        let phases = probe::phases(&target.probe);
        if phases.is_empty() {
            return None;
        }
        Some(PhaseHistograms {
            kind: target.probe.kind(),
            histograms: phases
                .iter()
                .map(|phase| (*phase, latency_histogram(target.buckets.iter().copied())))
                .collect(),
        })
    }
}

/// One target's series.
#[derive(Debug)]
pub struct TargetMetrics {
    pub(super) labels: TargetLabels,
    pub(super) duration: Histogram,
    pub(super) probes: Counter,
    pub(super) failures: Vec<(Reason, Counter)>,
    pub(super) up: Gauge,
    /// Per-phase histograms: HTTP targets (every phase), DNS targets over tcp (connect and
    /// processing; over udp the round trip is the one phase, the latency itself).
    pub(super) phases: Option<PhaseHistograms>,
    /// HTTP targets: redirects followed by the last successful probe.
    pub(super) redirects: Option<Gauge>,
    /// TLS targets: earliest certificate expiry seen, Unix seconds (NaN, not exported, until
    /// a handshake succeeded).
    pub(super) cert_expiry: Option<Gauge<f64, AtomicU64>>,
    /// Database targets with `replication`: the last report read (none until one was).
    pub(super) replication: Option<Mutex<Option<ReplicationReport>>>,
}

impl TargetMetrics {
    pub fn new(source_region: &str, target: &Target) -> Self {
        let kind = target.probe.kind();
        TargetMetrics {
            labels: TargetLabels {
                source_region: source_region.to_owned(),
                target_region: target.region.clone(),
                target: target.name.clone(),
                probe: kind.as_str(),
            },
            duration: latency_histogram(target.buckets.iter().copied()),
            probes: Counter::default(),
            failures: probe::reasons(kind)
                .iter()
                .map(|reason| (*reason, Counter::default()))
                .collect(),
            up: Gauge::default(),
            phases: PhaseHistograms::of(target),
            redirects: (kind == ProbeKind::Http).then(Gauge::default),
            cert_expiry: target.probe.uses_tls().then(|| {
                let gauge = Gauge::<f64, AtomicU64>::default();
                gauge.set(f64::NAN);
                gauge
            }),
            replication: target.probe.replication().map(|_| Mutex::new(None)),
        }
    }

    /// The replication lag of the last report, seconds, for the ranking.
    pub fn replication_lag(&self) -> Option<f64> {
        let slot = self.replication.as_ref()?;
        slot.lock().expect("replication lock").as_ref()?.lag
    }

    /// Records one probe: a success observes its latency, a failure only counts its reason.
    pub fn record(&self, result: &Result<Outcome, Failure>) {
        self.probes.inc();
        match result {
            Ok(outcome) => {
                self.duration.observe(outcome.latency.as_secs_f64());
                if let (Some(histograms), Some(phases)) = (&self.phases, &outcome.phases) {
                    for (phase, histogram) in &histograms.histograms {
                        histogram.observe(phases.get(*phase).as_secs_f64());
                    }
                }
                if let Some(redirects) = &self.redirects {
                    redirects.set(i64::from(outcome.redirects));
                }
                if let (Some(gauge), Some(expiry)) = (&self.cert_expiry, outcome.cert_expiry) {
                    let secs = expiry
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    gauge.set(secs);
                }
                if let (Some(slot), Some(report)) = (&self.replication, &outcome.replication) {
                    *slot.lock().expect("replication lock") = Some(report.clone());
                }
                self.up.set(1);
            }
            Err(failure) => {
                match self
                    .failures
                    .iter()
                    .find(|(reason, _)| *reason == failure.reason)
                {
                    Some((_, counter)) => {
                        counter.inc();
                    }
                    // A prober returned a reason its kind does not declare: a bug, but the
                    // probe still counts, as `error`.
                    None => {
                        debug_assert!(false, "undeclared reason {:?}", failure.reason);
                        if let Some((_, counter)) = self
                            .failures
                            .iter()
                            .find(|(reason, _)| *reason == Reason::Error)
                        {
                            counter.inc();
                        }
                    }
                }
                self.up.set(0);
            }
        }
    }
}
