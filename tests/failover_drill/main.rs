//! The failover drill: three regions in network namespaces, a regionprobe sidecar in each,
//! the real Prometheus with the rules of `dashboards/rules/` and the real Alertmanager with
//! the routing of `dashboards/alertmanager.yml`, then region c is cut off and restored.
//!
//! 1. Regions a, b, c: one namespace each, one address each on a shared L2 (see
//!    `net.rs`). Each region serves its sidecar (`/metrics`, `/-/healthy`) on
//!    :9537 and an HTTPS "app" endpoint on :8443 (this test binary re-run in the namespace,
//!    rustls with an rcgen certificate). The app of a and b answers after 25 ms, c's at
//!    once: c is the nearest region, and so the failover candidate, of both a and b. Each
//!    sidecar probes the two other regions by ICMP, TCP (:9537), HTTP (`/-/healthy`) and
//!    HTTPS (the app, `tls_skip_verify`), every 500 ms, ranking over 20 s with a 5 s hold.
//! 2. Prometheus (root namespace) scrapes the three every second (job `regionprobe`) and
//!    evaluates the repository's rule files, unchanged, every second; it alerts the
//!    Alertmanager, whose configuration is `dashboards/alertmanager.yml` with only the
//!    webhook URLs pointed at the test's receiver (timers unchanged: the critical route's
//!    10 s group_wait and 1 m group_interval fit the drill, and the drill times them).
//! 3. Every query of the three dashboards (variables resolved as Grafana would, "All"
//!    selected) returns data from Prometheus' HTTP API, but for two that only show events
//!    (failures, candidate changes), which must have data by the end of the drill; every
//!    recording rule has a value for every (source, target) pair.
//! 4. c's bridge port goes down: `RegionprobeRegionUnreachable` a→c and b→c must fire in
//!    Prometheus and reach the pager webhook, c must rank last from a and b, and a must fail
//!    over to b, b to a (and tell the change log webhook), each within a bound computed
//!    from the rule's `for`, the intervals and the route's timers.
//! 5. The port comes back: the alerts resolve (Prometheus, then a `resolved` notification),
//!    c's targets come back up and c ranks first again.
//! 6. One direction of one path is cut (c drops a's new flows, nftables in c's namespace):
//!    a loses c and fails over to b within three probes, b keeps c, c still reaches a, and
//!    Prometheus fires `RegionprobePathDown` a→c, neither `RegionprobeDestinationDown` nor
//!    `RegionprobeSourceCutOff`; restored, the alert resolves.
//! 7. a's own network is cut (its bridge port down): read from inside its namespace, a says
//!    it is impaired (every other region down at once) and keeps its candidate; restored, it
//!    is not impaired any more.
//! 8. The database (issue 16): a Redis primary in a (`redis-server` in a's namespace on its
//!    address, :6379) and a replica in each of b and c; sidecar a probes both replicas
//!    (`replication = "replica"`) with `[ranking] max_replication_lag = "2s"`. c's replica
//!    loses its link (`REPLICAOF` a closed port: lag +Inf): c is not eligible from a, a's
//!    candidate moves to b, `RegionprobeReplicationLagHigh` a→c fires in Prometheus and is
//!    active in Alertmanager for its route's receiver (its API: the warning route's 30 s
//!    group_wait and 5 m group_interval would cost minutes at the webhook); the link
//!    restored, the alert resolves (Prometheus, Alertmanager) and c is a's candidate again. Last of the faults, so its candidate changes cannot mask the others' notices.
//! 9. The time each step took, as a table.
//!
//! Needs root, `ip`, `nft`, `curl`, `redis-server`, `prometheus` and `prometheus-alertmanager`; `#[ignore]`d so that
//! `cargo test` stays quick. CI runs it in a step of its own
//! (`cargo test --test failover_drill -- --ignored --nocapture`); by hand:
//! `scripts/failover-drill.sh`. Every process, namespace and interface it makes is
//! named after the process id and removed by guards, also when the drill fails.

// Blocking waits on real time, as in the test kit: there is no tokio clock to pause here.
#![allow(clippy::disallowed_types)]

mod clock;
mod mixin;
mod net;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use clock::{Clock, both, milestone, secs};
use mixin::{Route, repo};
use net::{Region, Topology};
use regionprobe_testkit::black_box::{Exporter, TempDir, is_root, skip_unless, wait_for};
use regionprobe_testkit::dashboards;
use regionprobe_testkit::databases::{self, Redis};
use regionprobe_testkit::services::{
    self, Alertmanager, Daemon, Notification, Prometheus, Webhook, unix_seconds, which,
};
use serde_json::Value;

/// Path of the binary under test: the sidecar of every region.
const BIN: &str = env!("CARGO_BIN_EXE_regionprobe");

const REGIONS: [&str; 3] = ["a", "b", "c"];
/// The region the drill cuts off, and the two that lose it.
const CUT: &str = "c";
const OTHERS: [(&str, &str); 2] = [("a", "b"), ("b", "a")];
/// In each region's own namespace, so fixed ports cannot clash with anything.
const SIDECAR_PORT: u16 = 9537;
const APP_PORT: u16 = 8443;
/// How long the app of each region takes to answer: c is the nearest region of a and b.
const APP_DELAYS: [(&str, Duration); 3] = [
    ("a", Duration::from_millis(25)),
    ("b", Duration::from_millis(25)),
    ("c", Duration::ZERO),
];
/// ICMP, TCP, HTTP and HTTPS: the targets of each region in every sidecar's configuration.
const TARGETS_PER_REGION: usize = 4;
/// The database (issue 16): a Redis primary in a, replicas in b and c (the candidates of a);
/// only sidecar a probes the replicas, with `[ranking] max_replication_lag`.
const DB_PORT: u16 = 6379;
const DB_PRIMARY: &str = "a";
const DB_REPLICAS: [&str; 2] = ["b", "c"];
const MAX_REPLICATION_LAG: Duration = Duration::from_secs(2);

const PROBE_INTERVAL: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
const WINDOW: Duration = Duration::from_secs(20);
/// How long the recording rules' scores may take to settle on the ranking the latencies set.
const RULES_SETTLE: Duration = Duration::from_secs(30);
const HOLD: Duration = Duration::from_secs(5);
/// The sidecar recomputes its ranking this often (`ranker::PERIOD`).
const RANKING_PERIOD: Duration = Duration::from_secs(1);
const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
const EVALUATION_INTERVAL: Duration = Duration::from_secs(1);
/// Added once to every bound: a loaded 2-core CI machine running three sidecars, three app
/// servers, Prometheus and Alertmanager.
const SLACK: Duration = Duration::from_secs(15);
/// For things that only need the processes to start and talk.
const START: Duration = Duration::from_secs(30);

const UNREACHABLE: &str = "RegionprobeRegionUnreachable";
const CANDIDATE_CHANGED: &str = "RegionprobeFailoverCandidateChanged";
const PATH_DOWN: &str = "RegionprobePathDown";
const DESTINATION_DOWN: &str = "RegionprobeDestinationDown";
const SOURCE_CUT_OFF: &str = "RegionprobeSourceCutOff";
const LAG_HIGH: &str = "RegionprobeReplicationLagHigh";
const JOB: &str = "regionprobe";

