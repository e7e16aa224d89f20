//! `[[target_file]]`: targets from a file in Prometheus' `file_sd` format, a list of groups
//! `{"targets": [...], "labels": {...}}` in JSON (`.json`) or YAML (`.yml`, `.yaml`).
//!
//! Each string of `targets` is one target's endpoint: an icmp `host`, a tcp `address`
//! (`host:port`), an http `url` or a dns `server`. The group's labels that start with `__`
//! set the target's keys (`__probe`, `__region`, `__name`, `__interval`, `__timeout`,
//! `__addresses`, `__ip_version`, `__query` for dns); any other label is ignored (a target's
//! labels are fixed: file_sd files shared with Prometheus carry labels for Prometheus). Each
//! entry is then validated exactly as a `[[target]]` with the same keys would be.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::model::{ProbeKind, Target, TargetFile, TargetSource, TargetSrv};
use super::raw::RawTarget;
use super::validate;

/// One group of the file.
#[derive(Debug, Default)]
struct Group {
    targets: Vec<String>,
    labels: BTreeMap<String, String>,
}

/// The targets of `file`, whose contents are `text`. The error says which group, which
/// entry and which key, without the file's name (the caller adds it).
pub fn read_target_file(file: &TargetFile, text: &str) -> Result<Vec<Arc<Target>>, String> {
    let extension = file
        .path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    let groups = match extension {
        "json" => from_json(text)?,
        "yml" | "yaml" => from_yaml(text)?,
        _ => {
            return Err(
                "unknown format; the file name must end in .json, .yml or .yaml".to_owned(),
            );
        }
    };
    let mut targets: Vec<Target> = Vec::new();
    for (g, group) in groups.into_iter().enumerate() {
        if let Some(label) = group
            .labels
            .keys()
            .find(|label| label.starts_with("__") && !KNOWN.contains(&label.as_str()))
        {
            return Err(format!(
                "[{g}].labels.{label}: unknown label; the target keys are {}",
                KNOWN.join(", ")
            ));
        }
        let label = |name: &str| group.labels.get(name).cloned();
        if label("__name").is_some() && group.targets.len() > 1 {
            return Err(format!(
                "[{g}].labels.__name: names one target, but the group has {}",
                group.targets.len()
            ));
        }
        for (t, endpoint) in group.targets.iter().enumerate() {
            let key = format!("[{g}].targets[{t}]");
            let probe = label("__probe").or_else(|| file.probe.map(|p| p.as_str().to_owned()));
            let mut raw = RawTarget {
                name: label("__name").or_else(|| Some(endpoint.clone())),
                region: label("__region").or_else(|| file.region.clone()),
                probe: probe.clone(),
                interval: label("__interval"),
                timeout: label("__timeout"),
                addresses: label("__addresses"),
                ..RawTarget::default()
            };
            if let Some(version) = label("__ip_version") {
                raw.ip_version = Some(version.parse().map_err(|_| {
                    format!("{key}: label __ip_version: \"{version}\" is not 4 or 6")
                })?);
            }
            match probe.as_deref() {
                Some("icmp") => raw.host = Some(endpoint.clone()),
                Some("tcp") => raw.address = Some(endpoint.clone()),
                Some("http") => raw.url = Some(endpoint.clone()),
                Some("dns") => {
                    raw.server = Some(endpoint.clone());
                    raw.query = label("__query");
                }
                _ => {}
            }
            let mut target =
                validate::target(t, raw, &file.defaults).map_err(|(field, problem)| {
                    // `target[t].host` -> the entry and the label or part that set it.
                    let field = field.split_once('.').map_or(field.as_str(), |(_, f)| f);
                    let from = match field {
                        "host" | "address" | "url" | "server" => "the target itself".to_owned(),
                        other => format!("label __{other}"),
                    };
                    format!("{key} (\"{endpoint}\"): {from}: {problem}")
                })?;
            if let Some(first) = targets.iter().find(|other| other.name == target.name) {
                return Err(format!(
                    "{key}: duplicate target name \"{}\" in the file (set __name, or list it once)",
                    first.name
                ));
            }
            target.source = TargetSource::File(file.path.clone());
            targets.push(target);
        }
    }
    Ok(targets.into_iter().map(Arc::new).collect())
}

