//! One target's series: the histograms, counters and gauges its probes record into, held by
//! the target itself so the hot path touches its own atomics and never a label-map lookup.
//! Removing a target drops its series with it. [`super::collector`] encodes them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};

use super::histogram::LatencyHistogram;
use super::labels::TargetLabels;
use crate::config::{ProbeKind, Target};
use crate::probe::{self, Failure, Outcome, Phase, Reason, ReplicationReport};

/// One target's per-phase histograms, for the phases its probe kind reports.
#[derive(Debug)]
pub(super) struct PhaseHistograms {
    pub(super) kind: ProbeKind,
    pub(super) histograms: Vec<(Phase, LatencyHistogram)>,
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
                .map(|phase| (*phase, LatencyHistogram::new(&target.buckets)))
                .collect(),
        })
    }
}

/// A counter held inline in its target's series. prometheus-client's `Counter` is an `Arc`: a
/// heap allocation of its own (32 bytes with malloc's header) for every series, and an ICMP
/// target has six counters and a gauge. Encoded as prometheus-client encodes its own.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl EncodeMetric for Count {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        ConstCounter::new(self.get()).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A gauge held inline in its target's series, as [`Count`].
#[derive(Debug, Default)]
pub struct Level(AtomicI64);

impl Level {
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl EncodeMetric for Level {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        ConstGauge::new(self.get()).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// One target's series.
#[derive(Debug)]
pub struct TargetMetrics {
    pub(super) labels: TargetLabels,
    /// `labels` as the text formats write them, escaped: `source_region="..",...,probe=".."`.
    pub(super) label_text: Box<str>,
    pub(super) duration: LatencyHistogram,
    pub(super) probes: Count,
    pub(super) failures: Box<[(Reason, Count)]>,
    pub(super) up: Level,
    /// Per-phase histograms: HTTP targets (every phase), DNS targets over tcp (connect and
    /// processing; over udp the round trip is the one phase, the latency itself).
    pub(super) phases: Option<PhaseHistograms>,
    /// HTTP targets: redirects followed by the last successful probe.
    pub(super) redirects: Option<Gauge>,
    /// TLS targets: earliest certificate expiry seen, Unix seconds (NaN, not exported, until
    /// a handshake succeeded).
    pub(super) cert_expiry: Option<Gauge<f64, AtomicU64>>,
    /// STAMP targets: the per-direction series.
    /// Boxed, as the other kinds' extras: most targets have none, and inline they would
    /// cost every target their size.
    pub(super) stamp: Option<Box<StampSeries>>,
    /// Database targets with `replication`: the last report read (none until one was).
    pub(super) replication: Option<Box<Mutex<Option<ReplicationReport>>>>,
}

/// The `direction` label of the STAMP series, indexed as [`probe::FORWARD`] and
/// [`probe::BACKWARD`].
pub(super) const DIRECTIONS: [&str; 2] = ["forward", "backward"];

/// A STAMP target's series, each per direction where the protocol tells them apart.
#[derive(Debug)]
pub(super) struct StampSeries {
    pub(super) packets: Counter,
    pub(super) lost: [Counter; 2],
    pub(super) reordered: [Counter; 2],
    pub(super) duplicated: [Counter; 2],
    pub(super) late: Counter,
    pub(super) invalid: Counter,
    /// Absolute IPDV of consecutive packets (RFC 5481).
    pub(super) ipdv: [LatencyHistogram; 2],
    /// Only observed, and only exported, while both ends claim synchronised clocks.
    pub(super) one_way: [LatencyHistogram; 2],
    pub(super) one_way_observed: [AtomicBool; 2],
    /// Sender's and reflector's error estimates; NaN (not exported) without both claims.
    pub(super) clock_error: [Gauge<f64, AtomicU64>; 2],
    /// TTL of the requests at the reflector and of the replies here; -1 (not exported) until
    /// known.
    pub(super) ttl: [Gauge; 2],
}

impl StampSeries {
    fn new(buckets: &[f64]) -> Self {
        let histogram = || LatencyHistogram::new(buckets);
        let nan = || {
            let gauge = Gauge::<f64, AtomicU64>::default();
            gauge.set(f64::NAN);
            gauge
        };
        let unknown = || {
            let gauge = Gauge::default();
            gauge.set(-1);
            gauge
        };
        StampSeries {
            packets: Counter::default(),
            lost: Default::default(),
            reordered: Default::default(),
            duplicated: Default::default(),
            late: Counter::default(),
            invalid: Counter::default(),
            ipdv: [histogram(), histogram()],
            one_way: [histogram(), histogram()],
            one_way_observed: Default::default(),
            clock_error: [nan(), nan()],
            ttl: [unknown(), unknown()],
        }
    }

    fn record(&self, report: &probe::StampReport) {
        self.packets.inc_by(report.settled);
        self.late.inc_by(report.late);
        self.invalid.inc_by(report.invalid);
        for d in [probe::FORWARD, probe::BACKWARD] {
            self.lost[d].inc_by(report.lost[d]);
            self.reordered[d].inc_by(report.reordered[d]);
            self.duplicated[d].inc_by(report.duplicated[d]);
            for ipdv in &report.ipdv[d] {
                self.ipdv[d].observe(ipdv.abs());
            }
            for delay in &report.one_way[d] {
                self.one_way[d].observe(*delay);
                self.one_way_observed[d].store(true, Ordering::Relaxed);
            }
            if let Some(ttl) = report.ttl[d] {
                self.ttl[d].set(i64::from(ttl));
            }
            self.clock_error[d].set(report.clock_error.map_or(f64::NAN, |errors| errors[d]));
        }
    }
}

impl TargetMetrics {
    /// `address`: the extra label of one address of an `addresses = "all"` target.
    pub fn new(
        source_region: &Arc<str>,
        target: &Arc<Target>,
        address: Option<(&'static str, String)>,
    ) -> Self {
        let kind = target.probe.kind();
        let labels = TargetLabels {
            source_region: Arc::clone(source_region),
            config: Arc::clone(target),
            probe: kind.as_str(),
            address,
        };
        TargetMetrics {
            label_text: labels.escaped(),
            labels,
            duration: LatencyHistogram::new(&target.buckets),
            probes: Count::default(),
            failures: probe::reasons(kind)
                .iter()
                .map(|reason| (*reason, Count::default()))
                .collect(),
            up: Level::default(),
            phases: PhaseHistograms::of(target),
            redirects: (kind == ProbeKind::Http).then(Gauge::default),
            cert_expiry: target.probe.uses_tls().then(|| {
                let gauge = Gauge::<f64, AtomicU64>::default();
                gauge.set(f64::NAN);
                gauge
            }),
            stamp: (kind == ProbeKind::Stamp).then(|| Box::new(StampSeries::new(&target.buckets))),
            replication: target
                .probe
                .replication()
                .map(|_| Box::new(Mutex::new(None))),
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
                if let (Some(series), Some(report)) = (&self.stamp, &outcome.stamp) {
                    series.record(report);
                }
                if let (Some(slot), Some(report)) = (&self.replication, &outcome.replication) {
                    *slot.lock().expect("replication lock") = Some(report.clone());
                }
                self.up.set(1);
            }
            Err(failure) => {
                if let (Some(series), Some(report)) = (&self.stamp, &failure.stamp) {
                    series.record(report);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The inline counter and gauge encode exactly as prometheus-client's own, in text and
    /// in protobuf (the type line, the `_total` suffix, the value's field).
    #[test]
    fn inline_counts_encode_as_prometheus_clients_own() {
        use prometheus_client::encoding::{prometheus_protobuf as protobuf, text};
        use prometheus_client::registry::Registry;
        let (count, counter) = (Count::default(), Counter::<u64>::default());
        let (level, gauge) = (Level::default(), Gauge::<i64>::default());
        for _ in 0..3 {
            count.inc();
            counter.inc();
        }
        level.set(-7);
        gauge.set(-7);
        let mut ours = Registry::default();
        ours.register("probes", "Probes", count);
        ours.register("up", "Up", level);
        let mut theirs = Registry::default();
        theirs.register("probes", "Probes", counter);
        theirs.register("up", "Up", gauge);
        let encode = |registry: &Registry| {
            let mut out = String::new();
            text::encode(&mut out, registry).unwrap();
            (out, format!("{:?}", protobuf::encode(registry).unwrap()))
        };
        let (ours, theirs) = (encode(&ours), encode(&theirs));
        assert!(ours.0.contains("probes_total 3"), "{}", ours.0);
        assert!(ours.0.contains("up -7"), "{}", ours.0);
        assert_eq!(ours, theirs);
    }

    /// Every target carries these inline; the extras of other kinds are boxed (docs/scale.md).
    #[test]
    fn a_targets_series_stay_small() {
        let size = std::mem::size_of::<TargetMetrics>();
        assert!(size <= 400, "TargetMetrics is {size} bytes");
    }
}