/// Queries that show only events: legitimately empty while nothing has happened, they must
/// have data by the end of the drill (origin as `dashboards::queries` names it, and why).
const EVENT_ONLY: [(&str, &str); 2] = [
    (
        "dashboards/target-detail.json panel \"Failures by reason\" query A",
        "`increase(...) > 0` of the failure counters: no probe fails before the cut",
    ),
    (
        "dashboards/failover-ranking.json annotation \"Failover candidate changes\"",
        "`changes(...) > 0`: a first choice is no change, the cut makes one",
    ),
];

/// Queries the drill cannot feed: no sidecar of the drill runs a STAMP target (issue 17's
/// `tests/stamp_interop.rs` covers those series), so these panels stay empty here.
const NOT_IN_DRILL: [(&str, &str); 2] = [
    (
        "dashboards/region-matrix.json panel \"STAMP loss, forward: source (rows) to target (columns)\" query A",
        "no STAMP targets in the drill",
    ),
    (
        "dashboards/region-matrix.json panel \"STAMP loss, backward: target (columns) back to source (rows)\" query A",
        "no STAMP targets in the drill",
    ),
];

const APP_ADDR_ENV: &str = "FAILOVER_DRILL_APP_ADDR";
const APP_DELAY_ENV: &str = "FAILOVER_DRILL_APP_DELAY_MS";
const APP_READY: &str = "failover drill app ready";

type Check<'a> = Box<dyn FnMut() -> Result<Instant, String> + 'a>;

/// Runs its closure on drop.
struct Guard<F: Fn()>(F);

impl<F: Fn()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

fn ok_if(ok: bool, seen: impl FnOnce() -> String) -> Result<Instant, String> {
    if ok { Ok(Instant::now()) } else { Err(seen()) }
}

// ---- The sidecars ---------------------------------------------------------------------------

/// `exporter.toml` of the sidecar of region `me`: probes the other regions four ways.
fn sidecar_config(net: &Topology, me: &Region, password: &std::path::Path) -> String {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let mut text = format!(
        "[exporter]\nregion = \"{}\"\nlisten = \"{}:{SIDECAR_PORT}\"\n\n\
         [defaults]\ninterval = \"{}\"\ntimeout = \"{}\"\n\n\
         [ranking]\nwindow = \"{}s\"\nhold = \"{}s\"\n",
        me.name,
        me.addr,
        ms(PROBE_INTERVAL),
        ms(PROBE_TIMEOUT),
        WINDOW.as_secs(),
        HOLD.as_secs()
    );
    if me.name == DB_PRIMARY {
        text.push_str(&format!(
            "max_replication_lag = \"{}s\"\n",
            MAX_REPLICATION_LAG.as_secs()
        ));
        for replica in DB_REPLICAS {
            text.push_str(&format!(
                "\n[[target]]\nname = \"{replica}-redis\"\nregion = \"{replica}\"\n\
                 probe = \"redis\"\naddress = \"{}:{DB_PORT}\"\npassword_file = \"{}\"\n\
                 replication = \"replica\"\n",
                net.region(replica).addr,
                password.display()
            ));
        }
    }
    for other in net.regions.iter().filter(|r| r.name != me.name) {
        let (name, addr) = (other.name, other.addr);
        let targets = [
            ("icmp", "icmp", format!("host = \"{addr}\"")),
            ("tcp", "tcp", format!("address = \"{addr}:{SIDECAR_PORT}\"")),
            (
                "http",
                "http",
                format!("url = \"http://{addr}:{SIDECAR_PORT}/-/healthy\""),
            ),
            (
                "https",
                "http",
                format!("url = \"https://{addr}:{APP_PORT}/\"\ntls_skip_verify = true"),
            ),
        ];
        assert_eq!(targets.len(), TARGETS_PER_REGION);
        for (suffix, probe, keys) in targets {
            text.push_str(&format!(
                "\n[[target]]\nname = \"{name}-{suffix}\"\nregion = \"{name}\"\n\
                 probe = \"{probe}\"\n{keys}\n"
            ));
        }
    }
    text
}

#[derive(Debug)]
struct Sidecar {
    region: &'static str,
    exporter: Exporter,
}

impl Sidecar {
    fn ranking(&self) -> Result<Value, String> {
        services::get_json(self.exporter.addr, "/api/v1/ranking")
    }

    /// The ranking asked from inside the sidecar's own namespace (curl there): the way to
    /// read a sidecar whose network is cut off.
    fn ranking_from_inside(&self, netns: &str) -> Result<Value, String> {
        let url = format!("http://{}/api/v1/ranking", self.exporter.addr);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "curl",
                "-s",
                "--max-time",
                "2",
                &url,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{url}: {e}"))
    }
}

fn candidate(ranking: &Value) -> Option<&str> {
    ranking["best"]["region"].as_str()
}

/// The regions of a `/api/v1/ranking`, best first: (region, rank, score; `None` is +Inf).
fn ranked(ranking: &Value) -> Vec<(String, u64, Option<f64>)> {
    ranking["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["region"].as_str().unwrap_or_default().to_owned(),
                r["rank"].as_u64().unwrap_or_default(),
                r["score_seconds"].as_f64(),
            )
        })
        .collect()
}

fn summary(ranking: &Value) -> String {
    let regions: Vec<String> = ranked(ranking)
        .iter()
        .map(|(region, rank, score)| match score {
            Some(s) => format!("{rank}. {region} {:.1} ms", s * 1000.0),
            None => format!("{rank}. {region} +Inf"),
        })
        .collect();
    format!(
        "candidate {}; {}",
        candidate(ranking).unwrap_or("none"),
        regions.join(", ")
    )
}

/// `region` in a ranking: its rank, whether it is last (alone), its score.
fn standing(ranking: &Value, region: &str) -> Option<(u64, bool, Option<f64>)> {
    let all = ranked(ranking);
    let (_, rank, score) = all.iter().find(|(r, _, _)| r == region)?;
    let last = all.iter().all(|(r, other, _)| r == region || other < rank);
    Some((*rank, last, *score))
}

// ---- The region app servers -----------------------------------------------------------------

/// Not a test: the HTTPS endpoint [`start_app`] runs in each region (a no-op anywhere else).
#[test]
#[ignore = "not a test: the HTTPS endpoint the failover drill runs in each region"]
fn region_app_server() {
    let Ok(addr) = std::env::var(APP_ADDR_ENV) else {
        return;
    };
    let delay: u64 = std::env::var(APP_DELAY_ENV).unwrap().parse().unwrap();
    services::serve_app(
        addr.parse().unwrap(),
        Duration::from_millis(delay),
        APP_READY,
    );
}

/// This test binary, run again in `region`'s namespace as its HTTPS app server.
fn start_app(region: &Region) -> Daemon {
    let delay = APP_DELAYS
        .iter()
        .find(|(r, _)| *r == region.name)
        .unwrap()
        .1;
    let mut daemon = Daemon::spawn(
        &format!("app server of {}", region.name),
        Command::new("ip")
            .args(&region.netns.prefix()[1..])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "region_app_server", "--ignored", "--nocapture"])
            .env(APP_ADDR_ENV, format!("{}:{APP_PORT}", region.addr))
            .env(APP_DELAY_ENV, delay.as_millis().to_string()),
    );
    daemon.wait_for_line(START, |line| (line.trim() == APP_READY).then_some(()));
    daemon
}

