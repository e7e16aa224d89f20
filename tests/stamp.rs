//! STAMP (RFC 8762): our session-sender against our session-reflector on loopback, the
//! reflector against hand-made and hostile packets (built here from the RFC's layouts, not
//! with the exporter's codec), and promtool's lint of both ends' `/metrics`.

// Blocking, real-time helpers: std's clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Exporter, Scrape, TempDir, wait_for};
use regionprobe_testkit::scrape::{assert_promtool_clean, skip_without_promtool};

const KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A reflector-only exporter; `extra` goes into `[reflector]`.
fn reflector(extra: &str, exporter_extra: &str) -> (Exporter, SocketAddr) {
    let exporter = Exporter::start(&format!(
        "[exporter]\nregion = \"r\"\nlisten = \"127.0.0.1:0\"\nallow_empty = true\n{exporter_extra}\n\
         [reflector]\nlisten = \"127.0.0.1:0\"\n{extra}\n"
    ));
    let addr = wait_for(Duration::from_secs(10), "the reflector's address", || {
        let scrape = exporter.metrics();
        let up = scrape.find("regionprobe_reflector_up", &[]);
        up.first()
            .filter(|s| s.value == 1.0)
            .map(|s| s.labels["listen"].parse::<SocketAddr>().unwrap())
    });
    (exporter, addr)
}

const ALLOW_LOOPBACK: &str = "[[reflector.allow]]\nnetwork = \"127.0.0.1/32\"\nregion = \"s\"\n";

/// A sender-only exporter with one stamp target named `t` to `reflector`.
fn sender(reflector: SocketAddr, target_extra: &str, exporter_extra: &str) -> Exporter {
    Exporter::start(&format!(
        "[exporter]\nregion = \"s\"\nlisten = \"127.0.0.1:0\"\n{exporter_extra}\n\
         [[target]]\nname = \"t\"\nregion = \"r\"\nprobe = \"stamp\"\naddress = \"{reflector}\"\n\
         interval = \"100ms\"\ntimeout = \"100ms\"\n{target_extra}\n"
    ))
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape.value(name, labels).unwrap_or(0.0)
}

fn promtool_clean(scrape_text: &str) {
    if skip_without_promtool() {
        return;
    }
    assert_promtool_clean(scrape_text);
}

#[test]
fn sender_and_reflector_on_loopback_lose_nothing_and_lint_clean() {
    let (reflector, at) = reflector(ALLOW_LOOPBACK, "");
    let sender = sender(at, "train = 5", "");
    let t = [("target", "t")];
    let scrape = wait_for(Duration::from_secs(20), "100 settled STAMP packets", || {
        let scrape = sender.metrics();
        (value(&scrape, "regionprobe_stamp_packets_total", &t) >= 100.0).then_some(scrape)
    });
    for direction in ["forward", "backward"] {
        let d = [("target", "t"), ("direction", direction)];
        assert_eq!(
            value(&scrape, "regionprobe_stamp_lost_packets_total", &d),
            0.0
        );
        assert_eq!(
            value(&scrape, "regionprobe_stamp_duplicate_packets_total", &d),
            0.0
        );
        // Loopback keeps the default TTL both ways.
        assert_eq!(
            value(&scrape, "regionprobe_stamp_received_ttl", &d),
            64.0,
            "{direction}"
        );
        let ipdv = value(&scrape, "regionprobe_stamp_ipdv_seconds_count", &d);
        assert!(ipdv >= 50.0, "IPDV samples {direction}: {ipdv}");
    }
    // The round trips are the target's latency, as for every other probe.
    let rtts = value(&scrape, "regionprobe_probe_duration_seconds_count", &t);
    assert!(rtts >= 15.0, "{rtts}");
    let p = value(&scrape, "regionprobe_probe_duration_seconds_sum", &t) / rtts;
    assert!(p > 0.0 && p < 0.01, "mean loopback round trip {p} s");
    // No clock claimed: no one-way delay series at all.
    assert!(
        scrape
            .find("regionprobe_stamp_one_way_delay_seconds_count", &[])
            .is_empty()
    );
    assert!(
        scrape
            .find("regionprobe_stamp_clock_error_seconds", &[])
            .is_empty()
    );

    let reflected = value(
        &reflector.metrics(),
        "regionprobe_reflector_reflected_packets_total",
        &[("sender_region", "s")],
    );
    assert!(reflected >= 100.0, "{reflected}");
    promtool_clean(&sender.get("/metrics").1);
    promtool_clean(&reflector.get("/metrics").1);
}

