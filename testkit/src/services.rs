//! The services around the exporter: the real Prometheus and Alertmanager (each in a temp dir,
//! on 127.0.0.1 port 0) as [`Daemon`]s, a webhook receiver for Alertmanager's notifications,
//! the HTTPS "app" endpoint every region of the failover drill serves, and JSON over HTTP to
//! talk to them.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::black_box::try_http;

// ---- HTTP -----------------------------------------------------------------------------------

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One request (the kit's [`try_http`]: the connection closes after the response, chunked
/// bodies are decoded). Returns status and body, or why not.
pub fn request(addr: SocketAddr, method: &str, target: &str) -> Result<(u16, String), String> {
    try_http(addr, method, target, &[]).map(|(status, _, body)| (status, body))
}

/// GET `target` and parse the JSON body of a 200.
pub fn get_json(addr: SocketAddr, target: &str) -> Result<Value, String> {
    let (status, body) = request(addr, "GET", target)?;
    if status != 200 {
        return Err(format!("GET http://{addr}{target}: {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET http://{addr}{target}: {e}: {body}"))
}

pub fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

// ---- Daemons --------------------------------------------------------------------------------

/// A child process whose stdout and stderr lines are kept (the last 2,000); killed on drop.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    child: Child,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Daemon {
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    if log.len() == 2000 {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        Daemon {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Waits for a log line for which `find` returns something.
    pub fn wait_for_line<T>(&mut self, timeout: Duration, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.log.lock().unwrap().iter().find_map(|l| find(l)) {
                return found;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.tail(40));
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after {timeout:?}:\n{}",
                self.name,
                self.tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of the `msg="Listening on" address=...` line Prometheus and Alertmanager
    /// log once bound (the real port where port 0 was asked for).
    pub fn listening_address(&mut self) -> SocketAddr {
        self.wait_for_line(Duration::from_secs(30), |line| {
            line.contains("msg=\"Listening on\"")
                .then(|| {
                    line.split_once("address=")?
                        .1
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .flatten()
        })
    }

    /// The kept lines that contain any of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .cloned()
            .collect()
    }

    pub fn tail(&self, lines: usize) -> String {
        let log = self.log.lock().unwrap();
        let skip = log.len().saturating_sub(lines);
        log.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Daemon {
    /// Sends `signal` and waits up to `grace` for the process to exit (killed after that).
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `program` on the PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

// ---- Prometheus -----------------------------------------------------------------------------

#[derive(Debug)]
pub struct Prometheus {
    pub daemon: Daemon,
    pub addr: SocketAddr,
}

impl Prometheus {
    pub fn start(binary: &Path, config: &Path, data: &Path) -> Self {
        Self::start_with(binary, config, data, &[])
    }

    /// Like [`Prometheus::start`], with more flags (e.g. `--enable-feature=...`).
    pub fn start_with(binary: &Path, config: &Path, data: &Path, flags: &[&str]) -> Self {
        Self::spawn("prometheus", binary, config, "tsdb", data, flags)
    }

    /// Prometheus in agent mode (`--enable-feature=agent`): it scrapes and remote-writes,
    /// with its write-ahead log in `data` (agent mode refuses the TSDB's flags); the query
    /// API answers nothing.
    pub fn start_agent(name: &str, binary: &Path, config: &Path, data: &Path) -> Self {
        Self::spawn(
            name,
            binary,
            config,
            "agent",
            data,
            &["--enable-feature=agent"],
        )
    }

    fn spawn(
        name: &str,
        binary: &Path,
        config: &Path,
        storage: &str,
        data: &Path,
        flags: &[&str],
    ) -> Self {
        let mut daemon = Daemon::spawn(
            name,
            Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.{storage}.path={}", data.display()))
                .arg("--web.listen-address=127.0.0.1:0")
                .arg("--log.level=info")
                .args(flags),
        );
        let addr = daemon.listening_address();
        Prometheus { daemon, addr }
    }

    /// `/api/v1/<path>?<params>`: the `data` of a successful answer, or the error.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let target = format!("/api/v1/{path}?{}", query.join("&"));
        let (status, body) = request(self.addr, "GET", &target)?;
        let json: Value =
            serde_json::from_str(&body).map_err(|e| format!("{path}: {status}: {e}: {body}"))?;
        if json["status"] != "success" {
            return Err(format!(
                "{path}: {status}: {}: {}",
                json["errorType"], json["error"]
            ));
        }
        Ok(json["data"].clone())
    }

    /// An instant query's result (a vector's series; a scalar as one pseudo-series).
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", expr)])?;
        Ok(match data["resultType"].as_str() {
            Some("vector" | "matrix") => data["result"].as_array().cloned().unwrap_or_default(),
            _ => vec![data["result"].clone()],
        })
    }

    /// A range query's series (`start`, `end` Unix seconds, `step` seconds).
    pub fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<Vec<Value>, String> {
        let (start, end, step) = (start.to_string(), end.to_string(), step.to_string());
        let params = [
            ("query", expr),
            ("start", &start),
            ("end", &end),
            ("step", &step),
        ];
        let data = self.api("query_range", &params)?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The values of `label` on the series `selector` matches over `[start, end]`: what a
    /// Grafana `label_values(selector, label)` variable lists.
    pub fn label_values(
        &self,
        label: &str,
        selector: &str,
        start: f64,
        end: f64,
    ) -> Result<Vec<String>, String> {
        let (start, end) = (start.to_string(), end.to_string());
        let params = [("match[]", selector), ("start", &start), ("end", &end)];
        let data = self.api(&format!("label/{label}/values"), &params)?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// The active (pending and firing) alerts.
    pub fn alerts(&self) -> Result<Vec<Value>, String> {
        Ok(self.api("alerts", &[])?["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

// ---- VictoriaMetrics -------------------------------------------------------------------------

/// VictoriaMetrics' `victoria-metrics` or `vmalert` (Debian `victoria-metrics`) with `flags`,
/// on 127.0.0.1 (a free port, as `-httpListenAddr`: neither says which port 0 gave it), once
/// its `/health` answers. Both answer Prometheus' HTTP API (victoria-metrics the queries,
/// vmalert `/api/v1/rules` and `/api/v1/alerts`), so each is a [`Prometheus`] to the tests.
pub fn start_victoria(name: &str, binary: &Path, flags: &[String]) -> Prometheus {
    let addr = SocketAddr::from(([127, 0, 0, 1], crate::black_box::free_port()));
    let mut daemon = Daemon::spawn(
        name,
        Command::new(binary)
            .args(flags)
            .arg(format!("-httpListenAddr={addr}")),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(request(addr, "GET", "/health"), Ok((200, _))) {
        if daemon.exited() {
            panic!("{name} exited:\n{}", daemon.tail(40));
        }
        assert!(
            Instant::now() < deadline,
            "{name} not healthy after 30 s:\n{}",
            daemon.tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Prometheus { daemon, addr }
}

// ---- Alertmanager ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct Alertmanager {
    pub daemon: Daemon,
    pub addr: SocketAddr,
}

impl Alertmanager {
    /// Started with gossip off (`--cluster.listen-address=`): a lone instance that does not
    /// wait for peers to settle.
    pub fn start(binary: &Path, config: &Path, data: &Path) -> Self {
        let mut daemon = Daemon::spawn(
            "alertmanager",
            Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.path={}", data.display()))
                .arg("--web.listen-address=127.0.0.1:0")
                .arg("--cluster.listen-address=")
                .arg("--log.level=debug"),
        );
        let addr = daemon.listening_address();
        Alertmanager { daemon, addr }
    }
}

// ---- Webhook receiver -----------------------------------------------------------------------

/// One notification as Alertmanager posted it.
#[derive(Clone, Debug)]
pub struct Notification {
    pub at: Instant,
    /// The request path: which receiver's URL was used.
    pub path: String,
    pub body: Value,
}

impl Notification {
    /// Whether this notification tells `status` (`firing`, `resolved`) of an alert whose
    /// labels include every pair of `labels`.
    pub fn tells(&self, status: &str, labels: &[(&str, &str)]) -> bool {
        self.body["status"] == status
            && self.body["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["status"] == status && labels.iter().all(|(k, v)| a["labels"][*k] == *v))
    }
}

/// An HTTP server on 127.0.0.1:0 that answers 200 to everything and keeps every JSON body
/// posted to it.
#[derive(Debug)]
pub struct Webhook {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Notification>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Some(notification) = receive(stream) {
                        received.lock().unwrap().push(notification);
                    }
                }
            })
        };
        Webhook {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> Vec<Notification> {
        self.received.lock().unwrap().clone()
    }
}

/// Reads one request, answers 200 and closes; the notification if the body is JSON.
fn receive(mut stream: TcpStream) -> Option<Notification> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    Some(Notification {
        at: Instant::now(),
        path,
        body: serde_json::from_slice(&body).ok()?,
    })
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop, which then sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---- The regions' HTTPS endpoint ------------------------------------------------------------

/// Serves HTTPS on `addr` (a self-signed rcgen certificate) until killed: every request is
/// answered `200 ok` after `delay`. Prints `ready` once listening.
pub fn serve_app(addr: SocketAddr, delay: Duration, ready: &str) -> ! {
    let config = crate::peers::self_signed_server(&addr.ip().to_string());
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    println!("{ready}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let config = config.clone();
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let tls = rustls::ServerConnection::new(config).unwrap();
            let mut tls = rustls::StreamOwned::new(tls, stream);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            std::thread::sleep(delay);
            let _ = tls
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
    }
    unreachable!("incoming() never ends")
}
