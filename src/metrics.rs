//! Every metric family regionprobe exports, in one place (the metric reference in README.md
//! mirrors this file).
//!
//! Per-target series live in one [`TargetMetrics`] per target, held by the target's task, so
//! the hot path touches its own atomics and never a label-map lookup. Removing a target drops
//! its entry and every one of its series with it.
//!
//! Every latency histogram is classic and native at once (see [`latency_histogram`]): the text
//! formats carry the classic buckets only, exactly as before; the protobuf format, which a
//! scraper gets by asking for it (see [`Format::negotiate`]), carries both.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, NativeHistogramConfig};
use prometheus_client::registry::Registry;

use crate::config::{DnsTransport, ProbeConfig, ProbeKind, Target};
use crate::live::LiveTargets;
use crate::probe::{Failure, IcmpSockets, Outcome, Phase, Reason};
use crate::ranker::SharedSnapshot;

/// Buckets of `regionprobe_scheduler_lag_seconds`: 100 us to ~1.6 s by powers of four. A
/// healthy scheduler stays in the first buckets; anything past 10 ms means starved threads.
const LAG_BUCKETS: [f64; 8] = [
    0.0001, 0.0004, 0.0016, 0.0064, 0.0256, 0.1024, 0.4096, 1.6384,
];

/// Native buckets of every latency histogram: schema 3, eight buckets per power of two, each
/// bound 2^(1/8) = 1.0905 times the one below, so a quantile read from them is off by less than
/// 9% of the value (about half that on average), whatever the latency: 50 us on loopback or
/// 300 ms across an ocean, with no bucket list to choose.
pub const NATIVE_SCHEMA: i8 = 3;

/// Observations at or below 2^-20 s (0.95 us, a bucket bound in every schema) count in the
/// zero bucket: the TLS phase of a plain-HTTP probe, the resolve phase of an IP literal, and
/// timer noise. Nothing a probe measures is meaningful below a microsecond.
pub const NATIVE_ZERO_THRESHOLD: f64 = 1.0 / 1_048_576.0;

/// At most this many populated native buckets per histogram (16 bytes each: 2.5 KiB, at most
/// 4 KiB with the vector's spare capacity). 160 buckets at schema 3 span 20 powers of two, 1 us
/// to 1 s, far wider than one target's latencies spread (a few buckets to a few dozen). Past
/// the cap the histogram halves its resolution (schema 2, then 1, ...) and keeps it; it never
/// resets itself and never widens the zero bucket, so its classic buckets, sum and count (what
/// existing rules and dashboards read) stay monotonic.
pub const NATIVE_MAX_BUCKETS: usize = 160;

/// A histogram with `buckets` as its classic buckets and native buckets beside them.
pub fn latency_histogram(buckets: impl IntoIterator<Item = f64>) -> Histogram {
    Histogram::new_classic_and_native(
        buckets,
        NativeHistogramConfig::with_schema(NATIVE_SCHEMA)
            .zero_threshold(NATIVE_ZERO_THRESHOLD)
            .max_buckets(NATIVE_MAX_BUCKETS),
    )
}

/// The exposition formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: classic buckets only. The default.
    Text,
    /// OpenMetrics 1.0.0 text: classic buckets only.
    OpenMetrics,
    /// Prometheus protobuf, length-delimited `io.prometheus.client.MetricFamily` messages:
    /// classic and native buckets. What Prometheus asks for first when native histograms are
    /// enabled.
    Protobuf,
}

impl Format {
    /// Picks the format like client_golang's `expfmt.NegotiateIncludingOpenMetrics`: the media
    /// ranges of `Accept` by falling quality (ties keep their order, wildcards last), the first
    /// one we speak wins; text 0.0.4 when none matches or there is no header. A range with
    /// `q=0` is refused, not chosen.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let mut ranges: Vec<(f64, u8, Option<Format>)> = accept
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next()?.to_ascii_lowercase();
                let (kind, sub) = media.split_once('/')?;
                let mut q = 1.0;
                let (mut version, mut proto, mut encoding) = ("", "", "");
                for param in parts {
                    let Some((name, value)) = param.split_once('=') else {
                        continue;
                    };
                    let value = value.trim().trim_matches('"');
                    match name.trim().to_ascii_lowercase().as_str() {
                        "q" => q = value.parse().unwrap_or(0.0),
                        "version" => version = value,
                        "proto" => proto = value,
                        "encoding" => encoding = value,
                        _ => {}
                    }
                }
                let format = match (kind, sub) {
                    ("application", "vnd.google.protobuf")
                        if proto == "io.prometheus.client.MetricFamily"
                            && encoding == "delimited" =>
                    {
                        Some(Format::Protobuf)
                    }
                    ("text", "plain") if matches!(version, "" | "0.0.4") => Some(Format::Text),
                    ("application", "openmetrics-text")
                        if matches!(version, "" | "0.0.1" | "1.0.0") =>
                    {
                        Some(Format::OpenMetrics)
                    }
                    _ => None,
                };
                let wildcards = u8::from(kind == "*") + u8::from(sub == "*");
                (q > 0.0).then_some((q, wildcards, format))
            })
            .collect();
        // Stable: equal quality and specificity keep the client's order.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranges
            .into_iter()
            .find_map(|(_, _, format)| format)
            .unwrap_or(Format::Text)
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }
}

