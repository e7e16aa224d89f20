//! The real binary probing DNS targets on a real DNS server on 127.0.0.1 (the test kit's
//! `regionprobe_testkit::dns`), scraped and parsed.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Exporter, Scrape, wait_for};
use hickory_resolver::proto::rr::RecordType;
use regionprobe::config::ProbeKind;
use regionprobe_testkit::dns::{DnsServer, Transport};
use regionprobe_testkit::scrape::{probes, value};

const WAIT: Duration = Duration::from_secs(15);
const TARGETS: [&str; 5] = ["dns-udp", "dns-tcp", "dns-nx", "dns-silent", "dns-slow"];

/// The servers run on a runtime of their own while the test thread blocks on the exporter.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn dns_target(name: &str, server: SocketAddr, keys: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nregion = \"us\"\nprobe = \"dns\"\nserver = \"{server}\"\n{keys}\n"
    )
}

fn config(targets: &[String]) -> String {
    format!(
        "[exporter]\nregion = \"eu\"\nlisten = \"127.0.0.1:0\"\n[defaults]\ninterval = \"100ms\"\ntimeout = \"100ms\"\n{}",
        targets.join("\n")
    )
}

fn samples(scrape: &Scrape, target: &str) -> f64 {
    value(
        scrape,
        "regionprobe_probe_duration_seconds_count",
        &[("target", target)],
    )
}

fn failures(scrape: &Scrape, target: &str, reason: &str) -> f64 {
    value(
        scrape,
        "regionprobe_probe_failures_total",
        &[("target", target), ("reason", reason)],
    )
}

/// The `reason` values exported for `target`.
fn reasons(scrape: &Scrape, target: &str) -> BTreeSet<String> {
    scrape
        .find("regionprobe_probe_failures_total", &[("target", target)])
        .iter()
        .map(|s| s.labels["reason"].clone())
        .collect()
}

