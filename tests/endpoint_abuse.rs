//! The endpoint under abuse (issue 12, items 5-9): what a client of the HTTP server does must
//! not reach the probes, the log, the scraper's login or the control loop. Against the real
//! binary, or the library's `run`/`run_with` on loopback sockets.

// Wall-clock latencies of real requests: std's Instant, as the blocking helpers use.
#![allow(clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Exporter, Scrape, TempDir, http, http_full, wait_for};

const WAIT: Duration = Duration::from_secs(15);

fn tcp_targets(n: usize, port: u16) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[target]]\nname = \"t{i:04}\"\nregion = \"r{}\"\nprobe = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n",
                i % 3
            )
        })
        .collect()
}

fn config(interval: &str, targets: &str) -> String {
    format!(
        "[exporter]\nregion = \"eu\"\nlisten = \"127.0.0.1:0\"\n[defaults]\ninterval = \"{interval}\"\ntimeout = \"{interval}\"\n{targets}"
    )
}

fn closed_port() -> u16 {
    regionprobe_testkit::dns::closed_tcp_port().port()
}

/// Item 5: the server has a runtime of its own. With the probes' runtime (here the test's
/// single-threaded one) stalled for 3 s, `/`, `/api/v1/targets` and `/metrics` still answer
/// at once; on one shared runtime they waited for the stall to end.
#[test]
fn the_endpoint_answers_while_the_probe_runtime_is_stalled() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let text = config("100ms", &tcp_targets(5, closed_port()));
        let config = regionprobe::config::parse("inline", &text, Some(Default::default())).unwrap();
        let source = regionprobe::config::ConfigSource::Bundled;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(regionprobe::run(source, config, listener, async {
            let _ = stopped.await;
        }));
        let healthy = tokio::task::spawn_blocking(move || {
            wait_for(WAIT, "healthy", || {
                regionprobe_testkit::black_box::try_http(addr, "GET", "/-/healthy", &[]).ok()
            })
        });
        assert_eq!(healthy.await.unwrap().0, 200);
        let client = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            ["/", "/api/v1/targets", "/api/v1/ranking", "/metrics"].map(|path| {
                let start = Instant::now();
                let (status, _) = http(addr, "GET", path);
                (path, status, start.elapsed())
            })
        });
        // Stall the probes' runtime: its only thread sleeps.
        std::thread::sleep(Duration::from_secs(3));
        for (path, status, took) in client.join().unwrap() {
            assert_eq!(status, 200, "{path}");
            assert!(
                took < Duration::from_secs(1),
                "{path} took {took:?} while the probe runtime was stalled"
            );
        }
        stop.send(()).unwrap();
        tokio::time::timeout(WAIT, server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    });
}

/// Item 6: a client that requests a large `/metrics` and never reads it is disconnected
/// after the write timeout, instead of pinning the rendering forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_after_the_write_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // About 10 MB of text: more than the kernel's socket buffers hold (tcp_wmem's 4 MiB).
    let text = config("1h", &tcp_targets(3000, closed_port()));
    let config = regionprobe::config::parse("inline", &text, Some(Default::default())).unwrap();
    let source = regionprobe::config::ConfigSource::Bundled;
    let options = regionprobe::Options {
        write_timeout: Duration::from_secs(1),
        ..regionprobe::Options::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(regionprobe::run_with(
        source,
        config,
        listener,
        async {
            let _ = stopped.await;
        },
        regionprobe::Startup {
            hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap(),
            overrides: Default::default(),
            options,
        },
    ));
    let outcome = tokio::task::spawn_blocking(move || {
        let full = wait_for(WAIT, "metrics", || {
            regionprobe_testkit::black_box::try_http(addr, "GET", "/metrics", &[]).ok()
        })
        .2
        .len();
        assert!(full > 8_000_000, "a large body: {full} bytes");
        // A small receive buffer: the server's writes block after a few KiB.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&addr.into()).unwrap();
        let mut stream: TcpStream = socket.into();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_secs(4));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        let ended = stream.read_to_end(&mut got);
        (full, got.len(), ended.map_err(|e| e.kind()))
    })
    .await
    .unwrap();
    let (full, got, ended) = outcome;
    assert!(
        ended.is_ok() || ended == Err(std::io::ErrorKind::ConnectionReset),
        "the server closed the connection (read ended with {ended:?}, {got} of {full} bytes)"
    );
    assert!(got < full, "a truncated response: {got} of {full} bytes");
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// `regionprobe` under `ulimit -n` (`soft` and `hard`).
fn start_with_nofile(soft: u64, hard: u64, config_text: &str, dir: &TempDir) -> Exporter {
    let path = dir.write("exporter.toml", config_text);
    let script = format!("ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" \"$@\"");
    Exporter::start_with(&["sh", "-c", &script], &path)
}

