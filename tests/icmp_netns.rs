//! ICMP probing end to end: the real binary, run inside network namespaces that each test
//! builds for itself (`ip netns`, veth pairs), so that what real networks do can be produced
//! on one machine: ping sockets allowed or not, ICMP errors from routers, a local "no route", a
//! router that drops silently, a DNS server that says NXDOMAIN.
//!
//! Every test needs root (CI runs as root) and skips otherwise. Each one owns its namespaces,
//! named after the process id and a tag, and a private /30 between the root namespace (where
//! the test scrapes from) and the prober namespace (where the exporter runs), numbered from the
//! process id and a per-test number: the tests run in parallel, and beside other test
//! processes, without meeting. No packet leaves the namespaces: the probed addresses are
//! loopback, the test's own veth address, or prefixes routed only between test namespaces.
//! Guards delete everything when a test ends, also when it panics.

mod common;

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{Exporter, Scrape, TempDir};
use regionprobe_testkit::netns::{Netns, Uplink, veth};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const NEEDS_ROOT: &str = "needs root to create network namespaces";

/// How long any expected state may take to show up: generous, as tests end once it does.
const WAIT: Duration = Duration::from_secs(10);

/// The exporter runs as root (gid 0), so `ping_group_range` decides which ICMP socket it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Datagram,
    Raw,
}

impl Kind {
    /// The `kind` label of `regionprobe_icmp_socket_info`.
    fn label(self) -> &'static str {
        match self {
            Kind::Datagram => "datagram",
            Kind::Raw => "raw",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Topology builder
// ---------------------------------------------------------------------------------------------

/// Lets root open ping sockets in a namespace (`Kind::Datagram`), or not (`Kind::Raw`).
trait PingSockets {
    fn ping_sockets_for(&self, kind: Kind);
}

impl PingSockets for Netns {
    fn ping_sockets_for(&self, kind: Kind) {
        self.ping_sockets(kind == Kind::Datagram);
    }
}

/// A prober namespace (where the exporter runs, `ping_group_range` set for `kind`) whose
/// default gateway is a router namespace over 10.99.0.0/30 (and fd72:7070:99::/64), plus an
/// uplink for scraping.
#[derive(Debug)]
struct Routed {
    // Fields drop in order: the uplink, the prober (the exporter's namespace), the router.
    uplink: Uplink,
    prober: Netns,
    router: Netns,
    ipv6: bool,
}

fn routed(kind: Kind, tag: &str, block: u32) -> Routed {
    let prober = Netns::new(tag);
    let router = Netns::new(&format!("{tag}r"));
    prober.ping_sockets_for(kind);
    let ipv6 = prober.loopback_ipv6();
    router.forward(ipv6);
    if ipv6 {
        veth(
            &prober,
            &["10.99.0.2/30", "fd72:7070:99::2/64"],
            &router,
            &["10.99.0.1/30", "fd72:7070:99::1/64"],
        );
        prober.ip("-6 route add default via fd72:7070:99::1");
    } else {
        veth(&prober, &["10.99.0.2/30"], &router, &["10.99.0.1/30"]);
    }
    prober.ip("route add default via 10.99.0.1");
    let uplink = prober.uplink(block);
    Routed {
        uplink,
        prober,
        router,
        ipv6,
    }
}

// ---------------------------------------------------------------------------------------------
// The exporter and its metrics
// ---------------------------------------------------------------------------------------------

/// An `exporter.toml` listening on `listen` (port 0) with ICMP targets `(name, host)`.
///
/// The buckets start at 1 ns: no real round trip fits, so a sample there is a latency of zero,
/// a clock started after the send or read before the reply.
fn config(listen: Ipv4Addr, interval: &str, timeout: &str, targets: &[(&str, &str)]) -> String {
    let mut text = format!(
        "[exporter]\nregion = \"ns\"\nlisten = \"{listen}:0\"\n\n\
         [defaults]\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\n\
         buckets = [0.000000001, 0.001, 0.01, 0.1, 0.2, 1.0]\n"
    );
    for (name, host) in targets {
        text.push_str(&format!(
            "\n[[target]]\nname = \"{name}\"\nregion = \"ns\"\nprobe = \"icmp\"\nhost = \"{host}\"\n"
        ));
    }
    text
}

/// The exporter under test, running in a namespace.
///
/// Why a wrapper: when a test fails (an assertion, or `wait_for` timing out) the panic alone
/// does not say what the exporter saw; on panic this prints the last scrape's `regionprobe_`
/// series and the exporter's log.
#[derive(Debug)]
struct Probed {
    exporter: Exporter,
    last: RefCell<String>,
    _dir: TempDir,
}

impl Probed {
    /// Starts the exporter in `netns` on `config`.
    fn start(netns: &Netns, config: &str) -> Self {
        let dir = TempDir::new("netns");
        let path = dir.write("exporter.toml", config);
        Probed {
            exporter: Exporter::start_with(&netns.prefix(), &path),
            last: RefCell::new(String::new()),
            _dir: dir,
        }
    }

    fn scrape(&self) -> Scrape {
        let (status, body) = self.exporter.get("/metrics");
        assert_eq!(status, 200, "{body}");
        let scrape = Scrape::parse(&body);
        *self.last.borrow_mut() = body;
        scrape
    }

    /// Scrapes until `ready` holds (for up to [`WAIT`]) and returns that scrape.
    fn until(&self, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
        common::wait_for(WAIT, what, || Some(self.scrape()).filter(|s| ready(s)))
    }
}

impl Drop for Probed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let last = self.last.borrow();
            let series: Vec<&str> = last
                .lines()
                .filter(|l| l.starts_with("regionprobe_"))
                .collect();
            eprintln!(
                "--- last scrape ---\n{}\n--- exporter log ---\n{}",
                series.join("\n"),
                self.exporter.log_text()
            );
        }
    }
}