#[test]
fn dns_targets_record_answers_rcodes_and_silence() {
    let runtime = runtime();
    let good = runtime.block_on(DnsServer::start());
    let silent = runtime.block_on(DnsServer::start());
    silent.set_silent(true);
    let slow = runtime.block_on(DnsServer::start());
    slow.set_delay(Duration::from_millis(50));

    let exporter = Exporter::start(&config(&[
        dns_target("dns-udp", good.addr, "query = \"www.example.test\""),
        dns_target(
            "dns-tcp",
            good.addr,
            "query = \"mail.example.test\"\nrecord_type = \"MX\"\ntransport = \"tcp\"\nrecursion_desired = false\nmin_answers = 1\nanswer_regex = 'MX 10 mx1\\.'",
        ),
        dns_target("dns-nx", good.addr, "query = \"nowhere.example.test\""),
        // Longer than hickory's 333 ms UDP retry interval, so a retry would be seen.
        dns_target(
            "dns-silent",
            silent.addr,
            "query = \"www.example.test\"\ninterval = \"600ms\"\ntimeout = \"500ms\"",
        ),
        dns_target(
            "dns-slow",
            slow.addr,
            "query = \"www.example.test\"\ninterval = \"500ms\"\ntimeout = \"400ms\"",
        ),
    ]));

    // Every counter exists from the first scrape on, before or after the first probe: the
    // reasons a dns probe can give, each at zero unless that target failed that way.
    let possible: BTreeSet<String> = regionprobe::reasons(ProbeKind::Dns)
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    let first = exporter.metrics();
    for target in TARGETS {
        assert_eq!(reasons(&first, target), possible, "{target}");
    }
    assert_eq!(
        first.value("regionprobe_targets", &[("probe", "dns")]),
        Some(5.0)
    );

    let scrape = wait_for(WAIT, "three probes of every target", || {
        let scrape = exporter.metrics();
        TARGETS
            .iter()
            .all(|t| probes(&scrape, t) >= 3.0)
            .then_some(scrape)
    });

    // The answered targets observe a latency per probe, and nothing fails.
    for target in ["dns-udp", "dns-tcp", "dns-slow"] {
        let attempted = probes(&scrape, target);
        let observed = samples(&scrape, target);
        assert!(
            observed >= attempted - 1.0 && observed > 0.0,
            "{target}: {observed} of {attempted}"
        );
        for reason in &possible {
            assert_eq!(failures(&scrape, target, reason), 0.0, "{target} {reason}");
        }
        assert_eq!(
            value(&scrape, "regionprobe_target_up", &[("target", target)]),
            1.0
        );
    }
    // The histogram holds the round trip in seconds: the server's 50 ms delay and no less.
    let slow_mean = value(
        &scrape,
        "regionprobe_probe_duration_seconds_sum",
        &[("target", "dns-slow")],
    ) / samples(&scrape, "dns-slow");
    assert!((0.05..0.4).contains(&slow_mean), "{slow_mean}");
    assert_eq!(
        value(
            &scrape,
            "regionprobe_probe_duration_seconds_bucket",
            &[("target", "dns-slow"), ("le", "0.0256")]
        ),
        0.0
    );

    // Over tcp the connect and the query are phases that add up to the latency; over udp the
    // round trip is the only phase, and no phase series is exported.
    let phase = |phase: &str, what: &str| {
        value(
            &scrape,
            &format!("regionprobe_dns_phase_duration_seconds_{what}"),
            &[("target", "dns-tcp"), ("phase", phase)],
        )
    };
    assert_eq!(phase("connect", "count"), samples(&scrape, "dns-tcp"));
    assert_eq!(phase("processing", "count"), samples(&scrape, "dns-tcp"));
    assert!(phase("connect", "sum") > 0.0);
    let total = value(
        &scrape,
        "regionprobe_probe_duration_seconds_sum",
        &[("target", "dns-tcp")],
    );
    let phases = phase("connect", "sum") + phase("processing", "sum");
    assert!((phases - total).abs() < 1e-6, "{phases} vs {total}");
    assert!(
        scrape
            .find(
                "regionprobe_dns_phase_duration_seconds_count",
                &[("target", "dns-udp")]
            )
            .is_empty()
    );

    // NXDOMAIN where NOERROR is expected: the server answered, wrongly: `validation`.
    let attempted = probes(&scrape, "dns-nx");
    let invalid = failures(&scrape, "dns-nx", "validation");
    assert!(
        invalid >= attempted - 1.0 && invalid > 0.0,
        "{invalid} of {attempted}"
    );
    // No answer at all: `timeout`, and never a latency sample.
    let attempted = probes(&scrape, "dns-silent");
    let timeouts = failures(&scrape, "dns-silent", "timeout");
    assert!(
        timeouts >= attempted - 1.0 && timeouts > 0.0,
        "{timeouts} of {attempted}"
    );
    for (target, failed) in [("dns-nx", "validation"), ("dns-silent", "timeout")] {
        assert_eq!(reasons(&scrape, target), possible, "{target}");
        for reason in possible.iter().filter(|r| *r != failed) {
            assert_eq!(failures(&scrape, target, reason), 0.0, "{target} {reason}");
        }
        assert_eq!(samples(&scrape, target), 0.0, "{target}");
        assert_eq!(
            value(&scrape, "regionprobe_target_up", &[("target", target)]),
            0.0
        );
    }
    // The reason's words go to the log, naming the rcode.
    wait_for(WAIT, "the validation failure in the log", || {
        let log = exporter.log_text();
        log.lines()
            .any(|l| l.contains("dns-nx") && l.contains("rcode NXDOMAIN, expected NOERROR"))
            .then_some(())
    });

    // The duration histogram keeps growing for the good target.
    let later = wait_for(WAIT, "more samples of dns-udp", || {
        let later = exporter.metrics();
        (samples(&later, "dns-udp") > samples(&scrape, "dns-udp")).then_some(later)
    });
    assert!(probes(&later, "dns-udp") > probes(&scrape, "dns-udp"));

    // One query per probe, as configured: the server saw what the targets asked, no retries.
    let stopped = exporter.metrics();
    let done = |target| probes(&stopped, target);
    drop(exporter);
    // Let the servers read what was in flight when the exporter stopped.
    std::thread::sleep(Duration::from_millis(200));
    let received = good.received();
    let asked = |name: &str| {
        received
            .iter()
            .filter(|q| q.name == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let udp = asked("www.example.test.");
    assert!(udp.iter().all(|q| q.transport == Transport::Udp
        && q.record_type == RecordType::A
        && q.recursion_desired));
    let tcp = asked("mail.example.test.");
    assert!(tcp.iter().all(|q| q.transport == Transport::Tcp
        && q.record_type == RecordType::MX
        && !q.recursion_desired));
    for (target, queries) in [
        ("dns-udp", udp.len()),
        ("dns-tcp", tcp.len()),
        ("dns-nx", asked("nowhere.example.test.").len()),
        ("dns-silent", silent.received().len()),
    ] {
        // Probes in flight at the last scrape may have sent their query already.
        let queries = queries as f64;
        assert!(
            queries >= done(target) && queries <= done(target) + 2.0,
            "{target}: {queries} queries for {} probes",
            done(target)
        );
    }
    // A fresh connection per tcp probe (the last one may have been cut before its query).
    let accepted = good.tcp_accepted();
    assert!(
        accepted >= tcp.len() && accepted <= tcp.len() + 1,
        "{accepted} connections for {} queries",
        tcp.len()
    );
}
