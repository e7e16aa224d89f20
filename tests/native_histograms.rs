//! Native histograms: the protobuf exposition carries them beside the classic buckets, the text
//! formats stay as they were, and the real Prometheus (Debian `prometheus`, started with
//! `--enable-feature=native-histograms`) ingests them and answers `histogram_quantile` over the
//! native series.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Exporter, TempDir, wait_for};
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;
use prost::Message as _;
use regionprobe_testkit::services::{self, Prometheus};

const PROTOBUF: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

/// The server answers after this: the median the native buckets must find.
const DELAY: Duration = Duration::from_millis(50);

fn config(slow: SocketAddr) -> String {
    format!(
        "[exporter]\nregion = \"local\"\nlisten = \"127.0.0.1:0\"\n\n\
         [defaults]\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\n\
         [[target]]\nname = \"slow\"\nregion = \"local\"\nprobe = \"http\"\nurl = \"http://{slow}/\"\n"
    )
}

/// `/metrics` with `accept`: the content type and the raw body.
fn scrape(addr: SocketAddr, accept: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type:"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        !head.contains("transfer-encoding: chunked"),
        "a full body is expected"
    );
    (content_type, raw[end + 4..].to_vec())
}

fn families(mut body: &[u8]) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    while !body.is_empty() {
        out.push(MetricFamily::decode_length_delimited(&mut body).expect("a MetricFamily"));
    }
    out
}

#[test]
fn protobuf_carries_native_and_classic_buckets_and_text_stays_classic() {
    let exporter = Exporter::start(&config(common::http_server(DELAY)));
    let addr = exporter.addr;
    let family = wait_for(
        Duration::from_secs(15),
        "samples of the slow target",
        || {
            let (content_type, body) = scrape(addr, PROTOBUF);
            assert!(
                content_type.starts_with("application/vnd.google.protobuf"),
                "{content_type}"
            );
            families(&body)
                .into_iter()
                .find(|f| f.name == "regionprobe_probe_duration_seconds")
                .filter(|f| {
                    f.metric
                        .iter()
                        .any(|m| m.histogram.as_ref().is_some_and(|h| h.sample_count >= 3))
                })
        },
    );
    let metric = &family.metric[0];
    assert!(
        metric
            .label
            .iter()
            .any(|l| l.name == "target" && l.value == "slow")
    );
    let histogram = metric.histogram.as_ref().unwrap();
    assert_eq!(histogram.schema, 3, "eight buckets per power of two");
    assert!(!histogram.positive_span.is_empty(), "native buckets");
    let native: i64 = histogram.positive_delta.iter().sum::<i64>();
    assert!(native > 0, "{histogram:?}");
    // Classic buckets are still there, for the dashboards and rules that read `_bucket`.
    assert!(histogram.bucket.len() >= 10, "{histogram:?}");

    // The text formats are unchanged: classic buckets only.
    for accept in [
        "text/plain;version=0.0.4",
        "application/openmetrics-text;version=1.0.0",
        "*/*",
    ] {
        let (content_type, body) = scrape(addr, accept);
        assert!(content_type.starts_with("text/plain") || content_type.contains("openmetrics"));
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("regionprobe_probe_duration_seconds_bucket{"));
    }
    // A refused (q=0) protobuf is not chosen.
    let (content_type, _) = scrape(addr, &format!("{PROTOBUF};q=0,text/plain;q=0.5"));
    assert!(content_type.starts_with("text/plain"), "{content_type}");
}

#[test]
fn prometheus_answers_histogram_quantile_over_the_native_series() {
    let prometheus_bin = services::which("prometheus");
    if common::skip_unless(
        prometheus_bin.is_some(),
        "prometheus not installed (apt-get install prometheus)",
    ) {
        return;
    }
    let exporter = Exporter::start(&config(common::http_server(DELAY)));
    let dir = TempDir::new("native");
    let config = dir.write(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n\
             \x20 - job_name: regionprobe\n    static_configs:\n      - targets: ['{}']\n",
            exporter.addr
        ),
    );
    let prometheus = Prometheus::start_with(
        &prometheus_bin.unwrap(),
        &config,
        &dir.0.join("data"),
        &["--enable-feature=native-histograms"],
    );
    let value = |expr: &str| -> Option<f64> {
        let series = prometheus.query(expr).ok()?;
        series.first()?["value"][1].as_str()?.parse().ok()
    };
    // histogram_count() only answers for native series: the classic one is `_count`.
    wait_for(
        Duration::from_secs(30),
        "native samples in Prometheus",
        || {
            value(r#"histogram_count(rate(regionprobe_probe_duration_seconds{target="slow"}[5s]))"#)
                .filter(|rate| *rate > 0.0)
        },
    );
    let median = wait_for(Duration::from_secs(20), "a median", || {
        value(r#"histogram_quantile(0.5, rate(regionprobe_probe_duration_seconds{target="slow"}[10s]))"#)
            .filter(|q| q.is_finite())
    });
    // Every probe takes the server's 50 ms plus loopback; schema 3 buckets are 9% wide.
    assert!(
        (0.045..0.07).contains(&median),
        "median {median} s, expected about {DELAY:?}"
    );
    // Per-phase histograms are native too: the delay is in `processing`.
    let processing = value(
        r#"histogram_quantile(0.5, rate(regionprobe_http_phase_duration_seconds{target="slow",phase="processing"}[10s]))"#,
    )
    .expect("a native processing phase");
    assert!((0.045..0.07).contains(&processing), "{processing}");
}
