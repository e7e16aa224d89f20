//! The drill's network: one namespace per region, each with one address on a shared L2 (a
//! bridge in a backbone namespace of its own), and the root namespace (where Prometheus,
//! Alertmanager and the test run) on the same L2 through an uplink veth.
//!
//! Why a backbone namespace and not a bridge in the root namespace: with `br_netfilter`
//! loaded (Docker loads it, and sets the root namespace's FORWARD policy to DROP) bridged
//! frames between two ports of a root-namespace bridge go through the root namespace's
//! iptables and are dropped. A fresh namespace has no rules.
//!
//! Names and addresses come from the process id: namespaces `rpfd<pid><region>` and
//! `rpfd<pid>bb`, the one root-namespace interface `rpfd<pid>r`, and the `(pid % 8192)`th /29
//! of 10.208.0.0/16 (root `.1`, regions from `.2`), apart from the other tests' ranges
//! (icmp_netns: 10.200.0.0/13, docker: 10.160.0.0/12). Every interface but the root end is
//! created inside its namespace, so its name cannot clash. Dropping [`Topology`] deletes it
//! all, also when the test panics.

use regionprobe_testkit::black_box::{ip, run, run_quietly};
pub use regionprobe_testkit::netns::Netns;
use std::net::Ipv4Addr;

/// The root namespace's end of the uplink. Deleting the backbone namespace destroys it too,
/// unless something (a stray process) keeps that namespace alive: hence a guard of its own.
#[derive(Debug)]
struct RootLink(String);

impl Drop for RootLink {
    fn drop(&mut self) {
        run_quietly(&["ip", "link", "del", &self.0]);
    }
}

/// One region: a namespace whose `eth0` has `addr`, plugged into the backbone bridge by the
/// backbone's interface `port`.
#[derive(Debug)]
pub struct Region {
    pub name: &'static str,
    pub addr: Ipv4Addr,
    pub netns: Netns,
    port: String,
}

#[derive(Debug)]
pub struct Topology {
    // Fields drop in order: the root end, the regions, then the backbone.
    _uplink: RootLink,
    pub regions: Vec<Region>,
    backbone: Netns,
}

impl Topology {
    /// Builds the regions (at most five: a /29 holds the root and five more hosts), each
    /// with ping sockets open to root so the sidecars use datagram ICMP sockets.
    pub fn build(names: &[&'static str]) -> Self {
        assert!(names.len() <= 5, "a /29 holds five regions");
        let pid = std::process::id();
        let prefix = format!("rpfd{pid}");
        let first = u32::from(Ipv4Addr::new(10, 208, 0, 0)) + (pid % 8192) * 8;
        let host = Ipv4Addr::from(first + 1);

        let backbone = Netns::named(format!("{prefix}bb"));
        backbone.ip("link add br0 type bridge");
        backbone.ip("link set br0 up");

        let root_end = format!("{prefix}r");
        run_quietly(&["ip", "link", "del", &root_end]);
        ip(&format!(
            "link add {root_end} type veth peer name up0 netns {}",
            backbone.name
        ));
        let uplink = RootLink(root_end.clone());
        backbone.ip("link set up0 master br0");
        backbone.ip("link set up0 up");
        ip(&format!("addr add {host}/29 dev {root_end}"));
        ip(&format!("link set {root_end} up"));

        let mut regions = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let netns = Netns::named(format!("{prefix}{name}"));
            let addr = Ipv4Addr::from(first + 2 + i as u32);
            let port = format!("p{name}");
            backbone.ip(&format!(
                "link add {port} type veth peer name eth0 netns {}",
                netns.name
            ));
            backbone.ip(&format!("link set {port} master br0"));
            backbone.ip(&format!("link set {port} up"));
            netns.ip(&format!("addr add {addr}/29 dev eth0"));
            netns.ip("link set eth0 up");
            // Root (gid 0) may open ping sockets: the "preferred" way of the README.
            netns.ping_sockets(true);
            regions.push(Region {
                name,
                addr,
                netns,
                port,
            });
        }
        Topology {
            _uplink: uplink,
            regions,
            backbone,
        }
    }

    pub fn region(&self, name: &str) -> &Region {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no region {name}"))
    }

    /// Cuts `name` off: its bridge port goes down, so nothing reaches it or leaves it (its
    /// `eth0` loses carrier), Prometheus included.
    pub fn cut(&self, name: &str) {
        let port = &self.region(name).port;
        self.backbone.ip(&format!("link set {port} down"));
    }

    pub fn restore(&self, name: &str) {
        let port = &self.region(name).port;
        self.backbone.ip(&format!("link set {port} up"));
    }

    /// Cuts one direction of one path: `at` drops every packet from `from` that opens a new
    /// flow (nftables, connection tracking, in `at`'s namespace), so `from`'s probes of `at`
    /// fail while `at`'s probes of `from` (whose answers belong to flows `at` opened) pass.
    pub fn cut_one_way(&self, from: &str, at: &str) {
        let from = self.region(from).addr;
        let ns = &self.region(at).netns.name;
        let nft = |command: &str| run(&["ip", "netns", "exec", ns, "nft", command]);
        nft("add table inet drill");
        nft("add chain inet drill input { type filter hook input priority 0 ; }");
        nft(&format!(
            "add rule inet drill input ip saddr {from} ct state new drop"
        ));
    }

    /// Undoes [`Topology::cut_one_way`] at `at`.
    pub fn restore_one_way(&self, at: &str) {
        let ns = &self.region(at).netns.name;
        run(&["ip", "netns", "exec", ns, "nft", "delete table inet drill"]);
    }
}
