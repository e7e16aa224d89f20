//! The monitoring mixin in `dashboards/`: the rules pass `promtool check rules` and their unit
//! tests, the Alertmanager example passes `amtool` and routes every severity, every PromQL
//! expression of the dashboards and rules parses (promql-parser) and selects only metrics and
//! labels that the real binary exports, every alert has its runbook section, and the dashboards
//! are Grafana JSON models bound to a `${datasource}` variable.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;
use std::time::Duration;

use common::{Exporter, Scrape, panels, skip_unless, wait_for};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self, Expr, LabelModifier, VectorMatchCardinality, VectorSelector};
use regex::Regex;
use regionprobe_testkit::dns;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

const WAIT: Duration = Duration::from_secs(20);
/// The job name the rules select (`up{job="regionprobe"}`), as documented in dashboards/README.md.
const JOB: &str = "regionprobe";
/// Labels Prometheus adds to every scraped series: they are on no `/metrics` line.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];
/// The receiver dashboards/alertmanager.yml must pick for each severity.
const RECEIVERS: [(&str, &str); 3] = [
    ("critical", "regionprobe-pager"),
    ("warning", "regionprobe-chat"),
    ("info", "regionprobe-changes"),
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The files of `dir` (relative to the repository) whose names end with `suffix`, sorted.
fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_str().is_some_and(|p| p.ends_with(suffix)))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no {suffix} file in {dir}");
    found
}

