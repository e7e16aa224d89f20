//! The WAN emulator between two namespaces made by the test, measured with iputils `ping`:
//! the delay it applies in each direction adds up to the round trip, and every packet it drops
//! is one that `ping` misses (and none else). Needs root.

use std::net::IpAddr;
use std::time::Duration;

use regionprobe_testkit::black_box::{is_root, run, skip_unless};
use regionprobe_testkit::netns::Netns;
use std::collections::BTreeMap;

use regionprobe_testkit::wan::{Direction, Path as WanPath, Wan};

/// Two namespaces joined by the emulator: `a` has 10.77.0.1/24 on its device, `b` 10.77.0.2/24.
/// The fields drop in order: the emulator stops before its namespaces go.
struct Path {
    wan: Wan,
    a: Netns,
    _b: Netns,
}

fn path(tag: &str, ab: Direction, ba: Direction, seed: u64) -> Path {
    paths(tag, WanPath { ab, ba }, BTreeMap::new(), seed)
}

/// As [`path`], with paths of their own for some B-side addresses (each added to `b` as a /32).
fn paths(tag: &str, default: WanPath, own: BTreeMap<IpAddr, WanPath>, seed: u64) -> Path {
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    let (dev_a, dev_b) = (a.ifname(), b.ifname());
    let extra: Vec<IpAddr> = own.keys().copied().collect();
    let wan = Wan::start_with_paths(&dev_a, &dev_b, default, own, seed).expect("TUN devices");
    for (netns, dev, addr) in [(&a, &dev_a, "10.77.0.1/24"), (&b, &dev_b, "10.77.0.2/24")] {
        run(&["ip", "link", "set", dev, "netns", &netns.name]);
        netns.ip(&format!("addr add {addr} dev {dev}"));
        netns.ip(&format!("link set {dev} up"));
    }
    for addr in extra {
        b.ip(&format!("addr add {addr}/32 dev {dev_b}"));
    }
    Path { wan, a, _b: b }
}

/// `ping` from `a` to `b`: the round-trip times of the replies it got.
fn ping(path: &Path, count: u32, interval: &str) -> Vec<f64> {
    ping_to(path, count, interval, "10.77.0.2")
}

/// `ping` from `a` to `dest`, one of `b`'s addresses.
fn ping_to(path: &Path, count: u32, interval: &str, dest: &str) -> Vec<f64> {
    let mut args = path.a.prefix().to_vec();
    let count = count.to_string();
    // Each reply's line carries its time ("time=30.1 ms").
    args.extend(["ping", "-n", "-c", &count, "-i", interval, "-W", "1", dest]);
    let output = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("ping runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split(" time=").nth(1))
        .map(|t| t.trim_end_matches(" ms").parse::<f64>().unwrap())
        .collect()
}

/// Round trips of a path whose two one-way delays add up to `ms`: none is shorter (a packet is
/// never early), and the median is within a millisecond of it (the emulator's and the kernel's
/// own time is well under that on an idle machine). Single round trips may be later: on a
/// loaded CI machine the emulator's writer, at normal priority here, waits for a CPU at times
/// (3 ms seen once), which says nothing about the delay it applies.
fn assert_delayed(rtts: &[f64], ms: f64) {
    let mut sorted = rtts.to_vec();
    sorted.sort_by(f64::total_cmp);
    assert!(sorted[0] >= ms, "a round trip under {ms} ms: {rtts:?}");
    let median = sorted[sorted.len() / 2];
    assert!(
        median < ms + 1.0,
        "median round trip {median} ms, not {ms} ms: {rtts:?}"
    );
}

fn b_addr() -> IpAddr {
    "10.77.0.2".parse().unwrap()
}

#[test]
fn each_direction_is_delayed_by_its_own_setting() {
    if skip_unless(
        is_root(),
        "needs root for network namespaces and TUN devices",
    ) {
        return;
    }
    let ms = Duration::from_millis;
    let ab = Direction {
        delay: ms(10),
        ..Direction::default()
    };
    let ba = Direction {
        delay: ms(20),
        ..Direction::default()
    };
    let path = path("wd", ab, ba, 1);
    let rtts = ping(&path, 10, "0.1");
    assert_eq!(rtts.len(), 10, "no loss was asked for: {rtts:?}");
    // 10 ms + 20 ms, plus the emulator's and the kernel's own time.
    assert_delayed(&rtts, 30.0);
    let stats = path.wan.stats();
    assert_eq!(stats.seen_ab.get(&b_addr()), Some(&10));
    assert_eq!(stats.seen_ba.get(&b_addr()), Some(&10));
    assert!(stats.dropped_ab.is_empty() && stats.dropped_ba.is_empty());
}

#[test]
fn every_dropped_packet_is_counted_in_its_direction() {
    if skip_unless(
        is_root(),
        "needs root for network namespaces and TUN devices",
    ) {
        return;
    }
    let ab = Direction {
        loss: 0.2,
        ..Direction::default()
    };
    let ba = Direction {
        loss: 0.1,
        ..Direction::default()
    };
    let path = path("wl", ab, ba, 7);
    let sent = 200;
    let replies = ping(&path, sent, "0.005").len() as u64;
    let stats = path.wan.stats();
    let dropped_ab = stats.dropped_ab.get(&b_addr()).copied().unwrap_or(0);
    let dropped_ba = stats.dropped_ba.get(&b_addr()).copied().unwrap_or(0);
    assert_eq!(stats.seen_ab.get(&b_addr()), Some(&u64::from(sent)));
    // Replies come back only for the requests that got through.
    assert_eq!(
        stats.seen_ba.get(&b_addr()),
        Some(&(u64::from(sent) - dropped_ab))
    );
    assert_eq!(replies, u64::from(sent) - dropped_ab - dropped_ba);
    // Each direction's ratio is near its setting (200 draws: 3 standard deviations).
    let ratio_ab = dropped_ab as f64 / f64::from(sent);
    assert!((0.115..0.285).contains(&ratio_ab), "A→B lost {ratio_ab}");
    let ratio_ba = dropped_ba as f64 / (f64::from(sent) - dropped_ab as f64);
    assert!((0.035..0.165).contains(&ratio_ba), "B→A lost {ratio_ba}");
}

#[test]
fn an_address_with_a_path_of_its_own_takes_it_and_the_others_the_default() {
    if skip_unless(
        is_root(),
        "needs root for network namespaces and TUN devices",
    ) {
        return;
    }
    let one_way = |ms: u64| {
        let d = Direction {
            delay: Duration::from_millis(ms),
            ..Direction::default()
        };
        WanPath { ab: d, ba: d }
    };
    let special: IpAddr = "10.77.0.3".parse().unwrap();
    let path = paths(
        "wp",
        one_way(5),
        BTreeMap::from([(special, one_way(15))]),
        3,
    );
    let default_rtts = ping_to(&path, 5, "0.1", "10.77.0.2");
    let special_rtts = ping_to(&path, 5, "0.1", "10.77.0.3");
    assert_eq!((default_rtts.len(), special_rtts.len()), (5, 5));
    assert_delayed(&default_rtts, 10.0);
    assert_delayed(&special_rtts, 30.0);
    let stats = path.wan.stats();
    assert_eq!(stats.seen_ab.get(&special), Some(&5));
    assert_eq!(stats.seen_ab.get(&b_addr()), Some(&5));
}
