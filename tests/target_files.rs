//! `[[target_file]]`, black-box: the real binary reads targets from Prometheus file_sd files
//! (JSON and YAML) beside its inline ones, and follows the files as they are edited in place,
//! replaced atomically (a rename over them), truncated and restored. Unchanged targets keep
//! their series; a bad file keeps its last good targets and says so in a metric and the log.
// Blocking, on real time: the child process's clock is not tokio's.
#![allow(clippy::disallowed_types)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Exporter, TempDir, wait_for};

const WAIT: Duration = Duration::from_secs(10);

fn probes(exporter: &Exporter, target: &str) -> Option<f64> {
    exporter
        .metrics()
        .value("regionprobe_probes_total", &[("target", target)])
}

/// Target name -> source, from `/api/v1/targets`.
fn sources(exporter: &Exporter) -> Vec<(String, String)> {
    let (status, body) = exporter.get("/api/v1/targets");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn names(exporter: &Exporter) -> Vec<String> {
    sources(exporter)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

fn valid(exporter: &Exporter, path: &Path) -> Option<f64> {
    exporter.metrics().value(
        "regionprobe_target_file_valid",
        &[("path", &path.display().to_string())],
    )
}

fn json(addr: std::net::SocketAddr, names: &[&str]) -> String {
    let groups: Vec<String> = names
        .iter()
        .map(|name| {
            format!(
                r#"{{"targets": ["{addr}"], "labels": {{"__name": "{name}", "__region": "eu", "env": "prod"}}}}"#
            )
        })
        .collect();
    format!("[{}]\n", groups.join(",\n"))
}

#[test]
fn target_files_are_merged_followed_and_a_bad_version_keeps_the_last_good_one() {
    let server = common::http_server(Duration::ZERO);
    let dir = TempDir::new("target-files");
    let json_path = dir.write("eu.json", &json(server, &["a", "b"]));
    let yaml_path = dir.write(
        "us.yaml",
        &format!("- targets: ['{server}']\n  labels:\n    __name: c\n    __region: us\n    __interval: 300ms\n"),
    );
    let exporter = Exporter::start(&format!(
        "[exporter]\nregion = \"here\"\nlisten = \"127.0.0.1:0\"\n[defaults]\ninterval = \"200ms\"\n\
         [[target]]\nname = \"inline\"\nregion = \"eu\"\nprobe = \"tcp\"\naddress = \"{server}\"\n\
         [[target_file]]\npath = \"{}\"\nprobe = \"tcp\"\n\
         [[target_file]]\npath = \"{}\"\nprobe = \"tcp\"\n",
        json_path.display(),
        yaml_path.display(),
    ));
    wait_for(WAIT, "a, b and c probed", || {
        ["a", "b", "c"]
            .iter()
            .all(|t| probes(&exporter, t).is_some_and(|n| n >= 2.0))
            .then_some(())
    });
    let listed = sources(&exporter);
    let json_source = format!("file:{}", json_path.display());
    let yaml_source = format!("file:{}", yaml_path.display());
    for (name, source) in [
        ("inline", "inline"),
        ("a", json_source.as_str()),
        ("b", json_source.as_str()),
        ("c", yaml_source.as_str()),
    ] {
        assert!(
            listed.contains(&(name.to_owned(), source.to_owned())),
            "{name} from {source}: {listed:?}"
        );
    }
    let scrape = exporter.metrics();
    assert_eq!(valid(&exporter, &json_path), Some(1.0));
    assert_eq!(
        scrape.value(
            "regionprobe_target_file_targets",
            &[("path", &yaml_path.display().to_string())]
        ),
        Some(1.0)
    );
    // Labels without `__` are Prometheus', not ours: no `env` on our series.
    assert!(
        scrape
            .label_values("regionprobe_probes_total", "env")
            .is_empty()
    );
    let (_, page) = exporter.get("/");
    assert!(
        page.contains(&json_source),
        "the page shows where a target came from"
    );

    // Edited in place: d joins; a keeps its task and series (its counter goes on).
    let a_before = probes(&exporter, "a").unwrap();
    std::fs::write(&json_path, json(server, &["a", "b", "d"])).unwrap();
    wait_for(WAIT, "d probed", || {
        probes(&exporter, "d")
            .is_some_and(|n| n >= 1.0)
            .then_some(())
    });
    assert!(
        probes(&exporter, "a").unwrap() >= a_before,
        "a's series restarted"
    );

    // Replaced atomically (a new file renamed over it): b leaves, the rest stays.
    let a_before = probes(&exporter, "a").unwrap();
    let next = dir.write("eu.json.tmp", &json(server, &["a", "d"]));
    std::fs::rename(&next, &json_path).unwrap();
    wait_for(WAIT, "b removed", || {
        (!names(&exporter).contains(&"b".to_owned())).then_some(())
    });
    assert_eq!(probes(&exporter, "b"), None, "b's series went with it");
    assert!(probes(&exporter, "a").unwrap() >= a_before);

    // Truncated: not applied; its last good targets keep running.
    std::fs::write(&json_path, "").unwrap();
    wait_for(WAIT, "the truncated file refused", || {
        (valid(&exporter, &json_path) == Some(0.0)).then_some(())
    });
    let a_before = probes(&exporter, "a").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(probes(&exporter, "a").unwrap() > a_before, "a still probed");
    assert!(names(&exporter).contains(&"d".to_owned()));
    let log = exporter.log_text();
    assert!(
        log.contains("target file not applied; keeping its last good targets")
            && log.contains("not valid JSON"),
        "{log}"
    );

    // Restored.
    std::fs::write(&json_path, json(server, &["a", "e"])).unwrap();
    wait_for(WAIT, "restored", || {
        (valid(&exporter, &json_path) == Some(1.0) && probes(&exporter, "e").is_some())
            .then_some(())
    });
    assert!(!names(&exporter).contains(&"d".to_owned()));

    // A bad YAML entry (an unknown key label), and a name taken inline: both refused by
    // name, the last good version kept.
    std::fs::write(
        &yaml_path,
        format!("- targets: ['{server}']\n  labels: {{__name: c, __region: us, __port: '1'}}\n"),
    )
    .unwrap();
    wait_for(WAIT, "the bad YAML refused", || {
        (valid(&exporter, &yaml_path) == Some(0.0)).then_some(())
    });
    assert!(
        exporter
            .log_text()
            .contains("[0].labels.__port: unknown label")
    );
    std::fs::write(
        &yaml_path,
        format!("- targets: ['{server}']\n  labels: {{__name: inline, __region: us}}\n"),
    )
    .unwrap();
    wait_for(WAIT, "the taken name refused", || {
        exporter
            .log_text()
            .contains("is already defined inline or by another target file")
            .then_some(())
    });
    assert!(names(&exporter).contains(&"c".to_owned()));
    assert_eq!(valid(&exporter, &yaml_path), Some(0.0));
}
