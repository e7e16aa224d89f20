//! What a configuration costs before it runs: probes per second, series, the size of a
//! `/metrics` text scrape and the resident memory, computed from the targets alone. Shown by
//! `check-config` and logged at start and at every reload; `exporter.max_probes_per_second`
//! (checked while loading) refuses what is beyond the ceiling.
//!
//! The series count is exact (it follows the same tables the collector encodes from); the
//! text size is the sum of each series' line with its labels, within a few percent; memory is
//! a measured cost per target (docs/benchmarks.md, "Memory per target") plus a fixed base, so
//! it is an estimate of the order of magnitude, not a promise.

use std::fmt;

use crate::config::{Config, ProbeKind, Target};
use crate::probe;

/// The resident memory of a process with 100 targets, less theirs: runtimes, TLS roots,
/// buffers (10.3-10.6 MiB measured with 100 ICMP targets, docs/scale.md).
const BASE_BYTES: u64 = 10 * 1024 * 1024;

/// Resident memory per ICMP target at 1 s once its 5-minute window has filled, as measured at
/// 10,000 targets with Prometheus' scrapes (58.7 MiB, docs/scale.md "Fifth round"; RSS grows
/// by ~3 MiB over the first 5 minutes as the windows' rings are written): the task, its
/// series, its ranking window (4 bytes a sample), one copy of its configuration, and its share
/// of the compressed rendering.
const ICMP_TARGET_BYTES: u64 = 5_200;

/// Per HTTP, TCP or DNS target: the same, plus the connection's buffers during a probe and,
/// for HTTP, five phase histograms. Not re-measured since the task-size cut: rough.
fn target_bytes(target: &Target) -> u64 {
    let window = 4 * window_samples(target);
    let histograms = (1 + probe::phases(&target.probe).len() as u64) * 600;
    match target.probe.kind() {
        ProbeKind::Icmp => ICMP_TARGET_BYTES,
        ProbeKind::Tcp | ProbeKind::Dns => 6_000 + window + histograms,
        // Its session (sequence map, timestamps) and the per-direction histograms.
        ProbeKind::Stamp => 6_000 + window + histograms + 4 * 600,
        // A connection's buffers and TLS state during a probe, like HTTP's: rough.
        ProbeKind::Http | ProbeKind::Postgres | ProbeKind::Mysql | ProbeKind::Redis => {
            24_000 + window + histograms
        }
    }
}

/// Samples in a target's ranking window at the default 5 minute window.
fn window_samples(target: &Target) -> u64 {
    (300.0 / target.interval.as_secs_f64()).ceil() as u64
}

/// The cost of a configuration's targets on this replica.
#[derive(Clone, Debug, PartialEq)]
pub struct Capacity {
    /// Targets this replica probes (its shard's share).
    pub targets: usize,
    /// Targets in the file, before sharding.
    pub configured: usize,
    pub shard: Option<crate::config::Shard>,
    pub probes_per_second: f64,
    pub max_probes_per_second: u64,
    /// Per-target series on `/metrics` (every histogram bucket, sum and count counts).
    pub series: u64,
    /// Bytes of a text (0.0.4) scrape's per-target series.
    pub metrics_bytes: u64,
    /// Estimated resident memory.
    pub memory_bytes: u64,
}

impl Capacity {
    pub fn of(config: &Config) -> Capacity {
        let source = &config.exporter.region;
        let mut series = 0;
        let mut metrics_bytes = 0;
        let mut memory_bytes = BASE_BYTES;
        for target in &config.targets {
            let (s, bytes) = target_series(source, target);
            series += s;
            metrics_bytes += bytes;
            memory_bytes += target_bytes(target);
        }
        Capacity {
            targets: config.targets.len(),
            configured: config.exporter.configured_targets,
            shard: config.exporter.shard,
            probes_per_second: config.probes_per_second(),
            max_probes_per_second: config.exporter.max_probes_per_second,
            series,
            metrics_bytes,
            memory_bytes,
        }
    }
}