/// The targets of a `[[target_srv]]` whose name has these SRV records (target host, port).
pub fn srv_targets(srv: &TargetSrv, records: &[(String, u16)]) -> Result<Vec<Arc<Target>>, String> {
    let mut targets = Vec::with_capacity(records.len());
    for (t, (host, port)) in records.iter().enumerate() {
        let host = host.trim_end_matches('.');
        let mut raw = RawTarget {
            name: Some(format!("{host}:{port}")),
            region: Some(srv.region.clone()),
            probe: Some(srv.probe.as_str().to_owned()),
            ..RawTarget::default()
        };
        match srv.probe {
            ProbeKind::Icmp => raw.host = Some(host.to_owned()),
            ProbeKind::Tcp => raw.address = Some(format!("{host}:{port}")),
            _ => raw.url = Some(format!("{}://{host}:{port}{}", srv.scheme, srv.path)),
        }
        let mut target = validate::target(t, raw, &srv.defaults)
            .map_err(|(_, problem)| format!("record {host}:{port}: {problem}"))?;
        if targets
            .iter()
            .any(|other: &Target| other.name == target.name)
        {
            continue;
        }
        target.source = TargetSource::Srv(srv.name.clone());
        targets.push(target);
    }
    Ok(targets.into_iter().map(Arc::new).collect())
}

/// The labels that set a target's keys.
const KNOWN: [&str; 8] = [
    "__probe",
    "__region",
    "__name",
    "__interval",
    "__timeout",
    "__addresses",
    "__ip_version",
    "__query",
];

fn from_json(text: &str) -> Result<Vec<Group>, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|err| {
        format!(
            "line {}, column {}: not valid JSON",
            err.line(),
            err.column()
        )
    })?;
    let list = value
        .as_array()
        .ok_or("expected a list of {\"targets\": [...], \"labels\": {...}} groups")?;
    list.iter()
        .enumerate()
        .map(|(g, group)| {
            let object = group
                .as_object()
                .ok_or_else(|| format!("[{g}]: expected an object with \"targets\""))?;
            let mut out = Group::default();
            for (key, value) in object {
                match key.as_str() {
                    "targets" => {
                        out.targets = value
                            .as_array()
                            .and_then(|list| {
                                list.iter().map(|t| t.as_str().map(str::to_owned)).collect()
                            })
                            .ok_or_else(|| format!("[{g}].targets: expected a list of strings"))?;
                    }
                    "labels" => {
                        let labels = value
                            .as_object()
                            .ok_or_else(|| format!("[{g}].labels: expected an object"))?;
                        for (name, value) in labels {
                            let value = value
                                .as_str()
                                .ok_or_else(|| format!("[{g}].labels.{name}: expected a string"))?;
                            out.labels.insert(name.clone(), value.to_owned());
                        }
                    }
                    other => {
                        return Err(format!(
                            "[{g}].{other}: unknown key; expected targets, labels"
                        ));
                    }
                }
            }
            Ok(out)
        })
        .collect()
}

