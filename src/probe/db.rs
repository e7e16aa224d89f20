//! What the database probers (`postgres`, `mysql`, `redis`) share: their reasons and phases,
//! how their endpoint reads, the TCP connect (resolve and connect timed), the replication
//! state they report, and the heartbeat's clock.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::outcome::{Failure, Outcome, Phase, Phases, Reason, connect_failure};
pub use super::outcome::{ReplicaReport, ReplicationReport};
use super::resolve::{Host, Resolver};
use crate::config::{DbConfig, Secret};

/// The reasons a database probe fails with.
pub const REASONS: &[Reason] = &[
    Reason::Timeout,
    Reason::Refused,
    Reason::Unreachable,
    Reason::Resolve,
    Reason::Tls,
    Reason::Auth,
    Reason::UnknownDatabase,
    Reason::ReadOnly,
    Reason::Validation,
    Reason::Error,
    Reason::Local,
];

const READ_PHASES: &[Phase] = &[
    Phase::Resolve,
    Phase::Connect,
    Phase::Tls,
    Phase::Auth,
    Phase::Query,
];
const WRITE_PHASES: &[Phase] = &[
    Phase::Resolve,
    Phase::Connect,
    Phase::Tls,
    Phase::Auth,
    Phase::Query,
    Phase::Write,
];

/// The phases a database target times: `write` only when it writes.
pub fn phases(config: &DbConfig) -> &'static [Phase] {
    if config.write {
        WRITE_PHASES
    } else {
        READ_PHASES
    }
}

/// `postgres://user@host:port/db (tls)`: never a password.
pub fn endpoint(config: &DbConfig) -> String {
    let host = if config.host.contains(':') {
        format!("[{}]", config.host)
    } else {
        config.host.clone()
    };
    let user = config
        .user
        .as_deref()
        .map(|user| format!("{user}@"))
        .unwrap_or_default();
    let database = config
        .database
        .as_deref()
        .map(|db| format!("/{db}"))
        .unwrap_or_default();
    let tls = if config.tls.is_some() { " (tls)" } else { "" };
    format!(
        "{}://{user}{host}:{}{database}{tls}",
        config.kind.as_str(),
        config.port
    )
}

/// A connection the database probers read and write, plain or TLS.
pub trait Io:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + std::fmt::Debug
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + std::fmt::Debug> Io
    for T
{
}

/// A database's answer to one probe, before it becomes an [`Outcome`].
#[derive(Debug, Default)]
pub struct Timings {
    pub phases: Phases,
    pub cert_expiry: Option<SystemTime>,
    pub replication: Option<ReplicationReport>,
}

impl Timings {
    /// The outcome: the latency is the read path (everything but the write), so the ranking
    /// and `probe_duration_seconds` mean the same with and without `write`.
    pub fn outcome(self) -> Outcome {
        let latency = self.phases.total() - self.phases.get(Phase::Write);
        Outcome {
            latency,
            phases: Some(self.phases),
            cert_expiry: self.cert_expiry,
            replication: self.replication,
            ..Outcome::default()
        }
    }
}

/// Resolves and connects, timing both phases into `phases`.
pub async fn connect(
    host: &mut Host,
    port: u16,
    resolver: &Resolver,
    phases: &mut Phases,
) -> Result<TcpStream, Failure> {
    let started = Instant::now();
    let ip = host
        .address(resolver)
        .await
        .map_err(|detail| Failure::new(Reason::Resolve, detail))?;
    phases.add(Phase::Resolve, started.elapsed());
    let addr = SocketAddr::new(ip, port);
    let started = Instant::now();
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|err| connect_failure(addr, &err))?;
    phases.add(Phase::Connect, started.elapsed());
    // The queries are small: send each at once.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The password now (a file is read at every probe, so rotation needs no reload); an
/// unreadable file is our failure, `local`, and its message names the file only.
pub fn password(config: &DbConfig) -> Result<Option<String>, Failure> {
    config
        .password
        .as_ref()
        .map(Secret::read)
        .transpose()
        .map_err(|problem| Failure::new(Reason::Local, format!("password: {problem}")))
}

/// This sidecar's clock as Unix seconds: the Redis heartbeat's time stamp.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Parses a number a server sent as text; anything else is a `validation` failure.
pub fn number(what: &str, text: Option<&str>) -> Result<Option<f64>, Failure> {
    match text {
        None => Ok(None),
        Some(text) => text.trim().parse::<f64>().map(Some).map_err(|_| {
            Failure::new(
                Reason::Validation,
                format!("{what}: \"{}\" is not a number", text.escape_debug()),
            )
        }),
    }
}