/// One target's per-phase histograms, for the phases its probe kind reports.
#[derive(Debug)]
struct PhaseHistograms {
    kind: ProbeKind,
    histograms: Vec<(Phase, Histogram)>,
}

impl PhaseHistograms {
    fn of(target: &Target) -> Option<Self> {
        let phases: &[Phase] = match &target.probe {
            ProbeConfig::Http(_) => &Phase::ALL,
            ProbeConfig::Dns(dns) if dns.transport == DnsTransport::Tcp => {
                &[Phase::Connect, Phase::Processing]
            }
            _ => return None,
        };
        Some(PhaseHistograms {
            kind: target.probe.kind(),
            histograms: phases
                .iter()
                .map(|phase| (*phase, latency_histogram(target.buckets.iter().copied())))
                .collect(),
        })
    }
}

/// The phase histograms of the targets of `kind`, into `family`.
fn encode_phases<'a>(
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

/// The labels every per-target series carries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub source_region: String,
    pub target_region: String,
    pub target: String,
    pub probe: &'static str,
}

/// A target's labels plus one more (`reason`, `phase`), borrowed so a scrape clones no strings.
struct WithExtra<'a>(&'a TargetLabels, &'static str, &'static str);

impl EncodeLabelSet for WithExtra<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)?;
        [(self.1, self.2)].encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabel {
    pub probe: &'static str,
}

/// One target's series.
#[derive(Debug)]
pub struct TargetMetrics {
    labels: TargetLabels,
    duration: Histogram,
    probes: Counter,
    failures: Vec<(Reason, Counter)>,
    up: Gauge,
    /// Per-phase histograms: HTTP targets (every phase), DNS targets over tcp (connect and
    /// processing; over udp the round trip is the one phase, the latency itself).
    phases: Option<PhaseHistograms>,
    /// HTTP targets: redirects followed by the last successful probe.
    redirects: Option<Gauge>,
    /// TLS targets: earliest certificate expiry seen, Unix seconds (NaN, not exported, until
    /// a handshake succeeded).
    cert_expiry: Option<Gauge<f64, AtomicU64>>,
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
            failures: Reason::possible(kind)
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
        }
    }

    /// The state after the last probe; `None` before the first one.
    pub fn last_up(&self) -> Option<bool> {
        (self.probes.get() > 0).then(|| self.up.get() == 1)
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

/// The registry and the handles the rest of the exporter records into.
#[derive(Debug)]
pub struct Metrics {
    /// `register` appends a period to help texts; collectors write theirs in full.
    registry: Registry,
    pub scheduler_lag: Family<ProbeLabel, Histogram>,
    pub scheduler_skipped: Family<ProbeLabel, Counter>,
    pub reload_successful: Gauge,
    pub reload_timestamp: Gauge<f64, AtomicU64>,
    /// Bumped by every reload: renderings of an older generation are stale (see
    /// [`crate::scrape`]).
    generation: AtomicU64,
}

impl Metrics {
    /// Registers every family; per-target series come from `live`, the region gauges from
    /// `ranking`, both read at scrape time.
    pub fn new(icmp: IcmpSockets, live: LiveTargets, ranking: SharedSnapshot) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(TargetCollector { targets: live }));
        registry.register_collector(Box::new(RankingCollector { snapshot: ranking }));
        let scheduler_lag = Family::<ProbeLabel, Histogram>::new_with_constructor(|| {
            latency_histogram(LAG_BUCKETS)
        });
        registry.register(
            "regionprobe_scheduler_lag_seconds",
            "How late each probe started against its schedule",
            scheduler_lag.clone(),
        );
        let scheduler_skipped = Family::<ProbeLabel, Counter>::default();
        registry.register(
            "regionprobe_scheduler_skipped_ticks",
            "Probe ticks skipped because the previous probe or the runtime ran late",
            scheduler_skipped.clone(),
        );
        for kind in ProbeKind::ALL {
            let label = ProbeLabel {
                probe: kind.as_str(),
            };
            let _ = scheduler_lag.get_or_create(&label);
            let _ = scheduler_skipped.get_or_create(&label);
        }
        let reload_successful = Gauge::default();
        registry.register(
            "regionprobe_config_last_reload_successful",
            "1 if the last configuration (re)load succeeded, 0 if it failed and the previous configuration is still running",
            reload_successful.clone(),
        );
        let reload_timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "regionprobe_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration (re)load",
            reload_timestamp.clone(),
        );
        registry.register_collector(Box::new(ExporterCollector { icmp }));
        registry.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry,
            scheduler_lag,
            scheduler_skipped,
            reload_successful,
            reload_timestamp,
            generation: AtomicU64::new(0),
        }
    }

    /// Renders the registry in the Prometheus text format (0.0.4), or in OpenMetrics when
    /// `openmetrics` is set (the scraper asked for it).
    /// Which reload the metrics reflect.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Marks a reload (applied or refused): the next scrape renders anew.
    pub fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn render(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let result = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        // Writing into a String cannot fail; an encoder error would be a bug in our names.
        result.expect("encoding metrics");
        out
    }

    /// Renders the registry as length-delimited protobuf `MetricFamily` messages, native
    /// buckets included. Families without a series (no HTTP target, no TLS handshake yet) are
    /// left out, as client_golang does.
    pub fn render_protobuf(&self) -> Vec<u8> {
        use prost::Message as _;
        let families = prometheus_client::encoding::prometheus_protobuf::encode(&self.registry)
            .expect("encoding metrics");
        let mut out = Vec::with_capacity(64 * 1024);
        for family in families.iter().filter(|family| !family.metric.is_empty()) {
            family
                .encode_length_delimited(&mut out)
                .expect("a Vec grows as needed");
        }
        out
    }

    /// Renders the registry in `format`.
    pub fn encode(&self, format: Format) -> Vec<u8> {
        match format {
            Format::Text => self.render(false).into_bytes(),
            Format::OpenMetrics => self.render(true).into_bytes(),
            Format::Protobuf => self.render_protobuf(),
        }
    }
}

