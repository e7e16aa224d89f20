//! The collectors that encode the targets' state at scrape time: every per-target family
//! from the live targets, and the state of the shared ICMP sockets. The families with a series
//! set per target have a hand-written text encoder ([`super::text`]); prometheus-client
//! encodes them in protobuf, and everything else in every format.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::labels::{WithExtra, WithPairs};
use super::live::{LiveTarget, LiveTargets};
use super::series::{DIRECTIONS, StampSeries, TargetMetrics};
use super::text::{DB_PHASE, DNS_PHASE, DURATION, FAILURES, HTTP_PHASE, PROBES, TARGET_UP};
use crate::config::{Addresses, ProbeKind};
use crate::metrics::{ProbeLabel, Registry, TextCollector};
use crate::probe::{IcmpSockets, ReplicationReport};

/// Registers the targets' families: read from `live` and `icmp` at every scrape.
pub fn register(registry: &mut Registry, live: LiveTargets, icmp: IcmpSockets) {
    registry.register_text_collector(TargetCollector {
        targets: live.clone(),
    });
    registry.register_collector(TargetExtrasCollector { targets: live });
    registry.register_collector(IcmpCollector { icmp });
}

/// Encodes the families with a series set per target from the live target map.
#[derive(Clone, Debug)]
struct TargetCollector {
    targets: LiveTargets,
}

impl TextCollector for TargetCollector {
    fn encode_text(&self, openmetrics: bool, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let targets = self.targets.read().expect("targets lock");
        let series: Vec<_> = targets.values().flat_map(|live| live.series()).collect();
        let all: Vec<&TargetMetrics> = series.iter().map(|metrics| &**metrics).collect();
        let mut writer = super::text::Writer::new(openmetrics, out);
        super::text::encode(&mut writer, &all)?;
        writer.finish()
    }
}

impl Collector for TargetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let targets = self.targets.read().expect("targets lock");
        // Each target's series, or each of its addresses' (`addresses = "all"`).
        let series: Vec<_> = targets.values().flat_map(|live| live.series()).collect();
        let all = || series.iter().map(|metrics| &**metrics);

        let (name, help) = DURATION;
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for t in all() {
            t.duration.encode(family.encode_family(&t.labels)?)?;
        }

        let (name, help) = PROBES;
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for t in all() {
            t.probes.encode(family.encode_family(&t.labels)?)?;
        }

        let (name, help) = FAILURES;
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for t in all() {
            for (reason, counter) in &t.failures {
                let labels = WithExtra(&t.labels, "reason", reason.as_str());
                counter.encode(family.encode_family(&labels)?)?;
            }
        }

        let (name, help) = TARGET_UP;
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for t in all() {
            t.up.encode(family.encode_family(&t.labels)?)?;
        }

        let (name, help) = HTTP_PHASE;
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        encode_phases(&mut family, all(), ProbeKind::Http)?;

        let (name, help) = DNS_PHASE;
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        encode_phases(&mut family, all(), ProbeKind::Dns)?;

        let (name, help) = DB_PHASE;
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for kind in [ProbeKind::Postgres, ProbeKind::Mysql, ProbeKind::Redis] {
            encode_phases(&mut family, all(), kind)?;
        }
        Ok(())
    }
}

/// Encodes the other per-target families: replication, HTTP, TLS, STAMP, the targets by kind
/// and the host names' resolution.
#[derive(Debug)]
struct TargetExtrasCollector {
    targets: LiveTargets,
}