// ---- Prometheus answers and notifications ---------------------------------------------------

fn value(series: &Value) -> f64 {
    match series["value"][1].as_str() {
        Some("+Inf") => f64::INFINITY,
        Some("-Inf") => f64::NEG_INFINITY,
        Some(v) => v.parse().unwrap_or(f64::NAN),
        None => f64::NAN,
    }
}

fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or_default()
}

fn pair(series: &Value) -> (String, String) {
    (
        label(series, "source_region").to_owned(),
        label(series, "target_region").to_owned(),
    )
}

/// Whether Prometheus has `alert` for source → target, in `state` (any with `None`).
fn has_alert(
    alerts: &[Value],
    alert: &str,
    (source, target): (&str, &str),
    state: Option<&str>,
) -> bool {
    alerts.iter().any(|a| {
        a["labels"]["alertname"] == alert
            && a["labels"]["source_region"] == source
            && a["labels"]["target_region"] == target
            && state.is_none_or(|s| a["state"] == s)
    })
}

fn alert_line(alert: &Value) -> String {
    format!(
        "{} {}→{}",
        alert["labels"]["alertname"].as_str().unwrap_or_default(),
        alert["labels"]["source_region"].as_str().unwrap_or("-"),
        alert["labels"]["target_region"].as_str().unwrap_or("-"),
    )
}

fn alerts_summary(alerts: &[Value]) -> String {
    let list: Vec<String> = alerts
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                alert_line(a),
                a["state"].as_str().unwrap_or_default()
            )
        })
        .collect();
    format!("alerts: [{}]", list.join(", "))
}

