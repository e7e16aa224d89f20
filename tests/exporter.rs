//! The real binary on port 0, scraped and parsed: metric families, labels, probe outcomes,
//! reload semantics, signals, content negotiation and promtool's lint.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use common::{Exporter, Scrape, http, http_full, skip_unless, wait_for};
use regionprobe_testkit::scrape::{assert_promtool_clean, skip_without_promtool};

const WAIT: Duration = Duration::from_secs(15);

/// A listening port that stays open for the test, and one that is certainly closed.
fn open_and_closed_ports() -> (TcpListener, u16) {
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    (open, closed)
}

fn tcp_target(name: &str, region: &str, port: u16) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nregion = \"{region}\"\nprobe = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n"
    )
}

fn config(targets: &[String]) -> String {
    format!(
        "[exporter]\nregion = \"eu\"\nlisten = \"127.0.0.1:0\"\n[defaults]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n{}",
        targets.join("\n")
    )
}

fn probes(scrape: &Scrape, target: &str) -> f64 {
    scrape
        .value("regionprobe_probes_total", &[("target", target)])
        .unwrap_or(0.0)
}

fn wait_for_probes(exporter: &Exporter, target: &str, at_least: f64) -> Scrape {
    wait_for(WAIT, &format!("{at_least} probes of {target}"), || {
        let scrape = exporter.metrics();
        (probes(&scrape, target) >= at_least).then_some(scrape)
    })
}