/// The value of the one sample of `name` for `target` (plus `labels`), which must exist.
fn sample(s: &Scrape, name: &str, target: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("target", target)];
    all.extend_from_slice(labels);
    s.value(name, &all)
        .unwrap_or_else(|| panic!("no {name} {all:?}"))
}

/// Successful probes of `target` (only successes observe a latency).
fn successes(s: &Scrape, target: &str) -> f64 {
    sample(s, "regionprobe_probe_duration_seconds_count", target, &[])
}

fn probes(s: &Scrape, target: &str) -> f64 {
    sample(s, "regionprobe_probes_total", target, &[])
}

/// Failures of `target` with `reason`; each ICMP reason is exported from the start, at 0.
fn failures(s: &Scrape, target: &str, reason: &str) -> f64 {
    sample(
        s,
        "regionprobe_probe_failures_total",
        target,
        &[("reason", reason)],
    )
}

/// Failures of `target`, all reasons together.
fn all_failures(s: &Scrape, target: &str) -> f64 {
    s.find("regionprobe_probe_failures_total", &[("target", target)])
        .iter()
        .map(|f| f.value)
        .sum()
}

/// Samples of `target` in the 1 ns bucket: round trips measured as zero.
fn zero_latencies(s: &Scrape, target: &str) -> f64 {
    s.find(
        "regionprobe_probe_duration_seconds_bucket",
        &[("target", target)],
    )
    .into_iter()
    .find(|b| b.labels["le"].parse::<f64>().is_ok_and(|le| le <= 1e-9))
    .unwrap_or_else(|| panic!("no 1 ns bucket for {target}"))
    .value
}

/// The kind of the open ICMP socket of `ip_version`, if one is open. Every kernel these tests
/// run on gives receive timestamps (`SO_TIMESTAMPNS`), to datagram and raw sockets alike.
fn socket_kind(s: &Scrape, ip_version: &str) -> Option<String> {
    let open = s.find(
        "regionprobe_icmp_socket_info",
        &[("ip_version", ip_version)],
    );
    assert!(open.len() <= 1, "two ICMPv{ip_version} sockets: {open:?}");
    open.first().map(|info| {
        assert_eq!(info.value, 1.0, "{info:?}");
        assert_eq!(info.labels["timestamps"], "kernel", "{info:?}");
        info.labels["kind"].clone()
    })
}

fn unmatched(s: &Scrape, ip_version: &str) -> f64 {
    s.value(
        "regionprobe_icmp_unmatched_replies_total",
        &[("ip_version", ip_version)],
    )
    .unwrap_or_else(|| panic!("no unmatched counter for ICMPv{ip_version}"))
}

/// A healthy target: samples, each with a real (non-zero) latency, no failure, up.
fn assert_healthy(s: &Scrape, target: &str, min_samples: f64) {
    assert!(
        successes(s, target) >= min_samples,
        "{target}: fewer than {min_samples} samples"
    );
    assert_eq!(all_failures(s, target), 0.0, "{target} failed");
    let latency_sum = sample(s, "regionprobe_probe_duration_seconds_sum", target, &[]);
    assert!(latency_sum > 0.0, "{target}: latencies sum to zero");
    assert_eq!(
        zero_latencies(s, target),
        0.0,
        "{target}: round trips of 0 s"
    );
    assert_eq!(sample(s, "regionprobe_target_up", target, &[]), 1.0);
}

/// A target that only ever fails, with `reason`: no latency sample (a failure is not a
/// latency), no other reason, down. One probe may be counted before its outcome is.
fn assert_fails_only_with(s: &Scrape, target: &str, reason: &str) {
    assert_eq!(
        successes(s, target),
        0.0,
        "{target}: a failure recorded a latency"
    );
    let counted = failures(s, target, reason);
    assert_eq!(
        all_failures(s, target),
        counted,
        "{target}: other failures than {reason}"
    );
    assert!(
        probes(s, target) - counted <= 1.0,
        "{target}: probes without an outcome"
    );
    assert_eq!(
        sample(s, "regionprobe_target_up", target, &[]),
        0.0,
        "{target} is up"
    );
}

// ---------------------------------------------------------------------------------------------
// Socket kinds
// ---------------------------------------------------------------------------------------------

#[test]
fn datagram_socket_in_a_namespace_that_allows_it() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let netns = Netns::new("dg");
    netns.ping_sockets_for(Kind::Datagram);
    let ipv6 = netns.loopback_ipv6();
    let uplink = netns.uplink(0);
    let host = uplink.host.to_string();
    let mut targets = vec![("lo4", "127.0.0.1"), ("host", host.as_str())];
    if ipv6 {
        targets.push(("lo6", "::1"));
    }
    let probed = Probed::start(&netns, &config(uplink.inside, "200ms", "200ms", &targets));

    let s = probed.until("5 samples of every target", |s| {
        targets.iter().all(|(name, _)| successes(s, name) >= 5.0)
    });
    assert_eq!(socket_kind(&s, "4").as_deref(), Some("datagram"));
    assert_eq!(unmatched(&s, "4"), 0.0);
    if ipv6 {
        assert_eq!(socket_kind(&s, "6").as_deref(), Some("datagram"));
        assert_eq!(unmatched(&s, "6"), 0.0);
    }
    for (name, _) in &targets {
        assert_healthy(&s, name, 5.0);
    }
    // The log is read from the child's stderr by another thread: give it a moment.
    common::wait_for(WAIT, "the socket kind in the log", || {
        let log = probed.exporter.log_text();
        log.lines()
            .any(|l| {
                l.contains("ICMP socket open") && l.contains("datagram") && l.contains("kernel")
            })
            .then_some(())
    });
}

