//! The container image (docker/Dockerfile) built and run for real, the health check it uses,
//! and the deployment examples (docker/compose.yaml, deploy/kubernetes/).
//!
//! Tests that build or run images need root and a Docker engine, take minutes on a cold build
//! cache and are `#[ignore]`d, so a plain `cargo test` stays quick: `.ci/run` runs them in its
//! Docker step after `docker/make-base-images.sh`; by hand:
//! `cargo test --test docker -- --include-ignored --nocapture`.
//! Every container, network and image they create is named `rp-test-<pid>-...` /
//! `regionprobe-test:<pid>-...`, labelled `org.regionprobe.test`, and removed by a guard's
//! `Drop`, also when the test panics.

// Blocking helpers on real time, as in the test kit.
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use common::{BIN, Exporter, Scrape, TempDir, skip_unless};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BUILDER_IMAGE: &str = "rust:1.95-bookworm";
/// The issue's goal for the final image, in Docker's (decimal) megabytes.
const SIZE_GOAL_BYTES: u64 = 20_000_000;
const LABEL: &str = "org.regionprobe.test=1";
const WAIT: Duration = Duration::from_secs(30);
const OPEN_PING: &str = "net.ipv4.ping_group_range=0 2147483647";
const CLOSED_PING: &str = "net.ipv4.ping_group_range=1 0";

// ---------------------------------------------------------------------------------------------
// `regionprobe healthcheck` against the real binary (no Docker needed).

fn local_config(listen: &str) -> String {
    format!(
        "[exporter]\nregion = \"local\"\nlisten = \"{listen}\"\n\n\
         [[target]]\nname = \"discard\"\nregion = \"local\"\nprobe = \"tcp\"\naddress = \"127.0.0.1:9\"\n"
    )
}

