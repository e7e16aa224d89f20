//! Host names to addresses: hickory-resolver with the system configuration, cached per target
//! until the record's TTL runs out, then resolved again.
//!
//! A literal IP address never touches the resolver. A failed lookup is not cached: the next
//! probe tries again, so a target recovers as soon as DNS does.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hickory_resolver::TokioResolver;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;

use crate::config::IpVersion;

/// Longest time a resolved address is reused, whatever the TTL says.
const MAX_CACHE: Duration = Duration::from_secs(3600);

/// The system's resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// How often a lookup may look at the resolver configuration's modification time.
const RECHECK: Duration = Duration::from_secs(1);

/// The process-wide resolver. Built from `/etc/resolv.conf` on first use (a config with only
/// IP literals never reads it), and built again when the file changes (its modification time
/// or size, looked at most once a second) or on a reload ([`Resolver::reload`]): a file that
/// had no nameserver at start is picked up once fixed.
#[derive(Clone, Debug)]
pub struct Resolver {
    inner: Arc<Mutex<State>>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::from_file(PathBuf::from(RESOLV_CONF), None)
    }
}

/// A resolv.conf; `port` replaces 53 (tests: a name server on a free loopback port).
#[derive(Debug)]
struct Source {
    path: PathBuf,
    port: Option<u16>,
}

/// What the file looked like when the resolver was built.
type Stamp = Option<(SystemTime, u64)>;

#[derive(Debug)]
struct State {
    /// None: a fixed configuration (tests).
    source: Option<Source>,
    built: Option<Result<TokioResolver, String>>,
    stamp: Stamp,
    checked: Option<Instant>,
}

impl Resolver {
    /// A resolver reading `path` in resolv.conf format; `port`, when given, is the name
    /// servers' port instead of 53.
    pub fn from_file(path: PathBuf, port: Option<u16>) -> Self {
        Resolver {
            inner: Arc::new(Mutex::new(State {
                source: Some(Source { path, port }),
                built: None,
                stamp: None,
                checked: None,
            })),
        }
    }

    /// A resolver with an explicit configuration instead of the system's (tests: a silent or
    /// local name server).
    #[cfg(test)]
    pub fn with_config(config: hickory_resolver::config::ResolverConfig) -> Self {
        let built = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .build()
            .map_err(|err| format!("cannot set up the resolver: {err}"));
        Resolver {
            inner: Arc::new(Mutex::new(State {
                source: None,
                built: Some(built),
                stamp: None,
                checked: None,
            })),
        }
    }

    /// Forgets the resolver (and its cache): the next lookup reads the configuration again.
    pub fn reload(&self) {
        let mut state = self.inner.lock().expect("resolver lock");
        if state.source.is_some() {
            state.built = None;
        }
    }

    fn get(&self) -> Result<TokioResolver, String> {
        let mut state = self.inner.lock().expect("resolver lock");
        let State {
            source,
            built,
            stamp,
            checked,
        } = &mut *state;
        if let Some(Source { path, port }) = source {
            let now = Instant::now();
            let due = checked.is_none_or(|at| now.duration_since(at) >= RECHECK);
            if built.is_none() || due {
                *checked = Some(now);
                let current = file_stamp(path);
                if built.is_none() || current != *stamp {
                    if built.is_some() {
                        tracing::info!(file = %path.display(), "resolver configuration changed; reading it again");
                    }
                    *stamp = current;
                    *built = Some(build(path, *port));
                }
            }
        }
        match built {
            Some(built) => built.clone(),
            None => Err("no resolver".to_owned()),
        }
    }

    /// Resolves `host`, returning the first address of the wanted family and its lifetime.
    async fn lookup(&self, host: &str, version: IpVersion) -> Result<(IpAddr, Duration), String> {
        let resolver = self.get()?;
        let lookup = resolver.lookup_ip(host).await.map_err(|err| {
            // lookup_ip asks A and AAAA: whichever failed last is reported, but NXDOMAIN
            // says the name itself does not exist, for every type.
            if err.is_nx_domain() {
                format!("resolving {host}: NXDOMAIN (the name does not exist)")
            } else if err.is_no_records_found() {
                format!("resolving {host}: the name has no A or AAAA records")
            } else {
                format!("resolving {host}: {err}")
            }
        })?;
        let ttl = lookup
            .as_lookup()
            .answers()
            .iter()
            .map(|record| Duration::from_secs(u64::from(record.ttl)))
            .min()
            .unwrap_or(Duration::ZERO);
        lookup
            .iter()
            .find(|addr| version_matches(version, addr))
            .map(|addr| (addr, ttl.min(MAX_CACHE)))
            .ok_or_else(|| format!("resolving {host}: no {} address", version_name(version)))
    }
}

