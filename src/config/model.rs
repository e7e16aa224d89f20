//! The validated configuration: what the rest of the exporter reads. Every value here has
//! passed validation and every default is applied.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::web::Web;

/// Default histogram buckets in seconds: 100 us doubling up to 13.1 s (18 buckets).
///
/// Doubling gives the same relative resolution at every scale, from a loopback ping to a
/// congested intercontinental path, at 18 series per target (the shape smokeping_prober uses).
/// Targets whose latency sits in a narrow band can set finer `buckets` of their own.
pub const DEFAULT_BUCKETS: [f64; 18] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 3.2768, 6.5536, 13.1072,
];

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub exporter: Exporter,
    /// `[ranking]`: the ranking engine's own parameters.
    pub ranking: crate::ranking::Params,
    /// `[web]`: TLS and basic auth on the exporter's own endpoint.
    pub web: Web,
    /// `[reflector]`: the STAMP session-reflector, off unless the section is present.
    pub reflector: Option<ReflectorConfig>,
    /// `[resolver]`: how long resolved host names are kept.
    pub resolver: ResolverParams,
    /// Shared with the running targets ([`crate::targets::LiveTarget::config`]) and every
    /// copy of the configuration: one allocation per target.
    pub targets: Vec<std::sync::Arc<Target>>,
    /// `[[target_file]]`: more targets, from files in Prometheus' file_sd format.
    pub target_files: Vec<TargetFile>,
    /// `[[target_srv]]`: more targets, from DNS SRV records.
    pub target_srvs: Vec<TargetSrv>,
}

/// One `[[target_file]]`: a file of targets in Prometheus' `file_sd` format (JSON or YAML),
/// read and watched at run time (a bad file is not a configuration error).
#[derive(Clone, Debug, PartialEq)]
pub struct TargetFile {
    pub path: PathBuf,
    /// `probe` for the file's entries without a `__probe` label.
    pub probe: Option<ProbeKind>,
    /// `region` for the file's entries without a `__region` label.
    pub region: Option<String>,
    /// `[defaults]` and `[ranking] down_after`, as inline targets inherit them.
    pub defaults: TargetDefaults,
}

/// One `[[target_srv]]`: targets from a DNS SRV name, resolved again on its TTL.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetSrv {
    /// The SRV name, e.g. `_https._tcp.api.eu-west-1.example.com`.
    pub name: String,
    pub region: String,
    /// icmp (the SRV target's host), tcp (host:port) or http (a URL on host:port).
    pub probe: ProbeKind,
    /// http: the URL's scheme (`https` unless the name starts with `_http.`) and path.
    pub scheme: &'static str,
    pub path: String,
    pub defaults: TargetDefaults,
}

/// What a target inherits: `[defaults]` and `[ranking] down_after`.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetDefaults {
    pub interval: Duration,
    pub timeout: Duration,
    /// Shared with every target that does not set its own (one copy, not one per target).
    pub buckets: Arc<[f64]>,
    pub down_after: usize,
    /// `[exporter] clock_sync_error`: what STAMP targets claim of this sidecar's clock.
    pub clock_sync_error: Option<Duration>,
}

/// Where a target came from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum TargetSource {
    /// A `[[target]]` of the configuration file.
    #[default]
    Inline,
    /// An entry of a `[[target_file]]`.
    File(PathBuf),
    /// A record of a `[[target_srv]]`'s name.
    Srv(String),
}

impl fmt::Display for TargetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSource::Inline => f.write_str("inline"),
            TargetSource::File(path) => write!(f, "file:{}", path.display()),
            TargetSource::Srv(name) => write!(f, "srv:{name}"),
        }
    }
}

/// `[resolver]`: the bounds on how long a resolved name is used before it is resolved again,
/// and how long the last good addresses outlive a name server that stopped answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolverParams {
    /// A shorter DNS TTL is raised to this (a TTL of 0 would resolve before every probe).
    pub min_ttl: Duration,
    /// A longer DNS TTL is cut to this, so a moved name is noticed in bounded time.
    pub max_ttl: Duration,
    /// After the TTL ran out and resolving fails, the last good addresses are still probed
    /// for this long (and said to be stale); then the target fails with `reason="resolve"`.
    pub keep_last_good: Duration,
}

impl Default for ResolverParams {
    fn default() -> Self {
        ResolverParams {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            keep_last_good: Duration::from_secs(300),
        }
    }
}