/// The listen backlog of the socket on `port`, from `ss -ltn` (its Send-Q column).
fn backlog(port: u16) -> Option<u64> {
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(2)?.parse().ok()
}

/// Item 6: the soft open-files limit is raised to the hard one at start, as Go does, and the
/// listen backlog holds a burst of 1,024 connections.
#[test]
fn the_fd_soft_limit_is_raised_to_the_hard_one_and_the_backlog_is_deep() {
    let dir = TempDir::new("nofile-raise");
    let exporter = start_with_nofile(256, 4096, &config("1s", ""), &dir);
    let scrape = exporter.metrics();
    assert_eq!(scrape.value("process_max_fds", &[]), Some(4096.0));
    if let Some(backlog) = backlog(exporter.addr.port()) {
        assert!(backlog >= 1024, "listen backlog {backlog}");
    }
}

/// Item 6: with `nofile` 256, 400 idle connections neither make the probes fail for want of
/// descriptors nor keep a scraper out: HTTP takes at most a quarter of the descriptors, and
/// a new connection evicts the longest-idle one.
#[test]
fn idle_connections_never_starve_the_probes_or_lock_out_the_scraper() {
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = open.local_addr().unwrap().port();
    // Accept and close, so the probes' connections do not pile up on our side.
    std::thread::spawn(move || {
        for stream in open.incoming() {
            drop(stream);
        }
    });
    let dir = TempDir::new("nofile-idle");
    let exporter = start_with_nofile(256, 256, &config("200ms", &tcp_targets(20, port)), &dir);
    let errors = |scrape: &Scrape| {
        scrape
            .find("regionprobe_probe_failures_total", &[])
            .iter()
            .map(|s| s.value)
            .sum::<f64>()
    };
    wait_for(WAIT, "first probes", || {
        let scrape = exporter.metrics();
        (scrape
            .value("regionprobe_probes_total", &[("target", "t0000")])
            .unwrap_or(0.0)
            >= 2.0)
            .then_some(())
    });
    let before = errors(&exporter.metrics());
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(stream) = TcpStream::connect_timeout(&exporter.addr, Duration::from_secs(2)) {
            idle.push(stream);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let start = Instant::now();
    let scrape = exporter.metrics();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "scrape took {:?}",
        start.elapsed()
    );
    let failures = errors(&scrape) - before;
    assert_eq!(
        failures, 0.0,
        "probes failed while clients held connections"
    );
    let fds = scrape.value("process_open_fds", &[]).unwrap();
    assert!(fds < 200.0, "{fds} descriptors open");
    drop(idle);
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Item 7: refusals are counted by reason, logged at most 10 lines a second with a
/// "suppressed" summary, and long paths are cut.
#[test]
fn refusals_are_counted_and_logged_at_a_bounded_rate_with_cut_paths() {
    let hash = bcrypt::hash("secret", 4).unwrap();
    let text = format!(
        "{}\n[web.basic_auth_users]\nalice = \"{hash}\"\n",
        config("1s", "")
    );
    let exporter = Exporter::start(&text);
    let long = format!("/{}", "a".repeat(8000));
    let good = basic("alice", "secret");
    let start = Instant::now();
    for i in 0..300 {
        let path = if i % 2 == 0 {
            long.as_str()
        } else {
            "/metrics"
        };
        assert_eq!(http(exporter.addr, "GET", path).0, 401);
        let (status, _, _) = http_full(exporter.addr, "GET", &long, &[("Authorization", &good)]);
        assert_eq!(status, 404);
    }
    // One more refusal after the second is over, for the summary line.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(http(exporter.addr, "GET", "/metrics").0, 401);
    let seconds = start.elapsed().as_secs_f64().ceil();
    let (_, _, body) = http_full(
        exporter.addr,
        "GET",
        "/metrics",
        &[("Authorization", &good)],
    );
    let scrape = Scrape::parse(&body);
    let refused = |reason| {
        scrape
            .value(
                "regionprobe_http_requests_refused_total",
                &[("reason", reason)],
            )
            .unwrap_or(-1.0)
    };
    assert_eq!(refused("unauthorized"), 301.0);
    assert_eq!(refused("not_found"), 300.0);
    assert_eq!(refused("connection_limit"), 0.0);
    let log = exporter.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request refused") || l.contains("unauthorized request"))
        .collect();
    assert!(
        lines.len() as f64 <= 10.0 * (seconds + 1.0),
        "{} refusal lines in {seconds} s",
        lines.len()
    );
    assert!(
        log.contains("more refused requests were not logged"),
        "{log}"
    );
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 600, "a log line of {longest} bytes");
}