fn notifications_summary(received: &[Notification], since: Instant) -> String {
    let lines: Vec<String> = received
        .iter()
        .map(|n| {
            let alerts: Vec<String> = n.body["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(alert_line)
                .collect();
            format!(
                "[{:>6.1}s] {} {} (receiver {}): {}",
                n.at.saturating_duration_since(since).as_secs_f64(),
                n.path,
                n.body["status"].as_str().unwrap_or_default(),
                n.body["receiver"].as_str().unwrap_or_default(),
                alerts.join(", ")
            )
        })
        .collect();
    if lines.is_empty() {
        "none".to_owned()
    } else {
        lines.join("\n")
    }
}

// ---- Bounds ---------------------------------------------------------------------------------

/// How long each reaction may take, from the rule's `for`, the routes' timers and the
/// intervals, plus [`SLACK`].
#[derive(Debug)]
struct Bounds {
    critical: Route,
    info: Route,
    unreachable_for: Duration,
    /// From a change on the wire to the first rule evaluation that sees it: the next probe,
    /// its timeout, the next scrape, the next evaluation.
    detect: Duration,
    failover: Duration,
    infinite: Duration,
    change_notified: Duration,
    firing: Duration,
    firing_notified: Duration,
    resolved: Duration,
    resolved_notified: Duration,
    recovered: Duration,
}

impl Bounds {
    fn new() -> Self {
        let critical = mixin::route_of(UNREACHABLE);
        let info = mixin::route_of(CANDIDATE_CHANGED);
        let unreachable_for = mixin::alert(UNREACHABLE).hold;
        let detect = PROBE_INTERVAL + PROBE_TIMEOUT + SCRAPE_INTERVAL + EVALUATION_INTERVAL;
        // Down is down at once (issue 14): c is down after `down_after` (3) failed probes in a
        // row, and the next ranking replaces it, without waiting for the window or the hold.
        let down = 3 * PROBE_INTERVAL + PROBE_TIMEOUT + RANKING_PERIOD;
        let failover = down + RANKING_PERIOD + SLACK;
        let firing = detect + unreachable_for + EVALUATION_INTERVAL + SLACK;
        Bounds {
            detect,
            failover,
            // A down region scores +Inf at once, whatever older successes its window holds.
            infinite: failover,
            change_notified: failover + SCRAPE_INTERVAL + EVALUATION_INTERVAL + info.group_wait,
            firing,
            firing_notified: firing + critical.group_wait,
            resolved: detect + SLACK,
            // The group's next flush after the resolution.
            resolved_notified: detect + critical.group_interval + SLACK,
            // c's failures leave the window, then it must be better for HOLD.
            recovered: detect + WINDOW + HOLD + 2 * RANKING_PERIOD + SLACK,
            critical,
            info,
            unreachable_for,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{UNREACHABLE} (for {}) → receiver {} (group_wait {}, group_interval {});\n\
             {CANDIDATE_CHANGED} → receiver {} (group_wait {});\n\
             timers as in dashboards/alertmanager.yml.\n\
             bounds: detection {} (probe interval {} + timeout {} + scrape {} + evaluation {}),\n\
             plus a slack of {} in each;\n\
             cut → firing in Prometheus {} (detection + for + evaluation),\n\
             → at the webhook {} (+ group_wait);\n\
             restore → resolved in Prometheus {} (detection),\n\
             → at the webhook {} (detection + group_interval)",
            secs(self.unreachable_for),
            self.critical.receiver,
            secs(self.critical.group_wait),
            secs(self.critical.group_interval),
            self.info.receiver,
            secs(self.info.group_wait),
            secs(self.detect),
            secs(PROBE_INTERVAL),
            secs(PROBE_TIMEOUT),
            secs(SCRAPE_INTERVAL),
            secs(EVALUATION_INTERVAL),
            secs(SLACK),
            secs(self.firing),
            secs(self.firing_notified),
            secs(self.resolved),
            secs(self.resolved_notified),
        )
    }
}

// ---- The drill ------------------------------------------------------------------------------

/// Everything the drill runs. Fields drop in order: Prometheus and Alertmanager, the
/// receiver, the sidecars, the app servers, the network, the temp dir.
struct Drill {
    clock: Clock,
    bounds: Bounds,
    prometheus_started: SystemTime,
    prometheus: Prometheus,
    alertmanager: Alertmanager,
    webhook: Webhook,
    sidecars: Vec<Sidecar>,
    apps: Vec<Daemon>,
    /// The Redis primary, then the replicas in `DB_REPLICAS` order.
    databases: Vec<Redis>,
    net: Topology,
    _dir: TempDir,
}

impl Drill {
    /// Step 1: the regions, their app servers and sidecars, Alertmanager and Prometheus.
    fn start(prometheus_bin: PathBuf, alertmanager_bin: PathBuf) -> Self {
        let clock = Clock::new();
        let bounds = Bounds::new();
        println!(
            "failover drill: regions {REGIONS:?}, cutting {CUT} off\n{}",
            bounds.describe()
        );
        let net = Topology::build(&REGIONS);
        let dir = TempDir::new("failover-drill");
        let apps: Vec<Daemon> = net.regions.iter().map(start_app).collect();
        let db_addr = |name: &str| SocketAddr::new(net.region(name).addr.into(), DB_PORT);
        let mut databases = vec![Redis::in_namespace(
            &net.region(DB_PRIMARY).netns.prefix(),
            db_addr(DB_PRIMARY),
            None,
        )];
        for replica in DB_REPLICAS {
            databases.push(Redis::in_namespace(
                &net.region(replica).netns.prefix(),
                db_addr(replica),
                Some(db_addr(DB_PRIMARY)),
            ));
        }
        let password = dir.write("redis-password", databases::PASSWORD);
        let sidecars: Vec<Sidecar> = net
            .regions
            .iter()
            .map(|region| {
                let path = dir.write(
                    &format!("exporter-{}.toml", region.name),
                    &sidecar_config(&net, region, &password),
                );
                Sidecar {
                    region: region.name,
                    exporter: Exporter::start_with(BIN, &region.netns.prefix(), &path),
                }
            })
            .collect();

        let webhook = Webhook::start();
        let am_config = dir.write(
            "alertmanager.yml",
            &mixin::alertmanager_config(webhook.addr),
        );
        if which("amtool").is_some() {
            let out = Command::new("amtool")
                .arg("check-config")
                .arg(&am_config)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "amtool check-config on the derived configuration:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let alertmanager = Alertmanager::start(&alertmanager_bin, &am_config, &dir.0.join("am"));

        let scraped: Vec<String> = sidecars
            .iter()
            .map(|s| format!("\"{}\"", s.exporter.addr))
            .collect();
        let (scrape, eval) = (SCRAPE_INTERVAL.as_secs(), EVALUATION_INTERVAL.as_secs());
        let prometheus_config = [
            "global:".to_owned(),
            format!("  scrape_interval: {scrape}s"),
            format!("  scrape_timeout: {scrape}s"),
            format!("  evaluation_interval: {eval}s"),
            "rule_files:".to_owned(),
            format!("  - \"{}/*.yml\"", repo(mixin::RULE_FILES).display()),
            "alerting:".to_owned(),
            "  alertmanagers:".to_owned(),
            format!(
                "    - static_configs: [{{targets: [\"{}\"]}}]",
                alertmanager.addr
            ),
            "scrape_configs:".to_owned(),
            format!("  - job_name: {JOB}"),
            format!(
                "    static_configs: [{{targets: [{}]}}]",
                scraped.join(", ")
            ),
        ]
        .join("\n");
        let config = dir.write("prometheus.yml", &prometheus_config);
        let prometheus = Prometheus::start(&prometheus_bin, &config, &dir.0.join("prometheus"));
        clock.say(&format!(
            "Prometheus http://{}, Alertmanager http://{}, webhook http://{}, sidecars {}",
            prometheus.addr,
            alertmanager.addr,
            webhook.addr,
            scraped.join(" ")
        ));
        clock.lap("setup: namespaces, app servers, sidecars, Alertmanager, Prometheus");
        Drill {
            clock,
            bounds,
            prometheus_started: SystemTime::now(),
            prometheus,
            alertmanager,
            webhook,
            sidecars,
            apps,
            databases,
            net,
            _dir: dir,
        }
    }

    fn sidecar(&self, region: &str) -> &Sidecar {
        self.sidecars.iter().find(|s| s.region == region).unwrap()
    }

    fn say_rankings(&self) {
        for s in &self.sidecars {
            let ranking = s.ranking().map_or_else(|e| e, |r| summary(&r));
            self.clock
                .say(&format!("ranking from {}: {ranking}", s.region));
        }
    }

    /// Step 2: Prometheus scrapes the three sidecars, and every target is up; c becomes the
    /// failover candidate of a and b.
    fn all_up(&self) {
        let targets = REGIONS.len() * (REGIONS.len() - 1) * TARGETS_PER_REGION + DB_REPLICAS.len();
        wait_for(START, "three sidecars scraped, every target up", || {
            let up = self
                .prometheus
                .query(&format!("up{{job=\"{JOB}\"}} == 1"))
                .ok()?;
            let targets_up = self.prometheus.query("regionprobe_target_up == 1").ok()?;
            (up.len() == REGIONS.len() && targets_up.len() == targets).then_some(())
        });
        self.clock.lap(&format!(
            "all up: three sidecars scraped, all {targets} targets up"
        ));

        // A reload (of the unchanged file) gives the "Configuration reloads" annotation an
        // event to show.
        let reload = services::request(self.sidecar("a").exporter.addr, "POST", "/-/reload");
        assert!(
            matches!(reload, Ok((200, _))),
            "reload of sidecar a: {reload:?}"
        );

        wait_for(WINDOW + HOLD + SLACK, "c the candidate of a and b", || {
            OTHERS
                .iter()
                .all(|(source, _)| {
                    let ranking = self.sidecar(source).ranking();
                    ranking.is_ok_and(|r| candidate(&r) == Some(CUT))
                })
                .then_some(())
        });
        self.say_rankings();
        self.clock.lap("c the failover candidate of a and b");
    }

    /// Step 3a: every rule evaluates without error, and every recording rule has a value for
    /// every (source, target) pair; the rules' score ranks c first from a and b too.
    fn rules_on_live_data(&self) {
        let rules = mixin::rules();
        let health = wait_for(START, "every rule evaluated", || {
            let data = self.prometheus.api("rules", &[]).ok()?;
            let health: Vec<(String, String, String)> = data["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .map(|r| {
                    let text = |key: &str| r[key].as_str().unwrap_or_default().to_owned();
                    (text("name"), text("health"), text("lastError"))
                })
                .collect();
            (health.len() == rules.len() && health.iter().all(|(_, h, _)| h != "unknown"))
                .then_some(health)
        });
        let broken: Vec<String> = health
            .iter()
            .filter(|(_, health, _)| health != "ok")
            .map(|(name, health, error)| format!("{name}: {health}: {error}"))
            .collect();
        assert!(
            broken.is_empty(),
            "rules failing in Prometheus:\n{}",
            broken.join("\n")
        );

        let pairs: BTreeSet<(String, String)> = REGIONS
            .iter()
            .flat_map(|s| {
                REGIONS
                    .iter()
                    .filter(move |t| *t != s)
                    .map(move |t| (s.to_string(), t.to_string()))
            })
            .collect();
        let records: Vec<&str> = rules
            .iter()
            .filter(|r| r.kind == "record")
            .map(|r| r.name.as_str())
            .collect();
        let scores = |expr: &str| -> BTreeMap<(String, String), f64> {
            let result = self.prometheus.query(expr).unwrap_or_default();
            result.iter().map(|s| (pair(s), value(s))).collect()
        };
        // Most rules are per (source, target) pair; the fault-localisation ratios are per
        // target region or per source region: each must cover every region.
        let regions: BTreeSet<String> = REGIONS.iter().map(|r| r.to_string()).collect();
        wait_for(START, "every recording rule for every pair", || {
            records
                .iter()
                .all(|record| {
                    let result = self.prometheus.query(record).unwrap_or_default();
                    let finite = || result.iter().filter(|s| value(s).is_finite());
                    let by = |name: &str| -> BTreeSet<String> {
                        finite().map(|s| label(s, name).to_owned()).collect()
                    };
                    match (
                        result.iter().all(|s| !label(s, "source_region").is_empty()),
                        result.iter().all(|s| !label(s, "target_region").is_empty()),
                    ) {
                        _ if result.is_empty() => false,
                        (true, true) => pairs.is_subset(&finite().map(pair).collect()),
                        (false, true) => regions.is_subset(&by("target_region")),
                        (true, false) => regions.is_subset(&by("source_region")),
                        (false, false) => false,
                    }
                })
                .then_some(())
        });
        // The first seconds of a series are few samples, and `increase()` extrapolates the
        // attempts and the successes each on its own: an apparent loss of a few percent, worth
        // tens of milliseconds of score, until a few more scrapes are in. The ranking by the
        // rules is asked for once that settles, within RULES_SETTLE.
        let c_first = |rules: &BTreeMap<(String, String), f64>| {
            OTHERS.iter().all(|(source, other)| {
                let score = |target: &str| {
                    rules
                        .get(&(source.to_string(), target.to_string()))
                        .copied()
                        .unwrap_or(f64::NAN)
                };
                score(CUT) < score(other)
            })
        };
        let deadline = Instant::now() + RULES_SETTLE;
        let mut rules_score = scores("regionprobe:region_score_seconds:5m");
        while !c_first(&rules_score) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
            rules_score = scores("regionprobe:region_score_seconds:5m");
        }
        let exporter_score = scores("regionprobe_region_score_seconds");
        self.clock.say(&format!(
            "{} recording rules have a finite value for each of the {} pairs; \
             score by the rules (histograms, 5m) and by the exporter ({}s window):",
            records.len(),
            pairs.len(),
            WINDOW.as_secs()
        ));
        for pair in &pairs {
            let ms =
                |scores: &BTreeMap<_, f64>| scores.get(pair).copied().unwrap_or(f64::NAN) * 1000.0;
            self.clock.say(&format!(
                "  {}→{}  {:7.2} ms  {:7.2} ms",
                pair.0,
                pair.1,
                ms(&rules_score),
                ms(&exporter_score)
            ));
        }
        for (source, other) in OTHERS {
            let score = |target: &str| rules_score[&(source.to_owned(), target.to_owned())];
            assert!(
                score(CUT) < score(other),
                "the recording rules rank {other} before {CUT} from {source}, \
                 the exporter does not: {rules_score:?}"
            );
        }
    }

    /// Runs the dashboards' queries (`only` those, if given) over the drill until now: how
    /// many series with numbers each returned (values for a variable).
    fn dashboard_queries(
        &self,
        only: Option<&[&str]>,
    ) -> Vec<(dashboards::Query, Result<usize, String>)> {
        let start = unix_seconds(self.prometheus_started);
        let end = unix_seconds(SystemTime::now());
        let queries = dashboards::queries(&repo("dashboards"), |selector, label| {
            self.prometheus
                .label_values(label, selector, start, end)
                .unwrap_or_default()
        });
        assert!(queries.len() > 40, "{} dashboard queries", queries.len());
        queries
            .into_iter()
            .filter(|q| only.is_none_or(|only| only.contains(&q.origin.as_str())))
            .map(|query| {
                let answer = dashboards::answer(&self.prometheus, &query, start, end);
                (query, answer)
            })
            .collect()
    }

    /// Step 3b: every dashboard query answers with data, but the event-only ones (for now).
    fn dashboards_have_data(&self) {
        let event_only: Vec<&str> = EVENT_ONLY.iter().map(|(origin, _)| *origin).collect();
        let last_empty = std::cell::RefCell::new(String::new());
        // The queries still empty, named if the wait times out.
        let _name_them = Guard(|| {
            if std::thread::panicking() {
                eprintln!("dashboard queries without data:\n{}", last_empty.borrow());
            }
        });
        let results = wait_for(START, "every dashboard query with data", || {
            let results = self.dashboard_queries(None);
            let errors: Vec<String> = results
                .iter()
                .filter_map(|(q, a)| {
                    a.as_ref()
                        .err()
                        .map(|e| format!("{}: {e}\n  {}", q.origin, q.promql))
                })
                .collect();
            assert!(
                errors.is_empty(),
                "dashboard queries failed:\n{}",
                errors.join("\n")
            );
            let empty: Vec<String> = results
                .iter()
                .filter(|(q, a)| {
                    !event_only.contains(&q.origin.as_str())
                        && !NOT_IN_DRILL.iter().any(|(o, _)| *o == q.origin)
                        && !a.as_ref().is_ok_and(|n| *n > 0)
                })
                .map(|(q, _)| format!("{}: {}", q.origin, q.promql))
                .collect();
            *last_empty.borrow_mut() = empty.join("\n");
            empty.is_empty().then_some(results)
        });
        for (origin, _) in EVENT_ONLY.iter().chain(&NOT_IN_DRILL) {
            assert!(
                results.iter().any(|(q, _)| q.origin == *origin),
                "EVENT_ONLY or NOT_IN_DRILL names {origin}, which no dashboard has"
            );
        }
        println!("    series (with numbers; values of a variable)");
        for (query, answer) in &results {
            let n = answer.as_ref().unwrap();
            let kind = match &query.kind {
                dashboards::Kind::Instant => "instant".to_owned(),
                dashboards::Kind::Range(step) => format!("range {step}s"),
                dashboards::Kind::LabelValues(_) => "variable".to_owned(),
            };
            let note = match EVENT_ONLY.iter().find(|(o, _)| *o == query.origin) {
                Some((_, why)) if *n == 0 => {
                    format!("\n              none yet, checked at the end: {why}")
                }
                _ => String::new(),
            };
            println!("    {n:>6}  {kind:<9} {}{note}", query.origin);
        }
        self.clock.lap(&format!(
            "dashboards: {} queries answered with data, rules checked",
            results.len()
        ));
    }

    /// The sidecar of `source` ranks c last with `expected` as its candidate; with
    /// `unreachable`, c scores +Inf (not one success in the window).
    fn c_ranked_last(
        &self,
        source: &'static str,
        expected: &'static str,
        unreachable: bool,
    ) -> Check<'_> {
        Box::new(move || {
            let ranking = self.sidecar(source).ranking()?;
            let (_, last, score) = standing(&ranking, CUT).ok_or("c not ranked")?;
            let ok =
                last && candidate(&ranking) == Some(expected) && (!unreachable || score.is_none());
            ok_if(ok, || format!("from {source}: {}", summary(&ranking)))
        })
    }

    /// The same from Prometheus' view: `regionprobe_region_rank` and `regionprobe_failover_best`.
    fn c_ranked_last_in_prometheus(&self) -> Check<'_> {
        Box::new(move || {
            let ranks = self
                .prometheus
                .query("regionprobe_region_rank{source_region=~\"a|b\"}")?;
            let best = self
                .prometheus
                .query("regionprobe_failover_best{source_region=~\"a|b\"} == 1")?;
            let ok = OTHERS.iter().all(|(source, other)| {
                let rank = |target: &str| {
                    ranks
                        .iter()
                        .find(|s| pair(s) == (source.to_string(), target.to_string()))
                        .map(value)
                };
                let chosen: Vec<&str> = best
                    .iter()
                    .filter(|s| label(s, "source_region") == *source)
                    .map(|s| label(s, "target_region"))
                    .collect();
                matches!((rank(CUT), rank(other)), (Some(c), Some(o)) if c > o)
                    && chosen == [*other]
            });
            ok_if(ok, || {
                let show = |list: &[Value]| -> Vec<String> {
                    list.iter()
                        .map(|s| format!("{:?}={}", pair(s), value(s)))
                        .collect()
                };
                format!("ranks {:?}, candidates {:?}", show(&ranks), show(&best))
            })
        })
    }

    /// `RegionprobeRegionUnreachable` a→c and b→c in `state` in Prometheus, or (`None`) gone.
    fn unreachable_alerts(&self, state: Option<&'static str>) -> Check<'_> {
        Box::new(move || {
            let alerts = self.prometheus.alerts()?;
            let ok = OTHERS.iter().all(|(source, _)| {
                let present = has_alert(&alerts, UNREACHABLE, (source, CUT), state);
                present == state.is_some()
            });
            ok_if(ok, || alerts_summary(&alerts))
        })
    }

    /// A notification with `status` of `alert` for each pair, after `after`, from the
    /// receiver of the alert's route, with the alert's labels and annotations; it happened
    /// when the last arrived.
    fn notified(
        &self,
        alert: &'static str,
        status: &'static str,
        pairs: &'static [(&'static str, &'static str)],
        after: Instant,
    ) -> Check<'_> {
        let severity = mixin::alert(alert).severity;
        let receiver = mixin::route_of(alert).receiver;
        Box::new(move || {
            let received = self.webhook.received();
            let mut last = after;
            for (source, target) in pairs {
                let labels = [
                    ("alertname", alert),
                    ("source_region", *source),
                    ("target_region", *target),
                    ("severity", severity.as_str()),
                ];
                let Some(n) = received
                    .iter()
                    .find(|n| n.at >= after && n.tells(status, &labels))
                else {
                    return Err(notifications_summary(&received, after));
                };
                assert_eq!(
                    n.body["receiver"],
                    receiver.as_str(),
                    "routed elsewhere: {}",
                    n.body
                );
                let told = n.body["alerts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| labels.iter().all(|(k, v)| a["labels"][*k] == *v))
                    .unwrap();
                for annotation in ["summary", "description", "runbook_url"] {
                    assert!(
                        told["annotations"][annotation]
                            .as_str()
                            .is_some_and(|s| !s.is_empty()),
                        "no {annotation}: {told}"
                    );
                }
                last = last.max(n.at);
            }
            Ok(last)
        })
    }

    /// Step 4: c is cut off. It ranks last, a and b fail over, the alert fires and is
    /// notified.
    fn cut(&self) {
        self.net.cut(CUT);
        let cut_at = Instant::now();
        self.clock
            .say(&format!("cut {CUT} off (its bridge port is down)"));
        let b = &self.bounds;
        self.clock.watch(
            cut_at,
            "cut",
            vec![
                milestone(
                    "c last from a and b, a fails over to b and b to a (/api/v1/ranking)",
                    b.failover,
                    both(
                        self.c_ranked_last("a", "b", false),
                        self.c_ranked_last("b", "a", false),
                    ),
                ),
                milestone(
                    "the same in Prometheus (regionprobe_region_rank, _failover_best)",
                    b.failover + SCRAPE_INTERVAL,
                    self.c_ranked_last_in_prometheus(),
                ),
                milestone(
                    "c scores +Inf from a and b (down: its probes failed 3 times in a row)",
                    b.infinite,
                    both(
                        self.c_ranked_last("a", "b", true),
                        self.c_ranked_last("b", "a", true),
                    ),
                ),
                milestone(
                    "RegionprobeFailoverCandidateChanged a→b, b→a at the webhook",
                    b.change_notified,
                    self.notified(
                        CANDIDATE_CHANGED,
                        "firing",
                        &[("a", "b"), ("b", "a")],
                        cut_at,
                    ),
                ),
                milestone(
                    "RegionprobeRegionUnreachable a→c, b→c firing in Prometheus",
                    b.firing,
                    self.unreachable_alerts(Some("firing")),
                ),
                milestone(
                    "RegionprobeRegionUnreachable a→c, b→c firing at the webhook",
                    b.firing_notified,
                    self.notified(UNREACHABLE, "firing", &[("a", "c"), ("b", "c")], cut_at),
                ),
            ],
        );
        self.clock.restart_lap();
    }

    /// Step 5: c is restored. Its targets come back, the alert resolves (and is notified
    /// so), c ranks first again.
    fn restore(&self) {
        self.net.restore(CUT);
        let restored_at = Instant::now();
        self.clock
            .say(&format!("restored {CUT} (its bridge port is up)"));
        let c_up = Box::new(|| {
            let up = self
                .prometheus
                .query(&format!("up{{job=\"{JOB}\"}} == 1"))?;
            let c_targets = self.prometheus.query(&format!(
                "regionprobe_target_up{{source_region=~\"a|b\", target_region=\"{CUT}\"}}"
            ))?;
            let ok = up.len() == REGIONS.len()
                && c_targets.len() == OTHERS.len() * TARGETS_PER_REGION + 1
                && c_targets.iter().all(|s| value(s) == 1.0);
            ok_if(ok, || {
                let targets: Vec<String> = c_targets
                    .iter()
                    .map(|s| {
                        format!(
                            "{}/{}={}",
                            label(s, "source_region"),
                            label(s, "target"),
                            value(s)
                        )
                    })
                    .collect();
                format!("{} sidecars scraped; c's targets: {targets:?}", up.len())
            })
        });
        let c_first = |source: &'static str| -> Check<'_> {
            Box::new(move || {
                let ranking = self.sidecar(source).ranking()?;
                let (rank, last, score) = standing(&ranking, CUT).ok_or("c not ranked")?;
                let ok = rank == 1 && !last && score.is_some() && candidate(&ranking) == Some(CUT);
                ok_if(ok, || format!("from {source}: {}", summary(&ranking)))
            })
        };
        let b = &self.bounds;
        self.clock.watch(
            restored_at,
            "restore",
            vec![
                milestone(
                    "c's 9 targets up from a and b (8 + a's c-redis), c scraped (Prometheus)",
                    b.resolved,
                    c_up,
                ),
                milestone(
                    "RegionprobeRegionUnreachable a→c, b→c resolved in Prometheus",
                    b.resolved,
                    self.unreachable_alerts(None),
                ),
                milestone(
                    "RegionprobeRegionUnreachable a→c, b→c resolved at the webhook",
                    b.resolved_notified,
                    self.notified(
                        UNREACHABLE,
                        "resolved",
                        &[("a", "c"), ("b", "c")],
                        restored_at,
                    ),
                ),
                milestone(
                    "c ranks first from a and b again, and is their candidate",
                    b.recovered,
                    both(c_first("a"), c_first("b")),
                ),
            ],
        );
        self.clock.restart_lap();
    }

    /// One direction of one path cut (issue 14): a's new flows to c are dropped at c, c still
    /// reaches a and b still reaches c. a loses c and fails over; Prometheus localises the
    /// fault to the path a→c (not to c, which b reaches, nor to a, which reaches b).
    fn cut_one_way(&self) {
        self.net.cut_one_way("a", CUT);
        let cut_at = Instant::now();
        self.clock
            .say("cut the path a→c one way (c drops a's new flows)");
        let b = &self.bounds;
        let path_alert = |state: Option<&'static str>| -> Check<'_> {
            Box::new(move || {
                let alerts = self.prometheus.alerts()?;
                let path = has_alert(&alerts, PATH_DOWN, ("a", CUT), state);
                let misplaced = alerts.iter().any(|a| {
                    let name = &a["labels"]["alertname"];
                    name == DESTINATION_DOWN || name == SOURCE_CUT_OFF
                });
                ok_if(path == state.is_some() && !misplaced, || {
                    alerts_summary(&alerts)
                })
            })
        };
        let views = Box::new(|| {
            let a = self.sidecar("a").ranking()?;
            let from_b = self.sidecar("b").ranking()?;
            let from_c = self.sidecar(CUT).ranking()?;
            let up = |ranking: &Value, region: &str| {
                ranking["regions"]
                    .as_array()
                    .and_then(|r| r.iter().find(|r| r["region"] == region))
                    .map(|r| r["up"].clone())
            };
            let ok = up(&a, CUT) == Some(Value::Bool(false))
                && candidate(&a) == Some("b")
                && up(&from_b, CUT) == Some(Value::Bool(true))
                && candidate(&from_b) == Some(CUT)
                && up(&from_c, "a") == Some(Value::Bool(true))
                && a["source_impaired"].is_null();
            ok_if(ok, || {
                format!(
                    "from a: {}; from b: {}; from c: {}",
                    summary(&a),
                    summary(&from_b),
                    summary(&from_c)
                )
            })
        });
        let path_for = mixin::alert(PATH_DOWN).hold;
        self.clock.watch(
            cut_at,
            "one-way cut",
            vec![
                milestone(
                    "c down from a only: a fails over to b, b keeps c, c still reaches a",
                    b.failover,
                    views,
                ),
                milestone(
                    "RegionprobePathDown a→c firing, neither DestinationDown nor SourceCutOff",
                    b.detect + path_for + EVALUATION_INTERVAL + SLACK,
                    path_alert(Some("firing")),
                ),
            ],
        );
        self.net.restore_one_way(CUT);
        let restored_at = Instant::now();
        self.clock.say("restored the path a→c");
        self.clock.watch(
            restored_at,
            "one-way restore",
            vec![milestone(
                "RegionprobePathDown a→c resolved in Prometheus",
                b.resolved,
                path_alert(None),
            )],
        );
        self.clock.restart_lap();
    }

    /// The sidecar of a cut off from the network (issue 14): it loses both other regions at
    /// once, says it is impaired (the fault is its own), and keeps its candidate; once back it
    /// is not impaired any more.
    fn cut_own_network(&self) {
        let a = self.sidecar("a");
        let netns = &self.net.region("a").netns.name;
        let before = a.ranking().expect("a's ranking before its cut");
        let kept = candidate(&before).expect("a has a candidate").to_owned();
        self.net.cut("a");
        let cut_at = Instant::now();
        self.clock.say(&format!(
            "cut a's own network (its bridge port is down); its candidate is {kept}"
        ));
        let b = &self.bounds;
        let impaired = |expected: bool| -> Check<'_> {
            let kept = kept.clone();
            Box::new(move || {
                let ranking = a.ranking_from_inside(netns)?;
                let says = ranking["source_impaired"]
                    .as_str()
                    .is_some_and(|why| why.contains("every other region is down"));
                // Back, a better candidate may take over again after the hold: only the cut
                // must keep it.
                let ok =
                    says == expected && (!expected || candidate(&ranking) == Some(kept.as_str()));
                ok_if(ok, || {
                    format!(
                        "impaired: {}; {}",
                        ranking["source_impaired"],
                        summary(&ranking)
                    )
                })
            })
        };
        self.clock.watch(
            cut_at,
            "own network cut",
            vec![milestone(
                "a says it is impaired and keeps its candidate",
                b.failover,
                impaired(true),
            )],
        );
        self.net.restore("a");
        let restored_at = Instant::now();
        self.clock.say("restored a's network");
        self.clock.watch(
            restored_at,
            "own network restore",
            vec![milestone(
                "a no longer impaired",
                b.failover,
                impaired(false),
            )],
        );
        self.clock.restart_lap();
    }

    /// Step 5c (issue 16): the replica of a's candidate falls behind. c's Redis replica loses
    /// its link (made a replica of a closed port: its lag is unbounded), so c is not eligible
    /// from a, whose candidate moves to b; `RegionprobeReplicationLagHigh` a→c fires and is
    /// notified. The link is restored: the alert resolves, c is a's candidate again.
    fn replica_falls_behind(&self) {
        wait_for(WINDOW + HOLD + SLACK, "c the candidate of a again", || {
            let ranking = self.sidecar(DB_PRIMARY).ranking().ok()?;
            (candidate(&ranking) == Some(CUT)).then_some(())
        });
        self.clock
            .lap("c the candidate of a again, its replica in sync");
        let replica = &self.databases[1 + DB_REPLICAS.iter().position(|r| *r == CUT).unwrap()];
        let primary = self.databases[0].addr();
        let reply = replica.command(&["REPLICAOF", "127.0.0.1", "1"]);
        assert!(
            reply.starts_with("+OK"),
            "REPLICAOF on c's replica: {reply}"
        );
        let behind_at = Instant::now();
        self.clock.say(&format!(
            "c's replica falls behind (its link to the primary {primary} is broken)"
        ));
        let ineligible = |eligible: bool, expected: &'static str| -> Check<'_> {
            Box::new(move || {
                let ranking = self.sidecar(DB_PRIMARY).ranking()?;
                let c = ranking["regions"]
                    .as_array()
                    .and_then(|r| r.iter().find(|r| r["region"] == CUT))
                    .cloned()
                    .unwrap_or(Value::Null);
                let ok = c["eligible"] == eligible && candidate(&ranking) == Some(expected);
                ok_if(ok, || format!("from a: c {c}; {}", summary(&ranking)))
            })
        };
        let in_prometheus = Box::new(|| {
            let eligible = self.prometheus.query(&format!(
                "regionprobe_region_eligible{{source_region=\"a\", target_region=\"{CUT}\", \
                 reason=\"replication_lag\"}} == 0"
            ))?;
            let best = self.prometheus.query(
                "regionprobe_failover_best{source_region=\"a\", target_region=\"b\"} == 1",
            )?;
            ok_if(eligible.len() == 1 && best.len() == 1, || {
                format!("c ineligible: {eligible:?}; b best: {best:?}")
            })
        });
        let lag_alert = |state: Option<&'static str>| -> Check<'_> {
            Box::new(move || {
                let alerts = self.prometheus.alerts()?;
                let present = has_alert(&alerts, LAG_HIGH, ("a", CUT), state);
                ok_if(present == state.is_some(), || alerts_summary(&alerts))
            })
        };
        // Alertmanager's own view, not the webhook: the warning route's group_wait (30 s)
        // and group_interval (5 m) would make the drill wait minutes for the notifications.
        let route = mixin::route_of(LAG_HIGH);
        let in_alertmanager = |active: bool| -> Check<'_> {
            let receiver = route.receiver.clone();
            Box::new(move || {
                let alerts = services::get_json(self.alertmanager.addr, "/api/v2/alerts")?;
                let alerts = alerts.as_array().cloned().unwrap_or_default();
                let ours = alerts.iter().find(|a| {
                    a["labels"]["alertname"] == LAG_HIGH
                        && a["labels"]["source_region"] == "a"
                        && a["labels"]["target_region"] == CUT
                        && a["status"]["state"] == "active"
                });
                let routed = ours.is_some_and(|a| {
                    a["receivers"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r["name"] == receiver.as_str()))
                });
                ok_if(routed == active && (active || ours.is_none()), || {
                    format!("Alertmanager alerts: {alerts:?}")
                })
            })
        };
        let b = &self.bounds;
        let lag_for = mixin::alert(LAG_HIGH).hold;
        // The replica probe sees the link down at its next probe; the ranking follows.
        let moved = PROBE_INTERVAL + PROBE_TIMEOUT + 2 * RANKING_PERIOD + SLACK;
        let firing = moved + SCRAPE_INTERVAL + lag_for + 2 * EVALUATION_INTERVAL;
        self.clock.say(&format!(
            "{LAG_HIGH} (for {}) → receiver {}",
            secs(lag_for),
            route.receiver,
        ));
        self.clock.watch(
            behind_at,
            "replica behind",
            vec![
                milestone(
                    "c not eligible from a, a's candidate moves to b (/api/v1/ranking)",
                    moved,
                    ineligible(false, "b"),
                ),
                milestone(
                    "the same in Prometheus (regionprobe_region_eligible, _failover_best)",
                    moved + SCRAPE_INTERVAL,
                    in_prometheus,
                ),
                milestone(
                    "RegionprobeReplicationLagHigh a→c firing in Prometheus",
                    firing,
                    lag_alert(Some("firing")),
                ),
                milestone(
                    "RegionprobeReplicationLagHigh a→c active in Alertmanager, routed to its receiver",
                    firing + EVALUATION_INTERVAL,
                    in_alertmanager(true),
                ),
            ],
        );
        self.clock.restart_lap();

        let reply = replica.command(&[
            "REPLICAOF",
            &primary.ip().to_string(),
            &primary.port().to_string(),
        ]);
        assert!(
            reply.starts_with("+OK"),
            "REPLICAOF on c's replica: {reply}"
        );
        let caught_up_at = Instant::now();
        self.clock
            .say("c's replica catches up (replica of the primary again)");
        self.clock.watch(
            caught_up_at,
            "replica back",
            vec![
                milestone(
                    "RegionprobeReplicationLagHigh a→c resolved in Prometheus",
                    b.resolved,
                    lag_alert(None),
                ),
                milestone(
                    "RegionprobeReplicationLagHigh a→c gone from Alertmanager",
                    b.resolved + EVALUATION_INTERVAL,
                    in_alertmanager(false),
                ),
                milestone(
                    "c eligible and a's candidate again (after the hold)",
                    moved + HOLD + RANKING_PERIOD,
                    ineligible(true, CUT),
                ),
            ],
        );
        self.clock.restart_lap();
    }

    /// The event-only dashboard queries have had their events.
    fn events_have_data(&self) {
        let event_only: Vec<&str> = EVENT_ONLY.iter().map(|(origin, _)| *origin).collect();
        for (query, answer) in self.dashboard_queries(Some(&event_only)) {
            let n = answer.unwrap_or_else(|e| panic!("{}: {e}", query.origin));
            assert!(
                n > 0,
                "{} has no data, even after the cut:\n  {}",
                query.origin,
                query.promql
            );
            self.clock.say(&format!("  {n} series: {}", query.origin));
        }
        self.clock.lap("event-only dashboard queries have data");
    }

    /// Step 6: what happened, and how long each step took.
    fn report(&self) {
        self.say_rankings();
        for daemon in [&self.prometheus.daemon, &self.alertmanager.daemon] {
            let lines = daemon.lines_with(&["level=warn", "level=error"]);
            let lines = if lines.is_empty() {
                "none".to_owned()
            } else {
                lines.join("\n")
            };
            println!("\n{} warnings and errors: {lines}", daemon.name);
        }
        println!(
            "\nnotifications received (time since the start):\n{}\n\nfailover drill timings:\n{}",
            notifications_summary(&self.webhook.received(), self.clock.start()),
            self.clock.table()
        );
    }
}