fn name(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

fn has_tool(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `tool args...` from the repository root; returns success and stdout + stderr.
fn run(tool: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(tool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

// ---- The rules ----------------------------------------------------------------------------

#[derive(Debug)]
struct Rule {
    file: String,
    /// `record` or `alert`.
    kind: &'static str,
    name: String,
    expr: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl Rule {
    fn origin(&self) -> String {
        format!("{} {} {}", self.file, self.kind, self.name)
    }
}

fn yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap();
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(docs.len(), 1, "{path:?}: one YAML document");
    docs.remove(0)
}

fn string_map(node: &Yaml) -> BTreeMap<String, String> {
    node.as_hash()
        .map(|hash| {
            hash.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => panic!("not a string: {other:?}"),
                    };
                    (k.as_str().unwrap().to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every rule of `dashboards/rules/*.yml`, in file and evaluation order.
fn rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    for path in files("dashboards/rules", ".yml") {
        let doc = yaml(&path);
        for group in doc["groups"].as_vec().expect("groups") {
            for rule in group["rules"].as_vec().expect("rules") {
                let (kind, rule_name) = match (rule["record"].as_str(), rule["alert"].as_str()) {
                    (Some(record), None) => ("record", record),
                    (None, Some(alert)) => ("alert", alert),
                    _ => panic!("{path:?}: a rule is a record or an alert: {rule:?}"),
                };
                rules.push(Rule {
                    file: name(&path),
                    kind,
                    name: rule_name.to_owned(),
                    expr: rule["expr"].as_str().expect("expr").to_owned(),
                    labels: string_map(&rule["labels"]),
                    annotations: string_map(&rule["annotations"]),
                });
            }
        }
    }
    rules
}

fn alerts() -> Vec<Rule> {
    rules().into_iter().filter(|r| r.kind == "alert").collect()
}

#[test]
fn promtool_check_rules_is_clean() {
    if skip_unless(
        has_tool("promtool"),
        "promtool not installed (apt-get install prometheus)",
    ) {
        return;
    }
    let rule_files: Vec<String> = files("dashboards/rules", ".yml")
        .iter()
        .map(|p| name(p))
        .collect();
    let mut args = vec!["check", "rules"];
    args.extend(rule_files.iter().map(String::as_str));
    let (ok, report) = run("promtool", &args);
    assert!(ok, "promtool check rules:\n{report}");
    assert_eq!(
        report.matches("SUCCESS").count(),
        rule_files.len(),
        "{report}"
    );
    assert!(!report.contains("WARNING"), "{report}");
}

#[test]
fn promtool_unit_tests_fire_and_spare_every_alert_and_check_every_recording_rule() {
    // What the unit tests cover, read from their files: every alert appears with an expected
    // alert (fires) and with none expected (does not fire); every recording rule's value is
    // checked by a promql_expr_test.
    let mut fires = BTreeSet::new();
    let mut spared = BTreeSet::new();
    let mut exprs = Vec::new();
    let test_files = files("dashboards/tests", "_test.yml");
    for path in &test_files {
        let doc = yaml(path);
        for test in doc["tests"].as_vec().expect("tests") {
            for case in test["alert_rule_test"].as_vec().into_iter().flatten() {
                let alert = case["alertname"].as_str().unwrap().to_owned();
                match case["exp_alerts"].as_vec().map(Vec::len) {
                    Some(0) | None => spared.insert(alert),
                    Some(_) => fires.insert(alert),
                };
            }
            for case in test["promql_expr_test"].as_vec().into_iter().flatten() {
                exprs.push(case["expr"].as_str().unwrap().to_owned());
            }
        }
    }
    for rule in rules() {
        if rule.kind == "alert" {
            assert!(
                fires.contains(&rule.name),
                "no unit test makes {} fire",
                rule.name
            );
            assert!(
                spared.contains(&rule.name),
                "no unit test shows {} not firing",
                rule.name
            );
        } else {
            assert!(
                exprs.iter().any(|e| e.contains(&rule.name)),
                "no promql_expr_test checks {}",
                rule.name
            );
        }
    }

    if skip_unless(
        has_tool("promtool"),
        "promtool not installed (apt-get install prometheus)",
    ) {
        return;
    }
    let test_files: Vec<String> = test_files.iter().map(|p| name(p)).collect();
    let mut args = vec!["test", "rules"];
    args.extend(test_files.iter().map(String::as_str));
    let (ok, report) = run("promtool", &args);
    assert!(ok, "promtool test rules:\n{report}");
    assert_eq!(
        report.matches("SUCCESS").count(),
        test_files.len(),
        "{report}"
    );
}

#[test]
fn every_alert_has_a_severity_annotations_and_a_runbook_section() {
    let runbook = std::fs::read_to_string(repo("docs/runbook.md")).unwrap();
    let headings: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::trim)
        .collect();
    let alerts = alerts();
    assert!(alerts.len() >= 8, "{} alerts", alerts.len());
    for alert in &alerts {
        let origin = alert.origin();
        assert!(
            alert.name.starts_with("Regionprobe"),
            "{origin}: the Alertmanager route matches alertname=~\"Regionprobe.+\""
        );
        let severity = alert.labels.get("severity").map(String::as_str);
        assert!(
            RECEIVERS.iter().any(|(s, _)| Some(*s) == severity),
            "{origin}: severity {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                alert
                    .annotations
                    .get(key)
                    .is_some_and(|v| !v.trim().is_empty()),
                "{origin}: no {key}"
            );
        }
        // GitHub's and most renderers' anchor for "## RegionprobeFoo" is "#regionprobefoo".
        let expected = format!("docs/runbook.md#{}", alert.name.to_lowercase());
        assert_eq!(
            alert.annotations["runbook_url"], expected,
            "{origin}: runbook_url"
        );
        assert!(
            headings.contains(alert.name.as_str()),
            "{origin}: docs/runbook.md has no section `## {}`",
            alert.name
        );
    }
    // And no section for an alert that does not exist.
    let names: BTreeSet<&str> = alerts.iter().map(|a| a.name.as_str()).collect();
    for heading in headings.iter().filter(|h| h.starts_with("Regionprobe")) {
        assert!(
            names.contains(heading),
            "runbook section for no alert: {heading}"
        );
    }
}

#[test]
fn the_alertmanager_example_is_valid_and_routes_every_severity() {
    if skip_unless(
        has_tool("amtool"),
        "amtool not installed (apt-get install prometheus-alertmanager)",
    ) {
        return;
    }
    let config = "dashboards/alertmanager.yml";
    let (ok, report) = run("amtool", &["check-config", config]);
    assert!(
        ok && report.contains("SUCCESS"),
        "amtool check-config:\n{report}"
    );
    let config_flag = format!("--config.file={config}");
    for alert in alerts() {
        let severity = &alert.labels["severity"];
        let expected = RECEIVERS.iter().find(|(s, _)| s == severity).unwrap().1;
        let (ok, report) = run(
            "amtool",
            &[
                "config",
                "routes",
                "test",
                &config_flag,
                &format!("alertname={}", alert.name),
                &format!("severity={severity}"),
                "source_region=eu",
                "target_region=us",
            ],
        );
        let receiver = report
            .lines()
            .find(|l| !l.starts_with("Warning"))
            .unwrap_or("");
        assert!(ok, "{report}");
        assert_eq!(receiver.trim(), expected, "{} ({severity})", alert.name);
    }
}

// ---- The dashboards -------------------------------------------------------------------------

fn dashboards() -> Vec<(String, Value)> {
    files("dashboards", ".json")
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            (name(path), json)
        })
        .collect()
}

/// One PromQL expression of a dashboard, as Grafana would send it once the variables are set.
#[derive(Debug)]
struct Query {
    origin: String,
    /// The expression with every variable replaced by a representative value.
    promql: String,
    /// For `label_values(selector, label)` variables: the label asked for.
    label: Option<String>,
}

/// Grafana's own variables, as they appear in our queries, with representative values.
const BUILTINS: [(&str, &str); 6] = [
    ("__rate_interval", "1m"),
    ("__interval", "1m"),
    ("__range", "1h"),
    ("__range_s", "3600"),
    ("__range_ms", "3600000"),
    ("__interval_ms", "60000"),
];

/// `$name`, `${name}`, `${name:format}` and `[[name]]`; `$1` (a label_replace group) is not one.
static VARIABLE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z0-9_]+)(?::[^\]]*)?\]\]")
        .unwrap()
});

/// Replaces the dashboard's variables and Grafana's built-ins by representative values.
fn substitute(text: &str, variables: &BTreeSet<String>) -> Result<String, String> {
    let mut unknown = Vec::new();
    let replaced = VARIABLE.replace_all(text, |caps: &regex::Captures| {
        let var = caps
            .iter()
            .skip(1)
            .flatten()
            .next()
            .unwrap()
            .as_str()
            .to_owned();
        if let Some((_, value)) = BUILTINS.iter().find(|(b, _)| *b == var) {
            (*value).to_owned()
        } else if variables.contains(&var) {
            // A label value: used anywhere else (a range, a number), it does not parse.
            format!("{var}-value")
        } else {
            unknown.push(var);
            String::new()
        }
    });
    if unknown.is_empty() {
        Ok(replaced.into_owned())
    } else {
        Err(format!("undefined variables {unknown:?}"))
    }
}

