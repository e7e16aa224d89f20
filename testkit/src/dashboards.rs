//! Every query of the Grafana dashboards in `dashboards/`, as Grafana would send it to
//! Prometheus with every variable at its default: query variables resolved in order against a
//! live Prometheus (`label_values(...)`), "All" (`allValue`, `.*`) where a variable has it, the
//! first value otherwise; Grafana's built-ins from the query's step and range. [`answer`] runs
//! one against a [`Prometheus`]. Used by the failover drill and the global view.
//!
//! The extraction follows tests/dashboards.rs (panel targets, query variables, annotations);
//! there every variable becomes a placeholder for parsing, here a real value for querying.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::black_box::panels;
use crate::services::Prometheus;

/// How Grafana would run a query.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A table or stat's latest value: an instant query.
    Instant,
    /// A graph or an annotation: a range query at this step (seconds).
    Range(f64),
    /// A variable's `label_values(selector, label)`: the label's values on the selector.
    LabelValues(String),
}

#[derive(Clone, Debug)]
pub struct Query {
    /// File, panel and refId (or variable, annotation).
    pub origin: String,
    pub promql: String,
    pub kind: Kind,
}

/// The step of range queries for graph panels: Grafana's `$__interval` for a few minutes on
/// a wide screen is about a second; 2 s keeps the answers small.
pub const PANEL_STEP: f64 = 2.0;
/// Grafana's `$__rate_interval` with the Prometheus data source's default scrape interval
/// (15 s): four of them.
const RATE_INTERVAL: &str = "1m";

/// `$name`, `${name}`, `${name:format}` and `[[name]]`; `$1` (a label_replace group) is not one.
static VARIABLE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z0-9_]+)(?::[^\]]*)?\]\]")
        .unwrap()
});
static LABEL_VALUES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?s)^\s*label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$").unwrap()
});

fn substitute(text: &str, values: &BTreeMap<String, String>, origin: &str) -> String {
    VARIABLE
        .replace_all(text, |caps: &regex::Captures| {
            let name = caps.iter().skip(1).flatten().next().unwrap().as_str();
            values
                .get(name)
                .unwrap_or_else(|| panic!("{origin}: undefined variable ${name}"))
                .clone()
        })
        .into_owned()
}

/// The queries of every `*.json` in `dir`. `resolve(selector, label)` lists a query
/// variable's values (it is also returned as a query, to check that it has some).
pub fn queries(dir: &Path, mut resolve: impl FnMut(&str, &str) -> Vec<String>) -> Vec<Query> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let file = format!("dashboards/{}", path.file_name().unwrap().to_string_lossy());
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut values: BTreeMap<String, String> = [
            ("__rate_interval", RATE_INTERVAL.to_owned()),
            ("__interval", format!("{PANEL_STEP}s")),
            ("__interval_ms", format!("{}", PANEL_STEP * 1000.0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = variable["name"].as_str().unwrap().to_owned();
            let origin = format!("{file} variable {name}");
            match variable["type"].as_str() {
                // Not part of any expression: it picks the data source.
                Some("datasource") => continue,
                Some("query") => {}
                other => panic!("{origin}: variable type {other:?} is not supported here"),
            }
            let query = match &variable["query"] {
                Value::String(q) => q.clone(),
                q => q["query"].as_str().unwrap_or_default().to_owned(),
            };
            let caps = LABEL_VALUES
                .captures(&query)
                .unwrap_or_else(|| panic!("{origin}: not label_values(selector, label): {query}"));
            let selector = substitute(&caps[1], &values, &origin);
            let label = caps[2].to_owned();
            let found = resolve(&selector, &label);
            let value = if variable["includeAll"] == true {
                match variable["allValue"].as_str() {
                    Some(all) => all.to_owned(),
                    // Grafana's All without an allValue: every value, as a regex.
                    None => format!(
                        "({})",
                        found
                            .iter()
                            .map(|v| regex::escape(v))
                            .collect::<Vec<_>>()
                            .join("|")
                    ),
                }
            } else {
                found.first().map(|v| regex::escape(v)).unwrap_or_default()
            };
            values.insert(name, value);
            out.push(Query {
                origin,
                promql: selector,
                kind: Kind::LabelValues(label),
            });
        }
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let origin = format!(
                    "{file} panel {:?} query {}",
                    panel["title"].as_str().unwrap_or_default(),
                    target["refId"].as_str().unwrap_or("?")
                );
                let expr = target["expr"].as_str().unwrap_or_default();
                assert!(!expr.trim().is_empty(), "{origin}: no expr");
                let kind = if target["instant"] == true {
                    Kind::Instant
                } else {
                    Kind::Range(PANEL_STEP)
                };
                out.push(Query {
                    promql: substitute(expr, &values, &origin),
                    origin,
                    kind,
                });
            }
        }
        for annotation in dashboard["annotations"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(expr) = annotation["expr"].as_str() else {
                continue; // Grafana's built-in annotations
            };
            let origin = format!(
                "{file} annotation {:?}",
                annotation["name"].as_str().unwrap_or_default()
            );
            let step = annotation["step"]
                .as_str()
                .map(|s| humantime::parse_duration(s).unwrap().as_secs_f64())
                .unwrap_or(PANEL_STEP);
            out.push(Query {
                promql: substitute(expr, &values, &origin),
                origin,
                kind: Kind::Range(step),
            });
        }
    }
    out
}

/// Runs `query` as Grafana would over `[start, end]` (Unix seconds; a range query's last point
/// at `end`, as on a dashboard refreshed now): how many series have a number (not NaN) at some
/// point, or how many values a variable lists.
pub fn answer(
    prometheus: &Prometheus,
    query: &Query,
    start: f64,
    end: f64,
) -> Result<usize, String> {
    match &query.kind {
        Kind::Instant => prometheus.query(&query.promql).map(|r| with_numbers(&r)),
        Kind::Range(step) => {
            let points = ((end - start) / step).ceil();
            prometheus
                .query_range(&query.promql, end - points * step, end, *step)
                .map(|r| with_numbers(&r))
        }
        Kind::LabelValues(label) => prometheus
            .label_values(label, &query.promql, start, end)
            .map(|v| v.len()),
    }
}

/// How many of the series have a value that is a number (not NaN) at some point.
fn with_numbers(series: &[Value]) -> usize {
    let number = |v: &Value| v[1].as_str().is_some_and(|v| v != "NaN");
    series
        .iter()
        .filter(|s| match s["values"].as_array() {
            Some(values) => values.iter().any(number),
            None => number(&s["value"]),
        })
        .count()
}
