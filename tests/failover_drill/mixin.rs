//! What the drill reads from the monitoring mixin in `dashboards/`: the rules (names, an
//! alert's `for`), the Alertmanager routes an alert takes (receiver and timers, to bound the
//! waits), and the Alertmanager configuration with its webhooks pointed at the drill.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use yaml_rust2::{Yaml, YamlLoader};

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
        .remove(0)
}

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("duration {text:?}: {e}"))
}

/// The rule files Prometheus loads: `dashboards/rules/*.yml`.
pub const RULE_FILES: &str = "dashboards/rules";

#[derive(Clone, Debug)]
pub struct Rule {
    /// `record` or `alert`.
    pub kind: &'static str,
    pub name: String,
    /// An alert's `for` (zero without one).
    pub hold: Duration,
    /// An alert's `severity` label.
    pub severity: String,
}

/// Every rule of the rule files, in file and evaluation order.
pub fn rules() -> Vec<Rule> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(RULE_FILES))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let doc = yaml(&path);
        for group in doc["groups"].as_vec().expect("groups") {
            for rule in group["rules"].as_vec().expect("rules") {
                let (kind, name) = match (rule["record"].as_str(), rule["alert"].as_str()) {
                    (Some(name), _) => ("record", name),
                    (_, Some(name)) => ("alert", name),
                    _ => panic!("{path:?}: neither record nor alert: {rule:?}"),
                };
                out.push(Rule {
                    kind,
                    name: name.to_owned(),
                    hold: rule["for"].as_str().map_or(Duration::ZERO, duration),
                    severity: rule["labels"]["severity"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
        }
    }
    out
}

pub fn alert(name: &str) -> Rule {
    rules()
        .into_iter()
        .find(|r| r.kind == "alert" && r.name == name)
        .unwrap_or_else(|| panic!("no alert {name} in {RULE_FILES}"))
}

/// Where Alertmanager sends an alert, and when: the receiver and timers of the route it
/// ends on.
#[derive(Clone, Debug)]
pub struct Route {
    pub receiver: String,
    pub group_wait: Duration,
    pub group_interval: Duration,
}

/// `name="value"`, `name=~"regex"`, `name!="value"`, `name!~"regex"`.
fn matches(matcher: &str, labels: &[(&str, &str)]) -> bool {
    let syntax = Regex::new(r#"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"(.*)"\s*$"#).unwrap();
    let caps = syntax
        .captures(matcher)
        .unwrap_or_else(|| panic!("matcher {matcher:?}: not a form the drill reads"));
    let value = labels
        .iter()
        .find(|(k, _)| *k == &caps[1])
        .map_or("", |(_, v)| *v);
    let regex = Regex::new(&format!("^(?:{})$", &caps[3])).unwrap();
    match &caps[2] {
        "=" => value == &caps[3],
        "!=" => value != &caps[3],
        "=~" => regex.is_match(value),
        _ => !regex.is_match(value),
    }
}

/// The route of `dashboards/alertmanager.yml` an alert with `labels` takes, as Alertmanager
/// picks it: the first matching child at each level (the file uses no `continue`), timers
/// inherited from the parent, Alertmanager's defaults at the root.
fn route_for(labels: &[(&str, &str)]) -> Route {
    fn walk(node: &Yaml, labels: &[(&str, &str)], mut route: Route) -> Route {
        for key in ["match", "match_re", "continue"] {
            assert!(
                node[key].is_badvalue(),
                "dashboards/alertmanager.yml uses `{key}`, which the drill does not read"
            );
        }
        if let Some(receiver) = node["receiver"].as_str() {
            route.receiver = receiver.to_owned();
        }
        if let Some(wait) = node["group_wait"].as_str() {
            route.group_wait = duration(wait);
        }
        if let Some(interval) = node["group_interval"].as_str() {
            route.group_interval = duration(interval);
        }
        for child in node["routes"].as_vec().into_iter().flatten() {
            let matchers = child["matchers"].as_vec().cloned().unwrap_or_default();
            if matchers
                .iter()
                .all(|m| matches(m.as_str().unwrap(), labels))
            {
                return walk(child, labels, route);
            }
        }
        route
    }
    let defaults = Route {
        receiver: String::new(),
        group_wait: Duration::from_secs(30),
        group_interval: Duration::from_secs(300),
    };
    walk(
        &yaml(&repo("dashboards/alertmanager.yml"))["route"],
        labels,
        defaults,
    )
}

/// The route alert `name` takes, with its labels that routes match on.
pub fn route_of(name: &str) -> Route {
    let severity = alert(name).severity;
    route_for(&[("alertname", name), ("severity", &severity)])
}

/// `dashboards/alertmanager.yml` with only the scheme and authority of every webhook URL
/// replaced by `webhook`'s (the paths tell the receivers apart). Nothing else changes: the
/// critical route's 10 s group_wait and 1 m group_interval fit in the drill as they are.
pub fn alertmanager_config(webhook: SocketAddr) -> String {
    let text = std::fs::read_to_string(repo("dashboards/alertmanager.yml")).unwrap();
    let url = Regex::new(r"(?m)^(\s*(?:-\s+)?url:\s*)https?://[^/\s]+").unwrap();
    let derived = url
        .replace_all(&text, format!("${{1}}http://{webhook}"))
        .into_owned();
    let config = YamlLoader::load_from_str(&derived).unwrap().remove(0);
    let mut webhooks = 0;
    for receiver in config["receivers"].as_vec().unwrap() {
        for hook in receiver["webhook_configs"].as_vec().into_iter().flatten() {
            let url = hook["url"].as_str().expect("a webhook with a url");
            assert!(
                url.starts_with(&format!("http://{webhook}/")),
                "dashboards/alertmanager.yml: webhook url {url:?} not redirected to the drill"
            );
            webhooks += 1;
        }
    }
    assert!(webhooks > 0, "dashboards/alertmanager.yml has no webhook");
    derived
}