static LABEL_VALUES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?s)^\s*label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$").unwrap()
});
static QUERY_RESULT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)^\s*query_result\((.+)\)\s*$").unwrap());

/// Every PromQL expression of every dashboard: panel targets, query variables, annotations.
/// Problems found on the way (an undefined variable, an unsupported variable query) are
/// returned beside them.
fn dashboard_queries() -> (Vec<Query>, Vec<String>) {
    let mut queries = Vec::new();
    let mut problems = Vec::new();
    for (file, dashboard) in dashboards() {
        let templating = dashboard["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let variables: BTreeSet<String> = templating
            .iter()
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .collect();
        // (origin, text as written, label asked by label_values)
        let mut found: Vec<(String, String, Option<String>)> = Vec::new();
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let origin = format!(
                    "{file} panel {:?} query {}",
                    panel["title"].as_str().unwrap_or(""),
                    target["refId"].as_str().unwrap_or("?")
                );
                match target["expr"].as_str() {
                    Some(expr) if !expr.trim().is_empty() => {
                        found.push((origin, expr.into(), None))
                    }
                    _ => problems.push(format!("{origin}: no expr")),
                }
            }
        }
        for variable in templating.iter().filter(|v| v["type"] == "query") {
            let origin = format!("{file} variable {}", variable["name"]);
            let query = match &variable["query"] {
                Value::String(q) => q.clone(),
                q => q["query"].as_str().unwrap_or("").to_owned(),
            };
            if variable["definition"].as_str().is_some_and(|d| d != query) {
                problems.push(format!("{origin}: definition differs from query"));
            }
            if let Some(caps) = LABEL_VALUES.captures(&query) {
                found.push((origin, caps[1].into(), Some(caps[2].to_owned())));
            } else if let Some(caps) = QUERY_RESULT.captures(&query) {
                found.push((origin, caps[1].into(), None));
            } else {
                problems.push(format!("{origin}: unsupported variable query {query:?}"));
            }
        }
        for annotation in dashboard["annotations"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(expr) = annotation["expr"].as_str() {
                let origin = format!("{file} annotation {}", annotation["name"]);
                found.push((origin, expr.into(), None));
            }
        }
        for (origin, text, label) in found {
            match substitute(&text, &variables) {
                Ok(promql) => queries.push(Query {
                    origin,
                    promql,
                    label,
                }),
                Err(e) => problems.push(format!("{origin}: {e}")),
            }
        }
    }
    (queries, problems)
}

/// Parses `promql`; also refuses functions Prometheus gates behind a feature flag.
fn parse(origin: &str, promql: &str) -> Result<Expr, String> {
    let expr = parser::parse(promql).map_err(|e| format!("{origin}: {e}\n{promql}"))?;
    let mut experimental = Vec::new();
    visit(&expr, &mut |e| {
        if let Expr::Call(call) = e
            && call.func.experimental
        {
            experimental.push(call.func.name);
        }
    });
    if experimental.is_empty() {
        Ok(expr)
    } else {
        Err(format!("{origin}: experimental functions {experimental:?}"))
    }
}

fn visit(expr: &Expr, f: &mut impl FnMut(&Expr)) {
    f(expr);
    match expr {
        Expr::Aggregate(a) => {
            visit(&a.expr, f);
            if let Some(param) = &a.param {
                visit(param, f);
            }
        }
        Expr::Unary(u) => visit(&u.expr, f),
        Expr::Binary(b) => {
            visit(&b.lhs, f);
            visit(&b.rhs, f);
        }
        Expr::Paren(p) => visit(&p.expr, f),
        Expr::Subquery(s) => visit(&s.expr, f),
        Expr::Call(c) => c.args.args.iter().for_each(|arg| visit(arg, f)),
        _ => {}
    }
}

