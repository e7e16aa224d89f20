//! `regionprobe rank` through the real binary, against real servers on loopback: each output
//! format's exact structure, the rank order, the exit status, Ctrl-C, and a quiet stderr when
//! it is not a terminal.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{BIN, TempDir, wait_for};
use serde_json::Value;

/// An HTTP server that answers every request after `delay`; counts the requests.
fn http_server(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                counter.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(delay);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    (addr, requests)
}

/// A port nothing listens on: connections are refused.
fn closed_port() -> u16 {
    regionprobe_testkit::dns::closed_tcp_port().port()
}

fn http_target(name: &str, region: &str, addr: SocketAddr) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nregion = \"{region}\"\nprobe = \"http\"\nurl = \"http://{addr}/\"\n"
    )
}

fn refused_target(name: &str, region: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nregion = \"{region}\"\nprobe = \"tcp\"\naddress = \"127.0.0.1:{}\"\n",
        closed_port()
    )
}

/// `[exporter]` in `home`, listening on `listen`, probing every 100 ms; a 1s ranking window,
/// which the command must stretch to cover its run. A small loss penalty keeps a loaded
/// machine's odd timeout of a fast region from ranking it below the slow one.
fn config(listen: SocketAddr, targets: &[String]) -> String {
    format!(
        "[exporter]\nregion = \"home\"\nlisten = \"{listen}\"\n[defaults]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
         [ranking]\nwindow = \"1s\"\nloss_penalty = \"10ms\"\n{}",
        targets.concat()
    )
}

/// Regions: `near` answers at once, `far` after 30 ms, `down` refuses; `home` is the own
/// region (as fast as near). The listen address is held by this test: `rank` must not bind it.
struct Setup {
    _dir: TempDir,
    path: PathBuf,
    near_requests: Arc<AtomicUsize>,
    _listen: TcpListener,
}

fn four_regions() -> Setup {
    let (near, near_requests) = http_server(Duration::ZERO);
    let (far, _) = http_server(Duration::from_millis(30));
    let listen = TcpListener::bind("127.0.0.1:0").unwrap();
    let text = config(
        listen.local_addr().unwrap(),
        &[
            http_target("near-1", "near", near),
            http_target("home-1", "home", near),
            http_target("far-1", "far", far),
            refused_target("down-1", "down"),
        ],
    );
    let dir = TempDir::new("rank");
    let path = dir.write("exporter.toml", &text);
    Setup {
        _dir: dir,
        path,
        near_requests,
        _listen: listen,
    }
}

fn command(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("rank")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("REGIONPROBE_REQUIRE_PRIVILEGED_TESTS")
        .stdin(Stdio::null());
    command
}

fn rank(config: &Path, args: &[&str]) -> Output {
    command(config, args)
        .output()
        .expect("run regionprobe rank")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// stderr is a pipe here: no bar, no cursor control, no colour; only warnings (the refused
/// target going down) and the final messages.
fn assert_quiet_stderr(stderr: &str) {
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b') && !stderr.contains("probes,"),
        "progress output on a non-terminal: {stderr:?}"
    );
    for line in stderr.lines() {
        assert!(!line.contains(" INFO "), "info logged by default: {line}");
    }
}

fn regions(json: &Value) -> &Vec<Value> {
    json["regions"].as_array().expect("regions array")
}

fn position(order: &[String], region: &str) -> usize {
    order
        .iter()
        .position(|r| r == region)
        .unwrap_or_else(|| panic!("{region} missing from {order:?}"))
}

/// near above far above down, and down last.
fn assert_order(order: &[String]) {
    assert_eq!(order.len(), 4, "{order:?}");
    assert!(
        position(order, "near") < position(order, "far")
            && position(order, "far") < position(order, "down"),
        "{order:?}"
    );
    assert_eq!(order[3], "down", "{order:?}");
}