fn file_stamp(path: &std::path::Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn build(path: &std::path::Path, port: Option<u16>) -> Result<TokioResolver, String> {
    let text = std::fs::read(path).map_err(|err| {
        format!(
            "cannot read the resolver configuration {}: {err}",
            path.display()
        )
    })?;
    let (mut config, options) = hickory_resolver::system_conf::parse_resolv_conf(text)
        .map_err(|err| format!("cannot set up the resolver from {}: {err}", path.display()))?;
    if let Some(port) = port {
        let (domain, search, mut servers) = config.into_parts();
        for connection in servers
            .iter_mut()
            .flat_map(|server| &mut server.connections)
        {
            connection.port = port;
        }
        config = hickory_resolver::config::ResolverConfig::from_parts(domain, search, servers);
    }
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    *builder.options_mut() = options;
    builder
        .build()
        .map_err(|err| format!("cannot set up the resolver from {}: {err}", path.display()))
}

fn version_matches(version: IpVersion, addr: &IpAddr) -> bool {
    match version {
        IpVersion::Any => true,
        IpVersion::V4 => addr.is_ipv4(),
        IpVersion::V6 => addr.is_ipv6(),
    }
}

fn version_name(version: IpVersion) -> &'static str {
    match version {
        IpVersion::Any => "IP",
        IpVersion::V4 => "IPv4",
        IpVersion::V6 => "IPv6",
    }
}

/// One target's host: a literal address, or a name with its cached resolution.
#[derive(Debug)]
pub struct Host {
    name: String,
    version: IpVersion,
    literal: Option<IpAddr>,
    cached: Option<(IpAddr, Instant)>,
    /// True while a lookup is in flight; stays true if the probe's timeout cancels it.
    resolving: bool,
}

impl Host {
    pub fn new(name: &str, version: IpVersion) -> Self {
        Host {
            name: name.to_owned(),
            version,
            literal: name.parse().ok(),
            cached: None,
            resolving: false,
        }
    }

    /// The name (or literal address) as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address to probe now: literal, cached, or freshly resolved.
    pub async fn address(&mut self, resolver: &Resolver) -> Result<IpAddr, String> {
        if let Some(addr) = self.literal {
            if !version_matches(self.version, &addr) {
                return Err(format!(
                    "{addr} is not an {} address",
                    version_name(self.version)
                ));
            }
            return Ok(addr);
        }
        let now = Instant::now();
        if let Some((addr, until)) = self.cached
            && now < until
        {
            return Ok(addr);
        }
        self.resolving = true;
        // Boxed: hickory's lookup future is large, and inline it would sit in every target's
        // task for its whole life; a lookup is rare (once per TTL), the allocation is nothing.
        let (addr, ttl) = Box::pin(resolver.lookup(&self.name, self.version)).await?;
        self.resolving = false;
        self.cached = Some((addr, now + ttl));
        Ok(addr)
    }

    /// Whether the last lookup was cut short (by the probe's timeout): the probe then failed
    /// to resolve, not to reach the target.
    pub fn was_resolving(&self) -> bool {
        self.resolving
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_skip_the_resolver_and_check_the_family() {
        let resolver = Resolver::default();
        let mut v4 = Host::new("127.0.0.1", IpVersion::Any);
        assert_eq!(
            v4.address(&resolver).await.unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        let mut wrong = Host::new("127.0.0.1", IpVersion::V6);
        assert!(
            wrong
                .address(&resolver)
                .await
                .unwrap_err()
                .contains("not an IPv6")
        );
        assert!(
            resolver.inner.lock().unwrap().built.is_none(),
            "a literal must not build the resolver"
        );
    }

    #[tokio::test]
    async fn localhost_resolves_from_the_hosts_file() {
        let resolver = Resolver::default();
        let mut host = Host::new("localhost", IpVersion::V4);
        let addr = host.address(&resolver).await.unwrap();
        assert!(addr.is_loopback(), "{addr}");
        assert!(host.cached.is_some());
    }

    /// A DNS server on loopback that answers every A query with `answer` and a 1 s TTL,
    /// counting the queries. Hand-written wire format: the query echoed back with QR set and
    /// one answer appended, or no answer for any other type.
    async fn dns_server(
        answer: Arc<std::sync::Mutex<[u8; 4]>>,
        queries: Arc<std::sync::atomic::AtomicUsize>,
    ) -> std::net::SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (len, peer) = socket.recv_from(&mut buf).await.unwrap();
                let query = &buf[..len];
                // Header (12) + QNAME + QTYPE (2) + QCLASS (2).
                let mut end = 12;
                while query[end] != 0 {
                    end += 1 + query[end] as usize;
                }
                let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
                let mut response = query[..end + 5].to_vec();
                response[2] |= 0x80; // QR: this is a response
                response[3] = 0x80; // RA, NOERROR
                response[8..12].fill(0); // no authority, no additional (drops the query's EDNS)
                if qtype == 1 {
                    queries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    response[7] = 1; // ANCOUNT
                    response.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                    response.extend_from_slice(&*answer.lock().unwrap());
                }
                socket.send_to(&response, peer).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_name_is_resolved_again_when_its_ttl_expires() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let answer = Arc::new(std::sync::Mutex::new([127, 0, 0, 7]));
        let queries = Arc::new(AtomicUsize::new(0));
        let server = dns_server(answer.clone(), queries.clone()).await;
        let mut name_server = hickory_resolver::config::NameServerConfig::udp(server.ip());
        name_server.connections[0].port = server.port();
        let resolver = Resolver::with_config(
            hickory_resolver::config::ResolverConfig::from_name_servers(vec![name_server]),
        );

        let mut host = Host::new("target.regionprobe.test.", IpVersion::V4);
        assert_eq!(
            host.address(&resolver).await.unwrap(),
            IpAddr::from([127, 0, 0, 7])
        );
        assert_eq!(
            host.address(&resolver).await.unwrap(),
            IpAddr::from([127, 0, 0, 7])
        );
        assert_eq!(
            queries.load(Ordering::SeqCst),
            1,
            "within the TTL the cached address is used"
        );

        *answer.lock().unwrap() = [127, 0, 0, 8];
        // tokio's clock is not paused here: the resolver's own cache runs on real time.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            host.address(&resolver).await.unwrap(),
            IpAddr::from([127, 0, 0, 8])
        );
        assert_eq!(queries.load(Ordering::SeqCst), 2);
    }

