//! The command line, black-box (issue 12): the SIGHUP handler installed before the config is
//! loaded, `./exporter.toml` without `--config`, `--log.level` checked, and the flags
//! Prometheus users know (`--config.file`, `--web.listen-address`, `--log.format logfmt`),
//! `regionprobe_build_info`'s labels and `--help`.
// Blocking, on real time: the child process's clock is not tokio's.
#![allow(clippy::disallowed_types)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Scrape, TempDir, http, wait_for};

const WAIT: Duration = Duration::from_secs(20);

/// The binary, running with `args` in `dir`, its stderr collected line by line.
struct Running {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
}

impl Running {
    fn start(dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(common::BIN)
            .args(args)
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = channel();
        let copy = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                copy.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Running { child, log, lines }
    }

    /// The address from the `listening on http://...` line.
    fn addr(&self) -> SocketAddr {
        let deadline = Instant::now() + WAIT;
        while let Ok(line) = self.lines.recv_timeout(deadline - Instant::now()) {
            if let Some((_, addr)) = line.split_once("listening on http://") {
                return addr.trim().trim_end_matches('"').parse().unwrap();
            }
        }
        panic!("not listening; log:\n{}", self.log_text());
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    fn wait_for_log(&self, what: &str) -> String {
        wait_for(WAIT, what, || {
            let log = self.log_text();
            log.contains(what).then_some(log)
        })
    }

    /// Waits for the exit (at most 10 s).
    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50)); // the last lines
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tcp_target(name: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nregion = \"us\"\nprobe = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"1m\"\n"
    )
}

/// Item 13: a SIGHUP that arrives while a large configuration is still loading does not kill
/// the process; it becomes a reload once running.
#[test]
fn a_sighup_during_startup_does_not_kill_the_process() {
    let dir = TempDir::new("early-hup");
    let targets: String = (0..20_000).map(|i| tcp_target(&format!("t{i}"))).collect();
    let path = dir.write(
        "big.toml",
        &format!("[exporter]\nregion = \"eu\"\nlisten = \"127.0.0.1:0\"\n{targets}"),
    );
    let mut running = Running::start(&dir.0, &["--config", path.to_str().unwrap()]);
    // As soon as the process handles any signal (the handlers go in before the load), send
    // SIGHUP: the load of 20,000 targets is still running then.
    let status = format!("/proc/{}/status", running.child.id());
    let handled =
        |mask: u64| mask & ((1 << (libc_sig(nix::sys::signal::Signal::SIGTERM) - 1)) | 1) != 0;
    wait_for(WAIT, "a signal handler", || {
        let text = std::fs::read_to_string(&status).ok()?;
        let mask = text
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
        handled(mask).then_some(())
    });
    running.signal(nix::sys::signal::Signal::SIGHUP);
    let before = running.log_text();
    assert!(
        !before.contains("listening on"),
        "the SIGHUP came after the load; make the config bigger:\n{before}"
    );
    let addr = running.addr();
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "the process died"
    );
    running.wait_for_log("configuration reloaded");
    assert_eq!(http(addr, "GET", "/-/healthy").0, 200);
    running.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(running.exit_status().unwrap().success());
}

fn libc_sig(signal: nix::sys::signal::Signal) -> u32 {
    signal as i32 as u32
}

/// Item 12: without --config, ./exporter.toml of the working directory is used (and said
/// so), and an edit plus SIGHUP takes effect; without one, the bundled copy.
#[test]
fn without_config_the_working_directory_exporter_toml_is_used_and_reloaded() {
    let dir = TempDir::new("cwd-config");
    let config = |region: &str| {
        format!(
            "[exporter]\nregion = \"{region}\"\nlisten = \"127.0.0.1:0\"\n{}",
            tcp_target("t")
        )
    };
    dir.write("exporter.toml", &config("cwd-one"));
    let check = Command::new(common::BIN)
        .arg("check-config")
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).lines().next(),
        Some("exporter.toml: OK (1 targets, region cwd-one)")
    );

    let running = Running::start(&dir.0, &[]);
    let addr = running.addr();
    let log = running.wait_for_log("no --config: using exporter.toml of the working directory");
    assert!(log.contains(&dir.0.display().to_string()), "{log}");
    let source_region = || {
        let scrape = Scrape::parse(&http(addr, "GET", "/metrics").1);
        scrape.label_values("regionprobe_targets", "source_region");
        scrape.label_values("regionprobe_target_up", "source_region")
    };
    assert_eq!(source_region(), ["cwd-one"]);
    dir.write("exporter.toml", &config("cwd-two"));
    running.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(WAIT, "the edited region", || {
        (source_region() == ["cwd-two"]).then_some(())
    });

    let empty = TempDir::new("no-config");
    let check = Command::new(common::BIN)
        .arg("check-config")
        .current_dir(&empty.0)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&check.stdout)
            .starts_with("<bundled exporter.toml>: OK (4 targets"),
        "{check:?}"
    );
}

