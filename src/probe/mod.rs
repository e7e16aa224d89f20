//! Probers: one file per protocol, one shape. A probe measures and reports an [`Outcome`] or a
//! [`Failure`]; it never touches metrics, and the scheduler owns its timeout.

mod dns;
mod http;
mod icmp;
mod tcp;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

pub use icmp::IcmpSockets;

use crate::config::{ProbeConfig, ProbeKind};
use crate::resolve::Resolver;

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
}

impl Outcome {
    pub fn latency(latency: Duration) -> Self {
        Outcome {
            latency,
            ..Outcome::default()
        }
    }
}

/// The phases of an HTTP probe: the `phase` label.
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
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Resolve,
        Phase::Connect,
        Phase::Tls,
        Phase::Processing,
        Phase::Transfer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Resolve => "resolve",
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Processing => "processing",
            Phase::Transfer => "transfer",
        }
    }
}

/// Time spent per [`Phase`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases([Duration; 5]);

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
}

impl Reason {
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
        }
    }

    /// The reasons a probe kind can produce. Their counters start at zero so that `rate()`
    /// and alerts see the first failure.
    pub fn possible(kind: ProbeKind) -> &'static [Reason] {
        match kind {
            ProbeKind::Icmp => &[
                Reason::Timeout,
                Reason::Unreachable,
                Reason::Resolve,
                Reason::Error,
            ],
            ProbeKind::Tcp => &[
                Reason::Timeout,
                Reason::Refused,
                Reason::Unreachable,
                Reason::Resolve,
                Reason::Tls,
                Reason::Error,
            ],
            ProbeKind::Http => &[
                Reason::Timeout,
                Reason::Refused,
                Reason::Unreachable,
                Reason::Resolve,
                Reason::Tls,
                Reason::HttpStatus,
                Reason::Validation,
                Reason::Error,
            ],
            ProbeKind::Dns => &[
                Reason::Timeout,
                Reason::Refused,
                Reason::Unreachable,
                Reason::Validation,
                Reason::Error,
            ],
        }
    }
}

/// A failed TCP connect as a [`Failure`] with the matching reason.
pub(crate) fn connect_failure(addr: SocketAddr, err: &io::Error) -> Failure {
    use nix::libc;
    let reason = match err.kind() {
        io::ErrorKind::ConnectionRefused => Reason::Refused,
        io::ErrorKind::TimedOut => Reason::Timeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Reason::Unreachable,
        _ => match err.raw_os_error() {
            Some(
                libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EADDRNOTAVAIL
                | libc::EACCES
                | libc::EPERM,
            ) => Reason::Unreachable,
            _ => Reason::Error,
        },
    };
    Failure::new(reason, format!("connect {addr}: {err}"))
}

/// Resources every prober shares: the resolver and the ICMP sockets.
#[derive(Clone, Debug, Default)]
pub struct Shared {
    pub resolver: Resolver,
    pub icmp: IcmpSockets,
}

/// One target's prober, with whatever state it keeps between runs (resolved address).
#[derive(Debug)]
pub enum Probe {
    Icmp(icmp::Icmp),
    Tcp(tcp::Tcp),
    Http(Box<http::Http>),
    Dns(dns::Dns),
}

impl Probe {
    pub fn new(config: &ProbeConfig, shared: &Shared) -> Self {
        match config {
            ProbeConfig::Icmp(c) => Probe::Icmp(icmp::Icmp::new(c, shared)),
            ProbeConfig::Tcp(c) => Probe::Tcp(tcp::Tcp::new(c, shared)),
            ProbeConfig::Http(c) => Probe::Http(Box::new(http::Http::new(c, shared))),
            ProbeConfig::Dns(c) => Probe::Dns(dns::Dns::new(c)),
        }
    }

    /// Runs one probe. Unbounded in time: the caller wraps it in the target's timeout, and
    /// dropping the future cancels it cleanly.
    pub async fn run(&mut self) -> Result<Outcome, Failure> {
        match self {
            Probe::Icmp(p) => p.run().await,
            Probe::Tcp(p) => p.run().await,
            Probe::Http(p) => p.run().await,
            Probe::Dns(p) => p.run().await,
        }
    }

    /// The failure to record when the timeout cancelled [`Probe::run`]: a DNS lookup that
    /// was still running is `resolve`, anything else `timeout`.
    pub fn timed_out(&self, timeout: Duration) -> Failure {
        let resolving = match self {
            Probe::Icmp(p) => p.host().was_resolving(),
            Probe::Tcp(p) => p.host().was_resolving(),
            Probe::Http(p) => p.was_resolving(),
            // The DNS probe's server is an IP address: nothing to resolve.
            Probe::Dns(_) => false,
        };
        let after = humantime::format_duration(timeout);
        if resolving {
            Failure::new(Reason::Resolve, format!("no DNS answer within {after}"))
        } else {
            Failure::new(Reason::Timeout, format!("no answer within {after}"))
        }
    }
}