    /// A resolv.conf in a temp dir naming the test kit's DNS server (on its free port).
    fn resolv_conf(tag: &str) -> (PathBuf, impl Drop) {
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir =
            std::env::temp_dir().join(format!("regionprobe-resolv-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        (dir.join("resolv.conf"), Remove(dir))
    }

    #[tokio::test]
    async fn the_resolver_configuration_is_read_again_when_it_changes_and_on_reload() {
        let server = regionprobe_testkit::dns::DnsServer::start().await;
        let (path, _dir) = resolv_conf("reread");
        std::fs::write(&path, "# no nameserver yet\noptions ndots:1\n").unwrap();
        let resolver = Resolver::from_file(path.clone(), Some(server.addr.port()));
        let www = || Host::new("www.example.test.", IpVersion::V4);

        let err = www().address(&resolver).await.unwrap_err();
        assert!(err.contains("resolv.conf"), "{err}");

        // Fixed: picked up by the modification time check, without a reload.
        std::fs::write(&path, "nameserver 127.0.0.1\n").unwrap();
        tokio::time::sleep(RECHECK + Duration::from_millis(100)).await;
        assert_eq!(
            www().address(&resolver).await.unwrap(),
            IpAddr::from([192, 0, 2, 10])
        );

        // Broken again, and a reload reads it at once.
        std::fs::write(&path, "# the nameservers moved\n").unwrap();
        resolver.reload();
        assert!(www().address(&resolver).await.is_err());
        std::fs::write(&path, "nameserver 127.0.0.1\n").unwrap();
        resolver.reload();
        assert_eq!(
            www().address(&resolver).await.unwrap(),
            IpAddr::from([192, 0, 2, 10])
        );
    }

    #[tokio::test]
    async fn nxdomain_is_reported_as_such_whatever_type_was_asked_last() {
        let server = regionprobe_testkit::dns::DnsServer::start().await;
        let (path, _dir) = resolv_conf("nxdomain");
        std::fs::write(&path, "nameserver 127.0.0.1\n").unwrap();
        let resolver = Resolver::from_file(path, Some(server.addr.port()));
        for version in [IpVersion::Any, IpVersion::V4, IpVersion::V6] {
            let mut host = Host::new("nosuch.example.test.", version);
            let err = host.address(&resolver).await.unwrap_err();
            assert_eq!(
                err, "resolving nosuch.example.test.: NXDOMAIN (the name does not exist)",
                "{version:?}"
            );
        }
        assert!(!server.received().is_empty(), "the server was asked");
    }

    #[tokio::test]
    async fn an_unresolvable_name_is_an_error_not_a_panic() {
        let resolver = Resolver::default();
        // .invalid is reserved (RFC 6761): hickory answers NXDOMAIN without sending a query,
        // and the trailing dot keeps search domains out of it.
        let mut host = Host::new("no-such-host.invalid.", IpVersion::Any);
        let err = host.address(&resolver).await.unwrap_err();
        assert!(err.contains("no-such-host.invalid"), "{err}");
        assert!(host.cached.is_none(), "failures are not cached");
    }
}
