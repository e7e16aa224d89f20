//! Network namespaces for tests: a guard per namespace (named from the process id, deleted
//! with every interface in it on drop, also when the test panics), veth pairs between them, an
//! uplink to the root namespace, per-namespace sysctls and resolver files.
//!
//! Tests that use these need root; they call [`crate::black_box::skip_unless`] first. No
//! namespace made here has a default route unless the test adds one towards another test
//! namespace, so no probe packet can leave the machine.

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::black_box::{ip, run, run_quietly};

/// Where `ip netns exec` finds files to bind-mount over /etc.
const ETC_NETNS: &str = "/etc/netns";

/// Whether this kernel has IPv6 at all (`ipv6.disable=1` removes it): the IPv6 halves of the
/// tests need it.
pub fn ipv6_available() -> bool {
    let available = Path::new("/proc/sys/net/ipv6").exists();
    if !available {
        eprintln!("NOTE: no IPv6 in this kernel; only the IPv4 half of the test runs");
    }
    available
}

/// A network namespace made for one test, with `lo` up.
///
/// Why a guard: namespaces, and the veth pairs and /etc/netns files that go with them, outlive
/// the process that made them. Dropping this deletes the namespace, which destroys every
/// interface in it (and with a veth end its peer), and removes the namespace's /etc/netns
/// directory; `Drop` also runs when the test panics. Declare it before the exporter, which
/// then (a process inside the namespace) is killed first.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// Interfaces named so far (see [`Netns::ifname`]).
    interfaces: Cell<u8>,
    /// Whether `resolv_conf` created /etc/netns, which the drop then removes if empty.
    made_etc_netns: Cell<bool>,
}

impl Netns {
    /// `rp<pid><tag>`: the pid keeps concurrent test processes apart, the tag the tests of this
    /// one. Interfaces are named after their namespace plus one character, so the name is kept
    /// to 14 bytes (interface names have at most 15).
    pub fn new(tag: &str) -> Self {
        Self::named(format!("rp{}{tag}", std::process::id()))
    }

    /// A namespace with exactly this name (at most 14 bytes; the caller keeps it unique, e.g.
    /// with the pid).
    pub fn named(name: String) -> Self {
        assert!(name.len() <= 14, "namespace name {name:?} is too long");
        // A leftover of a killed earlier process that had the same pid.
        run_quietly(&["ip", "netns", "del", &name]);
        run(&["ip", "netns", "add", &name]);
        let netns = Netns {
            name,
            interfaces: Cell::new(0),
            made_etc_netns: Cell::new(false),
        };
        netns.ip("link set lo up");
        netns
    }

    /// `ip -n <ns> <command>`: iproute2 acting inside the namespace.
    pub fn ip(&self, command: &str) {
        ip(&format!("-n {} {command}", self.name));
    }

