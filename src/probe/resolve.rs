//! Host names to addresses: hickory-resolver with the system configuration, cached per target
//! until the record's TTL (bounded by `[resolver] min_ttl` and `max_ttl`) runs out, then
//! resolved again.
//!
//! A literal IP address never touches the resolver. The first lookup of a name runs inside
//! the probe; later ones run beside it, so a slow or dead name server never delays a probe
//! that has addresses to use. A failed lookup is not cached: the next probe tries again, so a
//! target recovers as soon as DNS does. When a name that resolved stops resolving, its last
//! good addresses are kept for `keep_last_good` (the host says it is stale), then dropped.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hickory_resolver::TokioResolver;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{IpVersion, ResolverParams};

/// How long a probe waits for a lookup of a name whose TTL ran out before it uses the last
/// addresses: long enough for a name server that answers, short against any probe timeout.
const REFRESH_WAIT: Duration = Duration::from_millis(100);

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

/// A lookup's addresses and how long they may be used, or what went wrong.
type Lookup = Result<(Vec<IpAddr>, Duration), String>;

/// What the file looked like when the resolver was built.
type Stamp = Option<(SystemTime, u64)>;

#[derive(Debug)]
struct State {
    /// None: a fixed configuration (tests).
    source: Option<Source>,
    built: Option<Result<TokioResolver, String>>,
    stamp: Stamp,
    checked: Option<Instant>,
    params: ResolverParams,
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
                params: ResolverParams::default(),
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
                params: ResolverParams::default(),
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

    /// New `[resolver]` bounds (from a (re)load); a new `max_ttl` rebuilds the resolver so
    /// its own cache honours it too.
    pub fn set_params(&self, params: ResolverParams) {
        let mut state = self.inner.lock().expect("resolver lock");
        if state.params.max_ttl != params.max_ttl && state.source.is_some() {
            state.built = None;
        }
        state.params = params;
    }

    pub fn params(&self) -> ResolverParams {
        self.inner.lock().expect("resolver lock").params
    }

    fn get(&self) -> Result<TokioResolver, String> {
        let mut state = self.inner.lock().expect("resolver lock");
        let State {
            source,
            built,
            stamp,
            checked,
            params,
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
                    *built = Some(build(path, *port, params.max_ttl));
                }
            }
        }
        match built {
            Some(built) => built.clone(),
            None => Err("no resolver".to_owned()),
        }
    }

    /// The SRV records of `name` (target host, port) and how long they may be used (the
    /// shortest TTL, within `min_ttl` and `max_ttl`). A name without SRV records, or that does
    /// not exist, has none: that is an answer, not a failure.
    pub async fn srv(&self, name: &str) -> Result<(Vec<(String, u16)>, Duration), String> {
        use hickory_resolver::proto::rr::{RData, RecordType};
        let params = self.params();
        let resolver = self.get()?;
        match resolver.lookup(name, RecordType::SRV).await {
            Ok(lookup) => {
                let answers = lookup.answers();
                let ttl = answers
                    .iter()
                    .map(|record| Duration::from_secs(u64::from(record.ttl)))
                    .min()
                    .unwrap_or(Duration::ZERO);
                let mut records: Vec<(String, u16)> = answers
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::SRV(srv) => Some((srv.target.to_ascii(), srv.port)),
                        _ => None,
                    })
                    .collect();
                records.sort();
                records.dedup();
                Ok((records, ttl.clamp(params.min_ttl, params.max_ttl)))
            }
            Err(err) if err.is_nx_domain() || err.is_no_records_found() => {
                Ok((Vec::new(), params.min_ttl))
            }
            Err(err) => Err(format!("resolving SRV {name}: {err}")),
        }
    }

    /// Resolves `host`: every address of the wanted family, in the resolver's order, and how
    /// long they may be used (the shortest TTL, within `min_ttl` and `max_ttl`).
    async fn lookup(&self, host: &str, version: IpVersion) -> Lookup {
        let params = self.params();
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
        let addresses: Vec<IpAddr> = lookup
            .iter()
            .filter(|addr| version_matches(version, addr))
            .collect();
        if addresses.is_empty() {
            return Err(format!(
                "resolving {host}: no {} address",
                version_name(version)
            ));
        }
        Ok((addresses, ttl.clamp(params.min_ttl, params.max_ttl)))
    }
}