impl Collector for TargetExtrasCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let targets = self.targets.read().expect("targets lock");
        let series: Vec<_> = targets.values().flat_map(|live| live.series()).collect();
        let all = || series.iter().map(|metrics| &**metrics);

        encode_replication(&mut encoder, all())?;

        let mut family = encoder.encode_descriptor(
            "regionprobe_http_redirects",
            "Redirects followed by the target's last successful HTTP probe.",
            None,
            MetricType::Gauge,
        )?;
        for t in all() {
            if let Some(gauge) = &t.redirects {
                gauge.encode(family.encode_family(&t.labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_tls_cert_expiry_timestamp_seconds",
            "Earliest notAfter in the certificate chain the TLS target served, Unix seconds.",
            None,
            MetricType::Gauge,
        )?;
        for t in all() {
            // Unknown until a handshake succeeded: no series rather than a fake value.
            if let Some(gauge) = &t.cert_expiry
                && !gauge.get().is_nan()
            {
                gauge.encode(family.encode_family(&t.labels)?)?;
            }
        }

        encode_stamp(&mut encoder, all())?;

        let mut family = encoder.encode_descriptor(
            "regionprobe_targets",
            "Configured targets by probe kind.",
            None,
            MetricType::Gauge,
        )?;
        for kind in ProbeKind::ALL {
            let count = targets
                .values()
                .filter(|t| t.config.probe.kind() == kind)
                .count();
            let labels = ProbeLabel {
                probe: kind.as_str(),
            };
            ConstGauge::new(count as i64).encode(family.encode_family(&labels)?)?;
        }
        encode_resolution(&mut encoder, &targets)
    }
}

/// The host names' resolution and the addresses of `addresses = "all"` targets.
fn encode_resolution(
    encoder: &mut DescriptorEncoder,
    targets: &BTreeMap<String, Arc<LiveTarget>>,
) -> Result<(), std::fmt::Error> {
    let named = || {
        targets
            .values()
            .filter(|t| t.resolution.named.load(Ordering::Relaxed))
    };
    let mut family = encoder.encode_descriptor(
        "regionprobe_target_address_changes",
        "Times the target's host name resolved to a different set of addresses.",
        None,
        MetricType::Counter,
    )?;
    for t in named() {
        let changes = t.resolution.changes.load(Ordering::Relaxed);
        ConstCounter::new(changes).encode(family.encode_family(&t.metrics.labels)?)?;
    }
    let mut family = encoder.encode_descriptor(
        "regionprobe_target_addresses_stale",
        "1 while the target's host name does not resolve and its last good addresses are probed (for at most resolver.keep_last_good).",
        None,
        MetricType::Gauge,
    )?;
    for t in named() {
        let stale = t.resolution.stale.load(Ordering::Relaxed);
        ConstGauge::new(i64::from(stale)).encode(family.encode_family(&t.metrics.labels)?)?;
    }
    let all = || {
        targets
            .values()
            .filter(|t| matches!(t.config.addresses, Addresses::All { .. }))
    };
    let mut family = encoder.encode_descriptor(
        "regionprobe_target_addresses",
        "Addresses probed for an addresses = \"all\" target (at most its max_addresses).",
        None,
        MetricType::Gauge,
    )?;
    for t in all() {
        let count = t.slots().len() as i64;
        ConstGauge::new(count).encode(family.encode_family(&t.metrics.labels)?)?;
    }
    let mut family = encoder.encode_descriptor(
        "regionprobe_target_addresses_up",
        "Addresses of an addresses = \"all\" target whose last probe succeeded; fewer than regionprobe_target_addresses (and more than 0) is degraded.",
        None,
        MetricType::Gauge,
    )?;
    for t in all() {
        let up = t
            .slots()
            .iter()
            .filter(|slot| slot.metrics.up.get() == 1)
            .count() as i64;
        ConstGauge::new(up).encode(family.encode_family(&t.metrics.labels)?)?;
    }
    Ok(())
}

/// The STAMP targets' per-direction families.
fn encode_stamp<'a>(
    encoder: &mut DescriptorEncoder,
    all: impl Iterator<Item = &'a TargetMetrics>,
) -> Result<(), std::fmt::Error> {
    let targets: Vec<_> = all
        .filter_map(|t| t.stamp.as_ref().map(|s| (&t.labels, s)))
        .collect();
    type Pick = fn(&StampSeries) -> &[Counter; 2];
    let per_direction: [(&str, &str, Pick); 3] = [
        (
            "regionprobe_stamp_lost_packets",
            "STAMP test packets lost, by direction: forward (to the reflector, from gaps in its sequence numbers) or backward (its reply lost).",
            |s| &s.lost,
        ),
        (
            "regionprobe_stamp_reordered_packets",
            "STAMP test packets that arrived after a later one, by direction.",
            |s| &s.reordered,
        ),
        (
            "regionprobe_stamp_duplicate_packets",
            "Copies of STAMP test packets, by direction: forward (the reflector answered a request twice) or backward (a reply arrived twice). Never observed twice.",
            |s| &s.duplicated,
        ),
    ];
    let mut family = encoder.encode_descriptor(
        "regionprobe_stamp_packets",
        "STAMP test packets settled: answered, or given up on (1 s or three timeouts after sending, whichever is longer).",
        None,
        MetricType::Counter,
    )?;
    for (labels, s) in &targets {
        s.packets.encode(family.encode_family(*labels)?)?;
    }
    for (name, help, pick) in per_direction {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, s) in &targets {
            for (d, direction) in DIRECTIONS.iter().enumerate() {
                pick(s)[d].encode(family.encode_family(&WithExtra(
                    labels,
                    "direction",
                    direction,
                ))?)?;
            }
        }
    }
    type PickOne = fn(&StampSeries) -> &Counter;
    let singles: [(&str, &str, PickOne); 2] = [
        (
            "regionprobe_stamp_late_replies",
            "STAMP replies that arrived after their packet was given up on (counted lost).",
            |s| &s.late,
        ),
        (
            "regionprobe_stamp_invalid_replies",
            "Datagrams on a STAMP session that are no valid reply: wrong size, wrong HMAC, unknown sequence or timestamp.",
            |s| &s.invalid,
        ),
    ];
    for (name, help, pick) in singles {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, s) in &targets {
            pick(s).encode(family.encode_family(*labels)?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "regionprobe_stamp_ipdv_seconds",
        "Absolute IP packet delay variation of consecutive STAMP packets (RFC 5481), by direction; needs no clock synchronisation.",
        None,
        MetricType::Histogram,
    )?;
    for (labels, s) in &targets {
        for (d, direction) in DIRECTIONS.iter().enumerate() {
            s.ipdv[d].encode(family.encode_family(&WithExtra(
                labels,
                "direction",
                direction,
            ))?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "regionprobe_stamp_one_way_delay_seconds",
        "One-way delay of STAMP packets by direction; only while both ends claim clocks synchronised to UTC (S bit).",
        None,
        MetricType::Histogram,
    )?;
    for (labels, s) in &targets {
        for (d, direction) in DIRECTIONS.iter().enumerate() {
            // Never claimed: no series at all, rather than an empty one.
            if s.one_way_observed[d].load(std::sync::atomic::Ordering::Relaxed) {
                s.one_way[d].encode(family.encode_family(&WithExtra(
                    labels,
                    "direction",
                    direction,
                ))?)?;
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "regionprobe_stamp_clock_error_seconds",
        "Clock error estimates of the sender and the reflector (RFC 8762 error estimate), while both claim synchronised clocks.",
        None,
        MetricType::Gauge,
    )?;
    for (labels, s) in &targets {
        for (side, gauge) in ["sender", "reflector"].iter().zip(&s.clock_error) {
            if !gauge.get().is_nan() {
                gauge.encode(family.encode_family(&WithExtra(labels, "side", side))?)?;
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "regionprobe_stamp_received_ttl",
        "TTL (hop limit) of the last STAMP packet received, by direction: forward at the reflector (as it reports), backward here.",
        None,
        MetricType::Gauge,
    )?;
    for (labels, s) in &targets {
        for (d, direction) in DIRECTIONS.iter().enumerate() {
            if s.ttl[d].get() >= 0 {
                s.ttl[d].encode(family.encode_family(&WithExtra(
                    labels,
                    "direction",
                    direction,
                ))?)?;
            }
        }
    }
    Ok(())
}

/// The replication families of the database targets that read replication.
fn encode_replication<'a>(
    encoder: &mut DescriptorEncoder,
    targets: impl Iterator<Item = &'a TargetMetrics> + Clone,
) -> Result<(), std::fmt::Error> {
    let reports: Vec<(&TargetMetrics, ReplicationReport)> = targets
        .filter_map(|t| {
            let slot = t.replication.as_ref()?;
            let report = slot.lock().expect("replication lock").clone()?;
            Some((t, report))
        })
        .collect();
    let mut family = encoder.encode_descriptor(
        "regionprobe_replication_lag_seconds",
        "How far the target's data is behind its primary, by its last successful probe: PostgreSQL standby replay lag (0 when all received WAL is replayed), MySQL Seconds_Behind_Master, Redis master_last_io_seconds_ago, or the heartbeat's age; +Inf when replication is broken.",
        None,
        MetricType::Gauge,
    )?;
    for (t, report) in &reports {
        if let Some(lag) = report.lag {
            ConstGauge::new(lag).encode(family.encode_family(&t.labels)?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "regionprobe_replication_link_up",
        "1 if the replica's link to its primary is up (PostgreSQL WAL receiver streaming, MySQL IO thread running, Redis master_link_status up).",
        None,
        MetricType::Gauge,
    )?;
    for (t, report) in &reports {
        if let Some(up) = report.link_up {
            ConstGauge::new(i64::from(up)).encode(family.encode_family(&t.labels)?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "regionprobe_replication_thread_running",
        "MySQL/MariaDB replica: 1 if the replication thread (io, sql) runs.",
        None,
        MetricType::Gauge,
    )?;
    for (t, report) in &reports {
        if let Some((io, sql)) = report.threads {
            for (thread, running) in [("io", io), ("sql", sql)] {
                let labels = WithExtra(&t.labels, "thread", thread);
                ConstGauge::new(i64::from(running)).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "regionprobe_replication_offset_bytes",
        "Redis: the replication offset the server is at (master_repl_offset, slave_repl_offset).",
        None,
        MetricType::Gauge,
    )?;
    for (t, report) in &reports {
        if let Some(offset) = report.offset {
            ConstGauge::new(offset as f64).encode(family.encode_family(&t.labels)?)?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "regionprobe_replication_replica_lag_seconds",
        "From a primary target: each replica's lag by stage (PostgreSQL pg_stat_replication write, flush, replay; Redis ack: seconds since the replica's last acknowledgement).",
        None,
        MetricType::Gauge,
    )?;
    for (t, report) in &reports {
        for replica in &report.replicas {
            for (stage, seconds) in &replica.lag {
                let pairs = [("replica", replica.name.as_str()), ("stage", *stage)];
                ConstGauge::new(*seconds)
                    .encode(family.encode_family(&WithPairs(&t.labels, &pairs))?)?;
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "regionprobe_replication_replica_gap_bytes",
        "From a primary target: bytes of its log each replica has not replayed (PostgreSQL WAL, Redis replication offset).",
        None,
        MetricType::Gauge,
    )?;
    for (t, report) in &reports {
        for replica in &report.replicas {
            if let Some(gap) = replica.gap_bytes {
                let pairs = [("replica", replica.name.as_str())];
                ConstGauge::new(gap as f64)
                    .encode(family.encode_family(&WithPairs(&t.labels, &pairs))?)?;
            }
        }
    }
    Ok(())
}

/// The phase histograms of the targets of `kind`, into `family`.
pub(super) fn encode_phases<'a>(
    family: &mut MetricEncoder<'_>,
    targets: impl Iterator<Item = &'a TargetMetrics>,
    kind: ProbeKind,
) -> Result<(), std::fmt::Error> {
    for t in targets {
        let Some(phases) = t.phases.as_ref().filter(|p| p.kind == kind) else {
            continue;
        };
        for (phase, histogram) in &phases.histograms {
            let labels = WithExtra(&t.labels, "phase", phase.as_str());
            histogram.encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// The state of the shared ICMP sockets.
#[derive(Debug)]
struct IcmpCollector {
    icmp: IcmpSockets,
}

impl Collector for IcmpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let states = self.icmp.states();
        let mut family = encoder.encode_descriptor(
            "regionprobe_icmp_socket_info",
            "1 for each open ICMP socket; kind is datagram (unprivileged) or raw (CAP_NET_RAW); \
             timestamps is kernel (SO_TIMESTAMPNS receive stamps) or user (the receive task's clock).",
            None,
            MetricType::Gauge,
        )?;
        for state in states.iter() {
            if let (Some(kind), Some(timestamps)) = (state.kind, state.timestamps) {
                let labels = [
                    ("ip_version", state.family.label()),
                    ("kind", kind.label()),
                    ("timestamps", timestamps.label()),
                ];
                ConstGauge::new(1).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "regionprobe_icmp_unmatched_replies",
            "ICMP replies and errors that answer no probe we sent: late, forged, or stray.",
            None,
            MetricType::Counter,
        )?;
        for state in states.iter().filter(|s| s.kind.is_some()) {
            let labels = [("ip_version", state.family.label())];
            ConstCounter::new(state.unmatched).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "regionprobe_icmp_duplicate_replies",
            "Second and later ICMP answers to a probe already answered: counted, never observed.",
            None,
            MetricType::Counter,
        )?;
        for state in states.iter().filter(|s| s.kind.is_some()) {
            let labels = [("ip_version", state.family.label())];
            ConstCounter::new(state.duplicate).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::Exposition;
    use crate::probe::{Failure, Outcome, Phase, Phases, Reason};

    /// Live targets of several kinds, with successes, failures of several reasons, phases,
    /// the address series of an `addresses = "all"` target, and labels that need escaping.
    fn live() -> LiveTargets {
        let text = "[exporter]\nregion = \"eu\"\n\
            [[target]]\nname = \"ping\"\nregion = \"us\"\nprobe = \"icmp\"\nhost = \"127.0.0.1\"\n\
            [[target]]\nname = \"quiet\"\nregion = \"us\"\nprobe = \"icmp\"\nhost = \"127.0.0.2\"\n\
            buckets = [0.00001, 0.5, 3, 2000000]\n\
            [[target]]\nname = \"web\"\nregion = \"ap\"\nprobe = \"http\"\nurl = \"http://127.0.0.1:1/\"\n\
            [[target]]\nname = \"dns\"\nregion = \"ap\"\nprobe = \"dns\"\nserver = \"127.0.0.1\"\n\
            query = \"example.com\"\ntransport = \"tcp\"\n\
            [[target]]\nname = \"every\"\nregion = \"eu\"\nprobe = \"tcp\"\n\
            address = \"localhost:1\"\naddresses = \"all\"\n";
        let mut config = crate::config::parse("test.toml", text, Some(Default::default())).unwrap();
        Arc::make_mut(&mut config.targets[1]).region = "a \"quoted\\\" \n region".to_owned();
        let live = LiveTargets::default();
        let mut map = live.write().unwrap();
        for (i, target) in config.targets.iter().enumerate() {
            let t = LiveTarget::new(
                &config.exporter.region.as_str().into(),
                target,
                config.ranking.window,
            );
            if target.name == "every" {
                t.assign(&["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]);
            }
            let mut phases = Phases::default();
            phases.add(Phase::Connect, Duration::from_micros(300));
            phases.add(Phase::Processing, Duration::from_millis(7));
            let record = |result: Result<Outcome, Failure>| {
                t.record(tokio::time::Instant::now(), &result);
                for slot in t.slots() {
                    slot.record(tokio::time::Instant::now(), &result);
                }
            };
            for n in 0..(20 + 7 * i as u64) {
                let latency = Duration::from_micros(37 + n * n * 911);
                record(Ok(Outcome {
                    latency,
                    phases: Some(phases),
                    ..Outcome::default()
                }));
            }
            let reasons = crate::probe::reasons(target.probe.kind());
            for (n, reason) in reasons.iter().enumerate().skip(i % 2) {
                for _ in 0..=n {
                    record(Err(Failure::new(*reason, "test")));
                }
            }
            if i == 0 {
                record(Err(Failure::new(Reason::Timeout, "last")));
            }
            map.insert(target.name.clone(), Arc::new(t));
        }
        drop(map);
        live
    }

    /// The hand-written text encoder writes exactly what prometheus-client's encoders wrote
    /// for the same state, in both text formats; protobuf is unchanged.
    #[test]
    fn the_text_encoder_writes_what_prometheus_client_wrote() {
        let live = live();
        let icmp = crate::probe::Shared::default().icmp;
        let mut before = Registry::default();
        before.register_collector(TargetCollector {
            targets: live.clone(),
        });
        before.register_collector(TargetExtrasCollector {
            targets: live.clone(),
        });
        before.register_collector(IcmpCollector { icmp: icmp.clone() });
        let mut now = Registry::default();
        register(&mut now, live, icmp);
        for format in [
            Exposition::Text,
            Exposition::OpenMetrics,
            Exposition::Protobuf,
        ] {
            let old = before.encode_to_vec(format);
            let new = now.encode_to_vec(format);
            if old != new && format != Exposition::Protobuf {
                let (old, new) = (
                    String::from_utf8(old).unwrap(),
                    String::from_utf8(new).unwrap(),
                );
                for (a, b) in old.lines().zip(new.lines()) {
                    assert_eq!(a, b, "{format:?}");
                }
                panic!(
                    "{format:?}: {} lines against {}",
                    old.lines().count(),
                    new.lines().count()
                );
            }
            assert!(old == new, "{format:?} differs");
        }
        let text = String::from_utf8(now.encode_to_vec(Exposition::Text)).unwrap();
        // The state is what the test meant: phases, addresses, escapes and failures are there.
        for expected in [
            "regionprobe_http_phase_duration_seconds_bucket{",
            "regionprobe_dns_phase_duration_seconds_count{",
            "address_index=\"1\"",
            "target_region=\"a \\\"quoted\\\\\\\" \\n region\"",
            "reason=\"refused\"",
            "le=\"2e+06\"",
        ] {
            assert!(text.contains(expected), "{expected} missing");
        }
    }
}
