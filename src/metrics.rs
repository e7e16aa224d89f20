//! The shapes every metric family shares, in one place: label sets, latency histograms
//! (classic and native), the exposition formats `/metrics` speaks, the registry that renders
//! them, and the exporter's own `process_*` and build metrics. No runtime state lives here:
//! each owner of state (targets, ranking, reload) registers its own families or collector.
//! The metric reference in README.md lists every family.
//!
//! Every latency histogram is classic and native at once (see [`latency_histogram`]): the text
//! formats carry the classic buckets only; the protobuf format, which a scraper gets by asking
//! for it (see [`Exposition::negotiate`]), carries both.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, NativeHistogramConfig};
use prometheus_client::registry::{Metric, Registry as Families};

/// Buckets of `regionprobe_scheduler_lag_seconds`: 100 us to ~1.6 s by powers of four. A
/// healthy scheduler stays in the first buckets; anything past 10 ms means starved threads.
pub const LAG_BUCKETS: [f64; 8] = [
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
pub enum Exposition {
    /// Prometheus text 0.0.4: classic buckets only. The default.
    Text,
    /// OpenMetrics 1.0.0 text: classic buckets only.
    OpenMetrics,
    /// Prometheus protobuf, length-delimited `io.prometheus.client.MetricFamily` messages:
    /// classic and native buckets. What Prometheus asks for first when native histograms are
    /// enabled.
    Protobuf,
}

impl Exposition {
    /// Picks the format like client_golang's `expfmt.NegotiateIncludingOpenMetrics`: the media
    /// ranges of `Accept` by falling quality (ties keep their order, wildcards last), the first
    /// one we speak wins; text 0.0.4 when none matches or there is no header. A range with
    /// `q=0` is refused, not chosen.
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        let Some(accept) = accept else {
            return Exposition::Text;
        };
        let mut ranges: Vec<(f64, u8, Option<Exposition>)> = accept
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
                        Some(Exposition::Protobuf)
                    }
                    ("text", "plain") if matches!(version, "" | "0.0.4") => Some(Exposition::Text),
                    ("application", "openmetrics-text")
                        if matches!(version, "" | "0.0.1" | "1.0.0") =>
                    {
                        Some(Exposition::OpenMetrics)
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
            .unwrap_or(Exposition::Text)
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::Text => "text/plain; version=0.0.4; charset=utf-8",
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }
}

/// The `probe` label alone: per-kind families such as the scheduler's.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabel {
    pub probe: &'static str,
}

/// A collector with a text encoder of its own, for families too large for prometheus-client's
/// (the per-target ones): the same bytes, written faster. Protobuf still goes through
/// [`Collector::encode`].
pub trait TextCollector: Collector + Clone {
    /// Writes the families in text 0.0.4, or OpenMetrics if `openmetrics` (without `# EOF`).
    fn encode_text(&self, openmetrics: bool, out: &mut dyn std::io::Write) -> std::io::Result<()>;
}

/// A [`TextCollector`] behind a trait object.
trait DynText: std::fmt::Debug + Send + Sync {
    fn encode_text(&self, openmetrics: bool, out: &mut dyn std::io::Write) -> std::io::Result<()>;
}

impl<T: TextCollector> DynText for T {
    fn encode_text(&self, openmetrics: bool, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        TextCollector::encode_text(self, openmetrics, out)
    }
}

/// The registry every family is registered in, and its renderings.
#[derive(Debug, Default)]
pub struct Registry {
    /// The [`TextCollector`]s, for protobuf; they come before every other family.
    leading: Families,
    /// The same, for the text formats.
    text: Vec<Box<dyn DynText>>,
    /// `register` appends a period to help texts; collectors write theirs in full.
    families: Families,
}

impl Registry {
    /// Registers a family whose handles the caller keeps and records into.
    pub fn register(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.families.register(name, help, metric);
    }

    /// Registers a collector that encodes its families from its owner's state at scrape time.
    pub fn register_collector(&mut self, collector: impl Collector) {
        self.families.register_collector(Box::new(collector));
    }

    /// Registers a collector with its own text encoder. It comes before every family not
    /// registered this way, so register it first to keep the families in registration order.
    pub fn register_text_collector(&mut self, collector: impl TextCollector) {
        self.leading.register_collector(Box::new(collector.clone()));
        self.text.push(Box::new(collector));
    }

    /// Registers the exporter's own families: `regionprobe_build_info` and `process_*`.
    /// Registered last, they come last in every rendering.
    pub fn register_process(&mut self) {
        self.register_collector(ProcessCollector::open());
    }

    /// Renders every family in `format` into `out`, as it goes: the text is never whole in
    /// memory (the render cache compresses it chunk by chunk).
    pub fn encode<W: std::fmt::Write + std::io::Write>(&self, format: Exposition, out: &mut W) {
        // Writing into the sink cannot fail; an encoder error would be a bug in our names.
        let openmetrics = match format {
            Exposition::Text => false,
            Exposition::OpenMetrics => true,
            Exposition::Protobuf => {
                self.render_protobuf(&self.leading, out);
                self.render_protobuf(&self.families, out);
                return;
            }
        };
        for collector in &self.text {
            collector
                .encode_text(openmetrics, out)
                .expect("the sink takes every byte");
        }
        if openmetrics {
            prometheus_client::encoding::text::encode(out, &self.families)
        } else {
            prometheus_client::encoding::prometheus_text::encode(out, &self.families)
        }
        .expect("encoding metrics");
    }