#[test]
fn every_family_has_help_and_type_and_per_target_series_carry_the_contract_labels() {
    let (open, closed) = open_and_closed_ports();
    let port = open.local_addr().unwrap().port();
    let exporter = Exporter::start(&config(&[
        tcp_target("up", "us", port),
        tcp_target("down", "ap", closed),
    ]));
    let scrape = wait_for_probes(&exporter, "down", 2.0);

    let expected = [
        ("regionprobe_probe_duration_seconds", "histogram"),
        ("regionprobe_probes_total", "counter"),
        ("regionprobe_probe_failures_total", "counter"),
        ("regionprobe_target_up", "gauge"),
        ("regionprobe_targets", "gauge"),
        ("regionprobe_scheduler_lag_seconds", "histogram"),
        ("regionprobe_scheduler_skipped_ticks_total", "counter"),
        ("regionprobe_build_info", "gauge"),
        ("regionprobe_config_last_reload_successful", "gauge"),
        (
            "regionprobe_config_last_reload_success_timestamp_seconds",
            "gauge",
        ),
        ("regionprobe_icmp_socket_info", "gauge"),
        ("regionprobe_icmp_unmatched_replies_total", "counter"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ];
    for (family, kind) in expected {
        assert_eq!(
            scrape.types.get(family).map(String::as_str),
            Some(kind),
            "TYPE of {family}"
        );
        assert!(
            scrape.help.get(family).is_some_and(|h| !h.is_empty()),
            "HELP of {family}"
        );
    }
    for family in scrape.types.keys() {
        assert!(
            scrape.help.contains_key(family),
            "{family} has TYPE but no HELP"
        );
    }
    // Every sample belongs to a declared family.
    for sample in &scrape.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                sample
                    .name
                    .strip_suffix(suffix)
                    .filter(|f| scrape.types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&sample.name);
        assert!(
            scrape.types.contains_key(family),
            "undeclared sample {}",
            sample.name
        );
    }

    let contract: BTreeSet<&str> = ["source_region", "target_region", "target", "probe"].into();
    for sample in scrape
        .samples
        .iter()
        .filter(|s| s.labels.contains_key("target"))
    {
        let mut labels: BTreeSet<&str> = sample.labels.keys().map(String::as_str).collect();
        labels.remove("le");
        if sample.name == "regionprobe_probe_failures_total" {
            assert!(labels.remove("reason"), "{sample:?}");
        }
        assert_eq!(labels, contract, "{sample:?}");
        assert_eq!(sample.labels["source_region"], "eu");
        assert_eq!(sample.labels["probe"], "tcp");
    }
    assert_eq!(
        scrape.value(
            "regionprobe_target_up",
            &[("target", "up"), ("target_region", "us")]
        ),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("regionprobe_targets", &[("probe", "tcp")]),
        Some(2.0)
    );
    assert_eq!(
        scrape.value("regionprobe_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(
        scrape.label_values("regionprobe_build_info", "version"),
        vec![env!("CARGO_PKG_VERSION")]
    );
    assert!(scrape.value("process_resident_memory_bytes", &[]).unwrap() > 1e6);
    drop(open);
}

#[test]
fn a_closed_tcp_port_counts_refused_and_never_observes_a_latency() {
    let (_open, closed) = open_and_closed_ports();
    let exporter = Exporter::start(&config(&[tcp_target("closed", "ap", closed)]));
    let scrape = wait_for_probes(&exporter, "closed", 3.0);
    let attempted = probes(&scrape, "closed");
    let refused = scrape
        .value(
            "regionprobe_probe_failures_total",
            &[("target", "closed"), ("reason", "refused")],
        )
        .unwrap();
    // The scrape is not atomic across families, but probes and failures are recorded together.
    assert!(
        refused >= attempted - 1.0 && refused > 0.0,
        "{refused} of {attempted}"
    );
    assert_eq!(
        scrape.value(
            "regionprobe_probe_duration_seconds_count",
            &[("target", "closed")]
        ),
        Some(0.0)
    );
    assert_eq!(
        scrape.value("regionprobe_target_up", &[("target", "closed")]),
        Some(0.0)
    );
    for reason in ["timeout", "unreachable", "resolve", "error"] {
        assert_eq!(
            scrape.value(
                "regionprobe_probe_failures_total",
                &[("target", "closed"), ("reason", reason)]
            ),
            Some(0.0),
            "{reason} starts at zero and stays there"
        );
    }
}

#[test]
fn an_open_tcp_port_records_connect_latency_in_the_buckets() {
    let (open, _) = open_and_closed_ports();
    let port = open.local_addr().unwrap().port();
    let exporter = Exporter::start(&config(&[tcp_target("open", "us", port)]));
    let scrape = wait_for_probes(&exporter, "open", 3.0);
    let count = scrape
        .value(
            "regionprobe_probe_duration_seconds_count",
            &[("target", "open")],
        )
        .unwrap();
    let sum = scrape
        .value(
            "regionprobe_probe_duration_seconds_sum",
            &[("target", "open")],
        )
        .unwrap();
    assert!(count >= 2.0, "{count}");
    assert!(
        sum > 0.0 && sum / count < 0.05,
        "loopback connect should be fast: {sum}/{count}"
    );
    let inf = scrape
        .value(
            "regionprobe_probe_duration_seconds_bucket",
            &[("target", "open"), ("le", "+Inf")],
        )
        .unwrap();
    assert_eq!(inf, count);
    let buckets = scrape.find(
        "regionprobe_probe_duration_seconds_bucket",
        &[("target", "open")],
    );
    assert_eq!(buckets.len(), 19, "18 default bounds plus +Inf");
    drop(open);
}

#[test]
fn icmp_to_the_v4_and_v6_loopback_records_samples() {
    let exporter = Exporter::start(&format!(
        "{}\n[[target]]\nname = \"ping4\"\nregion = \"eu\"\nprobe = \"icmp\"\nhost = \"127.0.0.1\"\n\
         [[target]]\nname = \"ping6\"\nregion = \"eu\"\nprobe = \"icmp\"\nhost = \"::1\"\n",
        config(&[])
    ));
    let scrape = wait_for_probes(&exporter, "ping6", 3.0);
    let socket_open = !scrape
        .find("regionprobe_icmp_socket_info", &[("ip_version", "4")])
        .is_empty();
    if skip_unless(
        socket_open,
        "no ICMP socket for this user (needs ping_group_range or CAP_NET_RAW)",
    ) {
        return;
    }
    let scrape = wait_for(WAIT, "ICMP samples", || {
        let scrape = exporter.metrics();
        let ok = ["ping4", "ping6"].iter().all(|t| {
            scrape
                .value("regionprobe_probe_duration_seconds_count", &[("target", t)])
                .unwrap_or(0.0)
                >= 3.0
        });
        ok.then_some(scrape)
    });
    for target in ["ping4", "ping6"] {
        let sum = scrape
            .value(
                "regionprobe_probe_duration_seconds_sum",
                &[("target", target)],
            )
            .unwrap();
        // A clock started after the send (surge-ping #63) reads zero on loopback.
        assert!(sum > 0.0, "{target}: RTT sum {sum}");
        let failed: f64 = scrape
            .find("regionprobe_probe_failures_total", &[("target", target)])
            .iter()
            .map(|s| s.value)
            .sum();
        assert_eq!(failed, 0.0, "{target} failures\n{}", exporter.log_text());
    }
    let kinds = scrape.label_values("regionprobe_icmp_socket_info", "kind");
    assert!(
        kinds.iter().all(|k| k == "raw" || k == "datagram"),
        "{kinds:?}"
    );
    wait_for(WAIT, "the socket kind in the log", || {
        exporter
            .log_text()
            .contains("ICMP socket open")
            .then_some(())
    });
}

#[test]
fn http_targets_export_phases_redirects_and_their_failure_reasons() {
    let server = common::http_server(Duration::ZERO);
    let (_open, closed) = open_and_closed_ports();
    let http = |name: &str, url: String| {
        format!(
            "[[target]]\nname = \"{name}\"\nregion = \"us\"\nprobe = \"http\"\nurl = \"{url}\"\n"
        )
    };
    let exporter = Exporter::start(&config(&[
        http("web", format!("http://{server}/healthz")),
        http("web-down", format!("http://127.0.0.1:{closed}/")),
        tcp_target("db", "us", closed),
    ]));
    let scrape = wait_for(WAIT, "successful HTTP probes", || {
        let scrape = exporter.metrics();
        let ok = scrape
            .value(
                "regionprobe_probe_duration_seconds_count",
                &[("target", "web")],
            )
            .unwrap_or(0.0);
        (ok >= 2.0).then_some(scrape)
    });
    assert_eq!(
        scrape.label_values("regionprobe_http_phase_duration_seconds_count", "phase"),
        vec!["connect", "processing", "resolve", "tls", "transfer"]
    );
    assert_eq!(
        scrape.label_values("regionprobe_http_phase_duration_seconds_count", "target"),
        vec!["web", "web-down"],
        "phases exist for HTTP targets only"
    );
    let phase = |p: &str| {
        scrape
            .value(
                "regionprobe_http_phase_duration_seconds_sum",
                &[("target", "web"), ("phase", p)],
            )
            .unwrap()
    };
    assert!(phase("connect") > 0.0 && phase("processing") > 0.0);
    assert_eq!(phase("tls"), 0.0, "plain http has no TLS phase");
    assert_eq!(
        scrape.value("regionprobe_http_redirects", &[("target", "web")]),
        Some(0.0)
    );
    assert_eq!(
        scrape.value(
            "regionprobe_probe_duration_seconds_count",
            &[("target", "web-down")]
        ),
        Some(0.0),
        "a failed HTTP probe observes no latency"
    );
    assert_eq!(
        scrape.value(
            "regionprobe_http_phase_duration_seconds_count",
            &[("target", "web-down"), ("phase", "connect")]
        ),
        Some(0.0),
        "nor any phase"
    );
    assert!(
        scrape
            .value(
                "regionprobe_probe_failures_total",
                &[("target", "web-down"), ("reason", "refused")]
            )
            .unwrap()
            > 0.0
    );
    assert_eq!(
        scrape.label_values("regionprobe_probe_failures_total", "reason"),
        vec![
            "error",
            "http_status",
            "local",
            "refused",
            "resolve",
            "timeout",
            "tls",
            "unreachable",
            "validation"
        ]
    );
    assert!(
        scrape
            .find("regionprobe_tls_cert_expiry_timestamp_seconds", &[])
            .is_empty(),
        "no TLS target, no expiry series"
    );
}

fn reload(exporter: &Exporter) -> (u16, String) {
    http(exporter.addr, "POST", "/-/reload")
}

#[test]
fn reload_keeps_unchanged_series_drops_removed_ones_and_starts_new_ones() {
    let (open, _) = open_and_closed_ports();
    let port = open.local_addr().unwrap().port();
    let keep = tcp_target("keep", "us", port);
    let exporter = Exporter::start(&config(&[
        keep.clone(),
        tcp_target("gone", "ap", port),
        tcp_target("moved", "eu", port),
    ]));
    let before = wait_for_probes(&exporter, "keep", 5.0);
    let kept_before = probes(&before, "keep");

    std::fs::write(
        &exporter.config_path,
        config(&[
            keep,
            tcp_target("moved", "sa", port),
            tcp_target("new", "af", port),
        ]),
    )
    .unwrap();
    let (status, body) = reload(&exporter);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("1 added, 1 removed, 1 changed, 1 unchanged"),
        "{body}"
    );

    let after = wait_for_probes(&exporter, "new", 2.0);
    assert!(
        probes(&after, "keep") > kept_before,
        "unchanged target keeps its counter and keeps probing"
    );
    assert!(
        after
            .samples
            .iter()
            .all(|s| s.labels.get("target").map(String::as_str) != Some("gone")),
        "every series of a removed target disappears"
    );
    assert_eq!(
        after.label_values("regionprobe_target_up", "target_region"),
        vec!["af", "sa", "us"]
    );
    assert_eq!(
        after.value("regionprobe_targets", &[("probe", "tcp")]),
        Some(3.0)
    );
    assert_eq!(
        after.value("regionprobe_config_last_reload_successful", &[]),
        Some(1.0)
    );
    drop(open);
}

