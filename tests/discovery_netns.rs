//! Targets that move, against a real name server: dnsmasq (Debian's) in a network namespace
//! the test creates, serving `lb.regionprobe.test` from a hosts file it re-reads on SIGHUP.
//! The exporter runs in a second namespace with no default route, resolving through
//! `/etc/netns/<ns>/resolv.conf`; the probed addresses live on the server namespace's end of
//! the veth between them (one of them on no interface at all: the dead node).
//!
//! One test walks the story in order (each step needs the previous one's state, and one
//! setup keeps the added time small): three addresses, one dead (the region is degraded);
//! the records change and the TTL runs out (the new address is probed within TTL +
//! interval); the name server stops (the last good addresses are kept, and said to be
//! stale, then the target fails with `reason="resolve"`).
// A blocking test with a wall clock: nothing here runs on tokio's.
#![allow(clippy::disallowed_types)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Exporter, Scrape, TempDir, wait_for};
use regionprobe_testkit::netns::{Netns, veth};

const NEEDS: &str = "needs root (network namespaces) and dnsmasq (apt-get install dnsmasq)";
const NAME: &str = "lb.regionprobe.test";
/// dnsmasq's TTL for hosts-file answers, seconds.
const TTL: u64 = 2;
const INTERVAL: Duration = Duration::from_millis(500);

/// dnsmasq in a namespace, killed on drop.
struct Dnsmasq(Child);