/// Item 8: a flood of a wrong password (128 connections) does not lock out the scraper: a
/// correct login that is not cached passes within a second, and a cached one keeps passing.
#[test]
fn a_correct_login_passes_within_a_second_during_a_wrong_password_flood() {
    // Cost 8: 60 ms a check in a debug build, a few ms per check in a release one.
    let hash = bcrypt::hash("secret", 8).unwrap();
    let text = format!(
        "{}\n[web.basic_auth_users]\nalice = \"{hash}\"\nbob = \"{hash}\"\n",
        config("1s", "")
    );
    let exporter = Exporter::start(&text);
    let addr = exporter.addr;
    let alice = basic("alice", "secret");
    assert_eq!(
        http_full(addr, "GET", "/-/healthy", &[("Authorization", &alice)]).0,
        200,
        "alice's login is cached"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = basic("alice", "wrong");
    let flood: Vec<_> = (0..128)
        .map(|_| {
            let stop = stop.clone();
            let wrong = wrong.clone();
            std::thread::spawn(move || flood(addr, &wrong, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let bob = basic("bob", "secret");
    for (who, header) in [("bob, not cached", &bob), ("alice, cached", &alice)] {
        let start = Instant::now();
        let (status, _, _) = http_full(addr, "GET", "/metrics", &[("Authorization", header)]);
        let took = start.elapsed();
        assert_eq!(status, 200, "{who}");
        assert!(took < Duration::from_secs(1), "{who}: {took:?}");
    }
    stop.store(true, Ordering::Release);
    let sent: usize = flood.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(sent > 128, "the flood ran: {sent} requests");
}

/// Wrong-password requests on one keep-alive connection until `stop`; how many were answered.
fn flood(addr: SocketAddr, header: &str, stop: &AtomicBool) -> usize {
    let mut sent = 0;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {header}\r\n\r\n");
    'connect: while !stop.load(Ordering::Acquire) {
        let Ok(mut stream) = TcpStream::connect(addr) else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Acquire) {
            if stream.write_all(request.as_bytes()).is_err() {
                continue 'connect;
            }
            // Responses are small: one read holds one (or the connection closed).
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => continue 'connect,
                Ok(_) => sent += 1,
            }
        }
    }
    sent
}

/// Item 9: concurrent `POST /-/reload`s join the reload that runs instead of queueing one
/// each, and with `--web.enable-lifecycle=false` the endpoint answers 403 while SIGHUP still
/// reloads.
#[test]
fn concurrent_reloads_coalesce_and_the_lifecycle_api_can_be_switched_off() {
    let text = config("1h", &tcp_targets(2000, closed_port()));
    let exporter = Exporter::start(&text);
    let addr = exporter.addr;
    let clients: Vec<_> = (0..16)
        .map(|_| std::thread::spawn(move || http(addr, "POST", "/-/reload").0))
        .collect();
    for client in clients {
        assert_eq!(client.join().unwrap(), 200);
    }
    let reloads = wait_for(WAIT, "reload log lines", || {
        let n = exporter
            .log_text()
            .lines()
            .filter(|l| l.contains("configuration reloaded"))
            .count();
        (n > 0).then_some(n)
    });
    assert!(reloads <= 8, "{reloads} reloads for 16 concurrent requests");
    drop(exporter);

    let dir = TempDir::new("lifecycle");
    let path = dir.write("exporter.toml", &config("1s", ""));
    let exporter = Exporter::start_with(
        &[
            "sh",
            "-c",
            "exec \"$0\" --web.enable-lifecycle=false \"$@\"",
        ],
        &path,
    );
    let (status, body) = http(exporter.addr, "POST", "/-/reload");
    assert_eq!(status, 403, "{body}");
    exporter.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(WAIT, "SIGHUP reload", || {
        exporter
            .log_text()
            .contains("configuration reloaded")
            .then_some(())
    });
    let scrape = exporter.metrics();
    assert_eq!(
        scrape.value(
            "regionprobe_http_requests_refused_total",
            &[("reason", "lifecycle_disabled")]
        ),
        Some(1.0)
    );
}
