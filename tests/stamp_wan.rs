//! STAMP across a WAN with different loss, delay and jitter in each direction: a sender
//! sidecar in one namespace, a reflector sidecar in another, joined by the test kit's
//! user-space forwarder (`wan`), which counts what it dropped in each direction. The
//! sidecars' HTTP endpoints sit on uplinks to the root namespace; nothing has a default
//! route, so no packet leaves the machine. Needs root.

// Blocking, real-time helpers: std's clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{Exporter, Scrape, TempDir, is_root, run, skip_unless, wait_for};
use regionprobe_testkit::netns::{Netns, Uplink};
use regionprobe_testkit::wan::{Direction, Wan};

/// The sender's side (A) and the reflector's side (B) of the path.
const A: &str = "10.78.0.1";
const B: &str = "10.78.0.2";

/// Fields drop in order: the sidecars first, then the forwarder, then the namespaces.
struct Path {
    sender: Exporter,
    reflector: Exporter,
    wan: Wan,
    _uplinks: [Uplink; 2],
    _a: Netns,
    _b: Netns,
    _dir: TempDir,
}

/// Two sidecars across the forwarder; the sender sends `train` packets every 50 ms.
/// `clock` goes into both `[exporter]` sections.
fn path(tag: &str, ab: Direction, ba: Direction, train: u32, clock: &str) -> Path {
    path_with(tag, ab, ba, train, clock, "")
}

/// [`path`] with more keys for the target (`target_extra`).
fn path_with(
    tag: &str,
    ab: Direction,
    ba: Direction,
    train: u32,
    clock: &str,
    target_extra: &str,
) -> Path {
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    let (dev_a, dev_b) = (a.ifname(), b.ifname());
    let wan = Wan::start(&dev_a, &dev_b, ab, ba, 17).expect("TUN devices");
    for (netns, dev, addr) in [(&a, &dev_a, A), (&b, &dev_b, B)] {
        run(&["ip", "link", "set", dev, "netns", &netns.name]);
        netns.ip(&format!("addr add {addr}/24 dev {dev}"));
        netns.ip(&format!("link set {dev} up"));
    }
    let block = if tag.len() > 1 {
        tag.as_bytes()[1] % 8
    } else {
        0
    };
    let uplinks = [
        a.uplink(u32::from(block) * 2),
        b.uplink(u32::from(block) * 2 + 1),
    ];
    let dir = TempDir::new("stamp-wan");
    let reflector_config = dir.write(
        "reflector.toml",
        &format!(
            "[exporter]\nregion = \"b\"\nlisten = \"{}:0\"\nallow_empty = true\n{clock}\n\
             [reflector]\nlisten = \"{B}:0\"\nrate_limit = 10000\n\
             [[reflector.allow]]\nnetwork = \"{A}/32\"\nregion = \"a\"\n",
            uplinks[1].inside
        ),
    );
    let reflector = Exporter::start_with(&b.prefix(), &reflector_config);
    let port = wait_for(Duration::from_secs(10), "the reflector's port", || {
        reflector
            .metrics()
            .find("regionprobe_reflector_up", &[])
            .first()
            .filter(|s| s.value == 1.0)
            .map(|s| s.labels["listen"].parse::<SocketAddr>().unwrap().port())
    });
    let sender_config = dir.write(
        "sender.toml",
        &format!(
            "[exporter]\nregion = \"a\"\nlisten = \"{}:0\"\n{clock}\n\
             [[target]]\nname = \"b\"\nregion = \"b\"\nprobe = \"stamp\"\naddress = \"{B}:{port}\"\n\
             interval = \"50ms\"\ntimeout = \"50ms\"\ntrain = {train}\n{target_extra}\n",
            uplinks[0].inside
        ),
    );
    let sender = Exporter::start_with(&a.prefix(), &sender_config);
    Path {
        sender,
        reflector,
        wan,
        _uplinks: uplinks,
        _a: a,
        _b: b,
        _dir: dir,
    }
}

fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape.value(name, labels).unwrap_or(0.0)
}

