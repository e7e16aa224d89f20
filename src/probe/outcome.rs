//! What a probe reports: an [`Outcome`] (latency, phases, certificate expiry) or a
//! [`Failure`] with a bounded [`Reason`]. Probers build these; they never touch metrics.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// A successful probe.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// ICMP round trip, TCP connect (plus TLS handshake), DNS round trip, HTTP total.
    pub latency: Duration,
    /// HTTP: time per phase, summed over redirect hops.
    pub phases: Option<Phases>,
    /// TLS targets: the earliest certificate expiry in the chain served.
    pub cert_expiry: Option<SystemTime>,
    /// HTTP: redirects followed.
    pub redirects: u32,
    /// Database targets with `replication`: what the probe read of it.
    pub replication: Option<ReplicationReport>,
}

impl Outcome {
    pub fn latency(latency: Duration) -> Self {
        Outcome {
            latency,
            ..Outcome::default()
        }
    }
}

/// What a probe read of replication.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicationReport {
    /// Seconds behind the primary: `+Inf` when replication is broken (link down, a thread
    /// stopped), `None` when the server does not say (a standby that never replayed).
    pub lag: Option<f64>,
    /// Redis `master_link_status`, PostgreSQL's WAL receiver streaming, MySQL's IO thread.
    pub link_up: Option<bool>,
    /// MySQL/MariaDB: whether the IO and the SQL threads run.
    pub threads: Option<(bool, bool)>,
    /// Redis: the replication offset this server is at.
    pub offset: Option<u64>,
    /// From a primary: each replica's lag by stage, and how many bytes it is behind.
    pub replicas: Vec<ReplicaReport>,
}

/// One replica as its primary sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaReport {
    /// PostgreSQL `application_name` (or client address), Redis `ip:port`.
    pub name: String,
    /// `(stage, seconds)`: PostgreSQL write, flush and replay lag; Redis ack (seconds since
    /// the replica last acknowledged).
    pub lag: Vec<(&'static str, f64)>,
    /// Bytes of the primary's log the replica has not replayed.
    pub gap_bytes: Option<u64>,
}

/// The phases of a probe (HTTP, DNS over TCP, databases): the `phase` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Host name to address.
    Resolve,
    /// TCP handshake.
    Connect,
    /// TLS handshake.
    Tls,
    /// Request sent until the response head arrived (server time plus one round trip).
    Processing,
    /// Reading the body.
    Transfer,
    /// Databases: startup and authentication (after TLS).
    Auth,
    /// Databases: the read query.
    Query,
    /// Databases: the write probe (heartbeat upsert, `SET`).
    Write,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Resolve => "resolve",
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Processing => "processing",
            Phase::Transfer => "transfer",
            Phase::Auth => "auth",
            Phase::Query => "query",
            Phase::Write => "write",
        }
    }
}

/// Time spent per [`Phase`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases([Duration; 8]);

impl Phases {
    pub fn add(&mut self, phase: Phase, time: Duration) {
        self.0[phase as usize] += time;
    }

    pub fn get(&self, phase: Phase) -> Duration {
        self.0[phase as usize]
    }

    pub fn total(&self) -> Duration {
        self.0.iter().sum()
    }
}

/// A failed probe: a bounded `reason` for the label, and words for the log and the status API.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub reason: Reason,
    pub detail: String,
}

impl Failure {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Failure {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

/// Why a probe failed: the closed set of `reason` label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Timeout,
    Refused,
    Unreachable,
    Resolve,
    Tls,
    HttpStatus,
    Validation,
    Error,
    /// Databases: the server refused the credentials.
    Auth,
    /// Databases: the database named does not exist.
    UnknownDatabase,
    /// Databases: a write was asked of a read-only server (a replica, a read-only transaction).
    ReadOnly,
    /// Our side could not probe: no ICMP socket (permission), no file descriptor, no buffer
    /// space. Says nothing of the destination.
    Local,
}

impl Reason {
    /// Whether the failure is ours rather than the destination's: the ranking does not count
    /// it as the destination's loss.
    pub fn is_local(self) -> bool {
        self == Reason::Local
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Refused => "refused",
            Reason::Unreachable => "unreachable",
            Reason::Resolve => "resolve",
            Reason::Tls => "tls",
            Reason::HttpStatus => "http_status",
            Reason::Validation => "validation",
            Reason::Error => "error",
            Reason::Local => "local",
            Reason::Auth => "auth",
            Reason::UnknownDatabase => "unknown_database",
            Reason::ReadOnly => "read_only",
        }
    }
}

/// Whether a socket error means "no way there": no route, or a route or firewall that
/// prohibits the destination. The one list of such errors, for connects and ICMP sends alike.
pub(crate) fn is_unreachable(err: &io::Error) -> bool {
    use nix::libc;
    matches!(
        err.kind(),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable
    ) || matches!(
        err.raw_os_error(),
        Some(
            libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EADDRNOTAVAIL
                | libc::EACCES
                | libc::EPERM
        )
    )
}

/// Whether a socket error is our own shortage: out of file descriptors or buffer space.
pub(crate) fn is_local(err: &io::Error) -> bool {
    use nix::libc;
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A failed TCP connect as a [`Failure`] with the matching reason.
pub(crate) fn connect_failure(addr: SocketAddr, err: &io::Error) -> Failure {
    let reason = match err.kind() {
        io::ErrorKind::ConnectionRefused => Reason::Refused,
        io::ErrorKind::TimedOut => Reason::Timeout,
        _ if is_local(err) => Reason::Local,
        _ if is_unreachable(err) => Reason::Unreachable,
        _ => Reason::Error,
    };
    Failure::new(reason, format!("connect {addr}: {err}"))
}
