//! Probers: one file per kind, one shape. A probe measures and reports an [`Outcome`] or a
//! [`Failure`]; it never touches metrics, and the caller owns its timeout. Each kind's file
//! owns what is particular to it: its prober, the reasons it can fail with, the phases it
//! times and how its endpoint reads; this file dispatches over the closed set of kinds.
//! Below the probers: the shared ICMP engine ([`pinger`]), name resolution ([`resolve`]) and
//! client TLS ([`tls`]).

mod db;
mod dns;
mod http;
mod icmp;
mod mysql;
mod outcome;
mod pinger;
mod postgres;
mod redis;
pub(crate) mod resolve;
pub(crate) mod stamp;
mod tcp;
pub(crate) mod tls;

use std::time::Duration;

pub use icmp::IcmpSockets;
pub use outcome::{
    BACKWARD, FORWARD, Failure, Outcome, Phase, Reason, ReplicationReport, StampReport,
};

use crate::config::{ProbeConfig, ProbeKind};
#[cfg(test)]
pub use outcome::Phases;
pub use resolve::Host;
use resolve::Resolver;

/// The reasons a probe kind can fail with. Their counters start at zero so that `rate()` and
/// alerts see the first failure.
pub fn reasons(kind: ProbeKind) -> &'static [Reason] {
    match kind {
        ProbeKind::Icmp => icmp::REASONS,
        ProbeKind::Tcp => tcp::REASONS,
        ProbeKind::Http => http::REASONS,
        ProbeKind::Dns => dns::REASONS,
        ProbeKind::Stamp => stamp::REASONS,
        ProbeKind::Postgres | ProbeKind::Mysql | ProbeKind::Redis => db::REASONS,
    }
}

/// The phases a target's probe times (and reports in [`Outcome::phases`]); empty for kinds
/// whose latency is one step.
pub fn phases(config: &ProbeConfig) -> &'static [Phase] {
    match config {
        ProbeConfig::Icmp(_) | ProbeConfig::Tcp(_) | ProbeConfig::Stamp(_) => &[],
        ProbeConfig::Http(_) => http::PHASES,
        ProbeConfig::Dns(c) => dns::phases(c),
        ProbeConfig::Db(c) => db::phases(c),
    }
}

/// What a target probes, in one line and without secrets (status page, API, `rank`).
pub fn endpoint(config: &ProbeConfig) -> String {
    match config {
        ProbeConfig::Icmp(c) => icmp::endpoint(c),
        ProbeConfig::Tcp(c) => tcp::endpoint(c),
        ProbeConfig::Http(c) => http::endpoint(c),
        ProbeConfig::Dns(c) => dns::endpoint(c),
        ProbeConfig::Stamp(c) => stamp::endpoint(c),
        ProbeConfig::Db(c) => db::endpoint(c),
    }
}

/// Resources every prober shares: the resolver and the ICMP sockets.
#[derive(Clone, Debug, Default)]
pub struct Shared {
    pub resolver: Resolver,
    pub icmp: IcmpSockets,
}

/// One target's prober, with whatever state it keeps between runs (resolved address).
///
/// Every kind but ICMP is boxed: the enum is as large as its largest variant, and it lives in
/// each target's task for the target's whole life. With the TCP and DNS probers inline (and the
/// name resolution state inline in [`Host`]) it was 192 bytes; it is 104. A test keeps the
/// task's size in check.
#[derive(Debug)]
pub enum Probe {
    Icmp(icmp::Icmp),
    Tcp(Box<tcp::Tcp>),
    Http(Box<http::Http>),
    Dns(Box<dns::Dns>),
    Stamp(Box<stamp::Stamp>),
    Postgres(Box<db::Db<postgres::Postgres>>),
    Mysql(Box<db::Db<mysql::Mysql>>),
    Redis(Box<db::Db<redis::Redis>>),
}

impl Probe {
    /// `region`: this sidecar's, the key of the heartbeats it writes.
    pub fn new(config: &ProbeConfig, shared: &Shared, region: &str) -> Self {
        match config {
            ProbeConfig::Icmp(c) => Probe::Icmp(icmp::Icmp::new(c, &shared.icmp, &shared.resolver)),
            ProbeConfig::Tcp(c) => Probe::Tcp(Box::new(tcp::Tcp::new(c, &shared.resolver))),
            ProbeConfig::Http(c) => Probe::Http(Box::new(http::Http::new(c, &shared.resolver))),
            ProbeConfig::Dns(c) => Probe::Dns(Box::new(dns::Dns::new(c))),
            ProbeConfig::Stamp(c) => Probe::Stamp(Box::new(stamp::Stamp::new(c, &shared.resolver))),
            ProbeConfig::Db(c) if c.kind == ProbeKind::Postgres => {
                Probe::Postgres(Box::new(db::Db::new(c, &shared.resolver, region)))
            }
            ProbeConfig::Db(c) if c.kind == ProbeKind::Mysql => {
                Probe::Mysql(Box::new(db::Db::new(c, &shared.resolver, region)))
            }
            ProbeConfig::Db(c) => Probe::Redis(Box::new(db::Db::new(c, &shared.resolver, region))),
        }
    }