impl Drop for Drill {
    /// On failure: the steps so far, Prometheus' alerts, the notifications, the rankings and
    /// the tail of every process's log, before the processes are killed.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!(
            "\n==== failover drill failed; steps so far:\n{}",
            self.clock.table()
        );
        match self.prometheus.alerts() {
            Ok(alerts) => eprintln!("Prometheus {}", alerts_summary(&alerts)),
            Err(e) => eprintln!("Prometheus alerts: {e}"),
        }
        eprintln!(
            "notifications (time since the start):\n{}",
            notifications_summary(&self.webhook.received(), self.clock.start())
        );
        for sidecar in &self.sidecars {
            let ranking = sidecar.ranking().map_or_else(|e| e, |r| summary(&r));
            // The regionprobe lines, without the TLS and HTTP libraries' debug chatter.
            let log = sidecar.exporter.log_text();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains(" DEBUG ") || l.contains("regionprobe"))
                .collect();
            eprintln!(
                "---- sidecar {}: ranking {ranking}; log (tail):\n{}",
                sidecar.region,
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        for daemon in &self.apps {
            eprintln!("---- {} (tail)\n{}", daemon.name, daemon.tail(10));
        }
        for daemon in [&self.prometheus.daemon, &self.alertmanager.daemon] {
            eprintln!("---- {} log (tail)\n{}", daemon.name, daemon.tail(40));
        }
    }
}

#[test]
#[ignore = "failover drill: needs root, prometheus and alertmanager; run by .ci/run and scripts/failover-drill.sh"]
fn failover_drill() {
    let prometheus = which("prometheus");
    let alertmanager = which("prometheus-alertmanager").or_else(|| which("alertmanager"));
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (network namespaces)");
    }
    if which("ip").is_none() {
        missing.push("ip (apt-get install iproute2)");
    }
    if prometheus.is_none() {
        missing.push("prometheus (apt-get install prometheus)");
    }
    if alertmanager.is_none() {
        missing.push("prometheus-alertmanager (apt-get install prometheus-alertmanager)");
    }
    if which("redis-server").is_none() {
        missing.push("redis-server (apt-get install redis-server)");
    }
    if skip_unless(
        missing.is_empty(),
        &format!("the failover drill needs {}", missing.join(", ")),
    ) {
        return;
    }

    let drill = Drill::start(prometheus.unwrap(), alertmanager.unwrap());
    drill.all_up();
    drill.rules_on_live_data();
    drill.dashboards_have_data();
    drill.cut();
    drill.restore();
    drill.cut_one_way();
    drill.cut_own_network();
    drill.replica_falls_behind();
    drill.events_have_data();
    drill.report();
}