#[test]
fn a_bad_reload_keeps_the_running_config_and_sighup_recovers() {
    let (open, _) = open_and_closed_ports();
    let port = open.local_addr().unwrap().port();
    let good = config(&[tcp_target("steady", "us", port)]);
    let exporter = Exporter::start(&good);
    let before = wait_for_probes(&exporter, "steady", 2.0);
    let reloaded_at = before
        .value(
            "regionprobe_config_last_reload_success_timestamp_seconds",
            &[],
        )
        .unwrap();

    std::fs::write(
        &exporter.config_path,
        good.replace("probe = \"tcp\"", "probe = \"tcp\"\nport = 1"),
    )
    .unwrap();
    let (status, body) = reload(&exporter);
    assert_eq!(status, 500, "{body}");
    let path = exporter.config_path.display().to_string();
    assert!(
        body.contains(&format!("{path}: key `target[0].port`: unknown key")),
        "{body}"
    );
    // The log line is read from the child's stderr by another thread: give it a moment.
    wait_for(WAIT, "the failed reload in the log", || {
        exporter
            .log_text()
            .contains("reload failed; keeping the running configuration")
            .then_some(())
    });

    let during = exporter.metrics();
    assert_eq!(
        during.value("regionprobe_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        during.value(
            "regionprobe_config_last_reload_success_timestamp_seconds",
            &[]
        ),
        Some(reloaded_at)
    );
    let still = probes(&during, "steady");
    wait_for_probes(&exporter, "steady", still + 2.0);

    std::fs::write(&exporter.config_path, &good).unwrap();
    exporter.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(WAIT, "SIGHUP reload", || {
        (exporter
            .metrics()
            .value("regionprobe_config_last_reload_successful", &[])
            == Some(1.0))
        .then_some(())
    });
    drop(open);
}