#[test]
fn raw_socket_when_ping_group_range_is_closed() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let netns = Netns::new("raw");
    netns.ping_sockets_for(Kind::Raw);
    let ipv6 = netns.loopback_ipv6();
    let uplink = netns.uplink(1);
    let mut targets = vec![("lo4", "127.0.0.1")];
    if ipv6 {
        targets.push(("lo6", "::1"));
    }
    let probed = Probed::start(&netns, &config(uplink.inside, "200ms", "200ms", &targets));

    let s = probed.until("5 samples of every target", |s| {
        targets.iter().all(|(name, _)| successes(s, name) >= 5.0)
    });
    // A raw socket sees every ICMP packet of the namespace, on loopback our own requests too:
    // none of them may count as a stray reply.
    assert_eq!(socket_kind(&s, "4").as_deref(), Some("raw"));
    assert_eq!(unmatched(&s, "4"), 0.0);
    if ipv6 {
        assert_eq!(socket_kind(&s, "6").as_deref(), Some("raw"));
        assert_eq!(unmatched(&s, "6"), 0.0);
    }
    for (name, _) in &targets {
        assert_healthy(&s, name, 5.0);
    }
    // The log is read from the child's stderr by another thread: give it a moment.
    common::wait_for(WAIT, "the socket kind in the log", || {
        let log = probed.exporter.log_text();
        log.lines()
            .any(|l| l.contains("ICMP socket open") && l.contains("raw") && l.contains("kernel"))
            .then_some(())
    });
}

// ---------------------------------------------------------------------------------------------
// Failures: ICMP errors, local no-route, silence, DNS
// ---------------------------------------------------------------------------------------------

/// ICMP errors from routers on the way are `unreachable`, long before the probe's timeout:
/// - the router answers each echo request for 10.250.0.0/24 (and fd72:7070:250::/64) with
///   destination unreachable (an `unreachable` route);
/// - 10.254.0.0/24 (and fd72:7070:254::/64) bounce between the router and a second router
///   behind it until the TTL (hop limit) runs out: time exceeded.
///
/// Loopback targets on the same socket must not notice.
fn router_error_is_unreachable(kind: Kind, tag: &str, block: u32) {
    let net = routed(kind, tag, block);
    let far = Netns::new(&format!("{tag}f"));
    far.forward(net.ipv6);
    let mut targets = vec![
        ("unr4", "10.250.0.9"),
        ("ttl4", "10.254.0.9"),
        ("lo4", "127.0.0.1"),
    ];
    if net.ipv6 {
        veth(
            &net.router,
            &["10.98.0.1/30", "fd72:7070:98::1/64"],
            &far,
            &["10.98.0.2/30", "fd72:7070:98::2/64"],
        );
        net.router.ip("-6 route add unreachable fd72:7070:250::/64");
        net.router
            .ip("-6 route add fd72:7070:254::/64 via fd72:7070:98::2");
        far.ip("-6 route add default via fd72:7070:98::1");
        targets.extend([
            ("unr6", "fd72:7070:250::9"),
            ("ttl6", "fd72:7070:254::9"),
            ("lo6", "::1"),
        ]);
    } else {
        veth(&net.router, &["10.98.0.1/30"], &far, &["10.98.0.2/30"]);
    }
    net.router.ip("route add unreachable 10.250.0.0/24");
    net.router.ip("route add 10.254.0.0/24 via 10.98.0.2");
    far.ip("route add default via 10.98.0.1");
    // One probe a second fits the kernel's rate limit for "unreachable" errors about forwarded
    // packets (one a second, burst 5: net.ipv4.route.error_cost and error_burst, which are
    // global, not per namespace).
    let text = config(net.uplink.inside, "1s", "1s", &targets);
    let probed = Probed::start(&net.prober, &text);

    let behind_router: Vec<&str> = targets
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !name.starts_with("lo"))
        .collect();
    let s = probed.until(
        "3 unreachable failures of each target behind the router",
        |s| {
            behind_router
                .iter()
                .all(|name| failures(s, name, "unreachable") >= 3.0)
        },
    );
    for name in &behind_router {
        assert_fails_only_with(&s, name, "unreachable");
    }
    assert_eq!(socket_kind(&s, "4").as_deref(), Some(kind.label()));
    assert_healthy(&s, "lo4", 1.0);
    assert_eq!(unmatched(&s, "4"), 0.0);
    if net.ipv6 {
        assert_eq!(socket_kind(&s, "6").as_deref(), Some(kind.label()));
        assert_healthy(&s, "lo6", 1.0);
        assert_eq!(unmatched(&s, "6"), 0.0);
    }
}

/// Datagram sockets receive ICMP errors only through the `IP_RECVERR` error queue, which
/// the exporter reads when the socket reports an error: this fails if nothing wakes its
/// receive task on error readiness (`UdpSocket::recv_from` of tokio before 1.51.1 did not).
#[test]
fn icmp_error_from_a_router_counts_as_unreachable_datagram() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    router_error_is_unreachable(Kind::Datagram, "red", 2);
}

/// Raw sockets receive the ICMP error as a packet quoting the request.
#[test]
fn icmp_error_from_a_router_counts_as_unreachable_raw() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    router_error_is_unreachable(Kind::Raw, "rer", 3);
}