/// Encodes the per-target families from the live target map.
#[derive(Debug)]
struct TargetCollector {
    targets: LiveTargets,
}

impl Collector for TargetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let targets = self.targets.read().expect("targets lock");
        let all = || targets.values().map(|live| &live.metrics);

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
            let count = all().filter(|t| t.labels.probe == kind.as_str()).count();
            let labels = ProbeLabel {
                probe: kind.as_str(),
            };
            ConstGauge::new(count as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The region ranking and the failover choice, from the latest snapshot.
#[derive(Debug)]
struct RankingCollector {
    snapshot: SharedSnapshot,
}

impl Collector for RankingCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.snapshot.read().expect("snapshot lock").clone();
        let source = snapshot.source_region.as_str();
        let regions = &snapshot.ranking.regions;
        let labels = |region: &str| {
            [
                ("source_region", source.to_owned()),
                ("target_region", region.to_owned()),
            ]
        };

        let mut family = encoder.encode_descriptor(
            "regionprobe_region_score_seconds",
            "Ranking score of each target region over the window: latency quantile plus loss ratio times the loss penalty; +Inf when nothing answered.",
            None,
            MetricType::Gauge,
        )?;
        for region in regions {
            ConstGauge::new(region.score).encode(family.encode_family(&labels(&region.region))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_region_rank",
            "Rank of each target region by score; 1 is the best.",
            None,
            MetricType::Gauge,
        )?;
        for region in regions {
            ConstGauge::new(region.rank as i64)
                .encode(family.encode_family(&labels(&region.region))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_failover_best",
            "1 for the chosen failover region (the best other region, held by hysteresis), 0 for the other candidates.",
            None,
            MetricType::Gauge,
        )?;
        for region in regions.iter().filter(|r| r.region != source) {
            let chosen = snapshot.best.as_deref() == Some(region.region.as_str());
            ConstGauge::new(i64::from(chosen))
                .encode(family.encode_family(&labels(&region.region))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_failover_last_change_timestamp_seconds",
            "Unix time the failover choice last changed (the first choice included).",
            None,
            MetricType::Gauge,
        )?;
        if let Some(since) = snapshot.best_since {
            let secs = since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            ConstGauge::new(secs).encode(family.encode_family(&[("source_region", source)])?)?;
        }
        Ok(())
    }
}

/// Build info and the state of the shared ICMP sockets.
#[derive(Debug)]
struct ExporterCollector {
    icmp: IcmpSockets,
}

impl Collector for ExporterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "regionprobe_build_info",
            "Always 1; the labels carry the version of the running binary.",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("version", env!("CARGO_PKG_VERSION"))];
        ConstGauge::new(1).encode(family.encode_family(&labels)?)?;

        let states = self.icmp.states();
        let mut family = encoder.encode_descriptor(
            "regionprobe_icmp_socket_info",
            "1 for each open ICMP socket; kind is datagram (unprivileged) or raw (CAP_NET_RAW).",
            None,
            MetricType::Gauge,
        )?;
        for state in states.iter() {
            if let Some(kind) = state.kind {
                let labels = [("ip_version", state.family.label()), ("kind", kind.label())];
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

/// The standard `process_*` metrics, read from /proc at scrape time.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            let family = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(family)?;
            let page = procfs::page_size();
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                (stat.rss * page) as f64,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stat.vsize as f64,
            )?;
            if let Ok(boot) = procfs::boot_time_secs() {
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    boot as f64 + stat.starttime as f64 / ticks,
                )?;
            }
        }
        if let Ok(count) = me.fd_count() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                count as f64,
            )?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max as f64,
            )?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(family)
}