/// Item 15: a misspelt level is refused with the valid ones instead of silencing the log;
/// full filter directives still work.
#[test]
fn unknown_log_levels_are_refused_with_the_valid_ones() {
    let dir = TempDir::new("log-level");
    let path = dir.write(
        "exporter.toml",
        "[exporter]\nregion = \"eu\"\nlisten = \"127.0.0.1:0\"\n",
    );
    let path = path.to_str().unwrap();
    for bad in ["warning", "info,regionprobe=verbose", "INFO,regionprobe"] {
        let mut running = Running::start(&dir.0, &["--config", path, "--log.level", bad]);
        let status = running.exit_status().expect("exits at once");
        assert_eq!(status.code(), Some(1), "{bad}");
        let log = running.log_text();
        assert!(
            log.contains("expected one of trace, debug, info, warn, error, off"),
            "{bad}: {log}"
        );
    }
    for good in [
        "warn",
        "INFO",
        "info,regionprobe=debug",
        "regionprobe::probe=trace,warn",
    ] {
        let running = Running::start(&dir.0, &["--config", path, "--log.level", good]);
        if good.contains("warn") {
            // Nothing at info: the process runs; the log stays quiet.
            std::thread::sleep(Duration::from_millis(300));
            let mut running = running;
            assert!(running.child.try_wait().unwrap().is_none(), "{good}");
        } else {
            running.addr();
        }
    }
}

/// Item 21: `--config.file`, `--web.listen-address` (over exporter.listen, also on reload),
/// `--log.format logfmt`, build_info's labels, and `--help`.
#[test]
fn prometheus_style_flags_work() {
    let dir = TempDir::new("flags");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = dir.write(
        "exporter.toml",
        &format!(
            "[exporter]\nregion = \"eu\"\nlisten = \"{}\"\n",
            taken.local_addr().unwrap()
        ),
    );
    let path = path.to_str().unwrap();
    let running = Running::start(
        &dir.0,
        &[
            "--config.file",
            path,
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.format",
            "logfmt",
        ],
    );
    let addr = running.addr();
    assert_ne!(addr, taken.local_addr().unwrap());
    let (status, body) = common::http(addr, "POST", "/-/reload");
    assert_eq!(status, 200, "{body}");
    let log = running.wait_for_log("configuration reloaded");
    assert!(!log.contains("exporter.listen changed"), "{log}");
    for line in log.lines() {
        assert!(
            line.starts_with("ts=") && line.contains(" level=") && line.contains(" msg="),
            "not logfmt: {line}"
        );
    }
    assert!(
        log.lines().any(|line| line.contains(
            "level=info target=regionprobe::control msg=\"configuration reloaded\" diff="
        )),
        "{log}"
    );

    let scrape = Scrape::parse(&http(addr, "GET", "/metrics").1);
    let info = scrape.find("regionprobe_build_info", &[]);
    assert_eq!(info.len(), 1);
    let labels = &info[0].labels;
    let revision = &labels["revision"];
    assert!(
        revision == "unknown"
            || (revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())),
        "{labels:?}"
    );
    assert!(!labels["branch"].is_empty(), "{labels:?}");
    let rust = &labels["rustversion"];
    assert!(
        rust.split('.').count() >= 3 && rust.split('.').take(2).all(|n| n.parse::<u32>().is_ok()),
        "{labels:?}"
    );

    let bad = Command::new(common::BIN)
        .args([
            "--config",
            path,
            "--web.listen-address",
            "localhost:http",
            "check-config",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    let help = Command::new(common::BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "SIGHUP",
        "/-/reload",
        "REGIONPROBE_",
        "--config.file",
        "--web.listen-address",
        "logfmt",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

/// The threads running the probes' tasks, by name (`probe`; the blocking pool's are
/// `probe-blocking`).
fn probe_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "probe")
        .count()
}

/// Issue 15: the probes run on `--runtime.workers` threads, one by default whatever the
/// machine's CPU count (tokio's default would start one per CPU); 0 is refused.
#[test]
fn the_probes_run_on_the_requested_worker_threads() {
    let dir = TempDir::new("workers");
    let path = dir.write(
        "exporter.toml",
        &format!(
            "[exporter]\nregion = \"eu\"\nlisten = \"127.0.0.1:0\"\n{}",
            tcp_target("t")
        ),
    );
    let path = path.to_str().unwrap();
    for (args, workers) in [(&[][..], 1), (&["--runtime.workers", "3"][..], 3)] {
        let mut running = Running::start(&dir.0, &[&["--config", path][..], args].concat());
        let addr = running.addr();
        let log = running.wait_for_log("worker thread(s)");
        assert!(
            log.contains(&format!("probes run on {workers} worker thread(s)")),
            "{args:?}: {log}"
        );
        // A thread takes its name as it starts, shortly after the runtime spawned it.
        let pid = running.child.id();
        wait_for(WAIT, &format!("{workers} threads named probe"), || {
            (probe_threads(pid) == workers).then_some(())
        });
        // And the probes run.
        wait_for(WAIT, "a probe", || {
            let scrape = Scrape::parse(&http(addr, "GET", "/metrics").1);
            (scrape.value("regionprobe_probes_total", &[("target", "t")])? >= 1.0).then_some(())
        });
        running.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(running.exit_status().unwrap().success());
    }
    let refused = Command::new(common::BIN)
        .args(["--config", path, "--runtime.workers", "0"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--runtime.workers"),
        "{refused:?}"
    );
}