/// One datagram socket serves every target, and the kernel flags an ICMP error on it (the
/// socket error, `sk_err`) until some call on the socket picks the error up. Whichever call
/// comes first takes it: if it is another target's `sendto`, that send fails with
/// EHOSTUNREACH and its target counts as `unreachable`, while the probe the error belongs to
/// waits out its timeout, and the error, drained later, counts as unmatched. A busy socket
/// makes the race likely: 20 loopback targets send 2,000 requests a second beside one target
/// behind an unreachable route.
#[test]
fn an_icmp_error_never_fails_another_target_on_the_shared_socket() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let net = routed(Kind::Datagram, "xt", 11);
    net.router.ip("route add unreachable 10.250.0.0/24");
    let names: Vec<String> = (0..20).map(|i| format!("lo{i:02}")).collect();
    let targets: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "127.0.0.1")).collect();
    let mut text = config(net.uplink.inside, "10ms", "10ms", &targets);
    // A 10 ms timeout on a loaded machine can expire before a loopback reply is read; that
    // late reply is then rightly unmatched. Only errors that went astray are the bug here.
    // One probe a second: within the router's rate limit, every request gets its error.
    text.push_str(
        "\n[[target]]\nname = \"unr4\"\nregion = \"ns\"\nprobe = \"icmp\"\n\
         host = \"10.250.0.9\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
    );
    let probed = Probed::start(&net.prober, &text);

    let s = probed.until("6 probes of the unreachable target", |s| {
        probes(s, "unr4") >= 6.0
    });
    assert_eq!(socket_kind(&s, "4").as_deref(), Some("datagram"));
    let hit: Vec<&String> = names
        .iter()
        .filter(|name| failures(&s, name, "unreachable") > 0.0)
        .collect();
    assert!(
        hit.is_empty(),
        "healthy targets failed as unreachable: {hit:?}"
    );
    assert_eq!(failures(&s, "unr4", "timeout"), 0.0, "unr4 lost its errors");
    let late: f64 = names.iter().map(|name| failures(&s, name, "timeout")).sum();
    assert!(
        unmatched(&s, "4") <= late,
        "{} unmatched ICMP packets, only {late} late loopback replies explain",
        unmatched(&s, "4")
    );
}

/// No packet leaves: `sendto` itself fails, with EHOSTUNREACH for an `unreachable` route and
/// ENETUNREACH where no route matches at all. Both are `unreachable`, at once.
fn local_no_route_is_unreachable(kind: Kind, tag: &str, block: u32) {
    let netns = Netns::new(tag);
    netns.ping_sockets_for(kind);
    let ipv6 = netns.loopback_ipv6();
    let uplink = netns.uplink(block);
    // The namespace has no default route: 10.253.0.9 (and fd72:7070:253::9) match nothing.
    netns.ip("route add unreachable 10.251.0.0/24");
    let mut targets = vec![
        ("unr4", "10.251.0.9"),
        ("none4", "10.253.0.9"),
        ("lo4", "127.0.0.1"),
    ];
    if ipv6 {
        netns.ip("-6 route add unreachable fd72:7070:251::/64");
        targets.extend([("unr6", "fd72:7070:251::9"), ("none6", "fd72:7070:253::9")]);
    }
    let probed = Probed::start(&netns, &config(uplink.inside, "300ms", "300ms", &targets));

    let unroutable: Vec<&str> = targets
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| *name != "lo4")
        .collect();
    let s = probed.until("3 unreachable failures of each unroutable target", |s| {
        unroutable
            .iter()
            .all(|name| failures(s, name, "unreachable") >= 3.0)
    });
    assert_eq!(socket_kind(&s, "4").as_deref(), Some(kind.label()));
    for name in &unroutable {
        assert_fails_only_with(&s, name, "unreachable");
    }
    assert_healthy(&s, "lo4", 1.0);
}

#[test]
fn locally_unreachable_route_datagram() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    local_no_route_is_unreachable(Kind::Datagram, "lud", 4);
}

#[test]
fn locally_unreachable_route_raw() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    local_no_route_is_unreachable(Kind::Raw, "lur", 5);
}

/// The router drops everything for 10.252.0.0/24 (and fd72:7070:252::/64) without a word
/// (`blackhole`): each probe ends at its timeout, as `timeout`, without a latency sample.
///
/// With 100 more targets on loopback, the targets' ticks are 10 ms apart (`BATCH`), shared two
/// or three at a time: the silent targets share theirs, and their group's task, with `lo4`,
/// which must get its answer recorded while the group waits out the silent ones' deadline.
fn silence_is_timeout(kind: Kind, tag: &str, block: u32) {
    let net = routed(kind, tag, block);
    net.router.ip("route add blackhole 10.252.0.0/24");
    let mut targets = vec![
        ("quiet4".to_owned(), "10.252.0.9".to_owned()),
        ("lo4".to_owned(), "127.0.0.1".to_owned()),
    ];
    if net.ipv6 {
        net.router.ip("-6 route add blackhole fd72:7070:252::/64");
        targets.push(("quiet6".to_owned(), "fd72:7070:252::9".to_owned()));
    }
    let fillers: Vec<(String, String)> = (0..100)
        .map(|i| (format!("fill{i}"), format!("127.0.1.{}", i + 1)))
        .collect();
    targets.extend(fillers.iter().cloned());
    let targets: Vec<(&str, &str)> = targets
        .iter()
        .map(|(name, host)| (name.as_str(), host.as_str()))
        .collect();
    let text = config(net.uplink.inside, "500ms", "300ms", &targets);
    let probed = Probed::start(&net.prober, &text);

    let s = probed.until("3 timeouts of each silent target", |s| {
        failures(s, "quiet4", "timeout") >= 3.0
            && (!net.ipv6 || failures(s, "quiet6", "timeout") >= 3.0)
    });
    assert_eq!(socket_kind(&s, "4").as_deref(), Some(kind.label()));
    assert_fails_only_with(&s, "quiet4", "timeout");
    if net.ipv6 {
        assert_fails_only_with(&s, "quiet6", "timeout");
    }
    assert_healthy(&s, "lo4", 1.0);
    for (name, _) in &fillers {
        assert_healthy(&s, name, 1.0);
    }
    // Nothing came back, so nothing can be unmatched.
    assert_eq!(unmatched(&s, "4"), 0.0);
}

