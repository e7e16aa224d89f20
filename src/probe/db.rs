//! What the database probers (`postgres`, `mysql`, `redis`) share: the prober itself ([`Db`]:
//! the target's settings, its host and the connection kept between probes) around each
//! engine's protocol ([`Engine`]), their reasons and phases, how their endpoint reads, the TCP
//! connect (resolve and connect timed), the replication state they report, and the
//! heartbeat's clock.

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;
use tokio::time::Instant;

// The replication report lives beside `Outcome`, which carries it (a leaf, so no cycle).
use super::outcome::{Failure, Outcome, Phase, Phases, Reason, connect_failure};
pub use super::outcome::{ReplicaReport, ReplicationReport};
use super::resolve::{Host, Resolver};
use super::tls::TlsClient;
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

/// One database target's prober: the engine's protocol around what every engine holds.
#[derive(Debug)]
pub struct Db<E: Engine> {
    target: Target,
    engine: E,
    /// `keepalive = true`: the connection kept between probes.
    kept: Option<E::Conn>,
}

/// What a database target holds whatever its engine.
#[derive(Debug)]
pub struct Target {
    pub config: DbConfig,
    pub host: Host,
    pub resolver: Resolver,
    pub tls: Option<TlsClient>,
    /// The sidecar's region: the heartbeat's key.
    pub region: String,
}

/// One engine's protocol: how it opens a connection, and the probe's queries on it.
pub trait Engine: Default + Debug + Send + Sync {
    type Conn: Debug + Send + Sync;

    /// Resolves, connects (with [`Target::connect`]), starts TLS and authenticates.
    fn open(
        &mut self,
        target: &mut Target,
        timings: &mut Timings,
    ) -> impl Future<Output = Result<Self::Conn, Failure>> + Send;

    /// The read query, the heartbeat write and the replication state.
    fn queries(
        &mut self,
        target: &Target,
        conn: &mut Self::Conn,
        timings: &mut Timings,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Whether a kept connection may serve the next probe.
    fn usable(_conn: &Self::Conn) -> bool {
        true
    }

    /// Ends a connection that is not kept.
    fn close(conn: Self::Conn) -> impl Future<Output = ()> + Send {
        async move { drop(conn) }
    }
}

impl<E: Engine> Db<E> {
    /// `region`: this sidecar's, the key of the heartbeats it writes.
    pub fn new(config: &DbConfig, resolver: &Resolver, region: &str) -> Self {
        Db {
            target: Target {
                host: Host::new(&config.host, config.ip_version),
                resolver: resolver.clone(),
                tls: config.tls.as_ref().map(|tls| TlsClient::new(tls, &[])),
                config: config.clone(),
                region: region.to_owned(),
            },
            engine: E::default(),
            kept: None,
        }
    }

    pub fn host(&self) -> &Host {
        &self.target.host
    }

    pub async fn run(&mut self) -> Result<Outcome, Failure> {
        let mut timings = Timings::default();
        // Taken out for the run: a probe cancelled by its timeout drops the connection with
        // it rather than leaving one mid-query for the next probe.
        let mut conn = match self.kept.take() {
            Some(conn) if E::usable(&conn) => conn,
            _ => self.engine.open(&mut self.target, &mut timings).await?,
        };
        let result = self
            .engine
            .queries(&self.target, &mut conn, &mut timings)
            .await;
        if self.target.config.keepalive && result.is_ok() {
            self.kept = Some(conn);
        } else {
            E::close(conn).await;
        }
        result.map(|()| timings.outcome())
    }
}

impl Target {
    /// Resolves and connects, timing both phases into `phases`.
    pub async fn connect(&mut self, phases: &mut Phases) -> Result<TcpStream, Failure> {
        let started = Instant::now();
        let ip = self
            .host
            .address(&self.resolver)
            .await
            .map_err(|detail| Failure::new(Reason::Resolve, detail))?;
        phases.add(Phase::Resolve, started.elapsed());
        let addr = SocketAddr::new(ip, self.config.port);
        let started = Instant::now();
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| connect_failure(addr, &err))?;
        phases.add(Phase::Connect, started.elapsed());
        // The queries are small: send each at once.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A failure whose detail names the host and what was being done.
    pub fn fail(&self, reason: Reason, during: &str, problem: impl std::fmt::Display) -> Failure {
        Failure::new(reason, format!("{} {during}: {problem}", self.host.name()))
    }
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