#[test]
fn every_promql_expression_of_the_dashboards_and_rules_parses() {
    let (queries, mut problems) = dashboard_queries();
    assert!(queries.len() > 40, "{} dashboard queries", queries.len());
    for query in &queries {
        if let Err(e) = parse(&query.origin, &query.promql) {
            problems.push(e);
        }
    }
    let rules = rules();
    for rule in &rules {
        if let Err(e) = parse(&rule.origin(), &rule.expr) {
            problems.push(e);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    eprintln!(
        "parsed {} dashboard expressions and {} rule expressions",
        queries.len(),
        rules.len()
    );
}

// ---- Metrics and labels against the real binary ---------------------------------------------

type Labels = BTreeSet<String>;

/// In the labels of an unknown metric: it has been reported, and matches any label after.
const UNKNOWN: &str = "*";

/// Checks expressions against what is selectable: metric name -> the labels its series carry.
struct Checker {
    catalog: BTreeMap<String, Labels>,
    problems: Vec<String>,
}

impl Checker {
    /// From a scrape of the binary: every sample name with its labels, plus the labels
    /// Prometheus adds; and `up`, which Prometheus writes for every target.
    fn new(scrape: &Scrape) -> Self {
        let mut catalog: BTreeMap<String, Labels> = BTreeMap::new();
        let target_labels: Labels = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for sample in &scrape.samples {
            let labels = catalog
                .entry(sample.name.clone())
                .or_insert_with(|| target_labels.clone());
            labels.extend(sample.labels.keys().cloned());
        }
        catalog.insert("up".into(), target_labels);
        Checker {
            catalog,
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, origin: &str, text: String) {
        self.problems.push(format!("{origin}: {text}"));
    }

    fn require(&mut self, origin: &str, labels: &Labels, wanted: &[String], what: &str) {
        if labels.contains(UNKNOWN) {
            return;
        }
        for label in wanted {
            if !labels.contains(label) {
                self.problem(
                    origin,
                    format!("{what} uses label `{label}`, which is not among {labels:?}"),
                );
            }
        }
    }

    fn selector(&mut self, origin: &str, vs: &VectorSelector) -> Labels {
        let name = vs.name.clone().or_else(|| {
            vs.matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__")
                .map(|m| m.value.clone())
        });
        let Some(name) = name else {
            self.problem(origin, format!("selector without a metric name: {vs}"));
            return Labels::new();
        };
        let Some(labels) = self.catalog.get(&name).cloned() else {
            let hint = if name.contains(':') {
                "no recording rule defines it"
            } else {
                "the binary does not export it"
            };
            self.problem(origin, format!("metric `{name}`: {hint}"));
            return [UNKNOWN.to_owned()].into();
        };
        let matched: Vec<String> = vs
            .matchers
            .matchers
            .iter()
            .chain(vs.matchers.or_matchers.iter().flatten())
            .map(|m| m.name.clone())
            .filter(|n| n != "__name__")
            .collect();
        self.require(origin, &labels, &matched, &format!("a matcher on {name}"));
        labels
    }

    /// The labels of the series `expr` yields (as Prometheus computes them), reporting every
    /// metric or label it uses that does not exist.
    fn labels(&mut self, origin: &str, expr: &Expr) -> Labels {
        match expr {
            Expr::VectorSelector(vs) => self.selector(origin, vs),
            Expr::MatrixSelector(ms) => self.selector(origin, &ms.vs),
            Expr::Subquery(s) => self.labels(origin, &s.expr),
            Expr::Paren(p) => self.labels(origin, &p.expr),
            Expr::Unary(u) => self.labels(origin, &u.expr),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => Labels::new(),
            Expr::Aggregate(a) => {
                let inner = self.labels(origin, &a.expr);
                if let Some(param) = &a.param {
                    self.labels(origin, param);
                }
                let op = a.op.to_string();
                let mut out = match &a.modifier {
                    Some(LabelModifier::Include(by)) => {
                        self.require(origin, &inner, &by.labels, &format!("{op} by"));
                        by.labels.iter().cloned().collect()
                    }
                    Some(LabelModifier::Exclude(without)) => {
                        self.require(origin, &inner, &without.labels, &format!("{op} without"));
                        inner
                            .difference(&without.labels.iter().cloned().collect())
                            .cloned()
                            .collect()
                    }
                    None => Labels::new(),
                };
                if matches!(op.as_str(), "topk" | "bottomk" | "limitk" | "limit_ratio") {
                    out = inner;
                } else if op == "count_values"
                    && let Some(Expr::StringLiteral(label)) = a.param.as_deref()
                {
                    out.insert(label.val.clone());
                }
                out
            }
            Expr::Call(call) => {
                let args: Vec<Labels> = call
                    .args
                    .args
                    .iter()
                    .map(|arg| self.labels(origin, arg))
                    .collect();
                let string = |i: usize| match call.args.args.get(i).map(|a| a.as_ref()) {
                    Some(Expr::StringLiteral(s)) => s.val.clone(),
                    _ => String::new(),
                };
                match call.func.name {
                    "label_replace" => {
                        let source = string(3);
                        if !source.is_empty() {
                            self.require(origin, &args[0], &[source], "label_replace");
                        }
                        let mut out = args[0].clone();
                        out.insert(string(1));
                        out
                    }
                    "label_join" => {
                        let sources: Vec<String> = (3..call.args.args.len()).map(string).collect();
                        self.require(origin, &args[0], &sources, "label_join");
                        let mut out = args[0].clone();
                        out.insert(string(1));
                        out
                    }
                    "histogram_quantile" => {
                        self.require(origin, &args[1], &["le".into()], "histogram_quantile");
                        let mut out = args[1].clone();
                        out.remove("le");
                        out
                    }
                    "absent" | "absent_over_time" | "time" | "vector" | "scalar" | "pi" => {
                        Labels::new()
                    }
                    // rate, increase, changes, clamp, round, abs, timestamp, sort...: the labels
                    // of their series argument.
                    _ => call
                        .args
                        .args
                        .iter()
                        .zip(args)
                        .find(|(arg, _)| {
                            matches!(arg.value_type(), ValueType::Vector | ValueType::Matrix)
                        })
                        .map(|(_, labels)| labels)
                        .unwrap_or_default(),
                }
            }
            Expr::Binary(b) => {
                let lhs = self.labels(origin, &b.lhs);
                let rhs = self.labels(origin, &b.rhs);
                let vectors = (
                    b.lhs.value_type() == ValueType::Vector,
                    b.rhs.value_type() == ValueType::Vector,
                );
                match vectors {
                    (true, true) => {}
                    (true, false) => return lhs,
                    (false, true) => return rhs,
                    (false, false) => return Labels::new(),
                }
                let modifier = b.modifier.as_ref();
                let matching = modifier.and_then(|m| m.matching.as_ref());
                match matching {
                    Some(LabelModifier::Include(on)) => {
                        self.require(origin, &lhs, &on.labels, "on (left side)");
                        self.require(origin, &rhs, &on.labels, "on (right side)");
                    }
                    Some(LabelModifier::Exclude(ignoring)) => {
                        let both: Labels = lhs.union(&rhs).cloned().collect();
                        self.require(origin, &both, &ignoring.labels, "ignoring");
                    }
                    None => {}
                }
                if b.op.is_set_operator() {
                    return if b.op.to_string() == "or" {
                        lhs.union(&rhs).cloned().collect()
                    } else {
                        lhs
                    };
                }
                match modifier.map(|m| &m.card) {
                    Some(VectorMatchCardinality::ManyToOne(include)) => {
                        self.require(origin, &rhs, &include.labels, "group_left");
                        lhs.union(&include.labels.iter().cloned().collect())
                            .cloned()
                            .collect()
                    }
                    Some(VectorMatchCardinality::OneToMany(include)) => {
                        self.require(origin, &lhs, &include.labels, "group_right");
                        rhs.union(&include.labels.iter().cloned().collect())
                            .cloned()
                            .collect()
                    }
                    _ => match matching {
                        Some(LabelModifier::Include(on)) => on.labels.iter().cloned().collect(),
                        Some(LabelModifier::Exclude(ignoring)) => lhs
                            .difference(&ignoring.labels.iter().cloned().collect())
                            .cloned()
                            .collect(),
                        None => lhs,
                    },
                }
            }
        }
    }
}

/// A TLS server with a self-signed certificate that completes handshakes and nothing more:
/// enough for a `tcp` target with `tls = true` to export its certificate's expiry.
fn tls_server() -> SocketAddr {
    let config = regionprobe_testkit::peers::self_signed_server("127.0.0.1");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut tls = rustls::ServerConnection::new(config).unwrap();
                while tls.is_handshaking() {
                    if tls.complete_io(&mut stream).is_err() {
                        return;
                    }
                }
                // Until the prober closes (or the timeout).
                let _ = tls.complete_io(&mut stream);
            });
        }
    });
    addr
}