    /// Every family in `format`, whole (tests and the one-shot commands).
    #[cfg(test)]
    pub fn encode_to_vec(&self, format: Exposition) -> Vec<u8> {
        let mut out = VecSink(Vec::new());
        self.encode(format, &mut out);
        out.0
    }

    /// Length-delimited protobuf `MetricFamily` messages, native buckets included. Families
    /// without a series (no HTTP target, no TLS handshake yet) are left out, as client_golang
    /// does.
    fn render_protobuf(&self, families: &Families, out: &mut impl std::io::Write) {
        use prost::Message as _;
        let families = prometheus_client::encoding::prometheus_protobuf::encode(families)
            .expect("encoding metrics");
        let mut buffer = Vec::new();
        for family in families.iter().filter(|family| !family.metric.is_empty()) {
            buffer.clear();
            family
                .encode_length_delimited(&mut buffer)
                .expect("a Vec grows as needed");
            out.write_all(&buffer).expect("the sink takes every byte");
        }
    }
}

/// A `Vec` that takes both kinds of writes.
#[cfg(test)]
pub struct VecSink(pub Vec<u8>);

#[cfg(test)]
impl std::fmt::Write for VecSink {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
impl std::io::Write for VecSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Build info and the standard `process_*` metrics, read from /proc at scrape time through
/// files opened once at start: when the process is out of file descriptors (exactly when
/// `process_open_fds` matters) nothing new needs to be opened. If the fd directory cannot be
/// read for lack of descriptors, `process_open_fds` is the soft limit: the table is full.
#[derive(Debug)]
struct ProcessCollector {
    files: std::sync::Mutex<ProcFiles>,
}

#[derive(Debug)]
struct ProcFiles {
    stat: Option<std::fs::File>,
    limits: Option<std::fs::File>,
    fds: Option<nix::dir::Dir>,
}

impl ProcessCollector {
    fn open() -> Self {
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let _ = boot_time();
        ProcessCollector {
            files: std::sync::Mutex::new(ProcFiles {
                stat: std::fs::File::open("/proc/self/stat").ok(),
                limits: std::fs::File::open("/proc/self/limits").ok(),
                fds: nix::dir::Dir::open("/proc/self/fd", flags, Mode::empty()).ok(),
            }),
        }
    }
}

/// The whole of a /proc file, read again from its start (`pread` at 0 regenerates it).
fn reread(file: Option<&std::fs::File>) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt as _;
    let file = file?;
    let mut out = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == out.len() {
            out.resize(out.len() * 2, 0);
        }
        match file.read_at(&mut out[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    out.truncate(len);
    Some(out)
}

impl ProcFiles {
    fn stat(&self) -> Option<procfs::process::Stat> {
        use procfs::FromRead as _;
        procfs::process::Stat::from_read(&reread(self.stat.as_ref())?[..]).ok()
    }

    fn max_fds(&self) -> Option<u64> {
        use procfs::FromBufRead as _;
        let limits = procfs::process::Limits::from_buf_read(&reread(self.limits.as_ref())?[..]);
        match limits.ok()?.max_open_files.soft_limit {
            procfs::process::LimitValue::Value(max) => Some(max),
            procfs::process::LimitValue::Unlimited => None,
        }
    }

    /// Open descriptors: the entries of /proc/self/fd, the kept directory's own included.
    fn open_fds(&mut self) -> Option<u64> {
        let dir = self.fds.as_mut()?;
        let mut count = 0u64;
        for entry in dir.iter() {
            let entry = entry.ok()?;
            if !matches!(entry.file_name().to_bytes(), b"." | b"..") {
                count += 1;
            }
        }
        Some(count)
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "regionprobe_build_info",
            "Always 1; the labels carry the version of the running binary.",
            None,
            MetricType::Gauge,
        )?;
        let labels = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("revision", env!("REGIONPROBE_REVISION")),
            ("branch", env!("REGIONPROBE_BRANCH")),
            ("rustversion", env!("REGIONPROBE_RUSTVERSION")),
        ];
        ConstGauge::new(1).encode(family.encode_family(&labels)?)?;

        let mut files = self.files.lock().expect("proc files lock");
        if let Some(stat) = files.stat() {
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
            if let Some(boot) = boot_time() {
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    boot as f64 + stat.starttime as f64 / ticks,
                )?;
            }
        }
        let max_fds = files.max_fds();
        if let Some(count) = files.open_fds().or(max_fds) {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                count as f64,
            )?;
        }
        if let Some(max) = max_fds {
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

/// The boot time, read once: it does not change, and reading it needs a descriptor.
fn boot_time() -> Option<u64> {
    static BOOT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| procfs::boot_time_secs().ok())
}

/// One unlabelled gauge family.
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(family)
}
