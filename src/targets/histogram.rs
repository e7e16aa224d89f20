//! The per-target latency histogram: classic buckets and native buckets in one, as
//! prometheus-client's `Histogram::new_classic_and_native` with [`crate::metrics`]'s native
//! settings, but with its counts readable, so the text encoder ([`super::text`]) writes the
//! bucket lines from them without a snapshot, and its bucket bounds (and their `le` texts)
//! shared by every histogram with the same list. The protobuf encoding goes through
//! prometheus-client's encoder unchanged ([`EncodeMetric`]); a unit test checks it is the
//! one prometheus-client's own histogram produces for the same observations.

use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use prometheus_client::encoding::{
    EncodeMetric, MetricEncoder, NativeHistogram, NativeHistogramBuckets, NoLabelSet,
};
use prometheus_client::metrics::MetricType;

use crate::metrics::{NATIVE_MAX_BUCKETS, NATIVE_SCHEMA, NATIVE_ZERO_THRESHOLD};

/// Lowest native schema: past [`NATIVE_MAX_BUCKETS`] the schema goes down to this at most.
const SCHEMA_MIN: i8 = -4;

/// The upper bounds of the buckets of one power of two, for schemas 0 to [`NATIVE_SCHEMA`]
/// (prometheus-client's and client_golang's table, so indices match theirs bit for bit).
const NATIVE_BOUNDS: [&[f64]; 4] = [
    &[0.5],
    &[0.5, 0.7071067811865475],
    &[
        0.5,
        0.5946035575013605,
        0.7071067811865475,
        0.8408964152537144,
    ],
    &[
        0.5,
        0.5452538663326288,
        0.5946035575013605,
        0.6484197773255048,
        0.7071067811865475,
        0.7711054127039704,
        0.8408964152537144,
        0.9170040432046711,
    ],
];

/// Classic bucket bounds, `+Inf` last, with their `le` values as each text format writes them.
#[derive(Debug, PartialEq)]
pub struct Bounds {
    pub upper: Box<[f64]>,
    /// Prometheus text 0.0.4 (Go's `%g`, as prometheus-client writes it).
    pub le_text: Box<[Box<str>]>,
    /// OpenMetrics (shortest round-trip decimal).
    pub le_openmetrics: Box<[Box<str>]>,
}

impl Bounds {
    /// The shared bounds for `buckets` (non-finite bounds dropped, `+Inf` added, as
    /// prometheus-client does): one allocation per distinct list, however many targets use it.
    pub fn shared(buckets: &[f64]) -> Arc<Bounds> {
        static INTERNED: Mutex<Vec<Weak<Bounds>>> = Mutex::new(Vec::new());
        let upper: Box<[f64]> = buckets
            .iter()
            .copied()
            .filter(|bound| bound.is_finite())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        let mut interned = INTERNED.lock().expect("bounds lock");
        interned.retain(|weak| weak.strong_count() > 0);
        if let Some(found) = interned
            .iter()
            .filter_map(Weak::upgrade)
            .find(|b| b.upper == upper)
        {
            return found;
        }
        let bounds = Arc::new(Bounds {
            le_text: upper.iter().map(|b| go_float(*b).into()).collect(),
            le_openmetrics: upper
                .iter()
                .map(|b| match *b {
                    f64::INFINITY => "+Inf".into(),
                    b => dtoa::Buffer::new().format(b).into(),
                })
                .collect(),
            upper,
        });
        interned.push(Arc::downgrade(&bounds));
        bounds
    }
}

/// A latency histogram, classic and native.
#[derive(Debug)]
pub struct LatencyHistogram {
    bounds: Arc<Bounds>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    sum: f64,
    count: u64,
    /// Per bucket of [`Bounds::upper`], not cumulative.
    classic: Box<[u64]>,
    schema: i8,
    zero_count: u64,
    /// Sparse native buckets by index, sorted.
    positive: Vec<(i32, u64)>,
    negative: Vec<(i32, u64)>,
    created: SystemTime,
}

/// What the text encoder reads of a histogram.
#[derive(Debug, Default)]
pub struct Classic {
    pub sum: f64,
    pub count: u64,
    /// Per bucket, not cumulative.
    pub counts: Vec<u64>,
}

impl LatencyHistogram {
    pub fn new(buckets: &[f64]) -> Self {
        let bounds = Bounds::shared(buckets);
        LatencyHistogram {
            state: Mutex::new(State {
                sum: 0.0,
                count: 0,
                classic: vec![0; bounds.upper.len()].into_boxed_slice(),
                schema: NATIVE_SCHEMA,
                zero_count: 0,
                positive: Vec::new(),
                negative: Vec::new(),
                created: SystemTime::now(),
            }),
            bounds,
        }
    }