fn direction(d: &str) -> [(&'static str, &str); 2] {
    [("target", "b"), ("direction", d)]
}

/// Waits for `packets` settled packets; returns the sender's scrape and the forwarder's drop
/// ratios (A→B, B→A) taken right after it.
fn measure(path: &Path, packets: f64) -> (Scrape, [f64; 2]) {
    let scrape = wait_for(Duration::from_secs(60), "settled STAMP packets", || {
        let scrape = path.sender.metrics();
        (value(
            &scrape,
            "regionprobe_stamp_packets_total",
            &[("target", "b")],
        ) >= packets)
            .then_some(scrape)
    });
    let stats = path.wan.stats();
    let b: IpAddr = B.parse().unwrap();
    let count =
        |map: &std::collections::BTreeMap<IpAddr, u64>| map.get(&b).copied().unwrap_or(0) as f64;
    let forward = count(&stats.dropped_ab) / count(&stats.seen_ab);
    // Of what reached the reflector and was answered.
    let backward = count(&stats.dropped_ba) / count(&stats.seen_ba);
    (scrape, [forward, backward])
}

/// The measured loss ratio of each direction, as a sidecar's counters say.
fn measured(scrape: &Scrape) -> [f64; 2] {
    let sent = value(
        scrape,
        "regionprobe_stamp_packets_total",
        &[("target", "b")],
    );
    let forward = value(
        scrape,
        "regionprobe_stamp_lost_packets_total",
        &direction("forward"),
    );
    let backward = value(
        scrape,
        "regionprobe_stamp_lost_packets_total",
        &direction("backward"),
    );
    [forward / sent, backward / (sent - forward)]
}

fn mean_ipdv(scrape: &Scrape, d: &str) -> f64 {
    value(scrape, "regionprobe_stamp_ipdv_seconds_sum", &direction(d))
        / value(
            scrape,
            "regionprobe_stamp_ipdv_seconds_count",
            &direction(d),
        )
}

fn check_loss(tag: &str, ab: Direction, ba: Direction) -> (Path, Scrape) {
    let path = path(tag, ab, ba, 10, "");
    let (scrape, applied) = measure(&path, 2000.0);
    let got = measured(&scrape);
    eprintln!(
        "{tag}: forwarder dropped {:.2}% forward, {:.2}% backward; the sender measured {:.2}%, {:.2}%",
        applied[0] * 100.0,
        applied[1] * 100.0,
        got[0] * 100.0,
        got[1] * 100.0
    );
    for (d, name) in ["forward", "backward"].iter().enumerate() {
        assert!(
            (got[d] - applied[d]).abs() <= 0.01,
            "{name}: measured {:.4}, the forwarder dropped {:.4}",
            got[d],
            applied[d]
        );
    }
    (path, scrape)
}

#[test]
fn forward_loss_is_told_from_backward_loss() {
    if skip_unless(
        is_root(),
        "needs root for network namespaces and TUN devices",
    ) {
        return;
    }
    let ms = Duration::from_millis;
    // Forward: 5% loss, 2 ms of jitter; backward: no loss, 0.5 ms of jitter.
    let ab = Direction {
        delay: ms(5),
        jitter: ms(2),
        loss: 0.05,
    };
    let ba = Direction {
        delay: ms(5),
        jitter: Duration::from_micros(500),
        loss: 0.0,
    };
    let (path, scrape) = check_loss("sf", ab, ba);
    assert_eq!(
        value(
            &scrape,
            "regionprobe_stamp_lost_packets_total",
            &direction("backward")
        ),
        0.0
    );
    // Uniform jitter of ±j in each packet's delay: consecutive packets differ by the
    // difference of two such draws, |IPDV| averaging 2j/3.
    let forward = mean_ipdv(&scrape, "forward");
    let backward = mean_ipdv(&scrape, "backward");
    eprintln!(
        "mean |IPDV|: forward {:.3} ms, backward {:.3} ms",
        forward * 1e3,
        backward * 1e3
    );
    // Both ends' scheduling adds its own noise (a few hundred us on a loaded machine; the
    // reflector's send time is taken in user space): ranges, with the directions apart.
    assert!(
        (0.0010..0.0018).contains(&forward),
        "forward |IPDV| {forward}"
    );
    assert!(
        (0.0002..0.0009).contains(&backward),
        "backward |IPDV| {backward}"
    );
    // Jitter larger than the packet spacing reorders the forward stream.
    assert!(
        value(
            &scrape,
            "regionprobe_stamp_reordered_packets_total",
            &direction("forward")
        ) > 0.0
    );
    // Every round trip went into the latency histogram the ranking reads.
    assert!(
        value(
            &scrape,
            "regionprobe_probe_duration_seconds_count",
            &[("target", "b")]
        ) > 0.0
    );
    // The reflector knows its senders' region.
    let reflected = value(
        &path.reflector.metrics(),
        "regionprobe_reflector_reflected_packets_total",
        &[("sender_region", "a")],
    );
    // 95% of the 2,000 and more packets reached it.
    assert!(reflected >= 1800.0, "{reflected}");
}

#[test]
fn backward_loss_is_told_from_forward_loss() {
    if skip_unless(
        is_root(),
        "needs root for network namespaces and TUN devices",
    ) {
        return;
    }
    let ms = Duration::from_millis;
    let ab = Direction {
        delay: ms(5),
        ..Direction::default()
    };
    let ba = Direction {
        delay: ms(5),
        loss: 0.05,
        ..Direction::default()
    };
    let (_path, scrape) = check_loss("sr", ab, ba);
    assert_eq!(
        value(
            &scrape,
            "regionprobe_stamp_lost_packets_total",
            &direction("forward")
        ),
        0.0
    );
}

#[test]
fn one_way_delays_follow_each_directions_delay_when_both_clocks_are_claimed() {
    if skip_unless(
        is_root(),
        "needs root for network namespaces and TUN devices",
    ) {
        return;
    }
    let ms = Duration::from_millis;
    let ab = Direction {
        delay: ms(20),
        ..Direction::default()
    };
    let ba = Direction {
        delay: ms(5),
        ..Direction::default()
    };
    // The namespaces share the host's clock: the claim is true. Fine buckets around the two
    // delays, so that medians, not means, are compared: a loaded machine delays a few
    // packets by many milliseconds, which moves a mean but not a median.
    let path = path_with(
        "sc",
        ab,
        ba,
        1,
        "clock_sync_error = \"200us\"",
        "buckets = [0.0045, 0.005, 0.0065, 0.008, 0.0195, 0.02, 0.0215, 0.023, 0.03]",
    );
    let scrape = wait_for(Duration::from_secs(30), "one-way delays", || {
        let scrape = path.sender.metrics();
        (value(
            &scrape,
            "regionprobe_stamp_one_way_delay_seconds_count",
            &direction("backward"),
        ) >= 40.0)
            .then_some(scrape)
    });
    // The share of a direction's one-way delays in (low, high] seconds.
    let share = |d: &str, low: &str, high: &str| {
        let bucket = |le: &str| {
            value(
                &scrape,
                "regionprobe_stamp_one_way_delay_seconds_bucket",
                &[("target", "b"), ("direction", d), ("le", le)],
            )
        };
        let count = value(
            &scrape,
            "regionprobe_stamp_one_way_delay_seconds_count",
            &direction(d),
        );
        (bucket(high) - bucket(low)) / count
    };
    let mean = |name: &str, labels: &[(&str, &str)]| {
        value(&scrape, &format!("{name}_sum"), labels)
            / value(&scrape, &format!("{name}_count"), labels)
    };
    let forward = mean(
        "regionprobe_stamp_one_way_delay_seconds",
        &direction("forward"),
    );
    let backward = mean(
        "regionprobe_stamp_one_way_delay_seconds",
        &direction("backward"),
    );
    let rtt = mean("regionprobe_probe_duration_seconds", &[("target", "b")]);
    let errors: f64 = scrape
        .find("regionprobe_stamp_clock_error_seconds", &[("target", "b")])
        .iter()
        .map(|s| s.value)
        .sum();
    let (fwd_near, bwd_near) = (
        share("forward", "0.0195", "0.023"),
        share("backward", "0.0045", "0.008"),
    );
    eprintln!(
        "one-way: forward mean {:.3} ms ({:.0}% within 20-23 ms), backward mean {:.3} ms ({:.0}% within 5-8 ms), round trip {:.3} ms, errors {:.3} ms",
        forward * 1e3,
        fwd_near * 100.0,
        backward * 1e3,
        bwd_near * 100.0,
        rtt * 1e3,
        errors * 1e3
    );
    // Most of each direction's delays sit within 3 ms above its own setting (the forwarder and
    // the sidecars add a little, more on a loaded machine), and none below it (beyond the
    // clock error): a swapped or wrong split, or a wrong clock, fails this.
    assert!(fwd_near > 0.5, "forward: {fwd_near} near 20 ms");
    assert!(bwd_near > 0.5, "backward: {bwd_near} near 5 ms");
    assert_eq!(share("forward", "0", "0.0195"), 0.0);
    assert_eq!(share("backward", "0", "0.0045"), 0.0);
    // Together they are the round trip, within the two error estimates.
    assert!(
        (forward + backward - rtt).abs() <= errors,
        "{forward} + {backward} vs {rtt}"
    );
}
