//! Item 10 of issue 12: while the process is out of file descriptors, the `process_*`
//! families stay on `/metrics` (they were read from files opened per scrape, and vanished
//! exactly when `process_open_fds` mattered). Alone in its test binary: it lowers the
//! process's own descriptor limit and fills the table.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use regionprobe_testkit::black_box::{Scrape, wait_for};

const LIMIT: u64 = 512;

/// One `GET /metrics` on an already open keep-alive connection: no descriptor needed here.
fn scrape(stream: &mut TcpStream) -> Scrape {
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if body.len() >= length {
                return Scrape::parse(&body[..length]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_stay_while_descriptors_are_exhausted() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, LIMIT, LIMIT.min(hard)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let text = "[exporter]\nregion = \"eu\"\nlisten = \"127.0.0.1:0\"\n";
    let config = regionprobe::config::parse("inline", text, Some(Default::default())).unwrap();
    let source = regionprobe::config::ConfigSource::Bundled;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(regionprobe::run(source, config, listener, async {
        let _ = stopped.await;
    }));
    let checked = tokio::task::spawn_blocking(move || {
        let mut stream = wait_for(Duration::from_secs(10), "the endpoint", || {
            TcpStream::connect(addr).ok()
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let before = scrape(&mut stream);
        assert!(before.value("process_open_fds", &[]).is_some());
        // Fill the descriptor table.
        let mut hoard = Vec::new();
        while let Ok(file) = std::fs::File::open("/dev/null") {
            hoard.push(file);
        }
        assert!(
            std::fs::File::open("/dev/null").is_err(),
            "out of descriptors"
        );
        // Past the 500 ms a rendering is shared for.
        std::thread::sleep(Duration::from_millis(700));
        let during = scrape(&mut stream);
        drop(hoard);
        during
    })
    .await
    .unwrap();
    for family in [
        "process_open_fds",
        "process_max_fds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(
            checked.value(family, &[]).is_some(),
            "{family} missing while descriptors are exhausted"
        );
    }
    let open = checked.value("process_open_fds", &[]).unwrap();
    assert!(open >= LIMIT as f64 - 2.0, "process_open_fds {open}");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
