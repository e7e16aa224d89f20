//! The validated configuration: what the rest of the exporter reads. Every value here has
//! passed validation and every default is applied.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    pub targets: Vec<Target>,
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
    /// Upper bounds of the latency histogram, strictly increasing, seconds.
    pub buckets: Vec<f64>,
    /// Failed probes in a row after which the target is down (`[ranking] down_after` unless
    /// the target sets its own).
    pub down_after: usize,
    pub probe: ProbeConfig,
}

/// What to probe and how.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeConfig {
    Icmp(IcmpConfig),
    Tcp(TcpConfig),
    Http(HttpConfig),
    Dns(DnsConfig),
}

impl ProbeConfig {
    pub fn kind(&self) -> ProbeKind {
        match self {
            ProbeConfig::Icmp(_) => ProbeKind::Icmp,
            ProbeConfig::Tcp(_) => ProbeKind::Tcp,
            ProbeConfig::Http(_) => ProbeKind::Http,
            ProbeConfig::Dns(_) => ProbeKind::Dns,
        }
    }

    /// Whether the probe talks TLS (and so reports a certificate expiry).
    pub fn uses_tls(&self) -> bool {
        match self {
            ProbeConfig::Tcp(tcp) => tcp.tls.is_some(),
            ProbeConfig::Http(http) => http.url.scheme_str() == Some("https"),
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
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 4] = [
        ProbeKind::Icmp,
        ProbeKind::Tcp,
        ProbeKind::Http,
        ProbeKind::Dns,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Icmp => "icmp",
            ProbeKind::Tcp => "tcp",
            ProbeKind::Http => "http",
            ProbeKind::Dns => "dns",
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