#[test]
fn silent_host_times_out_datagram() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    silence_is_timeout(Kind::Datagram, "sid", 6);
}

#[test]
fn silent_host_times_out_raw() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    silence_is_timeout(Kind::Raw, "sir", 7);
}

/// A DNS server on `addr`:53 that answers every query at once with NXDOMAIN, and counts them.
///
/// Why not simply `nameserver 127.0.0.1` with nothing listening there: hickory sends queries
/// from unconnected UDP sockets, which never see the ICMP port unreachable, so each lookup
/// waits for hickory's own timeout (seconds) and the probe ends as `timeout`, not `resolve`.
#[derive(Debug)]
struct NxDomainServer {
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NxDomainServer {
    fn start(addr: Ipv4Addr) -> Self {
        let socket = UdpSocket::bind((addr, 53)).expect("bind the test DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (queries, stop) = (queries.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(answer) = nxdomain(&buf[..len]) {
                        queries.fetch_add(1, Ordering::Relaxed);
                        let _ = socket.send_to(&answer, from);
                    }
                }
            })
        };
        NxDomainServer {
            queries,
            stop,
            thread: Some(thread),
        }
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for NxDomainServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The NXDOMAIN response to a one-question query: its header with QR, RA and rcode 3, no
/// records, and its question (anything after it, such as an EDNS record, is dropped).
fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    let mut end = 12;
    loop {
        let label = usize::from(*query.get(end)?);
        end += 1 + label;
        if label == 0 {
            break;
        }
    }
    end += 4; // type, class
    let mut answer = query.get(..end)?.to_vec();
    answer[2] = 0x80 | (query[2] & 0x01); // QR, the query's RD
    answer[3] = 0x80 | 3; // RA, NXDOMAIN
    answer[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    Some(answer)
}

#[test]
fn unresolvable_host_is_reason_resolve_and_keeps_trying() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let netns = Netns::new("dns");
    netns.ping_sockets_for(Kind::Datagram);
    let uplink = netns.uplink(8);
    let dns = NxDomainServer::start(uplink.host);
    netns.resolv_conf(&format!("nameserver {}\n", uplink.host));
    // The trailing dot keeps search domains out of it.
    let targets = [("nx", "doesnotexist.example."), ("lo4", "127.0.0.1")];
    let probed = Probed::start(&netns, &config(uplink.inside, "300ms", "300ms", &targets));

    let first = probed.until("3 resolve failures", |s| {
        failures(s, "nx", "resolve") >= 3.0
    });
    let (failed_so_far, queries_so_far) = (failures(&first, "nx", "resolve"), dns.queries());
    assert!(
        queries_so_far > 0,
        "the exporter did not ask the configured DNS server"
    );
    // Neither the failure is cached nor the target dropped: later probes fail as `resolve`
    // again, each after a fresh query.
    let s = probed.until("3 more resolve failures", |s| {
        failures(s, "nx", "resolve") >= failed_so_far + 3.0
    });
    assert!(
        dns.queries() > queries_so_far,
        "no new DNS query after a failed lookup"
    );
    assert_fails_only_with(&s, "nx", "resolve");
    assert_healthy(&s, "lo4", 1.0);
    assert_eq!(probed.exporter.get("/metrics").0, 200);
}

// ---------------------------------------------------------------------------------------------
// Many targets, one host
// ---------------------------------------------------------------------------------------------

/// Turns this test binary into the echo responder of [`SlowHost`]: the delay in milliseconds.
const SLOW_ECHO_ENV: &str = "ICMP_NETNS_SLOW_ECHO_MS";
/// Set (to anything): the responder is [`SlowHost::hostile`].
const HOSTILE_ECHO_ENV: &str = "ICMP_NETNS_HOSTILE_ECHO";
const SLOW_ECHO_READY: &str = "slow echo responder ready";
/// Forged replies the hostile host sends per echo request (see [`slow_echo_responder`]).
const FORGED_PER_REQUEST: u16 = 5;

/// A host that answers echo requests only after `delay`, so that many requests are in flight
/// at once (netem, the usual way to add delay, is not in every kernel).
///
/// The kernel's own echo replies are switched off in `netns`, and this test binary, run again
/// there (`ip netns exec`, as nothing else is sure to be installed), answers from a raw
/// socket instead: see [`slow_echo_responder`]. Dropping this kills it.
#[derive(Debug)]
struct SlowHost {
    child: Child,
    _stdout: BufReader<ChildStdout>,
}

impl SlowHost {
    fn start(netns: &Netns, delay: Duration) -> Self {
        Self::spawn(netns, delay, false)
    }

    /// Like [`SlowHost::start`], and an attacker too: the moment a request arrives it sends
    /// [`FORGED_PER_REQUEST`] forged replies (the request's identifier with its sequence and
    /// its neighbours', each with a wrong token: what a blind attacker sweeping identifiers
    /// and sequences sends at best), then after `delay` the genuine reply, twice.
    fn hostile(netns: &Netns, delay: Duration) -> Self {
        Self::spawn(netns, delay, true)
    }