impl Config {
    /// Probes per second the targets make, all together.
    pub fn probes_per_second(&self) -> f64 {
        self.targets
            .iter()
            .map(|target| 1.0 / target.interval.as_secs_f64())
            .sum()
    }
}

/// `[exporter]`
#[derive(Clone, Debug, PartialEq)]
pub struct Exporter {
    /// This sidecar's region: the `source_region` label.
    pub region: String,
    /// Address of the HTTP server (`/metrics`, status, reload).
    pub listen: SocketAddr,
    /// `clock_sync_error`: this host's clock is synchronised to UTC within this error; STAMP
    /// packets then carry the S bit, and one-way delays are exported.
    pub clock_sync_error: Option<Duration>,
    /// `exporter.shard` or `--shard`: this replica probes only the targets hashed to it.
    pub shard: Option<super::shard::Shard>,
    /// `exporter.max_probes_per_second`: a configuration whose targets (this replica's share)
    /// need more is refused, with what to do about it.
    pub max_probes_per_second: u64,
    /// Targets in the file before sharding (equal to `targets.len()` without a shard).
    pub configured_targets: usize,
}

/// One `[[target]]` with the `[defaults]` applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Unique name: the `target` label.
    pub name: String,
    /// Region the target lives in: the `target_region` label.
    pub region: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Upper bounds of the latency histogram, strictly increasing, seconds; shared with the
    /// defaults' when the target sets none.
    pub buckets: Arc<[f64]>,
    /// Failed probes in a row after which the target is down (`[ranking] down_after` unless
    /// the target sets its own).
    pub down_after: usize,
    /// `addresses`: which of the host name's addresses are probed.
    pub addresses: Addresses,
    pub probe: ProbeConfig,
    /// Where the target came from (shown in `/api/v1/targets` and on the page).
    pub source: TargetSource,
}

/// `addresses = "first" | "all"` of a target with a host name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Addresses {
    /// The first address of the wanted family, as a client would connect.
    #[default]
    First,
    /// Every address (up to `max`), each probed every interval as its own series.
    All { label: AddressLabel, max: usize },
}

/// `address_label`: what tells the series of one address from another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressLabel {
    /// `address_index="0"`..: bounded by `max_addresses`, kept by an address while it stays.
    Index,
    /// `address="192.0.2.1"`: readable, but every new address is a new set of series.
    Address,
}

/// What to probe and how.
///
/// The large settings are boxed: every [`Target`] is as large as the largest variant, and a
/// sidecar with 10,000 ICMP targets paid 264 bytes each for room that only HTTP, DNS and
/// database targets use.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeConfig {
    Icmp(IcmpConfig),
    Tcp(TcpConfig),
    Http(Box<HttpConfig>),
    Dns(Box<DnsConfig>),
    Stamp(StampConfig),
    /// `postgres`, `mysql` and `redis`: one shape, [`DbConfig::kind`] tells which.
    Db(Box<DbConfig>),
}

impl ProbeConfig {
    pub fn kind(&self) -> ProbeKind {
        match self {
            ProbeConfig::Icmp(_) => ProbeKind::Icmp,
            ProbeConfig::Tcp(_) => ProbeKind::Tcp,
            ProbeConfig::Http(_) => ProbeKind::Http,
            ProbeConfig::Dns(_) => ProbeKind::Dns,
            ProbeConfig::Stamp(_) => ProbeKind::Stamp,
            ProbeConfig::Db(db) => db.kind,
        }
    }

    /// The replication mode of a database target (`None` for other kinds).
    pub fn replication(&self) -> Option<Replication> {
        match self {
            ProbeConfig::Db(db) => db.replication,
            _ => None,
        }
    }

    /// Whether the probe talks TLS (and so reports a certificate expiry).
    pub fn uses_tls(&self) -> bool {
        match self {
            ProbeConfig::Tcp(tcp) => tcp.tls.is_some(),
            ProbeConfig::Http(http) => http.url.scheme_str() == Some("https"),
            ProbeConfig::Db(db) => db.tls.is_some(),
            _ => false,
        }
    }
}

/// The closed set of probe kinds: the `probe` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Icmp,
    Tcp,
    Http,
    Dns,
    Stamp,
    Postgres,
    Mysql,
    Redis,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 8] = [
        ProbeKind::Icmp,
        ProbeKind::Tcp,
        ProbeKind::Http,
        ProbeKind::Dns,
        ProbeKind::Stamp,
        ProbeKind::Postgres,
        ProbeKind::Mysql,
        ProbeKind::Redis,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Icmp => "icmp",
            ProbeKind::Tcp => "tcp",
            ProbeKind::Http => "http",
            ProbeKind::Dns => "dns",
            ProbeKind::Stamp => "stamp",
            ProbeKind::Postgres => "postgres",
            ProbeKind::Mysql => "mysql",
            ProbeKind::Redis => "redis",
        }
    }

    /// The database kinds.
    pub fn is_database(self) -> bool {
        matches!(
            self,
            ProbeKind::Postgres | ProbeKind::Mysql | ProbeKind::Redis
        )
    }
}

