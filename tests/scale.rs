//! Issue 15, scale: sharding over replicas, the capacity ceiling, and memory that comes back
//! after a shrinking reload. Black-box: the real binary, its `check-config` and its APIs.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use common::{BIN, Exporter, TempDir, http, wait_for};

/// `n` TCP targets named `t00000`... on a closed loopback port, at `interval`.
fn config(n: usize, interval: &str, exporter_extra: &str) -> String {
    let closed = regionprobe_testkit::dns::closed_tcp_port();
    let mut text = format!(
        "[exporter]\nregion = \"scale\"\nlisten = \"127.0.0.1:0\"\n{exporter_extra}\n[defaults]\ninterval = \"{interval}\"\ntimeout = \"1s\"\n"
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[target]]\nname = \"t{i:05}\"\nregion = \"r{}\"\nprobe = \"tcp\"\naddress = \"{closed}\"\n",
            i % 3
        ));
    }
    text
}

/// `check-config` with `args`: exit success, stdout, stderr.
fn check_config(path: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(path)
        .arg("check-config")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The targets a replica probes, as `check-config --targets` lists them: the same load
/// (file, `--shard`, `finish`) a running replica applies.
fn shard_targets(path: &std::path::Path, shard: &str) -> Vec<String> {
    let (ok, out, err) = check_config(path, &["--targets", "--shard", shard]);
    assert!(ok, "{err}");
    out.lines()
        .filter_map(|line| line.strip_prefix("target "))
        .map(str::to_owned)
        .collect()
}

/// Four replicas over 20,000 targets: each target is probed by exactly one, the shares are
/// even, and a fifth replica takes about a fifth of them, from every old replica, moving
/// none between the old ones.
#[test]
fn four_replicas_cover_20000_targets_exactly_once_and_a_fifth_moves_a_fifth() {
    let dir = TempDir::new("shard20k");
    // 20,000 targets at 1 s would pass the default ceiling only sharded: at 10 s they pass.
    let path = dir.write("exporter.toml", &config(20_000, "10s", ""));
    let mut owner: HashMap<String, usize> = HashMap::new();
    for k in 1..=4 {
        let names = shard_targets(&path, &format!("{k}/4"));
        assert!(
            (4_600..=5_400).contains(&names.len()),
            "replica {k}/4 probes {}",
            names.len()
        );
        for name in names {
            if let Some(other) = owner.insert(name.clone(), k) {
                panic!("{name} is probed by replicas {other} and {k}");
            }
        }
    }
    assert_eq!(owner.len(), 20_000, "every target has an owner");

    let mut moved = 0;
    for k in 1..=5 {
        for name in shard_targets(&path, &format!("{k}/5")) {
            let before = owner[&name];
            if before != k {
                assert_eq!(
                    k, 5,
                    "{name} moved from replica {before} to old replica {k}"
                );
                moved += 1;
            }
        }
    }
    assert!((3_600..=4_400).contains(&moved), "{moved} of 20,000 moved");

    // check-config says what the share costs.
    let (ok, out, _) = check_config(&path, &["--shard", "2/4"]);
    assert!(ok);
    assert!(out.contains("(shard 2/4 of 20000 configured)"), "{out}");
}

/// The running replicas apply the same assignment: two replicas' `/api/v1/targets` are
/// disjoint, cover the file, and match `check-config --targets`; `/api/v1/ranking` says it
/// ranks a shard.
#[test]
fn running_replicas_probe_their_share_and_say_so() {
    let dir = TempDir::new("shard-live");
    let path = dir.write("exporter.toml", &config(40, "5s", ""));
    let mut seen = BTreeSet::new();
    for k in 1..=2 {
        let shard = format!("{k}/2");
        let exporter = Exporter::start(&config(40, "5s", &format!("shard = \"{shard}\"")));
        let (status, body) = exporter.get("/api/v1/targets");
        assert_eq!(status, 200);
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        let names: Vec<String> = view["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, shard_targets(&path, &shard), "replica {shard}");
        for name in names {
            assert!(seen.insert(name.clone()), "{name} twice");
        }
        let (_, ranking) = exporter.get("/api/v1/ranking");
        let ranking: serde_json::Value = serde_json::from_str(&ranking).unwrap();
        assert_eq!(ranking["shard"], shard.as_str());
        assert!(
            exporter.log_text().contains("capacity: "),
            "{}",
            exporter.log_text()
        );
    }
    assert_eq!(seen.len(), 40);
}

/// Beyond `exporter.max_probes_per_second` the file is refused with what to do; sharding
/// brings each replica under it; a reload beyond it keeps the running configuration.
#[test]
fn the_capacity_ceiling_refuses_with_a_way_out_and_reloads_keep_the_running_config() {
    let dir = TempDir::new("ceiling");
    let over = dir.write(
        "exporter.toml",
        &config(30, "1s", "max_probes_per_second = 20"),
    );
    let (ok, _, err) = check_config(&over, &[]);
    assert!(!ok);
    assert!(
        err.contains("key `exporter.max_probes_per_second`: the 30 targets need 30 probes/s, more than the ceiling of 20; raise the targets' intervals"),
        "{err}"
    );
    assert!(err.contains("--shard K/2"), "{err}");
    for k in 1..=3 {
        let (ok, out, err) = check_config(&over, &["--shard", &format!("{k}/3")]);
        assert!(ok, "{err}");
        assert!(out.contains("probes/s (ceiling 20)"), "{out}");
    }

    let exporter = Exporter::start(&config(10, "1s", "max_probes_per_second = 20"));
    std::fs::write(
        &exporter.config_path,
        config(30, "1s", "max_probes_per_second = 20"),
    )
    .unwrap();
    let (status, body) = http(exporter.addr, "POST", "/-/reload");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("more than the ceiling of 20"), "{body}");
    let scrape = exporter.metrics();
    assert_eq!(
        scrape.value("regionprobe_targets", &[("probe", "tcp")]),
        Some(10.0)
    );
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Issue 15, item 3: after a reload from 10,000 targets to 100, the memory comes back within a
/// minute: at least half of what the 10,000 targets took above a fresh start with 100 is
/// handed back (before `malloc_trim` RSS stayed near the peak: the issue saw 977 MB kept after
/// a shrink to 9 targets). How close it comes to a fresh start
/// with those 100 (the goal: 1.5x) is a figure of the benchmark, `bench/icmp_scale.sh`,
/// which measures the release build; this test prints it for the debug build. TCP targets at
/// 10 s on a closed port keep the probing light (1,000 probes/s at 10,000).
#[test]
fn memory_comes_back_after_shrinking_from_10000_targets_to_100() {
    let big = Exporter::start(&config(10_000, "10s", ""));
    // Every target probed at least once: a full interval and some. (No scrape of the 10,000:
    // a debug build renders 35 MB of text slowly, and the kit's client would time out on a
    // loaded machine; the log says when the targets started.)
    wait_for(
        Duration::from_secs(30),
        "the 10,000 targets started",
        || {
            big.log_text()
                .contains("capacity: 10000 targets")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(13));
    let peak = rss_kib(big.child.id());
    std::fs::write(&big.config_path, config(100, "10s", "")).unwrap();
    let (status, body) = http(big.addr, "POST", "/-/reload");
    assert_eq!(status, 200, "{body}");

    let fresh = Exporter::start(&config(100, "10s", ""));
    std::thread::sleep(Duration::from_secs(12));
    let _ = fresh.metrics();
    let _ = big.metrics();
    let fresh_rss = rss_kib(fresh.child.id());
    // (A debug build's own pages are a large part of a fresh start's RSS: 27 MiB with 100
    // targets, against 70 MiB with 10,000.)
    assert!(
        peak > 2 * fresh_rss,
        "the 10,000 targets took memory: {peak} KiB against {fresh_rss} KiB with 100"
    );
    let taken = peak - fresh_rss;
    let shrunk = wait_for(
        Duration::from_secs(60),
        &format!(
            "RSS back within half of the {taken} KiB the 10,000 targets took above a fresh start with 100 ({fresh_rss} KiB)"
        ),
        || {
            let rss = rss_kib(big.child.id());
            (2 * rss.saturating_sub(fresh_rss) <= taken).then_some(rss)
        },
    );
    eprintln!(
        "RSS: 10,000 targets {peak} KiB; after the reload to 100 {shrunk} KiB; fresh with 100 {fresh_rss} KiB ({:.2}x)",
        shrunk as f64 / fresh_rss as f64
    );
}