fn from_yaml(text: &str) -> Result<Vec<Group>, String> {
    use yaml_rust2::Yaml;
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|err| {
        format!(
            "line {}, column {}: not valid YAML",
            err.marker().line(),
            err.marker().col() + 1
        )
    })?;
    // An empty document is a truncated file, not "no targets": the last good version stays.
    let Some(Yaml::Array(list)) = docs.into_iter().next() else {
        return Err("expected a list of {targets: [...], labels: {...}} groups".to_owned());
    };
    let scalar = |value: &Yaml| match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    list.iter()
        .enumerate()
        .map(|(g, group)| {
            let Yaml::Hash(object) = group else {
                return Err(format!("[{g}]: expected a mapping with targets"));
            };
            let mut out = Group::default();
            for (key, value) in object {
                match key.as_str() {
                    Some("targets") => {
                        let Yaml::Array(list) = value else {
                            return Err(format!("[{g}].targets: expected a list of strings"));
                        };
                        out.targets = list
                            .iter()
                            .map(|t| t.as_str().map(str::to_owned))
                            .collect::<Option<_>>()
                            .ok_or_else(|| format!("[{g}].targets: expected a list of strings"))?;
                    }
                    Some("labels") => {
                        let Yaml::Hash(labels) = value else {
                            return Err(format!("[{g}].labels: expected a mapping"));
                        };
                        for (name, value) in labels {
                            let name = name
                                .as_str()
                                .ok_or_else(|| format!("[{g}].labels: names must be strings"))?;
                            let value = scalar(value)
                                .ok_or_else(|| format!("[{g}].labels.{name}: expected a string"))?;
                            out.labels.insert(name.to_owned(), value);
                        }
                    }
                    _ => {
                        return Err(format!(
                            "[{g}]: unknown key {key:?}; expected targets, labels"
                        ));
                    }
                }
            }
            Ok(out)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{ProbeConfig, ProbeKind, TargetDefaults};
    use std::time::Duration;

    fn file(name: &str) -> TargetFile {
        TargetFile {
            path: name.into(),
            probe: Some(ProbeKind::Tcp),
            region: None,
            defaults: TargetDefaults {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                buckets: [0.1, 1.0].into(),
                down_after: 3,
                clock_sync_error: None,
            },
        }
    }

    #[test]
    fn json_and_yaml_give_the_same_targets() {
        let json = r#"[{"targets": ["10.0.0.1:443", "db.example.test:5432"],
                        "labels": {"__region": "eu", "env": "prod"}},
                       {"targets": ["http://api.example.test/health"],
                        "labels": {"__region": "us", "__probe": "http", "__name": "api", "__interval": "5s"}}]"#;
        let yaml = "- targets: ['10.0.0.1:443', 'db.example.test:5432']\n  labels: {__region: eu, env: prod}\n\
                    - targets: ['http://api.example.test/health']\n  labels:\n    __region: us\n    __probe: http\n    __name: api\n    __interval: 5s\n";
        let from_json = read_target_file(&file("t.json"), json).unwrap();
        let from_yaml = read_target_file(&file("t.yaml"), yaml).unwrap();
        let strip = |targets: Vec<Arc<Target>>| {
            targets
                .into_iter()
                .map(|t| {
                    let mut t = Arc::unwrap_or_clone(t);
                    t.source = TargetSource::Inline;
                    t
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(from_json.clone()), strip(from_yaml));
        let names: Vec<&str> = from_json.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["10.0.0.1:443", "db.example.test:5432", "api"]);
        assert_eq!(from_json[2].region, "us");
        assert_eq!(from_json[2].interval, Duration::from_secs(5));
        assert!(matches!(from_json[2].probe, ProbeConfig::Http(_)));
        assert_eq!(from_json[0].source, TargetSource::File("t.json".into()));
    }

    #[test]
    fn srv_records_become_targets_of_the_kind() {
        use crate::config::model::TargetSrv;
        let srv = |probe, scheme| TargetSrv {
            name: "_https._tcp.api.example.test".into(),
            region: "eu".into(),
            probe,
            scheme,
            path: "/healthz".into(),
            defaults: file("x.json").defaults,
        };
        let records = [
            ("api-1.example.test.".to_owned(), 443),
            ("api-2.example.test.".to_owned(), 8443),
        ];
        let http = srv_targets(&srv(ProbeKind::Http, "https"), &records).unwrap();
        let names: Vec<&str> = http.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["api-1.example.test:443", "api-2.example.test:8443"]);
        match &http[1].probe {
            ProbeConfig::Http(c) => {
                assert_eq!(c.url.to_string(), "https://api-2.example.test:8443/healthz")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            http[0].source,
            TargetSource::Srv("_https._tcp.api.example.test".into())
        );
        let tcp = srv_targets(&srv(ProbeKind::Tcp, "https"), &records).unwrap();
        assert!(
            matches!(&tcp[0].probe, ProbeConfig::Tcp(c) if c.host == "api-1.example.test" && c.port == 443)
        );
        let icmp = srv_targets(&srv(ProbeKind::Icmp, "https"), &records).unwrap();
        assert!(matches!(&icmp[0].probe, ProbeConfig::Icmp(c) if c.host == "api-1.example.test"));
    }

    #[test]
    fn a_bad_entry_names_the_group_the_entry_and_the_label() {
        let err = |text: &str| read_target_file(&file("t.json"), text).unwrap_err();
        let no_port = err(r#"[{"targets": ["10.0.0.1"], "labels": {"__region": "eu"}}]"#);
        assert!(
            no_port.starts_with("[0].targets[0] (\"10.0.0.1\"): the target itself: "),
            "{no_port}"
        );
        assert!(
            err(r#"[{"targets": ["10.0.0.1:1"]}]"#)
                .starts_with("[0].targets[0] (\"10.0.0.1:1\"): label __region: missing")
        );
        assert_eq!(
            err(r#"[{"targets": ["10.0.0.1:1"], "labels": {"__region": "eu", "__port": "1"}}]"#),
            "[0].labels.__port: unknown label; the target keys are __probe, __region, __name, __interval, __timeout, __addresses, __ip_version, __query"
        );
        assert!(err("[{\"targets\": [").starts_with("line 1, column"));
        assert_eq!(
            read_target_file(&file("t.yaml"), "").unwrap_err(),
            "expected a list of {targets: [...], labels: {...}} groups"
        );
        assert!(
            err(r#"[{"targets": ["a:1", "a:1"], "labels": {"__region": "eu"}}]"#)
                .contains("duplicate target name")
        );
    }
}