/// One target's series and the bytes of their text lines.
fn target_series(source: &str, target: &Target) -> (u64, u64) {
    // source_region="..",target_region="..",target="..",probe=".."
    let kind = target.probe.kind().as_str();
    let labels = (16 + source.len() + 17 + target.region.len() + 10 + target.name.len() + 9) as u64
        + kind.len() as u64;
    // A value: counts and timestamps are a few digits to a dozen.
    let line = |name: &str, extra: u64| name.len() as u64 + 2 + labels + extra + 1 + 8 + 1;
    let le: u64 = target
        .buckets
        .iter()
        .map(|b| 7 + format!("{b}").len() as u64)
        .sum::<u64>()
        + 11;
    let histogram = |name: &str, extra: u64| {
        let buckets = target.buckets.len() as u64 + 1;
        let bytes = (name.len() as u64 + 7 + 2 + labels + extra + 10) * buckets
            + le
            + line(&format!("{name}_sum"), extra)
            + line(&format!("{name}_count"), extra);
        (buckets + 2, bytes)
    };
    let (mut series, mut bytes) = histogram("regionprobe_probe_duration_seconds", 0);
    series += 2;
    bytes += line("regionprobe_probes_total", 0) + line("regionprobe_target_up", 0);
    for reason in probe::reasons(target.probe.kind()) {
        series += 1;
        bytes += line(
            "regionprobe_probe_failures_total",
            10 + reason.as_str().len() as u64,
        );
    }
    for phase in probe::phases(&target.probe) {
        let (s, b) = histogram(
            "regionprobe_http_phase_duration_seconds",
            9 + phase.as_str().len() as u64,
        );
        series += s;
        bytes += b;
    }
    if target.probe.kind() == ProbeKind::Http {
        series += 1;
        bytes += line("regionprobe_http_redirects", 0);
    }
    if target.probe.uses_tls() {
        series += 1;
        bytes += line("regionprobe_tls_cert_expiry_timestamp_seconds", 0);
    }
    if target.probe.kind() == ProbeKind::Stamp {
        // Packets, late, invalid; lost, reordered, duplicate per direction; the IPDV
        // histograms per direction (one-way delays and TTLs only when known: not counted).
        for (name, extra) in [
            ("regionprobe_stamp_packets_total", 0),
            ("regionprobe_stamp_late_replies_total", 0),
            ("regionprobe_stamp_invalid_replies_total", 0),
        ] {
            series += 1;
            bytes += line(name, extra);
        }
        for direction in ["forward", "backward"] {
            let extra = 13 + direction.len() as u64;
            for name in [
                "regionprobe_stamp_lost_packets_total",
                "regionprobe_stamp_reordered_packets_total",
                "regionprobe_stamp_duplicate_packets_total",
            ] {
                series += 1;
                bytes += line(name, extra);
            }
            let (s, b) = histogram("regionprobe_stamp_ipdv_seconds", extra);
            series += s;
            bytes += b;
        }
    }
    (series, bytes)
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shard = match self.shard {
            Some(shard) => format!(" (shard {shard} of {} configured)", self.configured),
            None => String::new(),
        };
        write!(
            f,
            "capacity: {} targets{shard}, {:.0} probes/s (ceiling {}), {} series, /metrics ~{} (text), memory ~{}",
            self.targets,
            self.probes_per_second,
            self.max_probes_per_second,
            self.series,
            mib(self.metrics_bytes),
            mib(self.memory_bytes),
        )
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(targets: usize, interval: &str) -> Config {
        let mut text = format!(
            "[exporter]\nregion = \"eu\"\n[defaults]\ninterval = \"{interval}\"\ntimeout = \"{interval}\"\n"
        );
        for i in 0..targets {
            text.push_str(&format!(
                "[[target]]\nname = \"t{i:05}\"\nregion = \"us\"\nprobe = \"icmp\"\nhost = \"127.0.0.1\"\n"
            ));
        }
        crate::config::parse("test.toml", &text, Some(Default::default())).unwrap()
    }

    #[test]
    fn the_cost_follows_targets_and_intervals() {
        let one = Capacity::of(&config(10, "1s"));
        assert_eq!(one.targets, 10);
        assert!((one.probes_per_second - 10.0).abs() < 1e-9);
        // 18 buckets + +Inf + sum + count, probes, up, five failure reasons.
        assert_eq!(one.series, 10 * (21 + 2 + 5));
        let slow = Capacity::of(&config(10, "4s"));
        assert!((slow.probes_per_second - 2.5).abs() < 1e-9);
        assert!(
            one.to_string()
                .contains("10 targets, 10 probes/s (ceiling 20000), 280 series")
        );
    }

    /// The estimated size is within 10% of what the collector really renders.
    #[test]
    fn the_text_size_estimate_matches_a_rendering() {
        use crate::metrics::{Exposition, Registry};
        let config = config(200, "1s");
        let mut registry = Registry::default();
        let live = super::super::live::LiveTargets::default();
        {
            let mut map = live.write().unwrap();
            for target in &config.targets {
                let target_live = super::super::live::LiveTarget::new(
                    &config.exporter.region.as_str().into(),
                    target,
                    config.ranking.window,
                );
                map.insert(target.name.clone(), std::sync::Arc::new(target_live));
            }
        }
        super::super::collector::register(
            &mut registry,
            live,
            crate::probe::Shared::default().icmp,
        );
        let text = registry.encode_to_vec(Exposition::Text);
        let estimate = Capacity::of(&config).metrics_bytes as f64;
        let actual = text.len() as f64;
        assert!(
            (estimate / actual - 1.0).abs() < 0.1,
            "estimate {estimate} against {actual}"
        );
    }
}