fn healthcheck(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("healthcheck")
        .args(args)
        .output()
        .expect("run regionprobe healthcheck");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn healthcheck_exits_0_while_the_exporter_serves() {
    let exporter = Exporter::start(&local_config("127.0.0.1:0"));
    let url = format!("http://{}/-/healthy", exporter.addr);
    let (code, stdout, stderr) = healthcheck(&["--url", &url]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, format!("{url}: HTTP 200\n"));

    // From the configuration: the wildcard address is asked on loopback.
    let dir = TempDir::new("healthcheck");
    let port = exporter.addr.port();
    let config = dir.write("exporter.toml", &local_config(&format!("0.0.0.0:{port}")));
    let (code, stdout, stderr) = healthcheck(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        format!("http://127.0.0.1:{port}/-/healthy: HTTP 200\n")
    );

    // Any other status is unhealthy.
    let (code, _, stderr) = healthcheck(&["--url", &format!("http://{}/nope", exporter.addr)]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        format!(
            "unhealthy: http://{}/nope: answered \"HTTP/1.1 404 Not Found\", expected 200\n",
            exporter.addr
        )
    );
}

#[test]
fn healthcheck_exits_1_with_one_line_when_nothing_answers() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = TempDir::new("healthcheck");
    let config = dir.write("exporter.toml", &local_config(&format!("127.0.0.1:{port}")));
    let (code, stdout, stderr) = healthcheck(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stderr.starts_with(&format!(
            "unhealthy: http://127.0.0.1:{port}/-/healthy: cannot connect (127.0.0.1:{port}: "
        )) && stderr.lines().count() == 1,
        "{stderr}"
    );

    // A listener that never answers: the 2 s timeout, not a hang.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let url = format!("http://{}/-/healthy", silent.local_addr().unwrap());
    let (code, _, stderr) = healthcheck(&["--url", &url]);
    let took = started.elapsed();
    assert_eq!(code, Some(1));
    assert_eq!(stderr, format!("unhealthy: {url}: no answer within 2s\n"));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // An unusable configuration is a failure too, with the loader's message.
    let (code, _, stderr) = healthcheck(&["--config", "/nonexistent/exporter.toml"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.starts_with("unhealthy: /nonexistent/exporter.toml: cannot read"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Deployment examples: parsed and validated without a registry.

#[test]
fn container_and_demo_configs_pass_check_config() {
    let mut files = vec![Path::new(ROOT).join("docker/exporter.toml")];
    let mut demo: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("docker/demo"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    demo.sort();
    assert_eq!(demo.len(), 3, "one config per demo region: {demo:?}");
    files.extend(demo);
    for file in files {
        let out = Command::new(BIN)
            .arg("check-config")
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `docker compose` (v2 plugin) or `docker-compose` (v1), whichever works here.
fn compose_command() -> Option<Vec<&'static str>> {
    [vec!["docker", "compose"], vec!["docker-compose"]]
        .into_iter()
        .find(|cmd| {
            Command::new(cmd[0])
                .args(&cmd[1..])
                .arg("version")
                .output()
                .is_ok_and(|out| out.status.success())
        })
}

#[test]
fn compose_demo_is_valid() {
    let compose = compose_command();
    if skip_unless(
        compose.is_some(),
        "needs `docker compose` or `docker-compose` to validate docker/compose.yaml",
    ) {
        return;
    }
    let compose = compose.unwrap();
    let out = Command::new(compose[0])
        .args(&compose[1..])
        .args(["-f", "docker/compose.yaml", "config", "-q"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{compose:?} config -q: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(compose[0])
        .args(&compose[1..])
        .args(["-f", "docker/compose.yaml", "config", "--services"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    let mut services: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    services.sort();
    // Prometheus loads the rules from dashboards/ (mounted at /etc/prometheus/regionprobe)
    // with the globs of docker/demo/prometheus.yml: they must find them.
    let prometheus =
        std::fs::read_to_string(Path::new(ROOT).join("docker/demo/prometheus.yml")).unwrap();
    assert!(prometheus.contains("- /etc/prometheus/regionprobe/rules/*.yml"));
    let rules = Path::new(ROOT).join("dashboards/rules");
    if rules.exists() {
        let found = std::fs::read_dir(&rules)
            .unwrap()
            .filter_map(|entry| entry.ok())
            .any(|entry| entry.path().extension().is_some_and(|ext| ext == "yml"));
        assert!(found, "no dashboards/rules/*.yml for the demo's Prometheus");
    }

    // The Prometheus configuration it mounts, with Debian's promtool (a CI dependency).
    let promtool = Command::new("promtool")
        .args(["check", "config", "docker/demo/prometheus.yml"])
        .current_dir(ROOT)
        .output();
    if !skip_unless(
        promtool.is_ok(),
        "needs promtool (Debian: prometheus) to check docker/demo/prometheus.yml",
    ) {
        let out = promtool.unwrap();
        assert!(
            out.status.success(),
            "promtool check config: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        services,
        [
            "alertmanager",
            "grafana",
            "probe-ap-south",
            "probe-eu-west",
            "probe-us-east",
            "prometheus"
        ]
    );
}

/// Python with PyYAML (Debian's python3-yaml comes with docker-compose).
fn python_with_yaml() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

/// Parses every manifest, checks the shape the README promises, and writes the ConfigMap's
/// exporter.toml to argv[2].
const CHECK_MANIFESTS: &str = r#"
import glob, os, sys, yaml
root, toml_out = sys.argv[1], sys.argv[2]
docs = {}
for path in sorted(glob.glob(os.path.join(root, "*.yaml"))):
    for doc in yaml.safe_load_all(open(path)):
        docs[(os.path.basename(path), doc["kind"])] = doc
kinds = sorted({kind for _, kind in docs})
print("kinds", " ".join(kinds))
kust = docs[("kustomization.yaml", "Kustomization")]
for res in kust["resources"]:
    assert os.path.exists(os.path.join(root, res)), res
dep = docs[("deployment.yaml", "Deployment")]
pod = dep["spec"]["template"]["spec"]
assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
assert {"name": "net.ipv4.ping_group_range", "value": "0 2147483647"} in pod["securityContext"]["sysctls"]
containers = {c["name"]: c for c in pod["containers"]}
assert set(containers) == {"app", "regionprobe"}, containers.keys()
probe = containers["regionprobe"]
sc = probe["securityContext"]
assert sc["runAsUser"] == 65534 and sc["allowPrivilegeEscalation"] is False, sc
assert sc["capabilities"] == {"drop": ["ALL"]}, sc
assert {"name": "metrics", "containerPort": 9537} in probe["ports"]
mount = probe["volumeMounts"][0]
assert mount["mountPath"] == "/etc/regionprobe"
assert any(v["name"] == mount["name"] and v["configMap"]["name"] == "regionprobe" for v in pod["volumes"])
patch = docs[("icmp-net-raw.patch.yaml", "Deployment")]
psc = patch["spec"]["template"]["spec"]["containers"][0]["securityContext"]
assert psc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]} and psc["runAsUser"] == 0, psc
svc = docs[("service.yaml", "Service")]
assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
sm = docs[("servicemonitor.yaml", "ServiceMonitor")]
assert sm["apiVersion"] == "monitoring.coreos.com/v1"
assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
pm = docs[("podmonitor.yaml", "PodMonitor")]
assert pm["apiVersion"] == "monitoring.coreos.com/v1"
assert pm["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
open(toml_out, "w").write(docs[("configmap.yaml", "ConfigMap")]["data"]["exporter.toml"])
"#;

#[test]
fn kubernetes_example_parses_and_hangs_together() {
    let python = python_with_yaml();
    if skip_unless(
        python.is_some(),
        "needs python3 with PyYAML (Debian: python3-yaml) to parse deploy/kubernetes/",
    ) {
        return;
    }
    let dir = TempDir::new("k8s");
    let toml = dir.0.join("exporter.toml");
    let out = Command::new(python.unwrap())
        .args(["-c", CHECK_MANIFESTS])
        .arg(Path::new(ROOT).join("deploy/kubernetes"))
        .arg(&toml)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kinds ConfigMap Deployment Kustomization PodMonitor Service ServiceMonitor"
    );
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&toml)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the ConfigMap's exporter.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Docker plumbing.

/// Skips (or, in CI, fails) unless this is root with a working Docker engine.
fn skip_without_docker() -> bool {
    let problem = if !common::is_root() {
        Some("not root".to_owned())
    } else {
        match Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
        {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "`docker info` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(err) => Some(format!("no docker CLI: {err}")),
        }
    };
    skip_unless(
        problem.is_none(),
        &format!(
            "needs root and a Docker engine ({})",
            problem.unwrap_or_default()
        ),
    )
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|err| format!("docker {args:?}: {err}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn docker_ok(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|err| panic!("{err}"))
}

/// `rp-test-<pid>-<n>-<tag>`: unique per process and call.
fn unique(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "rp-test-{}-{}-{tag}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Once per process, before the first build: removes what dead test processes left behind,
/// and makes sure the builder image exists (pulled where a registry answers, otherwise made by
/// docker/make-base-images.sh: a few minutes, once per machine).
fn prepare() -> &'static Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        sweep_dead_runs();
        if docker(&["image", "inspect", BUILDER_IMAGE]).is_ok()
            || docker(&["pull", "-q", BUILDER_IMAGE]).is_ok()
        {
            return Ok(());
        }
        eprintln!(
            "{BUILDER_IMAGE} is missing and cannot be pulled: running docker/make-base-images.sh"
        );
        let status = Command::new("bash")
            .arg("docker/make-base-images.sh")
            .current_dir(ROOT)
            .status()
            .map_err(|err| err.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("docker/make-base-images.sh failed: {status}"))
        }
    })
}

/// Removes the containers, networks and images of test processes that no longer run: a run
/// killed outright, or an image kept by a run that a name filter cut short (see `Variant::users`).
fn sweep_dead_runs() {
    let filter = format!("label={LABEL}");
    let kinds: [(&[&str], &[&str]); 3] = [
        (&["ps", "-a", "--format", "{{.Names}}"], &["rm", "-f", "-v"]),
        (
            &["network", "ls", "--format", "{{.Name}}"],
            &["network", "rm"],
        ),
        (
            &["images", "--format", "{{.Repository}}:{{.Tag}}"],
            &["rmi", "-f"],
        ),
    ];
    for (list, remove) in kinds {
        let Ok(names) = docker(&[list, &["--filter", &filter]].concat()) else {
            continue;
        };
        for name in names.lines() {
            let pid = ["rp-test-", "regionprobe-test:"]
                .iter()
                .find_map(|prefix| name.strip_prefix(prefix))
                .and_then(|rest| rest.split('-').next())
                .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
            if let Some(pid) = pid
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = docker(&[remove, &[name]].concat());
            }
        }
    }
}

/// The image variants the tests build from docker/Dockerfile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    /// As shipped.
    Default,
    /// `--build-arg NET_RAW_FILE_CAP=1`: the binary carries cap_net_raw+ep.
    NetRawFileCap,
}

impl Variant {
    fn tag(self) -> String {
        let name = match self {
            Variant::Default => "default",
            Variant::NetRawFileCap => "net-raw-file-cap",
        };
        format!("regionprobe-test:{}-{name}", std::process::id())
    }

    fn build_args(self) -> &'static [&'static str] {
        match self {
            Variant::Default => &[],
            Variant::NetRawFileCap => &["--build-arg", "NET_RAW_FILE_CAP=1"],
        }
    }

    /// How many tests use the variant: its image is removed once that many have let go of it.
    /// Too low costs a rebuild; too high (or a filtered run) leaves the image to the next
    /// run's sweep.
    fn users(self) -> usize {
        match self {
            Variant::Default => 5,
            Variant::NetRawFileCap => 1,
        }
    }
}

enum Build {
    /// Built; this many of its users are done with it.
    Ready {
        released: usize,
    },
    Failed(String),
}

static BUILDS: Mutex<BTreeMap<Variant, Build>> = Mutex::new(BTreeMap::new());

/// An image built once per process and shared by the tests that use it; the last of them
/// removes it (also when it panics). Builds run one at a time (under the lock), so each reuses
/// the layers of the one before.
#[derive(Debug)]
struct Image {
    variant: Variant,
    tag: String,
}

impl Image {
    fn get(variant: Variant) -> Image {
        if let Err(err) = prepare() {
            panic!("{err}");
        }
        let mut builds = BUILDS.lock().unwrap_or_else(PoisonError::into_inner);
        let tag = variant.tag();
        match builds.get(&variant) {
            Some(Build::Ready { .. }) => {}
            Some(Build::Failed(err)) => panic!("the image failed to build earlier: {err}"),
            None => {
                let built = build(&tag, variant.build_args());
                let state = match &built {
                    Ok(()) => Build::Ready { released: 0 },
                    Err(err) => Build::Failed(err.clone()),
                };
                builds.insert(variant, state);
                if let Err(err) = built {
                    panic!("{err}");
                }
            }
        }
        Image { variant, tag }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let mut builds = BUILDS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(Build::Ready { released }) = builds.get_mut(&self.variant) {
            *released += 1;
            if *released >= self.variant.users() {
                builds.remove(&self.variant);
                let _ = docker(&["rmi", "-f", &self.tag]);
            }
        }
    }
}

fn build(tag: &str, extra: &[&str]) -> Result<(), String> {
    let started = Instant::now();
    let version = format!("VERSION={}", env!("CARGO_PKG_VERSION"));
    let out = Command::new("docker")
        .args([
            "build",
            "--force-rm",
            "--network",
            "host",
            "-f",
            "docker/Dockerfile",
        ])
        .args(["-t", tag, "--label", LABEL, "--build-arg", &version])
        .args(extra)
        .arg(".")
        .current_dir(ROOT)
        .output()
        .map_err(|err| format!("docker build: {err}"))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        let tail: Vec<_> = log.lines().rev().take(60).collect();
        let tail: Vec<_> = tail.into_iter().rev().collect();
        return Err(format!("docker build {tag} failed:\n{}", tail.join("\n")));
    }
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", tag])?
        .parse()
        .map_err(|err| format!("image size: {err}"))?;
    eprintln!(
        "built {tag} {extra:?} in {:.1}s: {:.2} MB",
        started.elapsed().as_secs_f64(),
        size as f64 / 1e6
    );
    Ok(())
}

/// A container, removed (with its logs printed if the test is failing) on drop.
#[derive(Debug)]
struct Container {
    name: String,
}

impl Container {
    /// `docker run -d --name <unique> <args> <image>`.
    fn run(tag: &str, image: &Image, args: &[&str]) -> Container {
        // The guard first: a failed `docker run` may still leave a created container.
        let container = Container { name: unique(tag) };
        let mut all = vec!["run", "-d", "--name", &container.name, "--label", LABEL];
        all.extend_from_slice(args);
        all.push(&image.tag);
        docker_ok(&all);
        container
    }

    /// The host address Docker published the container's 9537 on.
    fn metrics_addr(&self) -> SocketAddr {
        let ports = docker_ok(&["port", &self.name, "9537/tcp"]);
        ports
            .lines()
            .find_map(|line| line.trim().parse().ok())
            .unwrap_or_else(|| panic!("no published 9537 in {ports:?}"))
    }

    fn scrape(&self) -> Option<Scrape> {
        let (status, body) = try_get(self.metrics_addr(), "/metrics")?;
        (status == 200).then(|| Scrape::parse(&body))
    }

    /// Scrapes until `done` accepts a scrape.
    fn scrape_until(&self, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Some(scrape) = self.scrape() {
                if done(&scrape) {
                    return scrape;
                }
                last = Some(scrape);
            }
            if Instant::now() > deadline {
                let state = last.map(|s| summary(&s)).unwrap_or_default();
                panic!(
                    "{}: timed out after {WAIT:?} waiting for {what}; last scrape:\n{state}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn inspect(&self, format: &str) -> String {
        docker_ok(&["inspect", "-f", format, &self.name])
    }

    fn wait_healthy(&self) -> Duration {
        let started = Instant::now();
        loop {
            let status = self.inspect("{{.State.Health.Status}}");
            if status == "healthy" {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < WAIT,
                "{}: health {status:?} after {WAIT:?}: {}",
                self.name,
                self.inspect("{{json .State.Health}}")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The user the process runs as, from the host's view (`docker top`).
    fn process_uid(&self) -> String {
        let top = docker_ok(&["top", &self.name, "-o", "pid,uid,comm"]);
        top.lines()
            .find(|line| line.contains("regionprobe"))
            .and_then(|line| line.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no regionprobe process in {top:?}"))
            .to_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // regionprobe logs to stderr, which `docker logs` replays on its stderr.
            if let Ok(out) = Command::new("docker")
                .args(["logs", "--tail", "40", &self.name])
                .output()
            {
                eprintln!(
                    "--- {} logs (tail) ---\n{}{}",
                    self.name,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}

/// A user-defined bridge network with a /24 of its own, removed on drop.
#[derive(Debug)]
struct Network {
    name: String,
    /// `10.x.y`: the subnet is `10.x.y.0/24`.
    prefix: String,
}

impl Network {
    fn create(tag: &str) -> Network {
        let name = unique(tag);
        // Probe 10.160.0.0/12 for a free /24 (the engine refuses overlapping pools).
        let start = std::process::id() as usize * 7;
        for i in 0..4096 {
            let n = (start + i) % 4096;
            let prefix = format!("10.{}.{}", 160 + n / 256, n % 256);
            let subnet = format!("{prefix}.0/24");
            match docker(&[
                "network", "create", "--subnet", &subnet, "--label", LABEL, &name,
            ]) {
                Ok(_) => return Network { name, prefix },
                Err(err) if err.contains("overlap") => continue,
                Err(err) => panic!("{err}"),
            }
        }
        panic!("no free /24 in 10.160.0.0/12 for a test network");
    }

    /// The static address `10.x.y.<host>`.
    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A GET that returns `None` on any connection trouble (the container may not listen yet).
fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn mount(config: &Path) -> String {
    format!("{}:/etc/regionprobe/exporter.toml:ro", config.display())
}

fn value(scrape: &Scrape, name: &str, target: &str) -> f64 {
    scrape
        .value(name, &[("target", target)])
        .unwrap_or(f64::NAN)
}

fn up(scrape: &Scrape, target: &str) -> bool {
    value(scrape, "regionprobe_target_up", target) == 1.0
}

fn samples(scrape: &Scrape, target: &str) -> f64 {
    value(scrape, "regionprobe_probe_duration_seconds_count", target)
}

fn failures(scrape: &Scrape, target: &str) -> f64 {
    scrape
        .find("regionprobe_probe_failures_total", &[("target", target)])
        .iter()
        .map(|s| s.value)
        .sum()
}

fn failure_reasons(scrape: &Scrape, target: &str) -> Vec<String> {
    scrape
        .find("regionprobe_probe_failures_total", &[("target", target)])
        .iter()
        .filter(|s| s.value > 0.0)
        .map(|s| s.labels["reason"].clone())
        .collect()
}

/// Every target's up, samples and failures: for failure messages.
fn summary(scrape: &Scrape) -> String {
    let mut lines = Vec::new();
    for target in scrape.label_values("regionprobe_target_up", "target") {
        lines.push(format!(
            "  {target}: up={} samples={} failures={} {:?}",
            value(scrape, "regionprobe_target_up", &target),
            samples(scrape, &target),
            failures(scrape, &target),
            failure_reasons(scrape, &target)
        ));
    }
    for s in scrape.find("regionprobe_icmp_socket_info", &[]) {
        lines.push(format!("  icmp socket {:?} = {}", s.labels, s.value));
    }
    lines.join("\n")
}

fn icmp_socket_kind(scrape: &Scrape) -> Option<String> {
    scrape
        .find("regionprobe_icmp_socket_info", &[("ip_version", "4")])
        .into_iter()
        .find(|s| s.value == 1.0)
        .map(|s| s.labels["kind"].clone())
}

/// One container probing itself: ICMP to its loopback and TCP to its own port.
const SELF_CONFIG: &str = r#"
[exporter]
region = "docker"
listen = ":9537"

[defaults]
interval = "250ms"
timeout = "250ms"

[[target]]
name = "self-ping"
region = "docker"
probe = "icmp"
host = "127.0.0.1"

[[target]]
name = "self-tcp"
region = "docker"
probe = "tcp"
address = "127.0.0.1:9537"
"#;

/// Publishes 9537 on a free loopback port; health checked every second.
const RUN_ARGS: [&str; 8] = [
    "-p",
    "127.0.0.1::9537",
    "--health-interval",
    "1s",
    "--health-timeout",
    "3s",
    "--health-start-period",
    "30s",
];

fn both_probes_answer(scrape: &Scrape) -> bool {
    ["self-ping", "self-tcp"]
        .iter()
        .all(|t| up(scrape, t) && samples(scrape, t) >= 2.0)
}

// ---------------------------------------------------------------------------------------------
// The image.

#[test]
#[ignore = "builds the image: needs root + Docker; run by .ci/run's Docker step"]
fn image_is_static_small_non_root_and_labelled() {
    if skip_without_docker() {
        return;
    }
    let image = Image::get(Variant::Default);
    let size: u64 = docker_ok(&["image", "inspect", "-f", "{{.Size}}", &image.tag])
        .parse()
        .unwrap();
    eprintln!("image size: {size} bytes ({:.2} MB)", size as f64 / 1e6);
    assert!(
        size < SIZE_GOAL_BYTES,
        "{size} bytes is over the 20 MB goal"
    );
    let config = |format: &str| docker_ok(&["image", "inspect", "-f", format, &image.tag]);
    assert_eq!(config("{{.Config.User}}"), "65534:65534");
    assert_eq!(
        config("{{json .Config.ExposedPorts}}"),
        r#"{"9537/tcp":{}}"#
    );
    assert_eq!(config("{{json .Config.Entrypoint}}"), r#"["/regionprobe"]"#);
    assert_eq!(
        config("{{json .Config.Cmd}}"),
        r#"["--config","/etc/regionprobe/exporter.toml"]"#
    );
    assert_eq!(
        config("{{json .Config.Healthcheck.Test}}"),
        r#"["CMD","/regionprobe","healthcheck","--config","/etc/regionprobe/exporter.toml"]"#
    );
    for label in [
        "title",
        "description",
        "licenses",
        "version",
        "revision",
        "created",
    ] {
        let key = format!("org.opencontainers.image.{label}");
        assert_ne!(
            config(&format!("{{{{index .Config.Labels \"{key}\"}}}}")),
            "<no value>",
            "label {key}"
        );
    }
    assert_eq!(
        config("{{index .Config.Labels \"org.opencontainers.image.version\"}}"),
        env!("CARGO_PKG_VERSION")
    );
    // One layer: nothing but the binary and the default config.
    let files = docker_ok(&[
        "image",
        "history",
        "--no-trunc",
        "--format",
        "{{.Size}}",
        &image.tag,
    ]);
    let layers = files.lines().filter(|size| *size != "0B").count();
    assert_eq!(layers, 1, "layers with content: {files}");
}

#[test]
#[ignore = "runs the image: needs root + Docker; run by .ci/run's Docker step"]
fn image_defaults_run_as_is() {
    if skip_without_docker() {
        return;
    }
    let image = Image::get(Variant::Default);
    // No mounted config: the baked-in /etc/regionprobe/exporter.toml, no extra flags at all.
    let c = Container::run("defaults", &image, &RUN_ARGS);
    let scrape = c.scrape_until("the baked-in targets to answer", |s| {
        ["local-ping", "local-tcp"]
            .iter()
            .all(|t| up(s, t) && samples(s, t) >= 1.0)
    });
    assert_eq!(icmp_socket_kind(&scrape).as_deref(), Some("datagram"));
    assert_eq!(c.process_uid(), "65534");
    let healthy_after = c.wait_healthy();
    eprintln!("default image: healthy {healthy_after:.1?} after the first samples");
}

#[test]
#[ignore = "runs the image: needs root + Docker; run by .ci/run's Docker step"]
fn icmp_by_ping_group_range_needs_no_capability() {
    if skip_without_docker() {
        return;
    }
    let image = Image::get(Variant::Default);
    let dir = TempDir::new("docker-sysctl");
    let config = dir.write("exporter.toml", SELF_CONFIG);
    let started = Instant::now();
    let c = Container::run(
        "sysctl",
        &image,
        &[
            &RUN_ARGS[..],
            &["--cap-drop", "ALL", "--sysctl", OPEN_PING],
            &["--read-only", "--security-opt", "no-new-privileges"],
            &["-v", &mount(&config)],
        ]
        .concat(),
    );
    let scrape = c.scrape_until("ICMP and TCP samples", both_probes_answer);
    let first_samples = started.elapsed();
    assert_eq!(
        icmp_socket_kind(&scrape).as_deref(),
        Some("datagram"),
        "{}",
        summary(&scrape)
    );
    assert_eq!(c.process_uid(), "65534");
    assert_eq!(c.inspect("{{.Config.User}}"), "65534:65534");
    c.wait_healthy();
    eprintln!(
        "ping_group_range: samples {first_samples:.1?} and healthy {:.1?} after docker run",
        started.elapsed()
    );
}

#[test]
#[ignore = "builds and runs the image: needs root + Docker; run by .ci/run's Docker step"]
fn icmp_by_net_raw_alone() {
    if skip_without_docker() {
        return;
    }
    let dir = TempDir::new("docker-net-raw");
    let config = dir.write("exporter.toml", SELF_CONFIG);
    let mount = mount(&config);
    // Ping sockets closed: only a raw socket, i.e. CAP_NET_RAW, can do ICMP here.
    let net_raw_only = [
        &RUN_ARGS[..],
        &[
            "--cap-drop",
            "ALL",
            "--cap-add",
            "NET_RAW",
            "--sysctl",
            CLOSED_PING,
        ],
        &["-v", &mount],
    ]
    .concat();

    // The image with the file capability: raw ICMP as nobody.
    let file_cap = Image::get(Variant::NetRawFileCap);
    let c = Container::run("net-raw", &file_cap, &net_raw_only);
    let scrape = c.scrape_until("ICMP and TCP samples", both_probes_answer);
    assert_eq!(
        icmp_socket_kind(&scrape).as_deref(),
        Some("raw"),
        "{}",
        summary(&scrape)
    );
    assert_eq!(c.process_uid(), "65534");
    c.wait_healthy();

    // The default image as nobody: `--cap-add` alone grants a non-root process nothing (no
    // ambient capabilities), so ICMP fails with reason "local" (our side cannot probe) while
    // TCP works.
    let image = Image::get(Variant::Default);
    let c = Container::run("net-raw-nonroot", &image, &net_raw_only);
    let scrape = c.scrape_until("ICMP failures and TCP samples", |s| {
        failures(s, "self-ping") >= 2.0 && up(s, "self-tcp")
    });
    assert_eq!(
        failure_reasons(&scrape, "self-ping"),
        ["local"],
        "{}",
        summary(&scrape)
    );
    assert_eq!(samples(&scrape, "self-ping"), 0.0);
    assert_eq!(icmp_socket_kind(&scrape), None);

    // The default image as root in the container with NET_RAW its only capability: raw ICMP.
    let c = Container::run(
        "net-raw-root",
        &image,
        &[&net_raw_only[..], &["--user", "0:0"]].concat(),
    );
    let scrape = c.scrape_until("ICMP and TCP samples", both_probes_answer);
    assert_eq!(icmp_socket_kind(&scrape).as_deref(), Some("raw"));
    assert_eq!(c.process_uid(), "0");

    // The file capability is ignored under no-new-privileges (Kubernetes:
    // allowPrivilegeEscalation: false): no ICMP, TCP still works.
    let c = Container::run(
        "net-raw-nnp",
        &file_cap,
        &[&net_raw_only[..], &["--security-opt", "no-new-privileges"]].concat(),
    );
    let scrape = c.scrape_until("ICMP failures and TCP samples", |s| {
        failures(s, "self-ping") >= 2.0 && up(s, "self-tcp")
    });
    assert_eq!(failure_reasons(&scrape, "self-ping"), ["local"]);

    // And without NET_RAW in the bounding set the kernel refuses to exec the binary at all.
    let c = Container::run(
        "net-raw-dropped",
        &file_cap,
        &[&RUN_ARGS[..], &["--cap-drop", "ALL", "-v", &mount]].concat(),
    );
    let deadline = Instant::now() + WAIT;
    while c.inspect("{{.State.Status}}") != "exited" {
        assert!(Instant::now() < deadline, "still running without NET_RAW");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "1");
    let logs = Command::new("docker")
        .args(["logs", &c.name])
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stderr);
    assert!(
        logs.contains("exec /regionprobe: operation not permitted"),
        "{logs}"
    );
}

// ---------------------------------------------------------------------------------------------
// Three regions.

const REGIONS: [&str; 3] = ["a", "b", "c"];

/// Region `me`'s sidecar probes the others at their region addresses (`.10` of their network).
fn region_config(me: &str, networks: &[Network]) -> String {
    let mut config = format!(
        "[exporter]\nregion = \"{me}\"\nlisten = \":9537\"\n\n\
         [defaults]\ninterval = \"200ms\"\ntimeout = \"200ms\"\n"
    );
    for (region, network) in REGIONS.iter().zip(networks) {
        if *region == me {
            continue;
        }
        let ip = network.ip(10);
        config.push_str(&format!(
            "\n[[target]]\nname = \"{region}-ping\"\nregion = \"{region}\"\nprobe = \"icmp\"\nhost = \"{ip}\"\n\
             \n[[target]]\nname = \"{region}-tcp\"\nregion = \"{region}\"\nprobe = \"tcp\"\naddress = \"{ip}:9537\"\n"
        ));
    }
    config
}

fn region_targets(region: &str) -> [String; 2] {
    [format!("{region}-ping"), format!("{region}-tcp")]
}

/// Every target of `region` is up and has at least `min` samples.
fn region_up(scrape: &Scrape, region: &str, min: f64) -> bool {
    region_targets(region)
        .iter()
        .all(|t| up(scrape, t) && samples(scrape, t) >= min)
}

fn region_down(scrape: &Scrape, region: &str) -> bool {
    region_targets(region).iter().all(|t| !up(scrape, t))
}

fn totals(scrape: &Scrape, region: &str) -> (f64, f64) {
    region_targets(region).iter().fold((0.0, 0.0), |(s, f), t| {
        (s + samples(scrape, t), f + failures(scrape, t))
    })
}

/// While c is cut off: a and b see c's targets down, failing, without a latency sample, and
/// still see each other.
fn assert_c_cut_off(watchers: &[&Container], how: &str) {
    for (watcher, other) in watchers.iter().zip(["b", "a"]) {
        let before = watcher.scrape_until(&format!("c down ({how})"), |s| region_down(s, "c"));
        std::thread::sleep(Duration::from_millis(1200));
        let after = watcher.scrape().expect("scrape");
        let (samples_before, failures_before) = totals(&before, "c");
        let (samples_after, failures_after) = totals(&after, "c");
        assert!(
            region_down(&after, "c"),
            "{how}: {}\n{}",
            watcher.name,
            summary(&after)
        );
        assert_eq!(
            samples_after,
            samples_before,
            "{how}: a failure observed a latency sample\n{}",
            summary(&after)
        );
        assert!(
            failures_after >= failures_before + 4.0,
            "{how}: failures {failures_before} -> {failures_after}\n{}",
            summary(&after)
        );
        assert!(
            region_up(&after, other, 1.0),
            "{how}: {} lost {other} too\n{}",
            watcher.name,
            summary(&after)
        );
    }
}

fn assert_c_recovers(watchers: &[&Container], how: &str) {
    for watcher in watchers {
        let before = watcher.scrape().expect("scrape");
        let (samples_before, _) = totals(&before, "c");
        watcher.scrape_until(&format!("c back ({how})"), |s| {
            region_up(s, "c", 0.0) && totals(s, "c").0 >= samples_before + 4.0
        });
    }
}

#[test]
#[ignore = "runs three containers on three networks: needs root + Docker; run by .ci/run's Docker step"]
fn three_regions_probe_each_other_and_see_one_cut_off_and_recover() {
    if skip_without_docker() {
        return;
    }
    let image = Image::get(Variant::Default);
    let dir = TempDir::new("docker-regions");
    // Declared before the containers, so dropped after them.
    let networks: Vec<Network> = REGIONS
        .iter()
        .map(|r| Network::create(&format!("region-{r}")))
        .collect();
    let mut containers = Vec::new();
    for (region, network) in REGIONS.iter().zip(&networks) {
        let config = dir.write(&format!("{region}.toml"), &region_config(region, &networks));
        let ip = network.ip(10);
        // Its region address on its own network...
        let c = Container::run(
            &format!("region-{region}"),
            &image,
            &[
                &RUN_ARGS[..],
                &["--cap-drop", "ALL", "--sysctl", OPEN_PING],
                &[
                    "--network",
                    &network.name,
                    "--ip",
                    &ip,
                    "-v",
                    &mount(&config),
                ],
            ]
            .concat(),
        );
        containers.push(c);
    }
    // ...and a client address on every other region's network.
    for (region, c) in REGIONS.iter().zip(&containers) {
        for (other, network) in REGIONS.iter().zip(&networks) {
            if other != region {
                docker_ok(&["network", "connect", &network.name, &c.name]);
            }
        }
    }
    let [a, b, c] = &containers[..] else {
        unreachable!()
    };
    for (me, node) in REGIONS.iter().zip(&containers) {
        let scrape = node.scrape_until("every other region up", |s| {
            REGIONS
                .iter()
                .filter(|r| *r != me)
                .all(|r| region_up(s, r, 2.0))
        });
        assert_eq!(icmp_socket_kind(&scrape).as_deref(), Some("datagram"));
        let regions = scrape.label_values("regionprobe_target_up", "target_region");
        let expected: Vec<_> = REGIONS.iter().filter(|r| *r != me).collect();
        assert_eq!(regions.iter().collect::<Vec<_>>(), expected);
    }

    // Cut c's network: its region address disappears.
    let (net_c, ip_c) = (&networks[2].name, networks[2].ip(10));
    let cut = Instant::now();
    docker_ok(&["network", "disconnect", net_c, &c.name]);
    assert_c_cut_off(&[a, b], "network disconnected");
    docker_ok(&["network", "connect", "--ip", &ip_c, net_c, &c.name]);
    assert_c_recovers(&[a, b], "network reconnected");
    eprintln!("network cut and recovery seen in {:.1?}", cut.elapsed());

    // Stop c altogether, then start it again.
    let stop = Instant::now();
    docker_ok(&["stop", "-t", "5", &c.name]);
    assert_c_cut_off(&[a, b], "container stopped");
    docker_ok(&["start", &c.name]);
    assert_c_recovers(&[a, b], "container started");
    eprintln!("stop and recovery seen in {:.1?}", stop.elapsed());
    c.scrape_until("c sees a and b again", |s| {
        region_up(s, "a", 1.0) && region_up(s, "b", 1.0)
    });
}
