//! The per-target families with a series set for every target (latency and phase histograms,
//! probes, failures, up) in the two text formats, written by hand: each target's label set is
//! escaped once, when the target is made ([`super::labels::TargetLabels::escaped`]), and copied into every line; the
//! bucket lines come from the histogram's counts and its shared `le` texts. The same bytes as
//! prometheus-client's encoders (a unit test in [`super::collector`] compares them), at a
//! fraction of the CPU: theirs re-encode the labels on every bucket line and take a snapshot,
//! native buckets included, of every histogram.

use std::io::Write;

use super::histogram::{Classic, LatencyHistogram};
use super::series::TargetMetrics;
use crate::config::ProbeKind;

/// Written to the sink in chunks of about this size.
const FLUSH: usize = 32 * 1024;

/// A family's name and help; [`super::collector`] encodes the same families in protobuf.
type Family = (&'static str, &'static str);

pub(super) const DURATION: Family = (
    "regionprobe_probe_duration_seconds",
    "Latency of each successful probe: ICMP round trip, TCP connect (and TLS handshake), DNS round trip, HTTP total.",
);
pub(super) const PROBES: Family = ("regionprobe_probes", "Probes attempted.");
pub(super) const FAILURES: Family = (
    "regionprobe_probe_failures",
    "Failed probes by reason: timeout, refused, unreachable, resolve, tls, http_status, validation, error.",
);
pub(super) const TARGET_UP: Family = (
    "regionprobe_target_up",
    "1 if the target's last probe succeeded, else 0.",
);
pub(super) const HTTP_PHASE: Family = (
    "regionprobe_http_phase_duration_seconds",
    "Time per phase of each successful HTTP probe (summed over redirects): resolve, connect, tls, processing (request sent to response head), transfer (body).",
);
pub(super) const DNS_PHASE: Family = (
    "regionprobe_dns_phase_duration_seconds",
    "Time per phase of each successful DNS probe over tcp: connect, processing (query sent to answer).",
);
pub(super) const DB_PHASE: Family = (
    "regionprobe_db_phase_duration_seconds",
    "Time per phase of each successful database probe: resolve, connect, tls, auth (startup and authentication), query (the read query), write (the heartbeat write, when asked).",
);

#[derive(Clone, Copy, PartialEq)]
enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// A text rendering in progress: a buffer that goes to the sink [`FLUSH`] bytes at a time.
pub(super) struct Writer<'a> {
    openmetrics: bool,
    buf: Vec<u8>,
    out: &'a mut dyn Write,
    classic: Classic,
}

impl<'a> Writer<'a> {
    pub(super) fn new(openmetrics: bool, out: &'a mut dyn Write) -> Self {
        Writer {
            openmetrics,
            buf: Vec::with_capacity(FLUSH + 4096),
            out,
            classic: Classic::default(),
        }
    }