fn target(name: &str, region: &str, probe: &str, keys: &str) -> String {
    format!("[[target]]\nname = \"{name}\"\nregion = \"{region}\"\nprobe = \"{probe}\"\n{keys}\n")
}

#[test]
fn dashboards_and_rules_use_only_metrics_and_labels_the_binary_exports() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dns = runtime.block_on(dns::DnsServer::start());
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let http = common::http_server(Duration::ZERO);
    let tls = tls_server();
    // The exporter reflects its own STAMP target: a free UDP port for its reflector.
    let stamp_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A database target reading replication, for the lag families (real Redis: root).
    let databases = regionprobe_testkit::databases::available();
    if skip_unless(
        databases.is_ok(),
        databases.as_ref().err().map_or("", String::as_str),
    ) {
        return;
    }
    let redis = regionprobe_testkit::databases::Redis::primary();
    let replica = regionprobe_testkit::databases::Redis::replica_of(&redis);
    let secrets = common::TempDir::new("dashboards-db");
    let password = secrets.write("password", regionprobe_testkit::databases::PASSWORD);
    // Every probe kind, all succeeding; three regions so that a failover candidate exists.
    let targets = [
        target(
            "cache",
            "ap",
            "redis",
            &format!(
                "address = \"{}\"\npassword_file = \"{}\"\nreplication = \"replica\"",
                replica.addr(),
                password.display()
            ),
        ),
        target("ping", "eu", "icmp", "host = \"127.0.0.1\""),
        target(
            "port",
            "us",
            "tcp",
            &format!("address = \"{}\"", open.local_addr().unwrap()),
        ),
        target(
            "tls",
            "us",
            "tcp",
            &format!("address = \"{tls}\"\ntls = true\ntls_skip_verify = true"),
        ),
        target(
            "web",
            "ap",
            "http",
            &format!("url = \"http://{http}/healthz\""),
        ),
        target(
            "dns",
            "ap",
            "dns",
            &format!("server = \"{}\"\nquery = \"www.example.test\"", dns.addr),
        ),
        target(
            "stamp",
            "us",
            "stamp",
            &format!("address = \"127.0.0.1:{stamp_port}\""),
        ),
    ];
    let exporter = Exporter::start(&format!(
        "[exporter]\nregion = \"eu\"\nlisten = \"127.0.0.1:0\"\n\
         [defaults]\ninterval = \"200ms\"\ntimeout = \"200ms\"\n\
         [reflector]\nlisten = \"127.0.0.1:{stamp_port}\"\n\
         [[reflector.allow]]\nnetwork = \"127.0.0.1/32\"\nregion = \"eu\"\n{}",
        targets.concat()
    ));
    let first = wait_for(WAIT, "the first probes", || {
        let scrape = exporter.metrics();
        let probed = ["ping", "port", "tls", "web", "dns", "stamp", "cache"]
            .iter()
            .all(|t| {
                scrape
                    .value("regionprobe_probes_total", &[("target", t)])
                    .is_some_and(|n| n >= 2.0)
            });
        probed.then_some(scrape)
    });
    let icmp_socket = !first.find("regionprobe_icmp_socket_info", &[]).is_empty();
    if skip_unless(
        icmp_socket,
        "no ICMP socket for this user (needs root or ping_group_range)",
    ) {
        return;
    }
    // Families that appear only once something happened: a success of every target, a TLS
    // handshake (certificate expiry), a failover choice.
    let scrape = wait_for(WAIT, "every family", || {
        let scrape = exporter.metrics();
        let all_up = ["ping", "port", "tls", "web", "dns", "stamp", "cache"]
            .iter()
            .all(|t| scrape.value("regionprobe_target_up", &[("target", t)]) == Some(1.0));
        let late = [
            "regionprobe_tls_cert_expiry_timestamp_seconds",
            "regionprobe_failover_last_change_timestamp_seconds",
            "regionprobe_region_replication_lag_seconds",
        ]
        .iter()
        .all(|family| !scrape.find(family, &[]).is_empty());
        (all_up && late).then_some(scrape)
    });
    assert_eq!(
        scrape.label_values("regionprobe_target_up", "probe"),
        ["dns", "http", "icmp", "redis", "stamp", "tcp"],
        "the probe variable lists every kind"
    );

    let mut checker = Checker::new(&scrape);
    // Recording rules first, in evaluation order: each defines a metric later rules, alerts
    // and dashboards select.
    let rules = rules();
    for rule in rules.iter().filter(|r| r.kind == "record") {
        let origin = rule.origin();
        let expr = parse(&origin, &rule.expr).unwrap();
        assert!(
            rule.name.starts_with("regionprobe:"),
            "{origin}: recording rules are named regionprobe:..."
        );
        let mut labels = checker.labels(&origin, &expr);
        labels.extend(rule.labels.keys().cloned());
        checker.catalog.insert(rule.name.clone(), labels);
    }
    let template_label = Regex::new(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)").unwrap();
    let mut alert_labels = BTreeMap::new();
    for rule in rules.iter().filter(|r| r.kind == "alert") {
        let origin = rule.origin();
        let expr = parse(&origin, &rule.expr).unwrap();
        let mut labels = checker.labels(&origin, &expr);
        labels.extend(rule.labels.keys().cloned());
        // Annotations may only name labels the alert carries.
        for text in rule.annotations.values() {
            for caps in template_label.captures_iter(text) {
                let wanted = [caps[1].to_owned()];
                checker.require(&origin, &labels, &wanted, "an annotation");
            }
        }
        if rule.expr.contains("up{") || rule.expr.contains("process_") {
            assert!(
                rule.expr.contains(&format!("job=\"{JOB}\"")),
                "{origin}: `up` and `process_*` are selected by job=\"{JOB}\""
            );
        }
        alert_labels.insert(rule.name.clone(), labels);
    }
    // The Alertmanager example groups and inhibits on labels the alerts carry.
    let alertmanager = yaml(&repo("dashboards/alertmanager.yml"));
    for inhibit in alertmanager["inhibit_rules"].as_vec().into_iter().flatten() {
        let equal: Vec<String> = inhibit["equal"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect();
        for side in ["source_matchers", "target_matchers"] {
            let matched: Vec<&String> = alert_labels
                .keys()
                .filter(|alert| {
                    inhibit[side].as_vec().unwrap().iter().any(|m| {
                        let m = m.as_str().unwrap();
                        let re = m
                            .strip_prefix("alertname=~\"")
                            .or_else(|| m.strip_prefix("alertname=\""))
                            .map(|v| format!("^(?:{})$", v.trim_end_matches('"')));
                        re.is_some_and(|re| Regex::new(&re).unwrap().is_match(alert))
                    })
                })
                .collect();
            assert!(!matched.is_empty(), "inhibit {side} match no alert");
            for alert in matched {
                let labels = alert_labels[alert].clone();
                checker.require(
                    &format!("dashboards/alertmanager.yml inhibit {side}"),
                    &labels,
                    &equal,
                    &format!("`equal` (for {alert})"),
                );
            }
        }
    }

    let (queries, problems) = dashboard_queries();
    checker.problems.extend(problems);
    for query in &queries {
        let expr = match parse(&query.origin, &query.promql) {
            Ok(expr) => expr,
            Err(e) => {
                checker.problems.push(e);
                continue;
            }
        };
        let labels = checker.labels(&query.origin, &expr);
        if let Some(label) = &query.label {
            checker.require(
                &query.origin,
                &labels,
                std::slice::from_ref(label),
                "label_values",
            );
        }
    }
    assert!(
        checker.problems.is_empty(),
        "{}\n\nmetrics on /metrics: {:?}",
        checker.problems.join("\n"),
        checker.catalog.keys().collect::<Vec<_>>()
    );
    drop(open);
}

