//! `probe = "icmp"`: echo request to `host`, latency is the round trip.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::outcome::{Failure, Outcome, Reason};
use super::pinger::{IpFamily, PingError, Pinger, SocketKind, Timestamps};
use super::resolve::{Host, Resolver};
use crate::config::IcmpConfig;

/// The reasons an ICMP probe fails with.
pub const REASONS: &[Reason] = &[
    Reason::Timeout,
    Reason::Unreachable,
    Reason::Resolve,
    Reason::Error,
    Reason::Local,
];

/// The host, as written.
pub fn endpoint(config: &IcmpConfig) -> String {
    config.host.clone()
}

/// After a failed socket open (no permission), wait this long before trying again, so a fixed
/// `ping_group_range` or an added capability takes effect without a restart.
const REOPEN_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Icmp {
    host: Host,
    payload_size: u16,
    resolver: Resolver,
    sockets: IcmpSockets,
}

impl Icmp {
    pub fn new(config: &IcmpConfig, sockets: &IcmpSockets, resolver: &Resolver) -> Self {
        Icmp {
            host: Host::new(&config.host, config.ip_version),
            payload_size: config.payload_size,
            resolver: resolver.clone(),
            sockets: sockets.clone(),
        }
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn host_mut(&mut self) -> &mut Host {
        &mut self.host
    }

    pub async fn run(&mut self) -> Result<Outcome, Failure> {
        let addr = self
            .host
            .address(&self.resolver)
            .await
            .map_err(|detail| Failure::new(Reason::Resolve, detail))?;
        let pinger = self
            .sockets
            .get(IpFamily::of(&addr))
            .map_err(|detail| Failure::new(Reason::Local, detail))?;
        match pinger.ping(addr, self.payload_size).await {
            Ok(latency) => Ok(Outcome::latency(latency)),
            Err(PingError::Unreachable(detail)) => Err(Failure::new(Reason::Unreachable, detail)),
            Err(PingError::Local(detail)) => Err(Failure::new(Reason::Local, detail)),
            Err(PingError::Other(detail)) => Err(Failure::new(Reason::Error, detail)),
        }
    }
}

/// The two shared ICMP sockets (one per family), opened on first use.
#[derive(Clone, Debug, Default)]
pub struct IcmpSockets {
    v4: Arc<Mutex<Slot>>,
    v6: Arc<Mutex<Slot>>,
}

#[derive(Debug, Default)]
enum Slot {
    #[default]
    Untried,
    Open(Pinger),
    Failed {
        at: Instant,
        error: String,
    },
}

/// What the metrics report about one family's socket.
#[derive(Debug)]
pub struct SocketState {
    pub family: IpFamily,
    /// `None` while unopened or unavailable.
    pub kind: Option<SocketKind>,
    /// Where its round trips' receive times come from (`None` while unopened).
    pub timestamps: Option<Timestamps>,
    pub unmatched: u64,
    pub duplicate: u64,
}

impl IcmpSockets {
    fn slot(&self, family: IpFamily) -> &Mutex<Slot> {
        match family {
            IpFamily::V4 => &self.v4,
            IpFamily::V6 => &self.v6,
        }
    }

    /// The family's pinger, opening it if needed. Logs the socket kind actually obtained.
    pub fn get(&self, family: IpFamily) -> Result<Pinger, String> {
        let mut slot = self.slot(family).lock().expect("icmp slot lock");
        match &*slot {
            Slot::Open(pinger) => return Ok(pinger.clone()),
            Slot::Failed { at, error } if at.elapsed() < REOPEN_AFTER => return Err(error.clone()),
            _ => {}
        }
        match Pinger::open(family) {
            Ok(pinger) => {
                tracing::info!(
                    ip_version = family.label(),
                    socket = pinger.kind().label(),
                    timestamps = pinger.timestamps().label(),
                    "ICMP socket open"
                );
                *slot = Slot::Open(pinger.clone());
                Ok(pinger)
            }
            Err(err) => {
                let error = err.to_string();
                if !matches!(&*slot, Slot::Failed { error: previous, .. } if *previous == error) {
                    tracing::warn!(ip_version = family.label(), %error, "ICMP unavailable; see README, ICMP permissions");
                }
                *slot = Slot::Failed {
                    at: Instant::now(),
                    error: error.clone(),
                };
                Err(error)
            }
        }
    }

    pub fn states(&self) -> [SocketState; 2] {
        [IpFamily::V4, IpFamily::V6].map(|family| {
            let slot = self.slot(family).lock().expect("icmp slot lock");
            match &*slot {
                Slot::Open(pinger) => SocketState {
                    family,
                    kind: Some(pinger.kind()),
                    timestamps: Some(pinger.timestamps()),
                    unmatched: pinger.stats().unmatched.load(Ordering::Relaxed),
                    duplicate: pinger.stats().duplicate.load(Ordering::Relaxed),
                },
                _ => SocketState {
                    family,
                    kind: None,
                    timestamps: None,
                    unmatched: 0,
                    duplicate: 0,
                },
            }
        })
    }
}