#[test]
fn one_way_delays_exist_only_when_both_ends_claim_synchronised_clocks() {
    let claim = "clock_sync_error = \"500us\"";
    // Only the sender claims: no one-way delays.
    let (unsynced, at) = reflector(ALLOW_LOOPBACK, "");
    let sender1 = sender(at, "", claim);
    // Both claim.
    let (synced, at) = reflector(ALLOW_LOOPBACK, claim);
    let sender2 = sender(at, "", claim);
    let t = [("target", "t")];
    let scrape2 = wait_for(Duration::from_secs(20), "one-way delays", || {
        let scrape = sender2.metrics();
        (value(
            &scrape,
            "regionprobe_stamp_one_way_delay_seconds_count",
            &[("target", "t"), ("direction", "backward")],
        ) >= 20.0)
            .then_some(scrape)
    });
    let scrape1 = sender1.metrics();
    assert!(value(&scrape1, "regionprobe_stamp_packets_total", &t) >= 10.0);
    assert!(
        scrape1
            .find("regionprobe_stamp_one_way_delay_seconds_count", &[])
            .is_empty()
    );
    // Same host, same clock: each direction's mean delay is below the round trip, and
    // they add up to it within the two error estimates.
    let mean = |name: &str, labels: &[(&str, &str)]| {
        value(&scrape2, &format!("{name}_sum"), labels)
            / value(&scrape2, &format!("{name}_count"), labels)
    };
    let forward = mean(
        "regionprobe_stamp_one_way_delay_seconds",
        &[("target", "t"), ("direction", "forward")],
    );
    let backward = mean(
        "regionprobe_stamp_one_way_delay_seconds",
        &[("target", "t"), ("direction", "backward")],
    );
    let rtt = mean("regionprobe_probe_duration_seconds", &t);
    let errors: f64 = scrape2
        .find("regionprobe_stamp_clock_error_seconds", &[("target", "t")])
        .iter()
        .map(|s| s.value)
        .sum();
    // 500 us each side, rounded up to the field's resolution.
    assert!((0.001..0.0011).contains(&errors), "errors {errors}");
    assert!(
        (forward + backward - rtt).abs() <= errors,
        "forward {forward} + backward {backward} vs round trip {rtt}"
    );
    drop((unsynced, synced));
}

#[test]
fn authenticated_mode_answers_the_right_key_only() {
    let dir = TempDir::new("stamp-keys");
    let key = dir.write("stamp.key", &format!("{KEY_HEX}\n"));
    let wrong = dir.write("wrong.key", &"ab".repeat(32));
    let (reflector, at) = reflector(
        &format!("key_file = \"{}\"\n{ALLOW_LOOPBACK}", key.display()),
        "",
    );
    let good = sender(at, &format!("key_file = \"{}\"", key.display()), "");
    let bad = sender(at, &format!("key_file = \"{}\"", wrong.display()), "");
    let t = [("target", "t")];
    wait_for(Duration::from_secs(20), "authenticated round trips", || {
        (value(
            &good.metrics(),
            "regionprobe_probe_duration_seconds_count",
            &t,
        ) >= 10.0)
            .then_some(())
    });
    let scrape = wait_for(Duration::from_secs(20), "refused HMACs", || {
        let scrape = reflector.metrics();
        (value(
            &scrape,
            "regionprobe_reflector_dropped_packets_total",
            &[("sender_region", "s"), ("reason", "bad_hmac")],
        ) >= 10.0)
            .then_some(scrape)
    });
    let bad_scrape = bad.metrics();
    assert_eq!(
        value(&bad_scrape, "regionprobe_probe_duration_seconds_count", &t),
        0.0
    );
    assert!(
        value(
            &bad_scrape,
            "regionprobe_probe_failures_total",
            &[("target", "t"), ("reason", "timeout")]
        ) >= 5.0
    );
    // The key file's content appears nowhere.
    for text in [
        good.log_text(),
        reflector.log_text(),
        good.get("/metrics").1,
        scrape.samples.iter().map(|s| format!("{s:?}")).collect(),
        good.get("/api/v1/targets").1,
    ] {
        assert!(!text.contains(KEY_HEX) && !text.contains(&KEY_HEX[..16]));
    }
}

// ---- Hand-made packets -------------------------------------------------------------------