impl Dnsmasq {
    /// `srv`: SRV records as dnsmasq's `--srv-host` takes them (`name,target,port`).
    fn start(netns: &Netns, hosts: &std::path::Path, listen: &str, srv: &[&str]) -> Self {
        let mut args: Vec<String> = netns.prefix().iter().map(|s| s.to_string()).collect();
        args.extend(
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--bind-interfaces",
                "--user=root",
                "--pid-file=",
                "--log-facility=-",
            ]
            .map(str::to_owned),
        );
        args.push(format!("--listen-address={listen}"));
        args.push(format!("--addn-hosts={}", hosts.display()));
        args.push(format!("--local-ttl={TTL}"));
        args.extend(srv.iter().map(|record| format!("--srv-host={record}")));
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        Dnsmasq(child)
    }

    fn reread(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hosts(addresses: &[&str]) -> String {
    let mut hosts: String = addresses
        .iter()
        .map(|address| format!("{address} {NAME}\n"))
        .collect();
    // The IPv6 target's two nodes, and the SRV records' targets.
    hosts.push_str(&format!("fd77::11 {NAME}\nfd77::12 {NAME}\n"));
    hosts.push_str("10.77.0.11 n1.regionprobe.test\n10.77.0.12 n2.regionprobe.test\n");
    hosts
}

const SRV: &str = "_app._tcp.regionprobe.test";
const N1: &str = "_app._tcp.regionprobe.test,n1.regionprobe.test,8080";
const N2: &str = "_app._tcp.regionprobe.test,n2.regionprobe.test,8080";

/// The targets from the SRV name that are up, by name, as the API lists them (with their
/// source).
fn srv_targets(exporter: &Exporter) -> Vec<String> {
    srv_listed(exporter, true)
}

/// The targets from the SRV name, up or not (`only_up`: up only).
fn srv_listed(exporter: &Exporter, only_up: bool) -> Vec<String> {
    let (_, body) = exporter.get("/api/v1/targets");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["source"] == format!("srv:{SRV}").as_str() && (!only_up || t["up"] == true))
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `lb`'s addresses as the API lists them: (index, address, up).
fn addresses(exporter: &Exporter) -> Vec<(u64, String, Option<bool>)> {
    let (status, body) = exporter.get("/api/v1/targets");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let lb = json["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "lb")
        .expect("lb in /api/v1/targets")
        .clone();
    assert_eq!(lb["source"], "inline");
    lb["addresses"].as_array().map_or(Vec::new(), |list| {
        list.iter()
            .map(|a| {
                (
                    a["index"].as_u64().unwrap(),
                    a["address"].as_str().unwrap().to_owned(),
                    a["up"].as_bool(),
                )
            })
            .collect()
    })
}

fn up(scrape: &Scrape, index: &str) -> Option<f64> {
    scrape.value(
        "regionprobe_target_up",
        &[("target", "lb"), ("address_index", index)],
    )
}

fn resolve_failures(scrape: &Scrape) -> f64 {
    scrape
        .find(
            "regionprobe_probe_failures_total",
            &[("target", "lb"), ("reason", "resolve")],
        )
        .iter()
        .map(|s| s.value)
        .sum()
}

#[test]
fn every_address_of_a_moving_name_is_probed_and_a_dead_name_server_is_ridden_out() {
    let dnsmasq = std::path::Path::new("/usr/sbin/dnsmasq").exists();
    if common::skip_unless(common::is_root() && dnsmasq, NEEDS) {
        return;
    }
    // Drop order: exporter, name server, then the namespaces.
    let servers = Netns::new("ds");
    let prober = Netns::new("dp");
    // The IPv6 half (a second target on the same name's AAAA records) needs IPv6.
    let v6 = regionprobe_testkit::netns::ipv6_available();
    let (mut prober_addrs, mut server_addrs) = (
        vec!["10.77.0.2/24"],
        // The name server, and two live nodes; 10.77.0.13 is on no interface: the dead node.
        vec!["10.77.0.1/24", "10.77.0.11/24", "10.77.0.12/24"],
    );
    if v6 {
        prober_addrs.push("fd77::2/64");
        server_addrs.extend(["fd77::11/64", "fd77::12/64"]);
    }
    veth(&prober, &prober_addrs, &servers, &server_addrs);
    let server_end = format!("{}0", servers.name);
    prober.ping_sockets(true);
    // Short DNS timeouts, so a stopped name server is noticed within a second.
    prober.resolv_conf("nameserver 10.77.0.1\noptions timeout:1 attempts:1\n");
    let uplink = prober.uplink(0);

    let dir = TempDir::new("discovery");
    let hosts_file = dir.write("hosts", &hosts(&["10.77.0.11", "10.77.0.12", "10.77.0.13"]));
    let mut dns = Some(Dnsmasq::start(&servers, &hosts_file, "10.77.0.1", &[N1]));

    let lb6 = if v6 {
        format!(
            "[[target]]\nname = \"lb6\"\nregion = \"eu6\"\nprobe = \"icmp\"\nhost = \"{NAME}\"\n\
             ip_version = 6\naddresses = \"all\"\ninterval = \"500ms\"\ntimeout = \"300ms\"\n"
        )
    } else {
        String::new()
    };
    let config = dir.write(
        "exporter.toml",
        &format!(
            "[exporter]\nregion = \"here\"\nlisten = \"{inside}:0\"\n\
             [resolver]\nmin_ttl = \"1s\"\nmax_ttl = \"{TTL}s\"\nkeep_last_good = \"4s\"\n\
             [[target]]\nname = \"lb\"\nregion = \"eu\"\nprobe = \"icmp\"\nhost = \"{NAME}\"\n\
             ip_version = 4\naddresses = \"all\"\ninterval = \"500ms\"\ntimeout = \"300ms\"\n\
             [[target_srv]]\nname = \"{SRV}\"\nregion = \"ap\"\nprobe = \"icmp\"\n{lb6}",
            inside = uplink.inside,
        ),
    );
    let exporter = Exporter::start_with(&prober.prefix(), &config);

    // Three addresses, sorted: .11 is index 0, .12 index 1, the dead .13 index 2.
    let scrape = wait_for(Duration::from_secs(15), "lb degraded", || {
        let scrape = exporter.metrics();
        let known = up(&scrape, "0") == Some(1.0)
            && up(&scrape, "1") == Some(1.0)
            && up(&scrape, "2") == Some(0.0)
            && scrape.value("regionprobe_region_degraded", &[("target_region", "eu")]) == Some(1.0);
        known.then_some(scrape)
    });
    assert_eq!(
        scrape.value("regionprobe_target_addresses", &[("target", "lb")]),
        Some(3.0)
    );
    assert_eq!(
        scrape.value("regionprobe_target_addresses_up", &[("target", "lb")]),
        Some(2.0)
    );
    assert_eq!(
        scrape.value("regionprobe_region_up", &[("target_region", "eu")]),
        Some(1.0),
        "one dead node of three: degraded, not down"
    );
    let dead_failures: f64 = scrape
        .find(
            "regionprobe_probe_failures_total",
            &[("target", "lb"), ("address_index", "2")],
        )
        .iter()
        .map(|s| s.value)
        .sum();
    assert!(dead_failures >= 3.0, "the dead node fails: {dead_failures}");
    // No series of the target without an address: each probe counts once, in its address.
    assert!(
        scrape
            .find("regionprobe_probes_total", &[("target", "lb")])
            .iter()
            .all(|s| s.labels.contains_key("address_index"))
    );
    let listed = addresses(&exporter);
    assert_eq!(
        listed,
        vec![
            (0, "10.77.0.11".to_owned(), Some(true)),
            (1, "10.77.0.12".to_owned(), Some(true)),
            (2, "10.77.0.13".to_owned(), Some(false)),
        ]
    );
    let (_, ranking) = exporter.get("/api/v1/ranking");
    let ranking: serde_json::Value = serde_json::from_str(&ranking).unwrap();
    let eu = ranking["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "eu")
        .unwrap();
    assert_eq!(
        (eu["up"].as_bool(), eu["degraded"].as_bool()),
        (Some(true), Some(true))
    );
    let (_, page) = exporter.get("/");
    assert!(
        page.contains("<td class=\"degraded\">degraded</td>"),
        "{page}"
    );
    assert!(page.contains("data-address=\"10.77.0.13\""), "{page}");

    // The same name's AAAA records: an IPv6 target with two live nodes, up and not degraded.
    if v6 {
        let scrape = wait_for(Duration::from_secs(10), "lb6's two addresses up", || {
            let scrape = exporter.metrics();
            (scrape.value("regionprobe_target_addresses_up", &[("target", "lb6")]) == Some(2.0))
                .then_some(scrape)
        });
        assert_eq!(
            scrape.value("regionprobe_target_addresses", &[("target", "lb6")]),
            Some(2.0),
            "ip_version = 6: only the AAAA records"
        );
        assert_eq!(
            scrape.value("regionprobe_region_degraded", &[("target_region", "eu6")]),
            Some(0.0)
        );
    }

    // The dead node is replaced by a new one: the records change, the TTL runs out.
    servers.ip(&format!("addr add 10.77.0.14/24 dev {server_end}"));
    std::fs::write(
        &hosts_file,
        hosts(&["10.77.0.11", "10.77.0.12", "10.77.0.14"]),
    )
    .unwrap();
    let changed = Instant::now();
    dns.as_ref().unwrap().reread();
    wait_for(Duration::from_secs(10), "10.77.0.14 probed", || {
        addresses(&exporter)
            .iter()
            .any(|(_, address, up)| address == "10.77.0.14" && up.is_some())
            .then_some(())
    });
    let took = changed.elapsed();
    // TTL + interval, plus the lookup and a scrape's worth of slack.
    let bound = Duration::from_secs(TTL) + INTERVAL + Duration::from_millis(1500);
    assert!(
        took <= bound,
        "new address probed after {took:?} (> {bound:?})"
    );
    let listed = addresses(&exporter);
    assert_eq!(
        listed
            .iter()
            .map(|(i, a, _)| (*i, a.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, "10.77.0.11"), (1, "10.77.0.12"), (2, "10.77.0.14")],
        "addresses that stay keep their index; the new one takes the freed index"
    );
    let scrape = wait_for(Duration::from_secs(10), "eu no longer degraded", || {
        let scrape = exporter.metrics();
        (scrape.value("regionprobe_region_degraded", &[("target_region", "eu")]) == Some(0.0))
            .then_some(scrape)
    });
    assert_eq!(
        scrape.value(
            "regionprobe_target_address_changes_total",
            &[("target", "lb")]
        ),
        Some(1.0)
    );
    assert!(
        exporter
            .log_text()
            .contains("the host name's addresses changed")
    );

    // SRV records: n1 from the start; n2 added; n1 removed (dnsmasq reads --srv-host at
    // start only: it is restarted with the new records).
    wait_for(Duration::from_secs(10), "n1 from SRV", || {
        (srv_targets(&exporter) == ["n1.regionprobe.test:8080"]).then_some(())
    });
    drop(dns.take());
    dns = Some(Dnsmasq::start(
        &servers,
        &hosts_file,
        "10.77.0.1",
        &[N1, N2],
    ));
    wait_for(Duration::from_secs(10), "n2 added", || {
        (srv_targets(&exporter) == ["n1.regionprobe.test:8080", "n2.regionprobe.test:8080"])
            .then_some(())
    });
    drop(dns.take());
    dns = Some(Dnsmasq::start(&servers, &hosts_file, "10.77.0.1", &[N2]));
    wait_for(Duration::from_secs(10), "n1 removed", || {
        (srv_targets(&exporter) == ["n2.regionprobe.test:8080"]).then_some(())
    });
    let scrape = exporter.metrics();
    assert_eq!(
        scrape.value("regionprobe_target_srv_targets", &[("name", SRV)]),
        Some(1.0)
    );
    assert_eq!(
        scrape.value(
            "regionprobe_probes_total",
            &[("target", "n1.regionprobe.test:8080")]
        ),
        None,
        "a removed SRV target's series go with it"
    );

    // The name server stops: the last good addresses are kept (and said to be stale)...
    let before = resolve_failures(&scrape);
    drop(dns.take());
    let stopped = Instant::now();
    let scrape = wait_for(Duration::from_secs(10), "stale addresses", || {
        let scrape = exporter.metrics();
        (scrape.value("regionprobe_target_addresses_stale", &[("target", "lb")]) == Some(1.0))
            .then_some(scrape)
    });
    assert_eq!(
        resolve_failures(&scrape),
        before,
        "still probing the last good addresses"
    );
    assert_eq!(up(&scrape, "0"), Some(1.0));
    assert_eq!(
        scrape.value("regionprobe_target_srv_targets", &[("name", SRV)]),
        Some(1.0),
        "the SRV name's last good target is kept meanwhile"
    );
    assert!(
        exporter
            .log_text()
            .contains("probing its last good addresses"),
        "{}",
        exporter.log_text()
    );
    // ... then, keep_last_good (4 s) after the TTL ran out, the failure is reported.
    let scrape = wait_for(Duration::from_secs(15), "resolve failures", || {
        let scrape = exporter.metrics();
        (resolve_failures(&scrape) > before).then_some(scrape)
    });
    // The 4 s run from the end of the last good answer's TTL, which the last successful
    // lookup (at most a TTL plus an interval before the stop) set: at least ~3.4 s later.
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "failed after {took:?}: the last good addresses were not kept"
    );
    assert_eq!(
        scrape.value("regionprobe_target_addresses_stale", &[("target", "lb")]),
        Some(0.0)
    );
    wait_for(Duration::from_secs(5), "eu down", || {
        let scrape = exporter.metrics();
        (scrape.value("regionprobe_region_up", &[("target_region", "eu")]) == Some(0.0))
            .then_some(())
    });
    assert!(exporter.log_text().contains("too old to use"));
    // The SRV name's failure is reported at once, and its last good targets are kept for
    // the answer's TTL plus keep_last_good (4 s), as a host name's addresses are...
    assert!(
        exporter
            .log_text()
            .contains("SRV lookup failed; keeping the last good targets"),
        "{}",
        exporter.log_text()
    );
    // ... then dropped, while the lookup still fails.
    let scrape = wait_for(Duration::from_secs(15), "SRV targets dropped", || {
        let scrape = exporter.metrics();
        (scrape.value("regionprobe_target_srv_targets", &[("name", SRV)]) == Some(0.0))
            .then_some(scrape)
    });
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "SRV targets dropped after {took:?}: the last good targets were not kept"
    );
    assert_eq!(
        scrape.value("regionprobe_target_srv_valid", &[("name", SRV)]),
        Some(0.0)
    );
    assert_eq!(
        scrape.value(
            "regionprobe_probes_total",
            &[("target", "n2.regionprobe.test:8080")]
        ),
        None,
        "a dropped SRV target's series go with it"
    );
    assert_eq!(srv_listed(&exporter, false), Vec::<String>::new());
    assert!(
        exporter
            .log_text()
            .contains("its last good targets are too old to keep; dropping them"),
        "{}",
        exporter.log_text()
    );
    drop(exporter);
}