fn file_stamp(path: &std::path::Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn build(
    path: &std::path::Path,
    port: Option<u16>,
    max_ttl: Duration,
) -> Result<TokioResolver, String> {
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
    // Its cache must not hand back an answer older than our own bound.
    builder.options_mut().positive_max_ttl = Some(max_ttl);
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

/// One target's host: a literal address, or a name with its resolution.
#[derive(Debug)]
pub struct Host {
    name: String,
    version: IpVersion,
    literal: Option<IpAddr>,
    /// Boxed: most hosts are literal addresses, which never resolve, and inline it made every
    /// `Host` 64 bytes larger (136 bytes against 72).
    resolved: Option<Box<Resolved>>,
    /// A lookup running beside the probes (the TTL ran out while addresses were known).
    refresh: Option<JoinHandle<Lookup>>,
    /// True while a lookup is in flight; stays true if the probe's timeout cancels it.
    resolving: bool,
    /// Times the address set changed since the name first resolved.
    changes: u64,
}

/// The addresses a name resolved to and how long they may be used.
#[derive(Debug)]
struct Resolved {
    addresses: Vec<IpAddr>,
    /// Resolve again from then on.
    fresh_until: Instant,
    /// Until then the addresses outlive failed lookups; afterwards the name fails.
    good_until: Instant,
    /// Since when lookups fail and these addresses are used anyway.
    stale_since: Option<Instant>,
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(refresh) = self.refresh.take() {
            refresh.abort();
        }
    }
}

impl Host {
    pub fn new(name: &str, version: IpVersion) -> Self {
        Host {
            name: name.to_owned(),
            version,
            literal: name.parse().ok(),
            resolved: None,
            refresh: None,
            resolving: false,
            changes: 0,
        }
    }

    /// The name (or literal address) as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the host is a name (not a literal address), so it has a resolution to show.
    pub fn is_name(&self) -> bool {
        self.literal.is_none()
    }

    /// Probes `address` from now on, whatever the name resolves to (one address of an
    /// `addresses = "all"` target); the name still goes to TLS and the `Host` header.
    pub fn pin(&mut self, address: IpAddr) {
        self.literal = Some(address);
        self.resolved = None;
    }

    /// Times the name's address set changed (not counting the first resolution).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Whether the addresses in use are the last good ones of a name that no longer resolves.
    pub fn is_stale(&self) -> bool {
        self.resolved
            .as_ref()
            .is_some_and(|resolved| resolved.stale_since.is_some())
    }

    /// The address to probe now: the first of [`Host::addresses`].
    pub async fn address(&mut self, resolver: &Resolver) -> Result<IpAddr, String> {
        Ok(self.addresses(resolver).await?[0])
    }

    /// Every address of the wanted family: the literal, the cached resolution, or a fresh one.
    /// Never empty.
    pub async fn addresses(&mut self, resolver: &Resolver) -> Result<Vec<IpAddr>, String> {
        if let Some(addr) = self.literal {
            if !version_matches(self.version, &addr) {
                return Err(format!(
                    "{addr} is not an {} address",
                    version_name(self.version)
                ));
            }
            return Ok(vec![addr]);
        }
        let now = Instant::now();
        match &self.resolved {
            Some(resolved) if now < resolved.fresh_until => {
                return Ok(resolved.addresses.clone());
            }
            // Known addresses: resolve beside the probes, waiting only briefly.
            Some(_) => {
                let refresh = self.refresh.get_or_insert_with(|| {
                    let (resolver, name, version) =
                        (resolver.clone(), self.name.clone(), self.version);
                    tokio::spawn(async move { resolver.lookup(&name, version).await })
                });
                if let Ok(joined) = tokio::time::timeout(REFRESH_WAIT, refresh).await {
                    self.refresh = None;
                    let result = joined.unwrap_or_else(|err| Err(format!("lookup task: {err}")));
                    return self.absorb(result, resolver.params());
                }
                let resolved = self.resolved.as_ref().expect("matched above");
                return Ok(resolved.addresses.clone());
            }
            None => {}
        }
        self.resolving = true;
        // Boxed: hickory's lookup future is large, and inline it would sit in every target's
        // task for its whole life; a lookup is rare (once per TTL), the allocation is nothing.
        let result = Box::pin(resolver.lookup(&self.name, self.version)).await;
        self.resolving = false;
        self.absorb(result, resolver.params())
    }

    /// Takes a lookup's result: new addresses (logging a change), or a failure that the last
    /// good addresses ride out while they may.
    fn absorb(&mut self, result: Lookup, params: ResolverParams) -> Result<Vec<IpAddr>, String> {
        let now = Instant::now();
        match result {
            Ok((addresses, ttl)) => {
                if let Some(previous) = &self.resolved {
                    if !same_set(&previous.addresses, &addresses) {
                        self.changes += 1;
                        tracing::info!(host = %self.name, from = ?previous.addresses, to = ?addresses, "the host name's addresses changed");
                    }
                    if let Some(since) = previous.stale_since {
                        tracing::info!(host = %self.name, stale_for = ?now.duration_since(since), "the host name resolves again");
                    }
                }
                self.resolved = Some(Box::new(Resolved {
                    addresses: addresses.clone(),
                    fresh_until: now + ttl,
                    good_until: now + ttl + params.keep_last_good,
                    stale_since: None,
                }));
                Ok(addresses)
            }
            Err(err) => match &mut self.resolved {
                Some(resolved) if now < resolved.good_until => {
                    if resolved.stale_since.is_none() {
                        let left = resolved.good_until.duration_since(now);
                        tracing::warn!(host = %self.name, error = %err, keep_for = %humantime::format_duration(Duration::from_secs(left.as_secs())), "cannot resolve the host name; probing its last good addresses");
                        resolved.stale_since = Some(now);
                    }
                    // Ask again after the shortest TTL, not before every probe.
                    resolved.fresh_until = (now + params.min_ttl).min(resolved.good_until);
                    Ok(resolved.addresses.clone())
                }
                Some(_) => {
                    tracing::error!(host = %self.name, error = %err, "cannot resolve the host name, and its last good addresses are too old to use");
                    self.resolved = None;
                    Err(err)
                }
                None => Err(err),
            },
        }
    }

    /// Whether the last lookup was cut short (by the probe's timeout): the probe then failed
    /// to resolve, not to reach the target.
    pub fn was_resolving(&self) -> bool {
        self.resolving
    }
}

/// Whether two address lists hold the same addresses, in any order (round-robin DNS rotates
/// them: that is no change).
fn same_set(a: &[IpAddr], b: &[IpAddr]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
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
        assert!(host.resolved.is_some());
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

    #[tokio::test(start_paused = true)]
    async fn last_good_addresses_outlive_a_failing_name_server_for_a_bounded_time() {
        let params = ResolverParams {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
            keep_last_good: Duration::from_secs(10),
        };
        let a = IpAddr::from([192, 0, 2, 1]);
        let b = IpAddr::from([192, 0, 2, 2]);
        let mut host = Host::new("lb.example.test.", IpVersion::Any);
        let ok = |addrs: Vec<IpAddr>| Ok((addrs, Duration::from_secs(5)));
        assert_eq!(host.absorb(ok(vec![a, b]), params), Ok(vec![a, b]));
        // Round-robin order is no change; another set is one.
        host.absorb(ok(vec![b, a]), params).unwrap();
        assert_eq!(host.changes(), 0);
        host.absorb(ok(vec![a]), params).unwrap();
        assert_eq!(host.changes(), 1);

        // The TTL (5 s) ran out and the name server fails: the last good addresses, stale.
        tokio::time::advance(Duration::from_secs(6)).await;
        let failed = || Err("resolving lb.example.test.: timed out".to_owned());
        assert_eq!(host.absorb(failed(), params), Ok(vec![a]));
        assert!(host.is_stale());
        // Asked again after min_ttl, not before every probe.
        let resolved = host.resolved.as_ref().unwrap();
        assert_eq!(
            resolved.fresh_until,
            Instant::now() + params.min_ttl,
            "retry after min_ttl"
        );
        // Until TTL + keep_last_good after the last answer (15 s); then the failure shows.
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(host.absorb(failed(), params), Ok(vec![a]));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(host.absorb(failed(), params).is_err());
        assert!(!host.is_stale() && host.resolved.is_none());
        // And an answer brings it back.
        assert_eq!(host.absorb(ok(vec![b]), params), Ok(vec![b]));
        assert!(!host.is_stale());
    }

    #[tokio::test]
    async fn an_unresolvable_name_is_an_error_not_a_panic() {
        let resolver = Resolver::default();
        // .invalid is reserved (RFC 6761): hickory answers NXDOMAIN without sending a query,
        // and the trailing dot keeps search domains out of it.
        let mut host = Host::new("no-such-host.invalid.", IpVersion::Any);
        let err = host.address(&resolver).await.unwrap_err();
        assert!(err.contains("no-such-host.invalid"), "{err}");
        assert!(host.resolved.is_none(), "failures are not cached");
    }
}