    fn spawn(netns: &Netns, delay: Duration, hostile: bool) -> Self {
        netns.sysctl("net.ipv4.icmp_echo_ignore_all", "1");
        let exe = std::env::current_exe().expect("the test binary");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &netns.name])
            .arg(exe)
            .args(["--exact", "slow_echo_responder", "--ignored", "--nocapture"])
            .env(SLOW_ECHO_ENV, delay.as_millis().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if hostile {
            command.env(HOSTILE_ECHO_ENV, "1");
        }
        let mut child = command.spawn().expect("start the slow echo responder");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while line.trim() != SLOW_ECHO_READY {
            line.clear();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.kill();
                panic!("the slow echo responder did not start");
            }
        }
        SlowHost {
            child,
            _stdout: stdout,
        }
    }
}

impl Drop for SlowHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test: the process [`SlowHost`] starts (and a no-op anywhere else). Answers every
/// IPv4 echo request it sees with an echo reply, `SLOW_ECHO_ENV` milliseconds later; with
/// `HOSTILE_ECHO_ENV`, forges replies first and answers twice (see [`SlowHost::hostile`]).
#[test]
#[ignore = "not a test: the echo responder that SlowHost runs in a namespace"]
fn slow_echo_responder() {
    let Ok(delay) = std::env::var(SLOW_ECHO_ENV) else {
        return;
    };
    let delay = Duration::from_millis(delay.parse().expect("milliseconds"));
    let hostile = std::env::var_os(HOSTILE_ECHO_ENV).is_some();
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).expect("raw socket");
    let socket = Arc::new(socket);
    println!("{SLOW_ECHO_READY}");
    let mut buf = vec![0u8; 65_536];
    loop {
        let len = (&*socket).read(&mut buf).expect("read an ICMP packet");
        let Some((sender, reply)) = echo_reply(&buf[..len]) else {
            continue;
        };
        let to = SockAddr::from(SocketAddrV4::new(sender, 0));
        if hostile {
            let seq = u16::from_be_bytes([reply[6], reply[7]]);
            for offset in 0..FORGED_PER_REQUEST {
                let mut forged = reply.clone();
                // Sequences seq, seq+1, seq-1, seq+2, seq-2: some belong to other requests
                // in flight, whose tokens the attacker does not know either.
                let delta = offset.div_ceil(2);
                let forged_seq = if offset % 2 == 1 {
                    seq.wrapping_add(delta)
                } else {
                    seq.wrapping_sub(delta)
                };
                forged[6..8].copy_from_slice(&forged_seq.to_be_bytes());
                for byte in forged.iter_mut().skip(8).take(8) {
                    *byte ^= 0x5a;
                }
                forged[2..4].copy_from_slice(&[0, 0]);
                let sum = checksum(&forged);
                forged[2..4].copy_from_slice(&sum.to_be_bytes());
                let _ = socket.send_to(&forged, &to);
            }
        }
        let socket = socket.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            for _ in 0..if hostile { 2 } else { 1 } {
                let _ = socket.send_to(&reply, &to);
            }
        });
    }
}

/// For an IPv4 packet holding an echo request: its sender and the ICMP echo reply to it.
fn echo_reply(packet: &[u8]) -> Option<(Ipv4Addr, Vec<u8>)> {
    let header = usize::from(packet.first()? & 0x0f) * 4;
    let sender: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    let mut icmp = packet.get(header..)?.to_vec();
    if icmp.len() < 8 || icmp[0] != 8 {
        return None;
    }
    icmp[0] = 0; // echo reply
    icmp[2..4].copy_from_slice(&[0, 0]);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    Some((Ipv4Addr::from(sender), icmp))
}

/// RFC 1071 internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Samples of `target` at most `le` seconds.
fn samples_at_most(s: &Scrape, target: &str, le: f64) -> f64 {
    s.find(
        "regionprobe_probe_duration_seconds_bucket",
        &[("target", target)],
    )
    .into_iter()
    .find(|b| b.labels["le"].parse::<f64>() == Ok(le))
    .unwrap_or_else(|| panic!("no bucket le={le} for {target}"))
    .value
}

/// Many targets ping one host through the one shared socket: each reply must reach the probe
/// whose request it answers (sequence and token), and none may be unmatched.
/// - 20 targets ping 127.0.0.1 five times a second;
/// - 20 targets ping a host that answers after 30 ms, so that about six requests to it are
///   in flight at any time: they would collide on a sequence number handed out twice;
/// - and all that twice over: a second exporter shares the namespace, as sidecars of one pod
///   do, and a raw socket sees the other process's traffic too, which it must leave alone.
fn one_host_many_targets(kind: Kind, tag: &str, block: u32) {
    let netns = Netns::new(tag);
    netns.ping_sockets_for(kind);
    let far = Netns::new(&format!("{tag}s"));
    veth(&netns, &["10.97.0.2/30"], &far, &["10.97.0.1/30"]);
    let _slow = SlowHost::start(&far, Duration::from_millis(30));
    let uplink = netns.uplink(block);
    let local: Vec<String> = (0..20).map(|i| format!("lo{i:02}")).collect();
    let slow: Vec<String> = (0..20).map(|i| format!("slow{i:02}")).collect();
    let targets: Vec<(&str, &str)> = local
        .iter()
        .map(|name| (name.as_str(), "127.0.0.1"))
        .chain(slow.iter().map(|name| (name.as_str(), "10.97.0.1")))
        .collect();
    // 200 ms leaves a loaded CI machine room for the 30 ms host; a collision shows as a
    // reply far faster than 30 ms, not as a timeout.
    let text = config(uplink.inside, "200ms", "200ms", &targets);
    let exporters = [Probed::start(&netns, &text), Probed::start(&netns, &text)];

    for probed in &exporters {
        let s = probed.until("25 samples of every target", |s| {
            targets.iter().all(|(name, _)| successes(s, name) >= 25.0)
        });
        assert_eq!(socket_kind(&s, "4").as_deref(), Some(kind.label()));
        for (name, _) in &targets {
            assert_healthy(&s, name, 25.0);
        }
        assert_eq!(unmatched(&s, "4"), 0.0);
        // Each of those samples is the host's 30 ms and the way there and back.
        for name in &slow {
            assert_eq!(samples_at_most(&s, name, 0.01), 0.0, "{name}: under 10 ms");
            assert_eq!(
                samples_at_most(&s, name, 0.2),
                successes(&s, name),
                "{name}: over 200 ms"
            );
        }
    }
}