    fn maybe_flush(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= FLUSH {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    pub(super) fn finish(self) -> std::io::Result<()> {
        self.out.write_all(&self.buf)
    }

    fn descriptor(&mut self, name: &str, help: &str, kind: Type) {
        // Text 0.0.4 names a counter family with its `_total`; OpenMetrics does not.
        let total = if kind == Type::Counter && !self.openmetrics {
            "_total"
        } else {
            ""
        };
        let kind = match kind {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        };
        let b = &mut self.buf;
        for (line, tail) in [("# HELP ", help), ("# TYPE ", kind)] {
            b.extend_from_slice(line.as_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(total.as_bytes());
            b.push(b' ');
            b.extend_from_slice(tail.as_bytes());
            b.push(b'\n');
        }
    }

    /// `name{labels[,extra="value"]} `.
    fn series(&mut self, name: &str, suffix: &str, labels: &str, extra: Option<(&str, &str)>) {
        let b = &mut self.buf;
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(suffix.as_bytes());
        b.push(b'{');
        b.extend_from_slice(labels.as_bytes());
        if let Some((key, value)) = extra {
            push_label(b, key, value);
        }
        b.extend_from_slice(b"} ");
    }

    fn integer(&mut self, value: impl itoa::Integer) -> std::io::Result<()> {
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self.buf.push(b'\n');
        self.maybe_flush()
    }

    fn counter(
        &mut self,
        name: &str,
        labels: &str,
        extra: Option<(&str, &str)>,
        value: u64,
    ) -> std::io::Result<()> {
        self.series(name, "_total", labels, extra);
        self.integer(value)
    }

    fn gauge(&mut self, name: &str, labels: &str, value: i64) -> std::io::Result<()> {
        self.series(name, "", labels, None);
        self.integer(value)
    }

    fn histogram(
        &mut self,
        name: &str,
        labels: &str,
        extra: Option<(&str, &str)>,
        histogram: &LatencyHistogram,
    ) -> std::io::Result<()> {
        let mut classic = std::mem::take(&mut self.classic);
        histogram.read_classic(&mut classic);
        let bounds = histogram.bounds();
        if self.openmetrics {
            self.sum_and_count(name, labels, extra, &classic);
            let mut cumulative = 0;
            for (le, count) in bounds.le_openmetrics.iter().zip(&classic.counts) {
                cumulative += count;
                let b = &mut self.buf;
                b.extend_from_slice(name.as_bytes());
                b.extend_from_slice(b"_bucket{le=\"");
                b.extend_from_slice(le.as_bytes());
                b.extend_from_slice(b"\",");
                b.extend_from_slice(labels.as_bytes());
                if let Some((key, value)) = extra {
                    push_label(b, key, value);
                }
                b.extend_from_slice(b"} ");
                self.integer(cumulative)?;
            }
        } else {
            let mut cumulative = 0;
            for (le, count) in bounds.le_text.iter().zip(&classic.counts) {
                cumulative += count;
                self.series(name, "_bucket", labels, extra);
                let b = &mut self.buf;
                b.pop();
                b.pop();
                push_label(b, "le", le);
                b.extend_from_slice(b"} ");
                self.integer(cumulative)?;
            }
            self.sum_and_count(name, labels, extra, &classic);
        }
        self.classic = classic;
        self.maybe_flush()
    }

    fn sum_and_count(
        &mut self,
        name: &str,
        labels: &str,
        extra: Option<(&str, &str)>,
        classic: &Classic,
    ) {
        self.series(name, "_sum", labels, extra);
        let sum = classic.sum;
        let text = if sum.is_finite() || self.openmetrics {
            // dtoa writes NaN, inf and -inf as OpenMetrics' encoder does.
            dtoa::Buffer::new().format(sum).to_owned()
        } else if sum.is_nan() {
            "NaN".to_owned()
        } else if sum > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        };
        self.buf.extend_from_slice(text.as_bytes());
        self.buf.push(b'\n');
        self.series(name, "_count", labels, extra);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(classic.count).as_bytes());
        self.buf.push(b'\n');
    }
}

fn push_label(b: &mut Vec<u8>, key: &str, value: &str) {
    b.push(b',');
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(b"=\"");
    b.extend_from_slice(value.as_bytes());
    b.push(b'"');
}

/// The families of [`super::collector`]'s `TargetCollector`, in its order, for `series` (every
/// target's, or each of its addresses').
pub(super) fn encode(writer: &mut Writer<'_>, series: &[&TargetMetrics]) -> std::io::Result<()> {
    let (name, help) = DURATION;
    writer.descriptor(name, help, Type::Histogram);
    for t in series {
        writer.histogram(name, &t.label_text, None, &t.duration)?;
    }
    let (name, help) = PROBES;
    writer.descriptor(name, help, Type::Counter);
    for t in series {
        writer.counter(name, &t.label_text, None, t.probes.get())?;
    }
    let (name, help) = FAILURES;
    writer.descriptor(name, help, Type::Counter);
    for t in series {
        for (reason, counter) in &t.failures {
            let extra = Some(("reason", reason.as_str()));
            writer.counter(name, &t.label_text, extra, counter.get())?;
        }
    }
    let (name, help) = TARGET_UP;
    writer.descriptor(name, help, Type::Gauge);
    for t in series {
        writer.gauge(name, &t.label_text, t.up.get())?;
    }
    let phases: [(_, &[ProbeKind]); 3] = [
        (HTTP_PHASE, &[ProbeKind::Http]),
        (DNS_PHASE, &[ProbeKind::Dns]),
        (
            DB_PHASE,
            &[ProbeKind::Postgres, ProbeKind::Mysql, ProbeKind::Redis],
        ),
    ];
    for ((name, help), kinds) in phases {
        writer.descriptor(name, help, Type::Histogram);
        for kind in kinds {
            for t in series {
                let Some(phases) = t.phases.as_ref().filter(|p| p.kind == *kind) else {
                    continue;
                };
                for (phase, histogram) in &phases.histograms {
                    let extra = Some(("phase", phase.as_str()));
                    writer.histogram(name, &t.label_text, extra, histogram)?;
                }
            }
        }
    }
    Ok(())
}