    pub fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    pub fn observe(&self, v: f64) {
        let mut state = self.state.lock().expect("histogram lock");
        state.sum += v;
        state.count += 1;
        // NaN counts in +Inf, as prometheus-client does.
        let bucket = if v.is_nan() {
            self.bounds.upper.len() - 1
        } else {
            self.bounds.upper.partition_point(|upper| *upper < v)
        };
        if let Some(count) = state.classic.get_mut(bucket) {
            *count += 1;
        }
        if !v.is_nan() {
            state.observe_native(v);
        }
    }

    /// Copies sum, count and bucket counts into `into` (reused between histograms).
    pub fn read_classic(&self, into: &mut Classic) {
        let state = self.state.lock().expect("histogram lock");
        into.sum = state.sum;
        into.count = state.count;
        into.counts.clear();
        into.counts.extend_from_slice(&state.classic);
    }
}

impl State {
    fn observe_native(&mut self, v: f64) {
        if v.abs() <= NATIVE_ZERO_THRESHOLD {
            self.zero_count += 1;
        } else {
            let index = bucket_index(self.schema, v.abs(), v.is_infinite());
            let side = if v.is_sign_negative() {
                &mut self.negative
            } else {
                &mut self.positive
            };
            match side.binary_search_by_key(&index, |(i, _)| *i) {
                Ok(at) => side[at].1 += 1,
                Err(at) => side.insert(at, (index, 1)),
            }
        }
        // No reset and no widening of the zero bucket (neither is configured): past the cap
        // the resolution halves.
        if self.positive.len() + self.negative.len() > NATIVE_MAX_BUCKETS
            && self.schema > SCHEMA_MIN
        {
            self.schema -= 1;
            self.positive = downsample(&self.positive);
            self.negative = downsample(&self.negative);
        }
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let state = self.state.lock().expect("histogram lock");
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .upper
            .iter()
            .copied()
            .zip(state.classic.iter().copied())
            .collect();
        let (negative_spans, negative_deltas) = spans_and_deltas(&state.negative)?;
        let (positive_spans, positive_deltas) = spans_and_deltas(&state.positive)?;
        encoder.encode_histogram_with_native::<NoLabelSet>(
            state.sum,
            state.count,
            &buckets,
            None,
            NativeHistogram {
                schema: i32::from(state.schema),
                zero_threshold: NATIVE_ZERO_THRESHOLD,
                zero_count: state.zero_count,
                negative: NativeHistogramBuckets {
                    spans: &negative_spans,
                    deltas: &negative_deltas,
                },
                positive: NativeHistogramBuckets {
                    spans: &positive_spans,
                    deltas: &positive_deltas,
                },
                created: Some(state.created),
            },
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Go's shortest `%g` of a bucket bound, as prometheus-client's text 0.0.4 encoder writes `le`.
fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v.fract() == 0.0 && v.abs() < 1e6 {
        return itoa::Buffer::new().format(v as i64).to_owned();
    }
    if (1e-4..1e6).contains(&v.abs()) {
        return format!("{v}");
    }
    let sci = format!("{v:e}");
    let (mantissa, exponent) = sci.split_once('e').expect("{:e} has an e");
    let exponent: i32 = exponent.parse().expect("an integer exponent");
    format!("{mantissa}e{exponent:+03}")
}

/// The native bucket index of `v` (not negative, not NaN) at `schema`.
fn bucket_index(schema: i8, v: f64, is_infinite: bool) -> i32 {
    let v = if is_infinite { f64::MAX } else { v };
    let (frac, exp) = frexp(v);
    let mut index = if schema > 0 {
        let bounds = NATIVE_BOUNDS[schema as usize];
        let bucket = bounds.partition_point(|bound| *bound < frac) as i32;
        bucket + (exp - 1) * bounds.len() as i32
    } else {
        let mut key = exp;
        if frac == 0.5 {
            key -= 1;
        }
        let shift = -i32::from(schema);
        let offset = (1_i32 << shift) - 1;
        (key + offset) >> shift
    };
    if is_infinite {
        index = index.saturating_add(1);
    }
    index
}

/// C's `frexp` for `v >= 0`: `v = frac * 2^exp` with `frac` in [0.5, 1).
fn frexp(v: f64) -> (f64, i32) {
    if v == 0.0 {
        return (0.0, 0);
    }
    let bits = v.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = bits & ((1_u64 << 52) - 1);
    if exponent == 0 {
        let p = 63 - mantissa.leading_zeros() as i32;
        (mantissa as f64 / 2f64.powi(p + 1), p - 1073)
    } else {
        (
            ((1_u64 << 52) | mantissa) as f64 / 2f64.powi(53),
            exponent - 1022,
        )
    }
}

/// The buckets at half the resolution (schema - 1).
fn downsample(buckets: &[(i32, u64)]) -> Vec<(i32, u64)> {
    let mut out: Vec<(i32, u64)> = Vec::with_capacity(buckets.len());
    for (index, count) in buckets {
        let mut key = *index;
        if key > 0 {
            key += 1;
        }
        key /= 2;
        match out.last_mut() {
            Some((last, total)) if *last == key => *total += *count,
            _ => out.push((key, *count)),
        }
    }
    out
}

type Spans = (Vec<(i32, u32)>, Vec<i64>);

/// The protobuf's spans and deltas of sparse buckets.
fn spans_and_deltas(buckets: &[(i32, u64)]) -> Result<Spans, std::fmt::Error> {
    let mut spans: Vec<(i32, u32)> = Vec::new();
    let mut deltas = Vec::with_capacity(buckets.len());
    let mut previous = 0i64;
    let mut next_index = 0i32;
    for (n, &(index, count)) in buckets.iter().enumerate() {
        let count = i64::try_from(count).map_err(|_| std::fmt::Error)?;
        let gap = index - next_index;
        if n == 0 || gap > 2 {
            spans.push((gap, 0));
        } else {
            for _ in 0..gap {
                if let Some((_, len)) = spans.last_mut() {
                    *len += 1;
                }
                deltas.push(-previous);
                previous = 0;
            }
        }
        if let Some((_, len)) = spans.last_mut() {
            *len += 1;
        }
        deltas.push(count - previous);
        previous = count;
        next_index = index + 1;
    }
    Ok((spans, deltas))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::latency_histogram;
    use prometheus_client::registry::Registry;

    fn protobuf(
        registry: &Registry,
    ) -> Vec<prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily>
    {
        let mut families =
            prometheus_client::encoding::prometheus_protobuf::encode(registry).unwrap();
        for family in &mut families {
            for metric in &mut family.metric {
                if let Some(h) = metric.histogram.as_mut() {
                    h.start_timestamp = None;
                }
            }
        }
        families
    }

    /// The same observations give prometheus-client's histogram's exposition, in protobuf
    /// (classic and native buckets, across resolution cuts) and in both text formats.
    #[test]
    fn it_encodes_as_prometheus_clients_histogram() {
        let buckets = [0.0005, 0.001, 0.0025, 0.01, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];
        // A spread wide enough to pass the bucket cap: three resolution cuts and more.
        let mut values = vec![
            0.0,
            1e-7,
            2e-6,
            0.00049,
            0.0005,
            0.3,
            1.0,
            42.0,
            f64::INFINITY,
        ];
        let mut x = 1e-6_f64;
        while x < 1e4 {
            values.push(x);
            values.push(-x / 3.0);
            x *= 1.013;
        }
        let ours = Arc::new(LatencyHistogram::new(&buckets));
        let theirs = latency_histogram(buckets.iter().copied());
        for (i, v) in values.iter().enumerate() {
            ours.observe(*v);
            theirs.observe(*v);
            if i % 97 == 0 || i == values.len() - 1 {
                let mut a = Registry::default();
                a.register("h", "H", Shared(ours.clone()));
                let mut b = Registry::default();
                b.register("h", "H", theirs.clone());
                assert_eq!(protobuf(&a), protobuf(&b), "after {} observations", i + 1);
                for encode in [
                    prometheus_client::encoding::text::encode,
                    prometheus_client::encoding::prometheus_text::encode,
                ] {
                    let (mut x, mut y) = (String::new(), String::new());
                    encode(&mut x, &a).unwrap();
                    encode(&mut y, &b).unwrap();
                    assert_eq!(x, y);
                }
            }
        }
        assert!(ours.state.lock().unwrap().schema < NATIVE_SCHEMA);
    }

    /// A registry takes ownership; this shares the histogram with the test.
    #[derive(Debug)]
    struct Shared(Arc<LatencyHistogram>);

    impl EncodeMetric for Shared {
        fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
            self.0.encode(encoder)
        }
        fn metric_type(&self) -> MetricType {
            MetricType::Histogram
        }
    }

    #[test]
    fn bounds_are_shared_and_written_as_before() {
        let a = Bounds::shared(&[0.0005, 1.0, 2.5e-5, 1e6]);
        let b = Bounds::shared(&[0.0005, 1.0, 2.5e-5, 1e6]);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            &*a.le_text,
            &["0.0005", "1", "2.5e-05", "1e+06", "+Inf"].map(Box::from)
        );
        assert_eq!(
            &*a.le_openmetrics,
            &["0.0005", "1.0", "0.000025", "1000000.0", "+Inf"].map(Box::from)
        );
    }
}