#[test]
fn two_targets_pinging_one_host_never_collide_datagram() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    one_host_many_targets(Kind::Datagram, "cod", 9);
}

#[test]
fn two_targets_pinging_one_host_never_collide_raw() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    one_host_many_targets(Kind::Raw, "cor", 10);
}

fn duplicates(s: &Scrape, ip_version: &str) -> f64 {
    s.value(
        "regionprobe_icmp_duplicate_replies_total",
        &[("ip_version", ip_version)],
    )
    .unwrap_or_else(|| panic!("no duplicate counter for ICMPv{ip_version}"))
}

/// A host that is also an attacker (see [`SlowHost::hostile`]): replies forged with the right
/// peer address, identifier and sequence but without the request's token arrive 30 ms before
/// the genuine reply, and the genuine reply comes twice. Every probe must still measure the
/// genuine 30 ms (no forged reply shortens a round trip or completes a probe), every forgery
/// counts as unmatched, every second reply as a duplicate, and no probe is observed twice.
fn forged_replies(kind: Kind, tag: &str, block: u32) {
    let netns = Netns::new(tag);
    netns.ping_sockets_for(kind);
    let far = Netns::new(&format!("{tag}s"));
    veth(&netns, &["10.96.0.2/30"], &far, &["10.96.0.1/30"]);
    let _hostile = SlowHost::hostile(&far, Duration::from_millis(30));
    let uplink = netns.uplink(block);
    let names: Vec<String> = (0..5).map(|i| format!("far{i}")).collect();
    let targets: Vec<(&str, &str)> = names
        .iter()
        .map(|name| (name.as_str(), "10.96.0.1"))
        .collect();
    let probed = Probed::start(&netns, &config(uplink.inside, "200ms", "200ms", &targets));

    let s = probed.until("25 samples of every target", |s| {
        targets.iter().all(|(name, _)| successes(s, name) >= 25.0)
    });
    assert_eq!(socket_kind(&s, "4").as_deref(), Some(kind.label()));
    let (mut samples, mut sent) = (0.0, 0.0);
    for name in &names {
        assert_healthy(&s, name, 25.0);
        assert_eq!(
            samples_at_most(&s, name, 0.01),
            0.0,
            "{name}: a forged reply shortened a round trip"
        );
        samples += successes(&s, name);
        sent += probes(&s, name);
    }
    assert!(samples <= sent, "{samples} samples from {sent} probes");
    // The scrape reads the targets before the socket's counters, and is not a snapshot: a
    // probe per target may be answered once and not yet twice, or answered twice meanwhile.
    let forged = f64::from(FORGED_PER_REQUEST) * samples;
    assert!(
        unmatched(&s, "4") >= forged - f64::from(FORGED_PER_REQUEST) * 5.0,
        "{} unmatched for {forged} forged replies",
        unmatched(&s, "4")
    );
    let dup = duplicates(&s, "4");
    assert!(
        dup >= samples - 5.0 && dup <= sent + 5.0,
        "{dup} duplicates for {samples} answered probes"
    );
}

#[test]
fn forged_replies_never_count_datagram() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    forged_replies(Kind::Datagram, "fod", 12);
}

#[test]
fn forged_replies_never_count_raw() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    forged_replies(Kind::Raw, "for", 13);
}

/// Issue 14: a sidecar whose ICMP permission is missing (no ping sockets for its group, no
/// CAP_NET_RAW) blames itself. Its ICMP probes fail with `reason="local"`, which is nobody's
/// loss: every region stays at 0% loss and up (its TCP target answers), and the sidecar says it
/// is impaired, naming the ICMP targets.
#[test]
fn a_sidecar_without_icmp_permission_blames_itself() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let netns = Netns::new("nop");
    netns.ping_sockets_for(Kind::Raw); // "1 0": no ping sockets for gid 0 ...
    let uplink = netns.uplink(14);
    // ... and no CAP_NET_RAW: root without it opens neither kind of ICMP socket.
    let mut prefix: Vec<&str> = netns.prefix().to_vec();
    prefix.extend(["setpriv", "--bounding-set", "-net_raw", "--"]);
    // The exporter's own port answers the TCP targets (a fixed port: the namespace is ours).
    let listen = format!("{}:9537", uplink.inside);
    let mut text = format!(
        "[exporter]\nregion = \"ns\"\nlisten = \"{listen}\"\n[defaults]\ninterval = \"200ms\"\ntimeout = \"200ms\"\n"
    );
    for region in ["b", "c"] {
        text.push_str(&format!(
            "[[target]]\nname = \"{region}-ping\"\nregion = \"{region}\"\nprobe = \"icmp\"\nhost = \"127.0.0.1\"\n\
             [[target]]\nname = \"{region}-tcp\"\nregion = \"{region}\"\nprobe = \"tcp\"\naddress = \"{listen}\"\n"
        ));
    }
    let dir = TempDir::new("nop");
    let path = dir.write("exporter.toml", &text);
    let exporter = Exporter::start_with(&prefix, &path);

    let ranking = common::wait_for(WAIT, "an impaired sidecar with both regions ranked", || {
        let (status, body) = exporter.get("/api/v1/ranking");
        let ranking: serde_json::Value = serde_json::from_str(&body).ok()?;
        let ranked = ranking["regions"]
            .as_array()?
            .iter()
            .all(|r| r["samples"].as_u64() >= Some(5));
        (status == 200 && ranking["source_impaired"].is_string() && ranked).then_some(ranking)
    });
    let impaired = ranking["source_impaired"].as_str().unwrap();
    assert!(
        impaired.contains("b-ping") && impaired.contains("c-ping"),
        "{impaired}"
    );
    for region in ranking["regions"].as_array().unwrap() {
        assert_eq!(region["loss_ratio"], 0.0, "{region}");
        assert_eq!(region["up"], true, "{region}");
        assert!(region["score_seconds"].is_f64(), "{region}");
    }
    let (_, body) = exporter.get("/metrics");
    let s = Scrape::parse(&body);
    assert_eq!(
        s.value("regionprobe_source_impaired", &[]),
        Some(1.0),
        "{body}"
    );
    assert!(failures(&s, "b-ping", "local") > 0.0);
    assert_eq!(failures(&s, "b-ping", "error"), 0.0);
    assert_eq!(all_failures(&s, "b-tcp"), 0.0);
    drop(dir);
}

