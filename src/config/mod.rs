//! Configuration: `exporter.toml` (or the bundled copy) plus `REGIONPROBE_...` environment
//! overrides, loaded with the `config` crate into raw serde structs and validated into [`Config`].
//!
//! Every error names the file, the key path and what was expected, e.g.
//! `exporter.toml: key `target[2].timeout`: timeout 2s is longer than the interval 1s`.

mod probes;
mod raw;
mod validate;
mod web;

pub use web::{ClientAuth, PasswordHash, Web, WebTls};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The `exporter.toml` shipped in the repository, compiled in so a bare `regionprobe` runs.
pub const BUNDLED: &str = include_str!("../../exporter.toml");

/// Environment variables with this prefix override file keys: `REGIONPROBE_EXPORTER__REGION=eu`
/// sets `exporter.region` (`__` separates the path segments; variables without it are ignored).
pub const ENV_PREFIX: &str = "REGIONPROBE";

/// Default histogram buckets in seconds: 100 us doubling up to 13.1 s (18 buckets).
///
/// Doubling gives the same relative resolution at every scale, from a loopback ping to a
/// congested intercontinental path, at 18 series per target (the shape smokeping_prober uses).
/// Targets whose latency sits in a narrow band can set finer `buckets` of their own.
pub const DEFAULT_BUCKETS: [f64; 18] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 3.2768, 6.5536, 13.1072,
];

/// Where the configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// The `exporter.toml` compiled into the binary.
    Bundled,
    /// A file given with `--config`.
    File(PathBuf),
}

impl ConfigSource {
    /// The name used in error messages and logs.
    pub fn name(&self) -> String {
        match self {
            ConfigSource::Bundled => "<bundled exporter.toml>".to_owned(),
            ConfigSource::File(path) => path.display().to_string(),
        }
    }

    /// Reads and validates the configuration, applying the process environment's overrides.
    pub fn load(&self) -> Result<Config, ConfigError> {
        self.load_with_env(None)
    }

    /// Like [`ConfigSource::load`], with the environment given explicitly (`None`: the process's).
    pub fn load_with_env(
        &self,
        env: Option<HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let file = self.name();
        let text = match self {
            ConfigSource::Bundled => BUNDLED.to_owned(),
            ConfigSource::File(path) => {
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    file: file.clone(),
                    source,
                })?
            }
        };
        parse(&file, &text, env)
    }
}

/// Parses and validates configuration text; `file` is only used in messages.
pub fn parse(
    file: &str,
    text: &str,
    env: Option<HashMap<String, String>>,
) -> Result<Config, ConfigError> {
    // Only `REGIONPROBE_<SECTION>__<KEY>` variables are overrides; other REGIONPROBE_*
    // variables (a CI switch, an image's version tag) are not configuration. Sorted, so that
    // of several bad overrides the same one is always reported.
    let mut overrides: Vec<(String, String)> = env
        .map(|vars| vars.into_iter().collect::<Vec<_>>())
        .unwrap_or_else(|| std::env::vars().collect())
        .into_iter()
        .filter(|(name, _)| {
            name.strip_prefix(ENV_PREFIX)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|path| path.contains("__"))
        })
        .collect();
    overrides.sort();
    let overrides: config::Map<String, String> = overrides.into_iter().collect();
    let environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(Some(overrides));
    let layered = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(environment)
        .build()
        .map_err(|err| ConfigError::Syntax {
            file: file.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })?;
    let value: config::Value = layered
        .try_deserialize()
        .map_err(|err| ConfigError::Syntax {
            file: file.to_owned(),
            message: err.to_string(),
        })?;
    let raw: raw::RawFile = serde_path_to_error::deserialize(value).map_err(|err| {
        let key = err.path().to_string();
        let problem = explain_unknown_key(&strip_key_suffix(&err.inner().to_string()));
        ConfigError::Invalid {
            file: file.to_owned(),
            key,
            problem,
        }
    })?;
    validate::validate(raw).map_err(|(key, problem)| ConfigError::Invalid {
        file: file.to_owned(),
        key,
        problem,
    })
}

/// The `config` crate appends its own (sometimes mangled) " for key `...`" to serde messages;
/// we report the path from serde_path_to_error instead.
fn strip_key_suffix(message: &str) -> String {
    match message.rfind(" for key `") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// Turns serde's "unknown field `hots`, expected one of `name`, ... (34 names)" into
/// "unknown key; did you mean `host`?" when one name is close, or a short list otherwise.
fn explain_unknown_key(problem: &str) -> String {
    let Some((field, expected)) = problem
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
    else {
        return problem.to_owned();
    };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let closest = known
        .iter()
        .map(|name| (edit_distance(field, name), *name))
        .min();
    match closest {
        Some((distance, name)) if distance <= (field.len() / 3).max(2) => {
            format!("unknown key; did you mean `{name}`?")
        }
        _ if known.len() <= 8 => format!("unknown key; expected one of: {}", known.join(", ")),
        _ => "unknown key; see the configuration reference in README.md".to_owned(),
    }
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// A configuration that could not be used. The running configuration stays in place.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: key `{key}`: {problem}")]
    Invalid {
        file: String,
        key: String,
        problem: String,
    },
}

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

/// `[exporter]`
#[derive(Clone, Debug, PartialEq)]
pub struct Exporter {
    /// This sidecar's region: the `source_region` label.
    pub region: String,
    /// Address of the HTTP server (`/metrics`, status, reload).
    pub listen: SocketAddr,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_get_a_suggestion_or_a_short_list() {
        let many = "unknown field `hots`, expected one of `name`, `region`, `probe`, `interval`, `timeout`, `buckets`, `ip_version`, `host`, `payload_size`";
        assert_eq!(
            explain_unknown_key(many),
            "unknown key; did you mean `host`?"
        );
        let far = "unknown field `colour`, expected `region` or `listen`";
        assert_eq!(
            explain_unknown_key(far),
            "unknown key; expected one of: region, listen"
        );
        assert_eq!(
            explain_unknown_key("invalid type: string"),
            "invalid type: string"
        );
        assert_eq!(edit_distance("regoin", "region"), 2);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}
