//! Black-box helpers: run a binary (the exporter) and collect its log, talk HTTP to it, parse
//! its `/metrics`, wait for a condition, temp dirs, privileged-test skips, `ip` and other
//! commands for network namespaces, Grafana panels. Blocking, on real time.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Is this process root? Tests that need it skip otherwise, unless CI demands them.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips the calling test (returns true) with a printed reason when `needed` is false, or
/// fails it when `REGIONPROBE_REQUIRE_PRIVILEGED_TESTS=1` (set by CI, which runs as root):
/// privileged tests never pass silently without running.
pub fn skip_unless(needed: bool, reason: &str) -> bool {
    if needed {
        return false;
    }
    if std::env::var("REGIONPROBE_REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("required test cannot run: {reason}");
    }
    eprintln!("SKIP: {reason}");
    // libtest names each test's thread after the test.
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_owned();
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| {
            stem.rsplit_once('-')
                .map_or(stem.clone(), |(name, _)| name.to_owned())
        })
        .unwrap_or_default();
    if let Some((dir, run)) = skip_log() {
        record_skip(&dir, &run, &format!("{binary}::{test}"), reason);
    }
    true
}

// ---- Skipped tests: one summary line at the end of `cargo test` ----------------------------
//
// libtest reports a skipped test as `ok`. Each skip appends a line to a file of this cargo run
// under target/ (the test binaries of one `cargo test` share their parent, cargo: its pid and
// start time name the file); the last test binary, tests/zz_skipped_tests.rs (harness = false,
// so its output is not captured), prints the count and the reasons.

/// The directory of the skip records (`target/<profile>/regionprobe-skipped-tests/`) and this
/// cargo run's name in it; None when it cannot be told.
pub fn skip_log() -> Option<(PathBuf, String)> {
    // target/<profile>/deps/<binary>-<hash>
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?.join("regionprobe-skipped-tests");
    let parent = std::os::unix::process::parent_id();
    // Field 22 of /proc/<pid>/stat, after the parenthesised command name: the start time,
    // so that a reused pid is another run.
    let stat = std::fs::read_to_string(format!("/proc/{parent}/stat")).ok()?;
    let started = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .to_owned();
    Some((dir, format!("{parent}-{started}")))
}

/// Appends `test<TAB>reason` to the record of run `run` in `dir` (one short `O_APPEND` write per
/// line: parallel tests and binaries do not interleave within a line).
pub fn record_skip(dir: &Path, run: &str, test: &str, reason: &str) {
    let line = format!("{test}\t{}\n", reason.replace(['\n', '\t'], " "));
    let _ = std::fs::create_dir_all(dir);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(run))
    {
        let _ = file.write_all(line.as_bytes());
    }
}

/// The summary of run `run`'s skips, and removes its record: a line with the count, then one
/// line per reason with its tests. With no skip, says so.
pub fn take_skip_summary(dir: &Path, run: &str) -> String {
    let path = dir.join(run);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in text.lines() {
        if let Some((test, reason)) = line.split_once('\t') {
            by_reason.entry(reason).or_default().push(test);
        }
    }
    let total: usize = by_reason.values().map(Vec::len).sum();
    if total == 0 {
        return "regionprobe: no test was skipped".to_owned();
    }
    let mut out = format!(
        "regionprobe: {total} test{} SKIPPED (reported as ok above; REGIONPROBE_REQUIRE_PRIVILEGED_TESTS=1 makes them fail instead):",
        if total == 1 { " was" } else { "s were" }
    );
    for (reason, tests) in by_reason {
        out.push_str(&format!(
            "\n  {} x {reason}: {}",
            tests.len(),
            tests.join(", ")
        ));
    }
    out
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "regionprobe-test-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An exporter binary (`bin`: tests/common passes regionprobe's), running, with its stderr
/// collected.
#[derive(Debug)]
pub struct Exporter {
    pub child: Child,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Copies the child's stderr into `log`; ends when the child closes it.
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: Option<TempDir>,
}

impl Exporter {
    /// Starts `bin` on `config` (written to a temp file); its listen address should use port
    /// 0. Waits until it logs the bound address.
    pub fn start(bin: &str, config: &str) -> Self {
        let dir = TempDir::new("exporter");
        let path = dir.write("exporter.toml", config);
        let mut exporter = Self::start_with(bin, &[], &path);
        exporter._dir = Some(dir);
        exporter
    }

    /// Starts `prefix... bin --config path` (e.g. prefix `ip netns exec ns`).
    pub fn start_with(bin: &str, prefix: &[&str], config_path: &Path) -> Self {
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        command
            .arg("--config")
            .arg(config_path)
            .args(["--log.level", "debug", "--log.format", "text"])
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("REGIONPROBE_REQUIRE_PRIVILEGED_TESTS")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start regionprobe");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    // `listening on http://addr`, or `https://addr` with `[web]` TLS.
                    if let Some(at) = line.find("listening on http") {
                        let rest = &line[at + "listening on http".len()..];
                        let rest = rest.strip_prefix('s').unwrap_or(rest);
                        if let Some(addr) = rest.strip_prefix("://") {
                            let _ = tx.send(addr.trim().to_owned());
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            })
        };
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().expect("bound address"),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "regionprobe did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Exporter {
            child,
            addr,
            config_path: config_path.to_owned(),
            log,
            reader: Some(reader),
            _dir: None,
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path)
    }

    pub fn metrics(&self) -> Scrape {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        Scrape::parse(&body)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The last lines are in the log once the reader saw the end of stderr.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "regionprobe did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 server on loopback that answers every request, after `delay`, with 200 and a
/// two-byte body; a thread per connection, so slow answers do not queue.
pub fn http_server(delay: Duration) -> SocketAddr {
    http_server_failing(delay, Arc::new(AtomicBool::new(false)))
}

/// [`http_server`], answering 503 instead while `failing` is set.
pub fn http_server_failing(delay: Duration, failing: Arc<AtomicBool>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let failing = failing.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                std::thread::sleep(delay);
                let status = if failing.load(Ordering::Relaxed) {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    )
                    .as_bytes(),
                );
            });
        }
    });
    addr
}