/// How many regions of a `/api/v1/ranking` answer are up (`up = true`) or down (`false`).
fn regions_up(ranking: &serde_json::Value, up: bool) -> Option<usize> {
    Some(
        ranking["regions"]
            .as_array()?
            .iter()
            .filter(|r| r["up"] == up)
            .count(),
    )
}

/// Issue 14: a sidecar cut off from every other region at once (its links to both go down,
/// its own region still answers) blames itself: it says it is impaired and keeps its failover
/// candidate instead of dropping it; once the links are back it is no longer impaired.
#[test]
fn a_sidecar_cut_off_from_every_region_keeps_its_candidate() {
    if common::skip_unless(common::is_root(), NEEDS_ROOT) {
        return;
    }
    let prober = Netns::new("cut");
    prober.ping_sockets_for(Kind::Datagram);
    let uplink = prober.uplink(15);
    let far_b = Netns::new("cutb");
    let far_c = Netns::new("cutc");
    // Addresses inside the test's own namespaces only: no route leads anywhere else.
    veth(&prober, &["10.95.0.2/30"], &far_b, &["10.95.0.1/30"]);
    veth(&prober, &["10.95.0.6/30"], &far_c, &["10.95.0.5/30"]);
    let mut text = format!(
        "[exporter]\nregion = \"a\"\nlisten = \"{}:0\"\n[defaults]\ninterval = \"200ms\"\ntimeout = \"150ms\"\n",
        uplink.inside
    );
    for (name, region, host) in [
        ("a-lo", "a", "127.0.0.1"),
        ("b-ping", "b", "10.95.0.1"),
        ("c-ping", "c", "10.95.0.5"),
    ] {
        text.push_str(&format!(
            "[[target]]\nname = \"{name}\"\nregion = \"{region}\"\nprobe = \"icmp\"\nhost = \"{host}\"\n"
        ));
    }
    let probed = Probed::start(&prober, &text);
    let ranking = || -> Option<serde_json::Value> {
        let (status, body) = probed.exporter.get("/api/v1/ranking");
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    };
    let candidate = common::wait_for(WAIT, "a candidate, b and c up", || {
        let r = ranking()?;
        let up = regions_up(&r, true)?;
        (up == 3 && r["source_impaired"].is_null())
            .then(|| r["best"]["region"].as_str().map(str::to_owned))
            .flatten()
    });

    // Both links go down at the far ends: b and c are lost at once, the own region answers.
    far_b.ip(&format!("link set {}0 down", far_b.name));
    far_c.ip(&format!("link set {}0 down", far_c.name));
    let cut = common::wait_for(WAIT, "the sidecar impaired, b and c down", || {
        let r = ranking()?;
        let down = regions_up(&r, false)?;
        (down == 2 && r["source_impaired"].is_string()).then_some(r)
    });
    let impaired = cut["source_impaired"].as_str().unwrap();
    assert!(
        impaired.contains("every other region is down"),
        "{impaired}"
    );
    assert_eq!(
        cut["best"]["region"].as_str(),
        Some(candidate.as_str()),
        "{cut}"
    );
    assert_eq!(
        cut["failover_ready"], false,
        "a down candidate is not ready: {cut}"
    );
    let s = probed.scrape();
    assert_eq!(s.value("regionprobe_source_impaired", &[]), Some(1.0));
    assert_eq!(
        s.value(
            "regionprobe_failover_best",
            &[("target_region", candidate.as_str())]
        ),
        Some(1.0),
        "the candidate is kept"
    );

    // Back, the candidate's link first: no longer impaired, and still the same candidate.
    // (Brought back at once, the other region could answer first, one probe before the
    // candidate: the sidecar is then no longer cut off, the candidate is still down by its
    // last answers, and the engine rightly moves to the region that answers.)
    let (first, second) = if candidate == "b" {
        (&far_b, &far_c)
    } else {
        (&far_c, &far_b)
    };
    first.ip(&format!("link set {}0 up", first.name));
    common::wait_for(WAIT, "the candidate up again", || {
        let r = ranking()?;
        let up = r["regions"]
            .as_array()?
            .iter()
            .any(|r| r["region"] == candidate.as_str() && r["up"] == true);
        up.then_some(())
    });
    second.ip(&format!("link set {}0 up", second.name));
    let back = common::wait_for(WAIT, "the sidecar no longer impaired, b and c up", || {
        let r = ranking()?;
        let up = regions_up(&r, true)?;
        (up == 3 && r["source_impaired"].is_null()).then_some(r)
    });
    assert_eq!(
        back["best"]["region"].as_str(),
        Some(candidate.as_str()),
        "{back}"
    );
}