#[test]
fn json_has_every_field_and_ranks_fast_above_slow_above_unreachable() {
    let setup = four_regions();
    let output = rank(&setup.path, &["--duration", "2s", "--format", "json"]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_quiet_stderr(&stderr);
    assert!(stderr.contains("target down target=down-1"), "{stderr}");

    let json: Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(json["source_region"], "home");
    assert_eq!(json["duration_seconds"], 2.0);
    let elapsed = json["elapsed_seconds"].as_f64().unwrap();
    assert!((1.9..=2.0).contains(&elapsed), "{elapsed}");
    assert_eq!(json["interrupted"], false);
    // 1s configured; stretched to the run plus the margin so nothing expired.
    assert_eq!(json["window_seconds"], 12.0);
    assert_eq!(json["quantile"], 0.95);
    assert_eq!(json["loss_penalty_seconds"], 0.01);
    assert!(json["computed_at"].is_string());
    assert_eq!(json["candidate"], "near", "{json:#}");

    let regions = regions(&json);
    let order: Vec<String> = regions
        .iter()
        .map(|r| r["region"].as_str().unwrap().to_owned())
        .collect();
    assert_order(&order);
    for (index, region) in regions.iter().enumerate() {
        let mut keys: Vec<&str> = region
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "candidate",
                "eligible",
                "ineligible",
                "loss_ratio",
                "own",
                "p50_seconds",
                "p95_seconds",
                "p99_seconds",
                "rank",
                "region",
                "replication_lag_seconds",
                "samples",
                "score_seconds",
                "successes",
                "targets",
                "up",
                "worst_target",
            ],
        );
        assert_eq!(region["rank"], index + 1);
        let name = region["region"].as_str().unwrap();
        assert_eq!(region["own"], name == "home", "{region}");
        assert_eq!(region["candidate"], name == "near", "{region}");
        assert_eq!(region["targets"], serde_json::json!([format!("{name}-1")]));
    }
    let by_name = |name: &str| regions.iter().find(|r| r["region"] == name).unwrap();
    let near = by_name("near");
    // ~20 probes in 2s; a 1s window would hold at most 11.
    assert!(near["samples"].as_u64().unwrap() > 11, "{near}");
    let far = by_name("far");
    assert!(far["p50_seconds"].as_f64().unwrap() >= 0.03, "{far}");
    let down = by_name("down");
    assert!(down["score_seconds"].is_null(), "+Inf is null: {down}");
    assert!(down["p50_seconds"].is_null(), "{down}");
    assert_eq!(down["loss_ratio"], 1.0);
    assert_eq!(down["successes"], 0);
    assert!(down["samples"].as_u64().unwrap() > 0, "{down}");
}

#[test]
fn csv_has_the_exact_header_and_a_row_per_region() {
    let setup = four_regions();
    let output = rank(&setup.path, &["--duration", "2s", "--format", "csv"]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_quiet_stderr(&stderr);

    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "region,rank,own,candidate,score_seconds,p50_seconds,p95_seconds,p99_seconds,loss_ratio,samples,successes,targets"
    );
    assert_eq!(lines.len(), 5, "a header and 4 rows: {stdout}");
    let rows: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split(',').collect()).collect();
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 12, "{row:?}");
        assert_eq!(row[1], (index + 1).to_string());
        assert_eq!(row[2], (row[0] == "home").to_string(), "own: {row:?}");
        assert_eq!(row[3], (row[0] == "near").to_string(), "candidate: {row:?}");
        assert_eq!(row[11], format!("{}-1", row[0]));
    }
    let order: Vec<String> = rows.iter().map(|r| r[0].to_owned()).collect();
    assert_order(&order);
    // Seconds as plain numbers; the unreachable region's missing values are empty fields.
    let far = rows.iter().find(|r| r[0] == "far").unwrap();
    let far_p50: f64 = far[5].parse().unwrap();
    assert!(far_p50 >= 0.03 && !far[5].contains('e'), "{far:?}");
    let down = &rows[3];
    assert_eq!(&down[4..9], ["", "", "", "", "1"], "{down:?}");
    assert_eq!(down[10], "0");
}