    /// Runs one probe. Unbounded in time: the caller wraps it in the target's timeout, and
    /// dropping the future cancels it cleanly.
    ///
    /// A future is as large as its largest state, and every target's task holds this one for
    /// its whole life: inline, the HTTP probe's (hyper, TLS, redirects) made each ICMP
    /// target's task 10 KB. The TCP, HTTP and DNS probes run boxed instead (one allocation
    /// per probe, nothing next to opening a connection), so an ICMP task holds only ICMP's.
    pub async fn run(&mut self) -> Result<Outcome, Failure> {
        match self {
            Probe::Icmp(p) => p.run().await,
            Probe::Tcp(p) => Box::pin(p.run()).await,
            Probe::Http(p) => Box::pin(p.run()).await,
            Probe::Dns(p) => Box::pin(p.run()).await,
            Probe::Stamp(p) => Box::pin(p.run()).await,
            Probe::Postgres(p) => Box::pin(p.run()).await,
            Probe::Mysql(p) => Box::pin(p.run()).await,
            Probe::Redis(p) => Box::pin(p.run()).await,
        }
    }

    /// The host name (or address) the probe resolves; `None` for DNS probes, whose server is
    /// an address.
    pub fn host(&self) -> Option<&Host> {
        match self {
            Probe::Icmp(p) => Some(p.host()),
            Probe::Tcp(p) => Some(p.host()),
            Probe::Http(p) => Some(p.host()),
            Probe::Dns(_) => None,
            Probe::Stamp(p) => Some(p.host()),
            Probe::Postgres(p) => Some(p.host()),
            Probe::Mysql(p) => Some(p.host()),
            Probe::Redis(p) => Some(p.host()),
        }
    }

    /// The host of the kinds that may probe every address of a name (`addresses = "all"`).
    pub fn host_mut(&mut self) -> Option<&mut Host> {
        match self {
            Probe::Icmp(p) => Some(p.host_mut()),
            Probe::Tcp(p) => Some(p.host_mut()),
            Probe::Http(p) => Some(p.host_mut()),
            Probe::Dns(_)
            | Probe::Stamp(_)
            | Probe::Postgres(_)
            | Probe::Mysql(_)
            | Probe::Redis(_) => None,
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
            Probe::Stamp(p) => p.host().was_resolving(),
            Probe::Postgres(p) => p.host().was_resolving(),
            Probe::Mysql(p) => p.host().was_resolving(),
            Probe::Redis(p) => p.host().was_resolving(),
        };
        let after = humantime::format_duration(timeout);
        if resolving {
            Failure::new(Reason::Resolve, format!("no DNS answer within {after}"))
        } else {
            Failure::new(Reason::Timeout, format!("no answer within {after}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IpVersion, TcpConfig};

    #[tokio::test]
    async fn a_silent_dns_server_is_reason_resolve_not_timeout() {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        // A name server that receives queries and never answers.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let mut name_server = NameServerConfig::udp(addr.ip());
        name_server.connections[0].port = addr.port();
        let shared = Shared {
            resolver: Resolver::with_config(ResolverConfig::from_name_servers(vec![name_server])),
            ..Shared::default()
        };
        let config = TcpConfig {
            host: "db.regionprobe.test.".into(),
            port: 5432,
            ip_version: IpVersion::Any,
            tls: None,
        };
        let mut probe = Probe::new(&ProbeConfig::Tcp(config), &shared, "local");
        let timeout = std::time::Duration::from_millis(200);
        assert!(tokio::time::timeout(timeout, probe.run()).await.is_err());
        let failure = probe.timed_out(timeout);
        assert_eq!(failure.reason, Reason::Resolve, "{failure}");

        // Once the name resolves from cache or literal, a timeout is a timeout again.
        let mut literal = Probe::new(
            &ProbeConfig::Tcp(TcpConfig {
                host: "127.0.0.1".into(),
                port: 1,
                ip_version: IpVersion::Any,
                tls: None,
            }),
            &shared,
            "local",
        );
        let _ = literal.run().await;
        assert_eq!(literal.timed_out(timeout).reason, Reason::Timeout);
        drop(silent);
    }
}
