//! Probers: one file per protocol, one shape. A probe measures and reports an [`Outcome`] or a
//! [`Failure`]; it never touches metrics, and the scheduler owns its timeout.

mod icmp;
mod tcp;

use std::fmt;
use std::time::Duration;

pub use icmp::IcmpSockets;

use crate::config::{ProbeConfig, ProbeKind};
use crate::resolve::Resolver;

/// A successful probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// ICMP round trip, TCP connect time.
    pub latency: Duration,
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
                Reason::Error,
            ],
        }
    }
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
}

impl Probe {
    pub fn new(config: &ProbeConfig, shared: &Shared) -> Self {
        match config {
            ProbeConfig::Icmp(c) => Probe::Icmp(icmp::Icmp::new(c, shared)),
            ProbeConfig::Tcp(c) => Probe::Tcp(tcp::Tcp::new(c, shared)),
        }
    }

    /// Runs one probe. Unbounded in time: the caller wraps it in the target's timeout, and
    /// dropping the future cancels it cleanly.
    pub async fn run(&mut self) -> Result<Outcome, Failure> {
        match self {
            Probe::Icmp(p) => p.run().await,
            Probe::Tcp(p) => p.run().await,
        }
    }

    /// The failure to record when the timeout cancelled [`Probe::run`]: a DNS lookup that
    /// was still running is `resolve`, anything else `timeout`.
    pub fn timed_out(&self, timeout: Duration) -> Failure {
        let host = match self {
            Probe::Icmp(p) => p.host(),
            Probe::Tcp(p) => p.host(),
        };
        let after = humantime::format_duration(timeout);
        if host.was_resolving() {
            Failure::new(Reason::Resolve, format!("no DNS answer within {after}"))
        } else {
            Failure::new(Reason::Timeout, format!("no answer within {after}"))
        }
    }
}