// ---- Dashboard structure --------------------------------------------------------------------

/// What every datasource reference must be: the dashboard's variable, never a fixed UID.
fn is_variable_datasource(value: &Value) -> bool {
    value == &serde_json::json!({"type": "prometheus", "uid": "${datasource}"})
}

/// Every `datasource` anywhere in the model, with its JSON path.
fn datasources<'a>(value: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                if key == "datasource" {
                    out.push((child_path.clone(), child));
                }
                datasources(child, child_path, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                datasources(child, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn dashboards_are_grafana_models_bound_to_a_datasource_variable() {
    let dashboards = dashboards();
    let expected: BTreeSet<&str> = ["failover-ranking", "region-matrix", "target-detail"].into();
    let stems: BTreeSet<String> = dashboards
        .iter()
        .map(|(file, _)| {
            file.trim_start_matches("dashboards/")
                .trim_end_matches(".json")
                .to_owned()
        })
        .collect();
    assert_eq!(
        stems.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        expected
    );
    let known_panels = [
        "row",
        "stat",
        "table",
        "timeseries",
        "heatmap",
        "state-timeline",
        "bargauge",
    ];
    for (file, d) in &dashboards {
        let stem = file
            .trim_start_matches("dashboards/")
            .trim_end_matches(".json");
        assert_eq!(d["uid"], format!("regionprobe-{stem}"), "{file}: uid");
        assert!(
            d["uid"].as_str().unwrap().len() <= 40,
            "{file}: Grafana uids are at most 40 characters"
        );
        assert!(
            d["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("regionprobe / ")),
            "{file}: title"
        );
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
            "{file}: schemaVersion"
        );
        assert!(
            d["id"].is_null(),
            "{file}: id is null so that an import creates the dashboard"
        );
        assert!(
            d["tags"]
                .as_array()
                .unwrap()
                .contains(&"regionprobe".into()),
            "{file}: tag"
        );
        assert!(
            d.get("__inputs").is_none(),
            "{file}: no __inputs: the datasource is a variable, so file provisioning works too"
        );

        let variables = d["templating"]["list"].as_array().unwrap();
        let variable = |name: &str| {
            variables
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{file}: no variable {name}"))
        };
        let ds = variable("datasource");
        assert_eq!(
            (ds["type"].as_str(), ds["query"].as_str()),
            (Some("datasource"), Some("prometheus")),
            "{file}"
        );
        for name in ["source_region", "target_region", "probe"] {
            let v = variable(name);
            assert_eq!(v["type"], "query", "{file} {name}");
            assert_eq!(v["multi"], true, "{file} {name}");
            assert_eq!(v["includeAll"], true, "{file} {name}");
            assert_eq!(
                v["allValue"], ".*",
                "{file} {name}: All must be a regex for =~"
            );
            assert!(is_variable_datasource(&v["datasource"]), "{file} {name}");
            let query = v["query"]["query"].as_str().unwrap();
            assert!(
                query.starts_with("label_values(") && query.ends_with(&format!(", {name})")),
                "{file} {name}: {query}"
            );
        }

        let mut found = Vec::new();
        datasources(d, String::new(), &mut found);
        for (path, value) in &found {
            assert!(
                is_variable_datasource(value),
                "{file}{path}: datasource {value}"
            );
        }
        let text = serde_json::to_string(d).unwrap();
        assert!(!text.contains("${DS_"), "{file}: an __inputs placeholder");

        let panels = panels(d);
        let mut ids = BTreeSet::new();
        let mut boxes: Vec<(u64, u64, u64, u64, String)> = Vec::new();
        for panel in &panels {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            let kind = panel["type"].as_str().unwrap();
            assert!(
                known_panels.contains(&kind),
                "{file} {title}: panel type {kind}"
            );
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{file} {title}: duplicate id"
            );
            let grid = &panel["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
                grid[k]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{file} {title}: gridPos.{k}"))
            });
            assert!(
                w > 0 && h > 0 && x + w <= 24,
                "{file} {title}: gridPos {grid}"
            );
            for (bx, by, bw, bh, other) in &boxes {
                let overlap = x < bx + bw && *bx < x + w && y < by + bh && *by < y + h;
                assert!(!overlap, "{file}: {title} overlaps {other}");
            }
            boxes.push((x, y, w, h, title.clone()));
            if kind == "row" {
                continue;
            }
            assert!(!title.is_empty(), "{file}: a panel without a title");
            assert!(
                panel["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{file} {title}: description"
            );
            assert!(
                is_variable_datasource(&panel["datasource"]),
                "{file} {title}: datasource"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{file} {title}: no query");
            let mut refs = BTreeSet::new();
            for t in targets {
                assert!(
                    refs.insert(t["refId"].as_str().unwrap()),
                    "{file} {title}: duplicate refId"
                );
                assert!(
                    is_variable_datasource(&t["datasource"]),
                    "{file} {title}: target datasource"
                );
                if kind == "heatmap" {
                    assert_eq!(t["format"], "heatmap", "{file} {title}");
                    assert!(
                        t["expr"].as_str().unwrap().contains("_bucket"),
                        "{file} {title}"
                    );
                }
                if kind == "table" || kind == "stat" {
                    assert_eq!(
                        t["instant"], true,
                        "{file} {title}: tables and stats show the latest value"
                    );
                }
            }
        }
    }
}

/// Every document of the Kubernetes example, rendered as `kubectl apply -k` would see it: the
/// kustomization's resources plus the alternative monitor (podmonitor.yaml), each with the
/// kustomization's namespace, if any.
fn kubernetes_objects() -> Vec<(String, Yaml)> {
    let dir = repo("deploy/kubernetes");
    let kustomization = yaml(&dir.join("kustomization.yaml"));
    let namespace = kustomization["namespace"].as_str().map(str::to_owned);
    let mut paths: Vec<String> = kustomization["resources"]
        .as_vec()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    if !paths.iter().any(|p| p == "podmonitor.yaml") {
        paths.push("podmonitor.yaml".to_owned());
    }
    let mut objects = Vec::new();
    for file in paths {
        let text = std::fs::read_to_string(dir.join(&file)).unwrap();
        for doc in YamlLoader::load_from_str(&text).unwrap() {
            let namespace = doc["metadata"]["namespace"]
                .as_str()
                .map(str::to_owned)
                .or(namespace.clone())
                .unwrap_or_else(|| "default".to_owned());
            objects.push((namespace, doc));
        }
    }
    objects
}

/// `labels` has every pair of `selector`.
fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A monitor's relabelings that set `job` to a constant (no source labels) win over the
/// operator's default.
fn relabeled_job(endpoint: &Yaml, job: String) -> String {
    endpoint["relabelings"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["targetLabel"].as_str() == Some("job")
                && r["sourceLabels"].is_badvalue()
                && r["action"].as_str().is_none_or(|a| a == "replace")
        })
        .filter_map(|r| r["replacement"].as_str().map(str::to_owned))
        .next_back()
        .unwrap_or(job)
}

/// Issue 12, item 19: the job label each monitor of deploy/kubernetes/ produces, computed by
/// the Prometheus Operator's rules, is the one every `job="..."` selector of the rules (and of
/// dashboards/README.md's `JOB`) names.
///
/// The operator's rules: a ServiceMonitor's job is the Service's name, or the value of the
/// Service's label named by `spec.jobLabel` when it has one; a PodMonitor's job is
/// `<namespace>/<PodMonitor name>`, or the value of the pod's label named by `spec.jobLabel`;
/// an endpoint's relabeling of `job` comes after either.
#[test]
fn the_kubernetes_monitors_give_the_job_the_rules_select() {
    let objects = kubernetes_objects();
    let of_kind = |kind: &'static str| {
        objects
            .iter()
            .filter(move |(_, doc)| doc["kind"].as_str() == Some(kind))
    };
    let mut produced = BTreeMap::new();
    for (namespace, monitor) in of_kind("ServiceMonitor") {
        let name = monitor["metadata"]["name"].as_str().unwrap();
        let selector = string_map(&monitor["spec"]["selector"]["matchLabels"]);
        let job_label = monitor["spec"]["jobLabel"].as_str();
        let services: Vec<_> = of_kind("Service")
            .filter(|(ns, svc)| {
                ns == namespace && matches(&selector, &string_map(&svc["metadata"]["labels"]))
            })
            .collect();
        assert!(
            !services.is_empty(),
            "ServiceMonitor {name} selects no Service"
        );
        for (_, service) in services {
            let labels = string_map(&service["metadata"]["labels"]);
            let job = job_label
                .and_then(|label| labels.get(label).cloned())
                .unwrap_or_else(|| service["metadata"]["name"].as_str().unwrap().to_owned());
            for endpoint in monitor["spec"]["endpoints"].as_vec().unwrap() {
                produced.insert(
                    format!("ServiceMonitor {name}"),
                    relabeled_job(endpoint, job.clone()),
                );
            }
        }
    }
    for (namespace, monitor) in of_kind("PodMonitor") {
        let name = monitor["metadata"]["name"].as_str().unwrap();
        let selector = string_map(&monitor["spec"]["selector"]["matchLabels"]);
        let job_label = monitor["spec"]["jobLabel"].as_str();
        let pods: Vec<_> = of_kind("Deployment")
            .filter(|(ns, dep)| {
                ns == namespace
                    && matches(
                        &selector,
                        &string_map(&dep["spec"]["template"]["metadata"]["labels"]),
                    )
            })
            .collect();
        assert!(!pods.is_empty(), "PodMonitor {name} selects no pod");
        for (_, deployment) in pods {
            let labels = string_map(&deployment["spec"]["template"]["metadata"]["labels"]);
            let job = job_label
                .and_then(|label| labels.get(label).cloned())
                .unwrap_or_else(|| format!("{namespace}/{name}"));
            for endpoint in monitor["spec"]["podMetricsEndpoints"].as_vec().unwrap() {
                produced.insert(
                    format!("PodMonitor {name}"),
                    relabeled_job(endpoint, job.clone()),
                );
            }
        }
    }
    assert_eq!(
        produced.len(),
        2,
        "one ServiceMonitor and one PodMonitor: {produced:?}"
    );

    let selector = Regex::new(r#"\bjob\s*=\s*"([^"]*)""#).unwrap();
    let mut selected = BTreeSet::new();
    for rule in rules() {
        for caps in selector.captures_iter(&rule.expr) {
            selected.insert(caps[1].to_owned());
        }
    }
    assert_eq!(
        selected,
        BTreeSet::from([JOB.to_owned()]),
        "the rules select one job"
    );
    for (monitor, job) in &produced {
        assert_eq!(
            job, JOB,
            "{monitor} gives job=\"{job}\" but the rules select job=\"{JOB}\""
        );
    }
}