#[test]
fn sigterm_stops_gracefully() {
    let exporter = Exporter::start(&config(&[]));
    let log = exporter.log.clone();
    let status = exporter.stop();
    assert!(status.success(), "{status:?}");
    let log = log.lock().unwrap().join("\n");
    assert!(
        log.contains("SIGTERM received") && log.contains("regionprobe stopped"),
        "{log}"
    );
}

#[test]
fn endpoints_and_content_negotiation() {
    let exporter = Exporter::start(&config(&[]));
    let (status, headers, body) = http_full(exporter.addr, "GET", "/metrics", &[]);
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(!body.contains("# EOF"));

    let accept = [(
        "Accept",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )];
    let (status, headers, body) = http_full(exporter.addr, "GET", "/metrics", &accept);
    assert_eq!(status, 200);
    assert!(headers["content-type"].starts_with("application/openmetrics-text; version=1.0.0"));
    assert!(body.ends_with("# EOF\n"), "{body}");

    // gzip, as Prometheus asks for it: the same text, compressed.
    let mut stream = std::net::TcpStream::connect(exporter.addr).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("vary: accept, accept-encoding"), "{head}");
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&raw[end + 4..]),
        &mut text,
    )
    .expect("a gzip body");
    assert!(text.contains("\nregionprobe_build_info{"), "{text}");
    assert!(!text.contains("# EOF"));

    let (status, page) = exporter.get("/");
    assert_eq!(status, 200);
    for link in ["/metrics", "/-/healthy", "/-/ready"] {
        assert!(page.contains(&format!("href=\"{link}\"")), "{page}");
    }
    assert_eq!(exporter.get("/-/healthy").0, 200);
    assert_eq!(exporter.get("/-/ready").0, 200);
    assert_eq!(exporter.get("/nope").0, 404);
    let (status, headers, _) = http_full(exporter.addr, "GET", "/-/reload", &[]);
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST, PUT");
    assert_eq!(http(exporter.addr, "POST", "/metrics").0, 405);
}