/// `probe = "postgres" | "mysql" | "redis"`: connect, authenticate, run the read query (and
/// the write probe), and read the replication state.
#[derive(Clone, Debug, PartialEq)]
pub struct DbConfig {
    pub kind: ProbeKind,
    /// IP address or host name.
    pub host: String,
    pub port: u16,
    pub ip_version: IpVersion,
    /// Redis: ACL user (none: the `requirepass` password alone, or no auth).
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// PostgreSQL, MySQL: the database to connect to; Redis: the database number (`SELECT`).
    pub database: Option<String>,
    /// The read query: `SELECT 1` (SQL) or `PING` (Redis) unless set.
    pub query: String,
    /// Write a heartbeat each probe (an upsert into `heartbeat_table`, `SET` with expiry for
    /// Redis), timed as its own phase.
    pub write: bool,
    /// SQL table or Redis key prefix of the heartbeat.
    pub heartbeat_table: String,
    /// Keep one connection: then only the queries are timed.
    pub keepalive: bool,
    /// `sslmode = "require"` (encrypted, not verified) or `"verify-full"`; `None`: plain text.
    pub tls: Option<TlsConfig>,
    pub replication: Option<Replication>,
}

/// What a database target reads of replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// The target is a replica (standby): its own lag.
    Replica,
    /// The target is a primary: its replicas' lag as it sees them (PostgreSQL
    /// `pg_stat_replication`, Redis's replica offsets).
    Primary,
    /// The age of the newest heartbeat row (written by a `write = true` target on the
    /// primary, in whatever region): exact to the writer's interval, on any engine.
    Heartbeat,
}

impl Replication {
    pub fn as_str(self) -> &'static str {
        match self {
            Replication::Replica => "replica",
            Replication::Primary => "primary",
            Replication::Heartbeat => "heartbeat",
        }
    }
}

/// `probe = "icmp"`: echo request / reply round trip.
#[derive(Clone, Debug, PartialEq)]
pub struct IcmpConfig {
    /// IP address or host name.
    pub host: String,
    /// Bytes of ICMP data after the 8-byte header (as `ping -s`).
    pub payload_size: u16,
    pub ip_version: IpVersion,
}

/// `probe = "tcp"`: time to complete the TCP handshake (and the TLS handshake with `tls`).
#[derive(Clone, Debug, PartialEq)]
pub struct TcpConfig {
    /// IP address or host name.
    pub host: String,
    pub port: u16,
    pub ip_version: IpVersion,
    /// `tls = true`: the latency includes the TLS handshake, which must validate.
    pub tls: Option<TlsConfig>,
}

/// How a TLS peer is verified.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TlsConfig {
    /// Name to send (SNI) and to verify; default: the target's host.
    pub server_name: Option<String>,
    /// Accept any certificate (the handshake and expiry are still measured).
    pub skip_verify: bool,
    /// Trust these CAs instead of the bundled web PKI roots.
    pub ca: Option<CaFile>,
}

/// `tls_ca_file`: read when the configuration loads, so a bad file fails the load.
#[derive(Clone, Debug, PartialEq)]
pub struct CaFile {
    pub path: PathBuf,
    pub certs: Vec<rustls_pki_types::CertificateDer<'static>>,
}

/// `probe = "http"`: one request, timed phase by phase.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpConfig {
    pub url: hyper::Uri,
    pub method: hyper::Method,
    pub headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    pub body: String,
    /// Accepted status codes as inclusive ranges (`"2xx"` is 200..=299).
    pub valid_status: Vec<(u16, u16)>,
    pub body_regex: Option<Pattern>,
    /// Fail when `body_regex` matches instead of when it does not.
    pub body_regex_invert: bool,
    /// Redirects followed; 0 when `follow_redirects = false`.
    pub max_redirects: u8,
    /// The body is read up to this many bytes; a longer one fails as `validation`.
    pub max_body_bytes: u64,
    pub http_version: HttpVersion,
    /// Reuse one connection: then only the request is measured.
    pub keepalive: bool,
    pub tls: TlsConfig,
    pub ip_version: IpVersion,
    /// The `Authorization` the target sends to its own origin (never to another one).
    pub auth: Option<HttpAuth>,
}

