//! Reading what a running exporter reports, for the black-box tests: `/metrics` linted by
//! `promtool check metrics`, values that must be there, and the ranking API.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::black_box::{Exporter, Scrape, skip_unless};

/// True (after saying why) when promtool is not installed: the caller's test skips.
pub fn skip_without_promtool() -> bool {
    let available = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    skip_unless(
        available,
        "promtool not installed (apt-get install prometheus)",
    )
}

/// Runs `promtool check metrics` (from PATH) on an exposition text: panics with its report
/// unless it exits 0 and says nothing. Callers decide whether a missing promtool skips.
pub fn assert_promtool_clean(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(metrics.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool's output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
}

/// A sample that must be in the scrape.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .value(name, labels)
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

/// `regionprobe_probes_total` of a target; 0 before its first probe.
pub fn probes(scrape: &Scrape, target: &str) -> f64 {
    scrape
        .value("regionprobe_probes_total", &[("target", target)])
        .unwrap_or(0.0)
}

/// `/api/v1/ranking`, which must answer 200.
pub fn ranking(exporter: &Exporter) -> Value {
    let (status, body) = exporter.get("/api/v1/ranking");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("the ranking is JSON")
}

/// The ranking's regions, best first.
pub fn order(ranking: &Value) -> Vec<String> {
    ranking["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .map(|r| r["region"].as_str().expect("a region's name").to_owned())
        .collect()
}