#[test]
fn promtool_check_metrics_reports_nothing() {
    if skip_without_promtool() {
        return;
    }
    let (open, closed) = open_and_closed_ports();
    let port = open.local_addr().unwrap().port();
    let server = common::http_server(Duration::ZERO);
    let exporter = Exporter::start(&format!(
        "{}\n[[target]]\nname = \"ping\"\nregion = \"eu\"\nprobe = \"icmp\"\nhost = \"127.0.0.1\"\n\
         [[target]]\nname = \"web\"\nregion = \"eu\"\nprobe = \"http\"\nurl = \"http://{server}/\"\n\
         [[target]]\nname = \"every\"\nregion = \"eu\"\nprobe = \"tcp\"\naddress = \"localhost:{port}\"\n\
         ip_version = 4\naddresses = \"all\"\n",
        config(&[
            tcp_target("up", "us", port),
            tcp_target("down", "ap", closed)
        ])
    ));
    wait_for_probes(&exporter, "ping", 2.0);
    // The series of an `addresses = "all"` target (address_index) and of its name's
    // resolution are linted too.
    wait_for(Duration::from_secs(10), "every's address series", || {
        let scrape = exporter.metrics();
        (scrape.value(
            "regionprobe_target_up",
            &[("target", "every"), ("address_index", "0")],
        ) == Some(1.0)
            && scrape.value(
                "regionprobe_target_address_changes_total",
                &[("target", "every")],
            ) == Some(0.0))
        .then_some(())
    });
    let (_, body) = exporter.get("/metrics");
    assert_promtool_clean(&body);
    drop(open);
}

/// The library entry point used by embedders and tests: serves on the given listener and
/// returns once the shutdown future completes.
#[tokio::test]
async fn library_run_serves_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let text = config(&[]);
    let config = regionprobe::config::parse("inline", &text, Some(Default::default())).unwrap();
    let source = regionprobe::config::ConfigSource::Bundled;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(regionprobe::run(source, config, listener, async {
        let _ = stopped.await;
    }));
    let (status, _) = tokio::task::spawn_blocking(move || http(addr, "GET", "/-/healthy"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener is closed after shutdown"
    );
}

/// README's metrics reference lists exactly the families `/metrics` serves (the text format
/// declares every family, with series or not): a metric added, renamed or removed without
/// the docs fails here.
#[test]
fn the_readme_metrics_reference_matches_the_served_families() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Metrics reference")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Metrics reference section");
    let documented: BTreeSet<String> = section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .flat_map(|line| {
            let first_cell = line.split('|').nth(1).unwrap_or_default();
            first_cell
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|name| name.starts_with("regionprobe_") || name.starts_with("process_"))
        .collect();

    let exporter = Exporter::start(&config(&[]));
    let (_, body) = exporter.get("/metrics");
    let served: BTreeSet<String> = body
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(served.len() > 20, "{body}");
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let gone: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && gone.is_empty(),
        "served but not in README's metrics reference: {undocumented:?}; in the reference but not served: {gone:?}"
    );

    // The labels too, for families the table lists with their label names (per-target
    // families say "per target"): every served series has exactly the documented ones.
    let scrape = Scrape::parse(&body);
    for line in section.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let names: Vec<&str> = cells[1].split('`').skip(1).step_by(2).collect();
        let labels_cell = cells[3];
        if names.len() != 1 || labels_cell.contains("per target") {
            continue;
        }
        let documented: BTreeSet<&str> = labels_cell.split('`').skip(1).step_by(2).collect();
        for sample in scrape.samples.iter().filter(|sample| {
            sample.name == names[0]
                || sample
                    .name
                    .strip_prefix(names[0])
                    .is_some_and(|suffix| ["_total", "_bucket", "_sum", "_count"].contains(&suffix))
        }) {
            let served: BTreeSet<&str> = sample
                .labels
                .keys()
                .map(String::as_str)
                .filter(|label| *label != "le")
                .collect();
            assert_eq!(served, documented, "labels of {} in README", names[0]);
        }
    }
}