/// How an HTTP target authenticates to its URL's origin.
#[derive(Clone, Debug, PartialEq)]
pub enum HttpAuth {
    /// `basic_auth`, or the credentials of the URL (`from_url`: shown as `user:xxxxx@`).
    Basic {
        username: String,
        password: Secret,
        from_url: bool,
    },
    /// `bearer_token`, `bearer_token_file` or `bearer_token_env`.
    Bearer(Secret),
}

/// A secret value, or the file it is read from. Neither `Debug` nor any message shows a value.
#[derive(Clone, PartialEq)]
pub enum Secret {
    /// Given in the file, in the URL, or read from the environment at load.
    Value(String),
    /// Read at every probe (trailing whitespace trimmed), so a rotated file takes effect
    /// without a reload.
    File(PathBuf),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Secret(<hidden>)"),
            Secret::File(path) => write!(f, "Secret(file {})", path.display()),
        }
    }
}

impl Secret {
    /// The value now. A file that cannot be read is an error naming the file, never its
    /// contents.
    pub fn read(&self) -> Result<String, String> {
        match self {
            Secret::Value(value) => Ok(value.clone()),
            Secret::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim_end().to_owned())
                .map_err(|err| format!("cannot read \"{}\": {err}", path.display())),
        }
    }
}

impl HttpConfig {
    /// Whether a response with this status passes `valid_status`.
    pub fn accepts_status(&self, status: u16) -> bool {
        self.valid_status
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&status))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    /// HTTP/2, negotiated with ALPN over TLS (prior knowledge over plain http).
    Http2,
}

/// `probe = "dns"`: one query to one server, no cache, no retries.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsConfig {
    pub server: SocketAddr,
    pub query: hickory_resolver::proto::rr::Name,
    pub record_type: hickory_resolver::proto::rr::RecordType,
    pub transport: DnsTransport,
    pub recursion_desired: bool,
    pub valid_rcodes: Vec<hickory_resolver::proto::op::ResponseCode>,
    pub min_answers: u32,
    pub answer_regex: Option<Pattern>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsTransport {
    Udp,
    Tcp,
}

/// A compiled regular expression, compared by its source text.
#[derive(Clone, Debug)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// Which address family a host name resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IpVersion {
    /// Whatever the resolver returns first (IPv4 first, then IPv6).
    #[default]
    Any,
    V4,
    V6,
}

/// `probe = "stamp"`: a STAMP session-sender (RFC 8762) to a session-reflector.
#[derive(Clone, Debug, PartialEq)]
pub struct StampConfig {
    /// The reflector's IP address or host name, and UDP port (862 unless given).
    pub host: String,
    pub port: u16,
    pub ip_version: IpVersion,
    /// Test packets sent per interval.
    pub train: u32,
    /// The target's timeout: how long replies are awaited.
    pub wait: Duration,
    /// Authenticated mode (HMAC-SHA-256) with this key.
    pub key: Option<StampKey>,
    /// `[exporter] clock_sync_error`: the clock claim our packets carry.
    pub clock_sync_error: Option<Duration>,
}

/// A STAMP HMAC key, read from its file at load. Never shown.
#[derive(Clone, PartialEq)]
pub struct StampKey {
    pub path: PathBuf,
    bytes: Vec<u8>,
}

impl StampKey {
    pub fn new(path: PathBuf, bytes: Vec<u8>) -> Self {
        StampKey { path, bytes }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for StampKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StampKey(file {})", self.path.display())
    }
}

/// `[reflector]`: the STAMP session-reflector.
#[derive(Clone, Debug, PartialEq)]
pub struct ReflectorConfig {
    /// UDP address to answer on (port 862 by default).
    pub listen: SocketAddr,
    /// Authenticated mode with this key; unauthenticated without.
    pub key: Option<StampKey>,
    /// Sender networks answered, each with the region its senders are in (the
    /// `sender_region` label); anything else is refused.
    pub allow: Vec<AllowedSenders>,
    /// Packets per second answered per sender address (bursts of the same size).
    pub rate_limit: u32,
    /// `[exporter] clock_sync_error`: the clock claim the replies carry.
    pub clock_sync_error: Option<Duration>,
}

/// One `[[reflector.allow]]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct AllowedSenders {
    pub network: ipnet::IpNet,
    pub region: Option<String>,
}
