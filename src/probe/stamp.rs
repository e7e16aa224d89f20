//! `probe = "stamp"`: a STAMP session-sender (RFC 8762) to a reflector at `address`. Each
//! run sends a train of `train` test packets, waits for their replies, and reports the
//! median round trip as the latency; the per-direction loss, reordering, duplicates, IPDV,
//! one-way delays (only when both clocks claim synchronisation) and TTLs travel in
//! [`Outcome::stamp`]. The sessions' accounting is in [`session`], the wire format in
//! [`packet`], the socket in [`socket`] (shared with the reflector).

pub(crate) mod packet;
mod session;
pub(crate) mod socket;

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::outcome::{Failure, Outcome, Reason, StampReport as Report, is_local, is_unreachable};
use super::resolve::{Host, Resolver};
use crate::config::StampConfig;
use packet::{ErrorEstimate, Key, Mode, Reply, Request, Timestamp};
use session::Session;

/// The reasons a STAMP probe fails with.
pub const REASONS: &[Reason] = &[
    Reason::Timeout,
    Reason::Refused,
    Reason::Unreachable,
    Reason::Resolve,
    Reason::Error,
    Reason::Local,
];

/// The reflector's address, as written.
pub fn endpoint(config: &StampConfig) -> String {
    let mode = if config.key.is_some() {
        " (authenticated)"
    } else {
        ""
    };
    format!("{}:{}{mode}", config.host, config.port)
}

/// Replies are awaited for this share of the target's timeout, so that a train with a lost
/// packet still reports what did come back before the timeout cancels the run.
const WAIT_SHARE: f64 = 0.9;

/// A packet is given up on (lost) this long after it was sent, at least: a reply that comes
/// after the run stopped waiting, but within this, still proves the packet and its reply
/// crossed (it is read at the next run). Keeps a loaded reflector or sender from turning
/// slowness into backward loss.
const GIVE_UP_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Stamp {
    host: Host,
    port: u16,
    resolver: Resolver,
    mode: Mode,
    key: Option<Key>,
    train: u32,
    wait: Duration,
    /// When an unanswered packet counts as lost: the larger of [`GIVE_UP_AFTER`] and three
    /// waits.
    give_up: Duration,
    /// Our clock's claim: the error estimate we send, and its seconds when synchronised.
    error: ErrorEstimate,
    synchronised: Option<f64>,
    ssid: u16,
    socket: Option<(SocketAddr, UdpSocket)>,
    session: Session,
    /// What settled since the last report.
    carried: Report,
}