#[test]
fn table_has_a_header_and_a_line_per_region_in_rank_order() {
    let setup = four_regions();
    let output = rank(&setup.path, &["--duration", "2s"]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_quiet_stderr(&stderr);

    let lines: Vec<&str> = stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "RANK",
            "REGION",
            "P50",
            "P95",
            "P99",
            "LOSS",
            "SCORE",
            "SAMPLES",
            "SUCCESSES",
            "TARGETS"
        ]
    );
    let rows = &lines[1..5];
    // Aligned: every row as wide as the widest, the region column left-aligned under its header.
    let region_at = lines[0].find("REGION").unwrap();
    for (index, row) in rows.iter().enumerate() {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], (index + 1).to_string(), "{row}");
        assert_eq!(
            &row[region_at..region_at + cells[1].len()],
            cells[1],
            "{row}"
        );
    }
    assert_eq!(lines[5], "", "the table ends after the regions: {stdout}");
    let order: Vec<String> = rows
        .iter()
        .map(|row| row.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    assert_order(&order);
    let home = rows.iter().find(|row| row.contains("home")).unwrap();
    assert!(home.contains("home (own)"), "{home}");
    let down = rows[3];
    assert!(
        down.contains("unreachable") && down.contains("100.0%"),
        "{down}"
    );
    let far = rows.iter().find(|row| row.contains("far")).unwrap();
    assert!(far.contains(" ms") && far.contains("%"), "{far}");
    assert!(stdout.contains("\nFailover candidate: near "), "{stdout}");
}

#[test]
fn no_other_region_answering_exits_1_with_one_line_after_the_ranking() {
    let (home, _) = http_server(Duration::ZERO);
    let listen = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = TempDir::new("rank-down");
    let path = dir.write(
        "exporter.toml",
        &config(
            listen.local_addr().unwrap(),
            &[
                http_target("home-1", "home", home),
                refused_target("east-1", "east"),
                refused_target("west-1", "west"),
            ],
        ),
    );
    let output = rank(&path, &["--duration", "2s", "--format", "csv"]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_quiet_stderr(&stderr);
    assert_eq!(
        stderr.lines().last(),
        Some("no region other than home answered in 2s (2 other regions probed)"),
        "{stderr}"
    );
    // The ranking still shows, the own region first, no candidate.
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(
        stdout
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("home,1,true,false,")
    );
    for row in stdout.lines().skip(1) {
        assert_eq!(row.split(',').nth(3), Some("false"), "no candidate: {row}");
    }
}

#[test]
fn a_bad_configuration_or_bad_arguments_exit_2() {
    // The fixture's first line pins its message, as in tests/config.rs.
    let fixture = Path::new("tests/fixtures/invalid/timeout_over_interval.toml");
    let pinned = std::fs::read_to_string(fixture).unwrap();
    let pinned = pinned
        .lines()
        .next()
        .unwrap()
        .strip_prefix("# error: ")
        .unwrap();
    let output = rank(fixture, &["--duration", "2s"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr),
        format!("{}: {pinned}\n", fixture.display())
    );
    assert!(output.stdout.is_empty());

    let missing = Path::new("tests/fixtures/no-such-file.toml");
    let output = rank(missing, &[]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        text(&output.stderr),
        "tests/fixtures/no-such-file.toml: cannot read: No such file or directory (os error 2)\n"
    );

    let setup = four_regions();
    for args in [
        &["--duration", "0s"][..],
        &["--duration", "soon"],
        &["--format", "xml"],
        &["--log.level", "info,=["],
    ] {
        let output = rank(&setup.path, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn ctrl_c_stops_early_and_prints_what_was_gathered() {
    let setup = four_regions();
    let child = command(&setup.path, &["--duration", "60s", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Probes start after the signal handlers are in place.
    wait_for(Duration::from_secs(10), "probes to start", || {
        (setup.near_requests.load(Ordering::Relaxed) >= 6).then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_quiet_stderr(&stderr);
    assert!(stderr.contains("interrupted after "), "{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["interrupted"], true);
    assert_eq!(json["duration_seconds"], 60.0);
    assert!(json["elapsed_seconds"].as_f64().unwrap() < 30.0, "{json}");
    assert_eq!(json["candidate"], "near");
    assert_eq!(regions(&json).len(), 4);
}