    /// The command prefix that runs a program in the namespace (for `Exporter::start_with`).
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// Sets a per-namespace sysctl (`net.ipv4.ping_group_range` ...) by writing /proc/sys from
    /// inside the namespace: /proc/sys/net shows the namespace of the process that opens it.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let script = r#"printf '%s\n' "$1" > "$2""#;
        let mut args = self.prefix().to_vec();
        args.extend(["sh", "-c", script, "sh", value, &path]);
        run(&args);
    }

    /// Lets root (gid 0) open ping sockets in this namespace, or not: a range holding gid 0
    /// permits them; "1 0" is the kernel's "nobody" (an empty range), which leaves root only
    /// raw sockets.
    pub fn ping_sockets(&self, allowed: bool) {
        let range = if allowed { "0 2147483647" } else { "1 0" };
        self.sysctl("net.ipv4.ping_group_range", range);
    }

    /// Makes sure `::1` works; false (and nothing to do) without IPv6 in the kernel.
    pub fn loopback_ipv6(&self) -> bool {
        if !ipv6_available() {
            return false;
        }
        self.sysctl("net.ipv6.conf.lo.disable_ipv6", "0");
        true
    }

    /// Makes this namespace a router: it forwards (IPv6 too with `ipv6`) and sends an ICMP
    /// error for every packet it cannot deliver, not one a second per destination. Call it
    /// before the namespace gets its interfaces, which take the `default` settings.
    ///
    /// No ICMP redirects: the kernel keeps their rate limit in the same per-source record as
    /// that of "unreachable" errors about forwarded packets, so redirects (for the packets
    /// that bounce between two routers) would suppress the errors a test waits for.
    pub fn forward(&self, ipv6: bool) {
        self.sysctl("net.ipv4.ip_forward", "1");
        self.sysctl("net.ipv4.icmp_ratelimit", "0");
        // The global limiter (1,000 a second, shared with IPv6, burst partly randomised since
        // Linux 6.12) must not drop an error either while a time-exceeded loop is running.
        self.sysctl("net.ipv4.icmp_msgs_per_sec", "1000000");
        self.sysctl("net.ipv4.icmp_msgs_burst", "1000000");
        self.sysctl("net.ipv4.conf.all.send_redirects", "0");
        self.sysctl("net.ipv4.conf.default.send_redirects", "0");
        if ipv6 {
            self.sysctl("net.ipv6.conf.all.forwarding", "1");
            self.sysctl("net.ipv6.icmp.ratelimit", "0");
        }
    }

    /// Connects the root namespace to this one (see [`Uplink`]): the exporter listens on this
    /// namespace's end, the test scrapes from the root namespace.
    pub fn uplink(&self, block: u32) -> Uplink {
        assert!(block < 16, "at most 16 blocks per process");
        let pid_blocks = (std::process::id() % 8192) * 16;
        let first = u32::from(Ipv4Addr::new(10, 200, 0, 0)) + (pid_blocks + block) * 4;
        let uplink = Uplink {
            root_end: format!("{}h", self.name),
            host: Ipv4Addr::from(first + 1),
            inside: Ipv4Addr::from(first + 2),
        };
        let (root_end, ns_end) = (&uplink.root_end, format!("{}u", self.name));
        run_quietly(&["ip", "link", "del", root_end]);
        ip(&format!("link add {root_end} type veth peer name {ns_end}"));
        ip(&format!("link set {ns_end} netns {}", self.name));
        ip(&format!("addr add {}/30 dev {root_end}", uplink.host));
        ip(&format!("link set {root_end} up"));
        self.ip(&format!("addr add {}/30 dev {ns_end}", uplink.inside));
        self.ip(&format!("link set {ns_end} up"));
        uplink
    }

    /// A new interface name in this namespace: the namespace's name and a digit.
    pub fn ifname(&self) -> String {
        let n = self.interfaces.get();
        assert!(n < 10, "too many interfaces in {}", self.name);
        self.interfaces.set(n + 1);
        format!("{}{n}", self.name)
    }

    /// `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf: the
    /// exporter in this namespace uses `contents` as its resolver configuration.
    pub fn resolv_conf(&self, contents: &str) {
        if !Path::new(ETC_NETNS).exists() {
            self.made_etc_netns.set(true);
        }
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), contents).unwrap();
    }

    pub fn etc_dir(&self) -> PathBuf {
        Path::new(ETC_NETNS).join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        run_quietly(&["ip", "netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(self.etc_dir());
        if self.made_etc_netns.get() {
            // Only if empty: the directory is shared.
            let _ = std::fs::remove_dir(ETC_NETNS);
        }
    }
}

/// A veth pair between the root namespace and a test namespace with a private /30: the
/// `block`th of this process in 10.200.0.0/13 (16 blocks for each pid modulo 8192). `host` is
/// the root end's address, `inside` the namespace's.
///
/// Why a guard of its own: the root end lives in the root namespace, where it would outlive
/// the test namespace if something (a stray process) kept that namespace alive.
#[derive(Debug)]
pub struct Uplink {
    pub root_end: String,
    pub host: Ipv4Addr,
    pub inside: Ipv4Addr,
}

impl Drop for Uplink {
    fn drop(&mut self) {
        run_quietly(&["ip", "link", "del", &self.root_end]);
    }
}

/// Connects two namespaces with a veth pair, gives each end its addresses (`"10.99.0.1/30"`,
/// `"fd72:7070:99::1/64"`) and brings both up. Both ends live and die with their namespaces,
/// so these addresses never meet the root namespace's.
pub fn veth(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) {
    let (a_end, b_end) = (a.ifname(), b.ifname());
    ip(&format!("link add {a_end} type veth peer name {b_end}"));
    for (netns, end, addrs) in [(a, &a_end, a_addrs), (b, &b_end, b_addrs)] {
        ip(&format!("link set {end} netns {}", netns.name));
        for addr in addrs {
            if addr.contains(':') {
                netns.sysctl(&format!("net.ipv6.conf.{end}.disable_ipv6"), "0");
                // No duplicate address detection, for the link-local address either: until
                // it is over (a second) the link does not carry IPv6 reliably.
                netns.sysctl(&format!("net.ipv6.conf.{end}.accept_dad"), "0");
                netns.ip(&format!("-6 addr add {addr} dev {end} nodad"));
            } else {
                netns.ip(&format!("addr add {addr} dev {end}"));
            }
        }
        netns.ip(&format!("link set {end} up"));
    }
}