/// A minimal HTTP/1.1 request with `Connection: close`; returns status and body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_with_headers(addr, method, path, &[])
}

pub fn http_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, headers);
    (status, body)
}

/// Status, response headers (lower-cased names) and body; panics when there is no answer.
pub fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, String) {
    try_http(addr, method, path, headers).unwrap_or_else(|err| panic!("{err}"))
}

/// The one HTTP client of the kit: an HTTP/1.1 request with `Connection: close` and an empty
/// body; status, response headers (lower-cased names) and body (chunked bodies decoded), or
/// why there is none (connection refused, timeout, not HTTP).
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, HashMap<String, String>, String), String> {
    let fail = |e: std::io::Error| format!("{method} http://{addr}{path}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(fail)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{method} http://{addr}{path}: no HTTP response"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} http://{addr}{path}: bad status line"))?;
    let response_headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = response_headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, response_headers, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One sample line of the text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape: `# HELP` and `# TYPE` per family, and every sample.
#[derive(Debug, Default)]
pub struct Scrape {
    pub help: HashMap<String, String>,
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                scrape.help.insert(name.to_owned(), help.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                scrape.types.insert(name.to_owned(), kind.to_owned());
            } else if line.starts_with('#') || line.is_empty() {
                continue;
            } else {
                scrape.samples.push(parse_sample(line));
            }
        }
        scrape
    }

    /// Samples of `name` whose labels include every pair of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the single sample matching, if any.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, labels);
        assert!(
            found.len() <= 1,
            "{name} {labels:?} matches {} samples",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// Every distinct value of label `label` on samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect();
        values.sort();
        values.dedup();
        values
    }
}

fn parse_sample(line: &str) -> Sample {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("bad sample line {line:?}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (
            name,
            parse_labels(rest.strip_suffix('}').expect("closing brace")),
        ),
        None => (series, BTreeMap::new()),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

fn parse_labels(mut text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"").expect("label");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("unterminated label value") {
                (_, '\\') => match chars.next().unwrap().1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        text = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

// ---- Commands (network namespaces) ------------------------------------------------------

/// Runs a command that must succeed; on failure the panic carries its stderr.
pub fn run(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|err| panic!("cannot run {args:?}: {err}"));
    assert!(
        output.status.success(),
        "{args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a cleanup command whose failure (the thing is already gone) does not matter. Never
/// panics: it runs in `Drop`, possibly while a failed test unwinds.
pub fn run_quietly(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `ip <command>`, the command written as on a shell (words without spaces).
pub fn ip(command: &str) {
    let mut args = vec!["ip"];
    args.extend(command.split_whitespace());
    run(&args);
}

// ---- Grafana dashboards ---------------------------------------------------------------------

/// Every panel of a Grafana dashboard, rows' nested panels included.
pub fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    fn walk<'a>(list: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A port free right now on 127.0.0.1 (for servers that cannot report a port they bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_recorded_per_run_and_summed_up_once() {
        let dir = TempDir::new("skips");
        assert_eq!(
            take_skip_summary(&dir.0, "run-1"),
            "regionprobe: no test was skipped"
        );
        std::thread::scope(|scope| {
            for i in 0..8 {
                let dir = &dir.0;
                scope.spawn(move || {
                    let reason = if i % 2 == 0 {
                        "needs root"
                    } else {
                        "needs\tip"
                    };
                    record_skip(dir, "run-1", &format!("bin::t{i}"), reason);
                });
            }
        });
        record_skip(&dir.0, "run-2", "other::t", "needs root");
        let summary = take_skip_summary(&dir.0, "run-1");
        let mut lines = summary.lines();
        assert_eq!(
            lines.next().unwrap(),
            "regionprobe: 8 tests were SKIPPED (reported as ok above; REGIONPROBE_REQUIRE_PRIVILEGED_TESTS=1 makes them fail instead):"
        );
        let rest: Vec<&str> = lines.collect();
        assert_eq!(rest.len(), 2, "{summary}");
        assert!(rest[0].starts_with("  4 x needs ip: "), "{summary}");
        assert!(rest[1].starts_with("  4 x needs root: bin::t"), "{summary}");
        // Taken once; the other run is untouched.
        assert_eq!(
            take_skip_summary(&dir.0, "run-1"),
            "regionprobe: no test was skipped"
        );
        assert!(take_skip_summary(&dir.0, "run-2").starts_with("regionprobe: 1 test was SKIPPED"));
    }

    #[test]
    fn a_run_is_named_after_its_parent_process() {
        let (dir, run) = skip_log().unwrap();
        assert!(dir.ends_with("regionprobe-skipped-tests"), "{dir:?}");
        let parent = std::os::unix::process::parent_id();
        assert!(run.starts_with(&format!("{parent}-")), "{run}");
        assert_eq!(skip_log().unwrap().1, run, "stable within a run");
    }
}