/// An unauthenticated session-sender packet (RFC 8762 §4.2.1 with RFC 8972's SSID).
fn request(seq: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    if len >= 4 {
        p[0..4].copy_from_slice(&seq.to_be_bytes());
    }
    if len >= 14 {
        p[4..12].copy_from_slice(&0x1234_5678_9abc_def0u64.to_be_bytes());
        p[12..14].copy_from_slice(&0x2001u16.to_be_bytes()); // unsynchronised, 1 s
    }
    p
}

/// An authenticated session-sender packet (RFC 8762 §4.2.2), sealed with `key`.
fn auth_request(seq: u32, key: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 112];
    p[0..4].copy_from_slice(&seq.to_be_bytes());
    p[16..24].copy_from_slice(&0x1234_5678_9abc_def0u64.to_be_bytes());
    p[24..26].copy_from_slice(&0x2001u16.to_be_bytes());
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        &p[..96],
    );
    p[96..112].copy_from_slice(&tag.as_ref()[..16]);
    p
}

fn client(from: &str) -> UdpSocket {
    let socket = UdpSocket::bind(from).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    socket
}

/// Sends `packet` and returns the reply, if any arrives within 300 ms.
fn exchange(socket: &UdpSocket, to: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    socket.send_to(packet, to).unwrap();
    let mut buf = [0u8; 4096];
    socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn the_reflector_answers_what_is_due_and_counts_why_not() {
    let (reflector, at) = reflector(
        "rate_limit = 200\n[[reflector.allow]]\nnetwork = \"127.0.0.1\"\nregion = \"s\"\n",
        "",
    );
    let socket = client("127.0.0.1:0");

    // A good request: a reply of the base size, the reflector's sequence counting from 0,
    // our sequence and timestamp echoed, the TTL it saw.
    let reply = exchange(&socket, at, &request(7, 44)).expect("a reply");
    assert_eq!(reply.len(), 44);
    assert_eq!(&reply[0..4], &[0, 0, 0, 0]);
    assert_eq!(&reply[24..28], &7u32.to_be_bytes());
    assert_eq!(&reply[28..36], &0x1234_5678_9abc_def0u64.to_be_bytes());
    assert_eq!(reply[40], 64);
    // Padded (TLVs): the reply is never larger than the request.
    let reply = exchange(&socket, at, &request(8, 300)).expect("a reply");
    assert!(reply.len() <= 300);
    assert_eq!(
        &reply[0..4],
        &[0, 0, 0, 1],
        "stateful: one session per sender"
    );
    // Truncated and oversized: nothing back.
    assert_eq!(exchange(&socket, at, &request(9, 20)), None);
    assert_eq!(exchange(&socket, at, &request(10, 3000)), None);
    // From outside the allow-list (127.0.0.2 is ours too, on lo): nothing back.
    let stranger = client("127.0.0.2:0");
    assert_eq!(exchange(&stranger, at, &request(1, 44)), None);

    // A flood: the rate limit answers about 200 a second, whatever arrives, at a bounded cost
    // per packet.
    let cpu_before = cpu_seconds(reflector.child.id());
    let started = Instant::now();
    let flood = client("127.0.0.1:0");
    flood.set_nonblocking(true).unwrap();
    let packet = request(0, 44);
    for _ in 0..20_000 {
        let _ = flood.send_to(&packet, at);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Read until the reflector has been quiet for half a second (it may still be working
    // through the queued flood).
    flood.set_nonblocking(false).unwrap();
    flood
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 128];
    let mut replies = 0;
    while flood.recv(&mut buf).is_ok() {
        replies += 1;
    }
    let elapsed_all = started.elapsed().as_secs_f64();
    let due = 200.0 + 200.0 * elapsed_all;
    assert!(
        (replies as f64) <= due + 5.0 && replies > 0,
        "{replies} replies to 20,000 packets in {elapsed:.2} s"
    );

    // Once the counters stop moving (the reflector may still work through the queued flood
    // on a loaded machine; a rendering of /metrics is shared for 500 ms), every reply we got
    // is counted as reflected, and no more were sent than the rate allows.
    let mut last = -1.0;
    let scrape = wait_for(Duration::from_secs(10), "the counters to settle", || {
        std::thread::sleep(Duration::from_millis(600));
        let scrape = reflector.metrics();
        let reflected = value(
            &scrape,
            "regionprobe_reflector_reflected_packets_total",
            &[("sender_region", "s")],
        );
        let settled = reflected == last;
        last = reflected;
        settled.then_some(scrape)
    });
    let reflected = value(
        &scrape,
        "regionprobe_reflector_reflected_packets_total",
        &[("sender_region", "s")],
    );
    let due = 2.0 + 200.0 + 200.0 * started.elapsed().as_secs_f64();
    assert!(
        reflected >= 2.0 + replies as f64 && reflected <= due,
        "reflected {reflected}: {replies} replies received, at most {due} due"
    );
    assert!(
        value(
            &scrape,
            "regionprobe_reflector_refused_packets_total",
            &[("sender_region", "s"), ("reason", "rate_limited")],
        ) >= 1_000.0
    );
    let s = |family: &str, reason: &str| {
        value(
            &scrape,
            family,
            &[("sender_region", "s"), ("reason", reason)],
        )
    };
    assert_eq!(
        s("regionprobe_reflector_dropped_packets_total", "truncated"),
        1.0
    );
    assert_eq!(
        s("regionprobe_reflector_dropped_packets_total", "oversized"),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "regionprobe_reflector_refused_packets_total",
            &[("sender_region", "unknown"), ("reason", "not_allowed")]
        ),
        1.0
    );
    let handled = value(
        &scrape,
        "regionprobe_reflector_refused_packets_total",
        &[("sender_region", "s"), ("reason", "rate_limited")],
    ) + replies as f64;
    let cpu = cpu_seconds(reflector.child.id()) - cpu_before;
    // A debug build on a shared machine: 100 us a packet is an order of magnitude of slack,
    // and still catches a sweep of the tables or an HMAC per refused packet.
    assert!(
        cpu / handled < 100e-6,
        "{cpu:.3} s of CPU for {handled} packets"
    );
    eprintln!(
        "flood: {cpu:.3} CPU s for {handled} packets handled; {replies} replies, {} refused (rate_limited), the rest dropped by the kernel's queue",
        s(
            "regionprobe_reflector_refused_packets_total",
            "rate_limited"
        )
    );
    promtool_clean(&reflector.get("/metrics").1);
}

#[test]
fn an_authenticated_reflector_drops_wrong_hmacs_and_replays() {
    let dir = TempDir::new("stamp-auth");
    let key_file = dir.write("stamp.key", KEY_HEX);
    let (reflector, at) = reflector(
        &format!("key_file = \"{}\"\n{ALLOW_LOOPBACK}", key_file.display()),
        "",
    );
    let key = hex(KEY_HEX);
    let socket = client("127.0.0.1:0");
    let good = auth_request(1, &key);
    let reply = exchange(&socket, at, &good).expect("a reply");
    assert_eq!(reply.len(), 112);
    // RFC 8762 §4.3.2: the sender's sequence number at octet 48, its timestamp at 64.
    assert_eq!(&reply[48..52], &1u32.to_be_bytes());
    assert_eq!(&reply[64..72], &0x1234_5678_9abc_def0u64.to_be_bytes());
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        &reply[..96],
    );
    assert_eq!(&reply[96..112], &tag.as_ref()[..16], "the reply is sealed");
    // The same packet again: a replay.
    assert_eq!(exchange(&socket, at, &good), None);
    // A wrong key, and an unauthenticated packet: no HMAC that fits.
    assert_eq!(exchange(&socket, at, &auth_request(2, &[7; 32])), None);
    assert_eq!(exchange(&socket, at, &request(3, 112)), None);
    assert_eq!(exchange(&socket, at, &request(4, 44)), None);
    // A rendering of /metrics is shared for 500 ms: wait for one with all five packets.
    let scrape = wait_for(Duration::from_secs(5), "five packets counted", || {
        let scrape = reflector.metrics();
        let total: f64 = scrape
            .samples
            .iter()
            .filter(|s| s.name.starts_with("regionprobe_reflector_") && s.name.ends_with("_total"))
            .map(|s| s.value)
            .sum();
        (total == 5.0).then_some(scrape)
    });
    let dropped = |reason: &str| {
        value(
            &scrape,
            "regionprobe_reflector_dropped_packets_total",
            &[("sender_region", "s"), ("reason", reason)],
        )
    };
    assert_eq!(dropped("replayed"), 1.0);
    assert_eq!(dropped("bad_hmac"), 2.0);
    assert_eq!(dropped("truncated"), 1.0);
    assert_eq!(
        value(
            &scrape,
            "regionprobe_reflector_reflected_packets_total",
            &[("sender_region", "s")]
        ),
        1.0
    );
}
