//! The collectors that encode the targets' state at scrape time: every per-target family
//! from the live targets, and the state of the shared ICMP sockets.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::live::{LiveTarget, LiveTargets};
use super::series::TargetMetrics;
use crate::config::{Addresses, ProbeKind};
use crate::metrics::{ProbeLabel, Registry, WithExtra};
use crate::probe::IcmpSockets;

/// Registers the targets' families: read from `live` and `icmp` at every scrape.
pub fn register(registry: &mut Registry, live: LiveTargets, icmp: IcmpSockets) {
    registry.register_collector(TargetCollector { targets: live });
    registry.register_collector(IcmpCollector { icmp });
}

/// Encodes the per-target families from the live target map.
#[derive(Debug)]
struct TargetCollector {
    targets: LiveTargets,
}

impl Collector for TargetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let targets = self.targets.read().expect("targets lock");
        // Each target's series, or each of its addresses' (`addresses = "all"`).
        let series: Vec<_> = targets.values().flat_map(|live| live.series()).collect();
        let all = || series.iter().map(|metrics| &**metrics);

        let mut family = encoder.encode_descriptor(
            "regionprobe_probe_duration_seconds",
            "Latency of each successful probe: ICMP round trip, TCP connect (and TLS handshake), DNS round trip, HTTP total.",
            None,
            MetricType::Histogram,
        )?;
        for t in all() {
            t.duration.encode(family.encode_family(&t.labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_probes",
            "Probes attempted.",
            None,
            MetricType::Counter,
        )?;
        for t in all() {
            t.probes.encode(family.encode_family(&t.labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_probe_failures",
            "Failed probes by reason: timeout, refused, unreachable, resolve, tls, http_status, validation, error.",
            None,
            MetricType::Counter,
        )?;
        for t in all() {
            for (reason, counter) in &t.failures {
                let labels = WithExtra(&t.labels, "reason", reason.as_str());
                counter.encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_target_up",
            "1 if the target's last probe succeeded, else 0.",
            None,
            MetricType::Gauge,
        )?;
        for t in all() {
            t.up.encode(family.encode_family(&t.labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_http_phase_duration_seconds",
            "Time per phase of each successful HTTP probe (summed over redirects): resolve, connect, tls, processing (request sent to response head), transfer (body).",
            None,
            MetricType::Histogram,
        )?;
        encode_phases(&mut family, all(), ProbeKind::Http)?;

        let mut family = encoder.encode_descriptor(
            "regionprobe_dns_phase_duration_seconds",
            "Time per phase of each successful DNS probe over tcp: connect, processing (query sent to answer).",
            None,
            MetricType::Histogram,
        )?;
        encode_phases(&mut family, all(), ProbeKind::Dns)?;

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