impl Stamp {
    pub fn new(config: &StampConfig, resolver: &Resolver) -> Self {
        let (error, synchronised) = match config.clock_sync_error {
            Some(error) => (
                ErrorEstimate::synchronised(error),
                ErrorEstimate::synchronised(error).seconds(),
            ),
            None => (ErrorEstimate::UNSYNCHRONISED, None),
        };
        Stamp {
            host: Host::new(&config.host, config.ip_version),
            port: config.port,
            resolver: resolver.clone(),
            mode: if config.key.is_some() {
                Mode::Authenticated
            } else {
                Mode::Unauthenticated
            },
            key: config.key.as_ref().map(|k| Key::new(k.bytes())),
            train: config.train,
            wait: config.wait.mul_f64(WAIT_SHARE),
            give_up: (config.wait * 3).max(GIVE_UP_AFTER),
            error,
            synchronised,
            ssid: rand::random(),
            socket: None,
            session: Session::default(),
            carried: Report::default(),
        }
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The connected socket to `peer`; a new peer (the name resolved elsewhere) is a new
    /// session.
    fn socket(&mut self, peer: SocketAddr) -> Result<&UdpSocket, Failure> {
        if self.socket.as_ref().is_none_or(|(at, _)| *at != peer) {
            let bind: SocketAddr = if peer.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = socket::open(bind)
                .and_then(|s| {
                    s.connect(&peer.into())?;
                    UdpSocket::from_std(s.into())
                })
                .map_err(|err| io_failure(peer, "open a socket to", &err))?;
            self.socket = Some((peer, socket));
            self.session = Session::default();
        }
        Ok(&self.socket.as_ref().expect("just set").1)
    }

    pub async fn run(&mut self) -> Result<Outcome, Failure> {
        let addr = self
            .host
            .address(&self.resolver)
            .await
            .map(|ip| SocketAddr::new(ip, self.port))
            .map_err(|detail| Failure::new(Reason::Resolve, detail))?;
        self.socket(addr)?;
        let started = Instant::now();
        let deadline = started + self.wait;
        let mut buf = vec![0u8; 2048];
        let size = self.mode.size();

        // Replies that came after the last run gave up on them.
        self.drain(&mut buf);

        let mut first = None;
        for _ in 0..self.train {
            let t1 = Timestamp::from_unix(socket::realtime());
            let seq = self.session.send(t1, Instant::now());
            first.get_or_insert(seq);
            let request = Request {
                seq,
                timestamp: t1,
                error: self.error,
                ssid: self.ssid,
            };
            request.encode(self.mode, self.key.as_ref(), &mut buf[..size]);
            let (_, socket) = self.socket.as_ref().expect("opened above");
            if let Err(err) = socket.send(&buf[..size]).await {
                self.session.unsend(seq);
                return Err(io_failure(addr, "send to", &err));
            }
        }
        let first = first.unwrap_or_default();

        let mut rtts = Vec::with_capacity(self.train as usize);
        let mut refused = None;
        while !self.session.all_answered_from(first) {
            let (_, socket) = self.socket.as_ref().expect("opened above");
            match tokio::time::timeout_at(deadline, socket.readable()).await {
                Err(_) => break,
                Ok(Err(err)) => return Err(io_failure(addr, "receive from", &err)),
                Ok(Ok(())) => {}
            }
            match self.receive_one(&mut buf) {
                Ok(Some(rtt)) => rtts.push(rtt),
                Ok(None) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                // An ICMP port unreachable for an earlier packet: nobody listens there.
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    refused = Some(err);
                }
                Err(err) => return Err(io_failure(addr, "receive from", &err)),
            }
        }
        self.session
            .settle(Instant::now().checked_sub(self.give_up).unwrap_or(started));
        self.carried.merge(self.session.take());
        if rtts.is_empty() {
            let mut failure = match refused {
                Some(err) => io_failure(addr, "receive from", &err),
                None => Failure::new(
                    Reason::Timeout,
                    format!(
                        "no STAMP reply from {addr} within {}",
                        humantime::format_duration(self.wait)
                    ),
                ),
            };
            failure.stamp = Some(Box::new(std::mem::take(&mut self.carried)));
            return Err(failure);
        }
        rtts.sort_by(f64::total_cmp);
        let median = rtts[rtts.len() / 2];
        let mut outcome = Outcome::latency(Duration::from_secs_f64(median));
        outcome.stamp = Some(Box::new(std::mem::take(&mut self.carried)));
        Ok(outcome)
    }

    /// Reads whatever is queued without waiting.
    fn drain(&mut self, buf: &mut [u8]) {
        loop {
            match self.receive_one(buf) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(_) => break,
            }
        }
    }

    /// Reads one reply, if one is queued, into the session; its round trip if it answers a
    /// packet still out.
    fn receive_one(&mut self, buf: &mut [u8]) -> io::Result<Option<f64>> {
        let (_, socket) = self.socket.as_ref().expect("opened");
        let datagram = socket.try_io(Interest::READABLE, || {
            socket::receive(&socket.as_raw_fd(), buf)
        })?;
        let t4 = Timestamp::from_unix(datagram.stamp.unwrap_or_else(socket::realtime));
        if datagram.truncated {
            self.session.invalid();
            return Ok(None);
        }
        match Reply::decode(self.mode, &buf[..datagram.len], self.key.as_ref()) {
            Ok(reply) if reply.ssid == self.ssid || reply.ssid == 0 => {
                Ok(self
                    .session
                    .answer(&reply, t4, datagram.ttl, self.synchronised))
            }
            _ => {
                self.session.invalid();
                Ok(None)
            }
        }
    }
}

fn io_failure(addr: SocketAddr, what: &str, err: &io::Error) -> Failure {
    let reason = match err.kind() {
        io::ErrorKind::ConnectionRefused => Reason::Refused,
        _ if is_local(err) => Reason::Local,
        _ if is_unreachable(err) => Reason::Unreachable,
        _ => Reason::Error,
    };
    Failure::new(reason, format!("{what} {addr}: {err}"))
}
