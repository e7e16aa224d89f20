//! The ICMP engine: one socket per address family, shared by every ICMP target, and one receive
//! task that hands each reply to the probe waiting for it. surge-ping's packet codec, our own
//! sockets and matching: a reply counts only with the probed peer, identifier, sequence and
//! the request's random token; duplicates and strays are counted, never observed. Why, and the
//! threat model: `docs/icmp.md`.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::socket::{self as nix_socket, ControlMessageOwned, MsgFlags, SockaddrStorage};
use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use surge_ping::{Icmpv4Packet, Icmpv6Packet, SurgeError};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::outcome::{is_local, is_unreachable};

/// Bytes of random token at the start of every echo payload.
const TOKEN_LEN: usize = 8;

/// How long an answered probe is remembered, to tell its duplicates from stray replies.
/// Duplicates come within milliseconds of the original (a duplicating link, a peer that
/// answers twice); a reply this late would have timed out anyway.
const ANSWERED_WINDOW: Duration = Duration::from_secs(5);

/// At most this many answered probes are remembered (the oldest go first): a few hundred KiB
/// at most, whatever the rate. Only answers to our own requests enter, so no peer can fill it
/// faster than we send.
const ANSWERED_MAX: usize = 8192;

/// A datagram socket's `send_to` can fail with the pending error of an ICMP error that
/// arrived meanwhile (another probe's, or forged): we drain and retry this many times in all.
const SEND_ATTEMPTS: u32 = 8;

/// IPv4 or IPv6: one [`Pinger`] each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: &IpAddr) -> Self {
        if addr.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// The `ip_version` label value.
    pub fn label(self) -> &'static str {
        match self {
            IpFamily::V4 => "4",
            IpFamily::V6 => "6",
        }
    }
}

/// Which kind of ICMP socket the kernel gave us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_DGRAM` "ping socket": unprivileged where `net.ipv4.ping_group_range` allows.
    Datagram,
    /// `SOCK_RAW`: needs CAP_NET_RAW.
    Raw,
}

impl SocketKind {
    pub fn label(self) -> &'static str {
        match self {
            SocketKind::Datagram => "datagram",
            SocketKind::Raw => "raw",
        }
    }
}

/// Where the round trip's receive time comes from: the `timestamps` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timestamps {
    /// `SO_TIMESTAMPNS`: the kernel stamps each datagram as it queues it on the socket, so the
    /// receive task's scheduling delay is not part of the round trip.
    Kernel,
    /// The runtime's clock, read after the receive task read the datagram (the kernel refused
    /// `SO_TIMESTAMPNS`).
    User,
}

impl Timestamps {
    pub fn label(self) -> &'static str {
        match self {
            Timestamps::Kernel => "kernel",
            Timestamps::User => "user",
        }
    }
}

/// When a datagram arrived: the runtime's clock read right after the receive task read it,
/// and the kernel's receive stamp (CLOCK_REALTIME, since the epoch) when the socket has one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arrival {
    pub at: Instant,
    pub kernel: Option<Duration>,
}

impl From<Instant> for Arrival {
    fn from(at: Instant) -> Self {
        Arrival { at, kernel: None }
    }
}

/// When a request left: both clocks, read just before `send_to` (the wall clock first).
#[derive(Clone, Copy, Debug)]
struct Departure {
    at: Instant,
    wall: Option<Duration>,
}

impl Departure {
    fn now() -> Self {
        let wall = wall_clock();
        Departure {
            at: Instant::now(),
            wall,
        }
    }
}

/// CLOCK_REALTIME (what `SystemTime` reads on Linux), the clock of the kernel's stamps.
fn wall_clock() -> Option<Duration> {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
}

/// How far a kernel-stamped round trip may exceed the monotonic one before we call the wall
/// clock stepped: the two clock reads before the send are not simultaneous.
const STEP_TOLERANCE: Duration = Duration::from_micros(100);

/// The round trip: the kernel's receive stamp minus the wall clock read before the send when
/// both exist and agree with the monotonic clock, else the monotonic measurement.
///
/// The kernel stamps a reply before the receive task reads it, so its round trip can only be
/// shorter than the monotonic one (receive task's read minus the send). A wall clock stepped
/// backwards between send and receive makes it negative, one stepped forwards longer than the
/// monotonic one: either way it is not a round trip, and the monotonic one is used.
fn round_trip(sent: Departure, arrival: Arrival) -> Duration {
    let monotonic = arrival.at.saturating_duration_since(sent.at);
    match (arrival.kernel, sent.wall) {
        (Some(received), Some(sent)) => match received.checked_sub(sent) {
            Some(kernel) if kernel <= monotonic + STEP_TOLERANCE => kernel.min(monotonic),
            _ => monotonic,
        },
        _ => monotonic,
    }
}

/// What came back for one echo request.
#[derive(Debug, PartialEq)]
pub enum PingError {
    /// An ICMP error (destination unreachable, time exceeded) or a local "no route".
    Unreachable(String),
    /// Anything else that prevented the probe: socket errors, too many probes in flight.
    Other(String),
    /// Our own shortage: no file descriptor or buffer space for the send.
    Local(String),
}

/// Counters the receive task keeps; read by the metrics collector at scrape time.
#[derive(Debug, Default)]
pub struct PingerStats {
    /// Echo replies (or errors) addressed to our socket that no waiting probe claims: late,
    /// forged, or duplicates older than [`ANSWERED_WINDOW`].
    pub unmatched: AtomicU64,
    /// Echo replies (or errors) with the right token for a probe already answered: counted,
    /// never observed again.
    pub duplicate: AtomicU64,
    /// Datagrams read from the socket (raw sockets: after the kernel filter); only a test
    /// reads it, to prove the filter.
    #[cfg(test)]
    pub received: AtomicU64,
    /// Echo requests sent; only a test reads it, to know a request is out.
    #[cfg(test)]
    pub sent: AtomicU64,
}

/// A shared ICMP socket for one address family. Cheap to clone; the receive task stops when
/// the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Pinger {
    inner: Arc<Inner>,
    _recv: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct Inner {
    family: IpFamily,
    kind: SocketKind,
    timestamps: Timestamps,
    socket: UdpSocket,
    /// Our identifier on raw sockets; datagram sockets have theirs rewritten by the kernel.
    ident: u16,
    next_seq: AtomicU16,
    waiters: Mutex<HashMap<(IpAddr, u16), Waiter>>,
    /// Probes answered lately; locked after `waiters` when both are held.
    answered: Mutex<Answered>,
    /// Reports read from the error queue (datagram sockets), by any task.
    errors_read: AtomicU64,
    stats: PingerStats,
}

#[derive(Debug)]
struct Waiter {
    token: [u8; TOKEN_LEN],
    tx: oneshot::Sender<Result<Arrival, PingError>>,
}

/// The `(peer, sequence)` and token of the probes answered in the last [`ANSWERED_WINDOW`],
/// at most [`ANSWERED_MAX`]: what tells a duplicate reply from a stray one.
#[derive(Debug, Default)]
struct Answered {
    by_key: HashMap<(IpAddr, u16), ([u8; TOKEN_LEN], Instant)>,
    /// Oldest first. An entry whose key was answered again since is stale: its removal leaves
    /// the newer answer in `by_key` alone.
    order: VecDeque<((IpAddr, u16), Instant)>,
}

impl Answered {
    fn insert(&mut self, key: (IpAddr, u16), token: [u8; TOKEN_LEN], at: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(_, then)| at.saturating_duration_since(*then) >= ANSWERED_WINDOW)
            || self.order.len() >= ANSWERED_MAX
        {
            self.forget_oldest();
        }
        self.by_key.insert(key, (token, at));
        self.order.push_back((key, at));
        // After a shrinking reload (or a burst), give the room back rather than keep it.
        if self.by_key.capacity() > 4 * self.by_key.len() + 1024 {
            self.by_key.shrink_to(2 * self.by_key.len());
            self.order.shrink_to(2 * self.order.len());
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((key, at)) = self.order.pop_front()
            && let Entry::Occupied(entry) = self.by_key.entry(key)
            && entry.get().1 == at
        {
            entry.remove();
        }
    }

    /// Whether `key` was answered within the window by the request whose token `echoed` (a
    /// reply's payload, or an error's quote) proves to know.
    fn answered(&self, key: (IpAddr, u16), echoed: &Echoed<'_>, now: Instant) -> bool {
        self.by_key.get(&key).is_some_and(|(token, at)| {
            now.saturating_duration_since(*at) < ANSWERED_WINDOW && echoed.proves(token)
        })
    }
}

/// The token bytes a received packet carries back: all of them for an echo reply (its payload
/// must start with the token), whatever the quote holds for an ICMP error.
#[derive(Debug, PartialEq)]
enum Echoed<'a> {
    Reply(&'a [u8]),
    Quote(&'a [u8]),
}

impl Echoed<'_> {
    /// Whether this may answer the request that carried `token`. A quote without a token
    /// byte (RFC 792's minimum) cannot be checked and passes.
    fn matches(&self, token: &[u8; TOKEN_LEN]) -> bool {
        match self {
            Echoed::Reply(payload) => payload.get(..TOKEN_LEN) == Some(&token[..]),
            Echoed::Quote(quoted) => token.starts_with(quoted),
        }
    }

    /// Like [`Echoed::matches`], but a quote must hold at least one token byte: the positive
    /// proof a duplicate needs.
    fn proves(&self, token: &[u8; TOKEN_LEN]) -> bool {
        match self {
            Echoed::Quote([]) => false,
            _ => self.matches(token),
        }
    }
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Pinger {
    /// Opens the family's ICMP socket (datagram if permitted, raw otherwise), with kernel
    /// receive timestamps if the kernel gives them, and starts the receive task. The error
    /// names both attempts so the fix is obvious.
    pub fn open(family: IpFamily) -> io::Result<Self> {
        Self::open_with(family, Timestamps::Kernel)
    }

    /// [`Pinger::open`], asking for `wanted` timestamps: `User` is what a kernel without
    /// `SO_TIMESTAMPNS` leaves us with (tests use it to prove the fallback).
    pub fn open_with(family: IpFamily, wanted: Timestamps) -> io::Result<Self> {
        let (domain, protocol) = match family {
            IpFamily::V4 => (Domain::IPV4, Protocol::ICMPV4),
            IpFamily::V6 => (Domain::IPV6, Protocol::ICMPV6),
        };
        let (socket, kind) = match Socket::new(domain, Type::DGRAM, Some(protocol)) {
            Ok(socket) => (socket, SocketKind::Datagram),
            Err(dgram_err) => match Socket::new(domain, Type::RAW, Some(protocol)) {
                Ok(socket) => (socket, SocketKind::Raw),
                Err(raw_err) => {
                    return Err(io::Error::new(
                        raw_err.kind(),
                        format!(
                            "cannot open an ICMPv{} socket: datagram: {dgram_err} (allow this group in \
                             net.ipv4.ping_group_range); raw: {raw_err} (needs CAP_NET_RAW)",
                            family.label()
                        ),
                    ));
                }
            },
        };
        socket.set_nonblocking(true)?;
        let ident: u16 = rand::random();
        match kind {
            // ICMP errors for ping sockets are only reported through the error queue.
            SocketKind::Datagram => match family {
                IpFamily::V4 => {
                    nix_socket::setsockopt(&socket, nix_socket::sockopt::Ipv4RecvErr, &true)
                }
                IpFamily::V6 => {
                    nix_socket::setsockopt(&socket, nix_socket::sockopt::Ipv6RecvErr, &true)
                }
            }
            .map_err(io::Error::from)?,
            // A raw socket gets a copy of every ICMP packet of the host: let the kernel keep
            // only the replies to our identifier and the errors.
            SocketKind::Raw => {
                socket.attach_filter(&raw_filter(family, ident))?;
                if let Err(err) = block_other_icmp_types(&socket, family) {
                    // The BPF filter still drops them, after the kernel copied each one.
                    tracing::debug!(ip_version = family.label(), error = %err, "no ICMP type filter");
                }
            }
        }
        let timestamps = match wanted {
            Timestamps::Kernel => {
                match nix_socket::setsockopt(
                    &socket,
                    nix_socket::sockopt::ReceiveTimestampns,
                    &true,
                ) {
                    Ok(()) => Timestamps::Kernel,
                    Err(err) => {
                        tracing::warn!(ip_version = family.label(), error = %err,
                            "no kernel receive timestamps (SO_TIMESTAMPNS); ICMP round trips include the receive task's scheduling delay");
                        Timestamps::User
                    }
                }
            }
            Timestamps::User => Timestamps::User,
        };
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
        let inner = Arc::new(Inner {
            family,
            kind,
            timestamps,
            socket,
            ident,
            next_seq: AtomicU16::new(rand::random()),
            waiters: Mutex::new(HashMap::new()),
            answered: Mutex::new(Answered::default()),
            errors_read: AtomicU64::new(0),
            stats: PingerStats::default(),
        });
        // Aborted when the last Pinger clone is dropped (AbortOnDrop).
        let recv = tokio::spawn(receive_loop(inner.clone()));
        Ok(Pinger {
            inner,
            _recv: Arc::new(AbortOnDrop(recv)),
        })
    }

    pub fn kind(&self) -> SocketKind {
        self.inner.kind
    }

    pub fn timestamps(&self) -> Timestamps {
        self.inner.timestamps
    }

    pub fn stats(&self) -> &PingerStats {
        &self.inner.stats
    }

    /// Sends one echo request with `payload_size` bytes of data and waits for its reply.
    /// Not bounded in time: the caller (the scheduler) owns the timeout, and dropping the
    /// future withdraws the request.
    pub async fn ping(&self, peer: IpAddr, payload_size: u16) -> Result<Duration, PingError> {
        let token: [u8; TOKEN_LEN] = rand::random();
        let (tx, rx) = oneshot::channel();
        let registration = self.register(peer, token, tx)?;
        let packet = echo_request(
            self.inner.family,
            self.inner.ident,
            registration.seq,
            &token,
            payload_size,
        );
        let to = SocketAddr::new(peer, 0);
        let mut attempts = 0;
        let sent_at = loop {
            let errors_before = self.inner.errors_read.load(Ordering::Relaxed);
            // Wait for the socket to take a datagram first, so that the clocks are read
            // immediately before the send, not before a wait.
            if let Err(err) = self.inner.socket.writable().await {
                return Err(send_error(err));
            }
            let sent = Departure::now();
            let result = match self.inner.socket.try_send_to(&packet, to) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => result,
            };
            let Err(err) = result else {
                #[cfg(test)]
                self.inner.stats.sent.fetch_add(1, Ordering::Relaxed);
                break sent;
            };
            // On a datagram socket every ICMP error that arrives sets the socket's pending
            // error, and whichever call comes next returns it: possibly this send, failing for
            // an error of *another* probe, or a forged one. Hand the queued errors to their
            // owners and try again. Only a failure with no error report around it is ours (no
            // route, a firewall); one that persists while reports keep arriving is a flood.
            if self.inner.kind != SocketKind::Datagram {
                return Err(send_error(err));
            }
            let drained = self.inner.drain_error_queue();
            if drained == 0 && self.inner.errors_read.load(Ordering::Relaxed) == errors_before {
                return Err(send_error(err));
            }
            attempts += 1;
            if attempts == SEND_ATTEMPTS {
                return Err(PingError::Other(format!(
                    "send: {err} ({attempts} times, while ICMP errors kept arriving)"
                )));
            }
            tokio::task::yield_now().await;
        };
        let answer = rx
            .await
            .map_err(|_| PingError::Other("ICMP receive task stopped".into()))?;
        drop(registration);
        answer.map(|arrival| round_trip(sent_at, arrival))
    }

    fn register(
        &self,
        peer: IpAddr,
        token: [u8; TOKEN_LEN],
        tx: oneshot::Sender<Result<Arrival, PingError>>,
    ) -> Result<Registration<'_>, PingError> {
        let mut waiters = self.inner.waiters.lock().expect("waiters lock");
        // A wrapping counter shared by all targets: only 65,536 requests to the *same* peer in
        // flight at once could exhaust it, and then we say so instead of colliding.
        for _ in 0..=u16::MAX {
            let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
            if let Entry::Vacant(slot) = waiters.entry((peer, seq)) {
                slot.insert(Waiter { token, tx });
                return Ok(Registration {
                    inner: &self.inner,
                    key: (peer, seq),
                    seq,
                    token,
                });
            }
        }
        Err(PingError::Other(format!(
            "65536 ICMP requests to {peer} already in flight"
        )))
    }
}

/// A classic BPF program for a raw ICMP socket: accept echo replies carrying `ident`,
/// destination unreachable and time exceeded (which quote the request deeper in); drop the
/// rest: other processes' pings, our own requests looped back, neighbour discovery. Raw IPv4
/// sockets see the IP header first, raw ICMPv6 sockets the ICMPv6 header.
fn raw_filter(family: IpFamily, ident: u16) -> Vec<SockFilter> {
    const LD_B_ABS: u16 = 0x30; // A = packet[k] (byte)
    const LD_H_ABS: u16 = 0x28; // A = packet[k..k+2]
    const LDX_B_MSH: u16 = 0xb1; // X = 4 * (packet[k] & 0xf): the IPv4 header length
    const LD_B_IND: u16 = 0x50; // A = packet[X + k] (byte)
    const LD_H_IND: u16 = 0x48; // A = packet[X + k..X + k + 2]
    const JEQ: u16 = 0x15; // if A == k jump jt else jf (relative to the next instruction)
    const RET: u16 = 0x06;
    const ACCEPT: u32 = 0x0004_0000;
    let ident = u32::from(ident);
    match family {
        IpFamily::V4 => vec![
            SockFilter::new(LDX_B_MSH, 0, 0, 0),
            SockFilter::new(LD_B_IND, 0, 0, 0),
            SockFilter::new(JEQ, 2, 0, 0), // echo reply: check the identifier
            SockFilter::new(JEQ, 3, 0, 3), // destination unreachable
            SockFilter::new(JEQ, 2, 3, 11), // time exceeded
            SockFilter::new(LD_H_IND, 0, 0, 4),
            SockFilter::new(JEQ, 0, 1, ident),
            SockFilter::new(RET, 0, 0, ACCEPT),
            SockFilter::new(RET, 0, 0, 0),
        ],
        IpFamily::V6 => vec![
            SockFilter::new(LD_B_ABS, 0, 0, 0),
            SockFilter::new(JEQ, 2, 0, 129), // echo reply: check the identifier
            SockFilter::new(JEQ, 3, 0, 1),   // destination unreachable
            SockFilter::new(JEQ, 2, 3, 3),   // time exceeded
            SockFilter::new(LD_H_ABS, 0, 0, 4),
            SockFilter::new(JEQ, 0, 1, ident),
            SockFilter::new(RET, 0, 0, ACCEPT),
            SockFilter::new(RET, 0, 0, 0),
        ],
    }
}

/// The ICMP types a raw socket has a use for: echo reply, destination unreachable, time
/// exceeded (ICMPv4 0, 3, 11; ICMPv6 129, 1, 3).
fn wanted_icmp_types(family: IpFamily) -> [u8; 3] {
    match family {
        IpFamily::V4 => [0, 3, 11],
        IpFamily::V6 => [129, 1, 3],
    }
}

/// Has the kernel drop every other ICMP type before it copies a packet to the raw socket
/// (`ICMP_FILTER`, `ICMP6_FILTER`: raw(7), icmp6(4)). The BPF filter runs only on the copy:
/// without this, each of our own echo requests (the kernel hands a raw socket every ICMP
/// packet of the host, outgoing requests on loopback included) and every neighbour discovery
/// packet was cloned, filtered and freed. Both filters are bitmaps of the types to *block*.
#[allow(unsafe_code)]
fn block_other_icmp_types(socket: &Socket, family: IpFamily) -> io::Result<()> {
    const ICMP_FILTER: libc::c_int = 1; // <linux/icmp.h>
    const ICMP6_FILTER: libc::c_int = 1; // <linux/icmpv6.h>
    let mut blocked = [u32::MAX; 8];
    for kind in wanted_icmp_types(family) {
        blocked[usize::from(kind >> 5)] &= !(1u32 << (kind & 31));
    }
    let (level, name, len) = match family {
        // Only the first word: ICMPv4's filter covers the types below 32 (above, none exist).
        IpFamily::V4 => (libc::SOL_RAW, ICMP_FILTER, 4),
        IpFamily::V6 => (libc::IPPROTO_ICMPV6, ICMP6_FILTER, 32),
    };
    // SAFETY: `blocked` outlives the call and holds at least `len` bytes; the kernel copies
    // them and keeps no pointer.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            blocked.as_ptr().cast(),
            len,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes the waiter when the probe finishes or is cancelled (timeout).
struct Registration<'a> {
    inner: &'a Inner,
    key: (IpAddr, u16),
    seq: u16,
    token: [u8; TOKEN_LEN],
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.inner.waiters.lock()
            && let Entry::Occupied(entry) = waiters.entry(self.key)
            // Once answered, the key may already belong to a newer request.
            && entry.get().token == self.token
        {
            entry.remove();
        }
    }
}

fn send_error(err: io::Error) -> PingError {
    if is_unreachable(&err) {
        PingError::Unreachable(format!("send: {err}"))
    } else if is_local(&err) {
        PingError::Local(format!("send: {err}"))
    } else {
        PingError::Other(format!("send: {err}"))
    }
}

/// Builds an echo request: type, code, checksum, identifier, sequence, then the token and a
/// fill pattern up to `payload_size`.
fn echo_request(
    family: IpFamily,
    ident: u16,
    seq: u16,
    token: &[u8; TOKEN_LEN],
    payload_size: u16,
) -> Vec<u8> {
    let echo_type = match family {
        IpFamily::V4 => 8,
        IpFamily::V6 => 128,
    };
    let mut packet = Vec::with_capacity(8 + payload_size as usize);
    packet.extend_from_slice(&[echo_type, 0, 0, 0]);
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(token);
    packet.extend((TOKEN_LEN..payload_size as usize).map(|i| i as u8));
    // The kernel fills the checksum for datagram and ICMPv6 sockets; raw ICMPv4 needs ours.
    if family == IpFamily::V4 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// RFC 1071 internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What one received datagram means for us.
#[derive(Debug, PartialEq)]
enum Received<'a> {
    /// An echo reply from `peer` carrying `seq` and its payload.
    Reply {
        peer: IpAddr,
        ident: u16,
        seq: u16,
        payload: &'a [u8],
    },
    /// An ICMP error quoting one of our echo requests to `peer`, with the bytes of the token
    /// the quote holds (none to all [`TOKEN_LEN`]).
    Error {
        peer: IpAddr,
        ident: u16,
        seq: u16,
        quoted: &'a [u8],
        what: String,
    },
    /// Our own outgoing requests (raw sockets see them on loopback), neighbour discovery,
    /// and anything else that is not about an echo request.
    Irrelevant,
}

/// Classifies a datagram read from the socket, using surge-ping's decoder.
fn classify<'a>(family: IpFamily, kind: SocketKind, buf: &'a [u8], from: IpAddr) -> Received<'a> {
    let (decoded, header_len) = match (family, from) {
        (IpFamily::V4, IpAddr::V4(src)) => {
            let sock_type = match kind {
                SocketKind::Datagram => Type::DGRAM,
                SocketKind::Raw => Type::RAW,
            };
            // Raw IPv4 sockets deliver the IP header too.
            let ip_header = match kind {
                SocketKind::Raw => buf.first().map(|b| usize::from(b & 0x0f) * 4).unwrap_or(0),
                SocketKind::Datagram => 0,
            };
            let decoded =
                Icmpv4Packet::decode(buf, sock_type, src, Ipv4Addr::UNSPECIFIED).map(|p| {
                    (
                        p.get_icmp_type().0,
                        p.get_icmp_code().0,
                        IpAddr::V4(p.get_real_dest()),
                        p.get_identifier().0,
                        p.get_sequence().0,
                    )
                });
            (decoded, ip_header)
        }
        (IpFamily::V6, IpAddr::V6(src)) => {
            let decoded = Icmpv6Packet::decode(buf, src).map(|p| {
                (
                    p.get_icmpv6_type().0,
                    p.get_icmpv6_code().0,
                    IpAddr::V6(p.get_real_dest()),
                    p.get_identifier().0,
                    p.get_sequence().0,
                )
            });
            (decoded, 0)
        }
        _ => return Received::Irrelevant,
    };
    let (icmp_type, code, peer, ident, seq) = match decoded {
        Ok(fields) => fields,
        Err(SurgeError::EchoRequestPacket) | Err(_) => return Received::Irrelevant,
    };
    match (family, icmp_type) {
        (IpFamily::V4, 0) | (IpFamily::V6, 129) => Received::Reply {
            peer,
            ident,
            seq,
            payload: buf.get(header_len + 8..).unwrap_or(&[]),
        },
        (IpFamily::V4, 3) | (IpFamily::V6, 1) => Received::Error {
            peer,
            ident,
            seq,
            quoted: quoted_token(family, buf.get(header_len..).unwrap_or(&[])),
            what: format!("destination unreachable (code {code}) from {from}"),
        },
        (IpFamily::V4, 11) | (IpFamily::V6, 3) => Received::Error {
            peer,
            ident,
            seq,
            quoted: quoted_token(family, buf.get(header_len..).unwrap_or(&[])),
            what: format!("time exceeded (code {code}) from {from}"),
        },
        _ => Received::Irrelevant,
    }
}

/// The token bytes an ICMP error message (from its ICMP header on) quotes: what follows the
/// quoted echo header, after the quoted IP header (IPv4: its IHL; IPv6: the base header and
/// any extension headers), at most [`TOKEN_LEN`] bytes, possibly none.
fn quoted_token(family: IpFamily, icmp: &[u8]) -> &[u8] {
    let Some(quote) = icmp.get(8..) else {
        return &[];
    };
    let echo = match family {
        IpFamily::V4 => quote.first().map(|b| usize::from(b & 0x0f) * 4),
        IpFamily::V6 => ipv6_upper_layer(quote),
    };
    match echo.and_then(|echo| quote.get(echo + 8..)) {
        Some(after_echo_header) => &after_echo_header[..after_echo_header.len().min(TOKEN_LEN)],
        None => &[],
    }
}

/// The offset of the upper-layer header in an IPv6 packet, past any extension headers (as
/// surge-ping's decoder finds the quoted identifier and sequence).
fn ipv6_upper_layer(packet: &[u8]) -> Option<usize> {
    let mut next = *packet.get(6)?;
    let mut offset = 40;
    // Chains this long are not seen in practice; refuse rather than spin.
    for _ in 0..8 {
        let len = match next {
            // Hop-by-hop, routing, destination options, mobility: 8-octet units past the first.
            0 | 43 | 60 | 135 => (usize::from(*packet.get(offset + 1)?) + 1) * 8,
            // Fragment.
            44 => 8,
            // Authentication header: 4-octet units past the first two.
            51 => (usize::from(*packet.get(offset + 1)?) + 2) * 4,
            _ => return Some(offset),
        };
        next = *packet.get(offset)?;
        offset = offset.checked_add(len)?;
    }
    None
}

async fn receive_loop(inner: Arc<Inner>) {
    // Large enough for the largest echo reply plus an IPv4 header.
    let mut buf = vec![0u8; 65_536 + 60];
    // Datagram sockets report ICMP errors through the error queue, signalled as an error
    // condition (EPOLLERR) that a plain read would not wait for.
    let interest = match inner.kind {
        SocketKind::Datagram => Interest::READABLE | Interest::ERROR,
        SocketKind::Raw => Interest::READABLE,
    };
    loop {
        let ready = match inner.socket.ready(interest).await {
            Ok(ready) => ready,
            Err(err) => {
                tracing::debug!(error = %err, "ICMP socket readiness failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if ready.is_error() {
            // Draining inside try_io lets tokio clear the error readiness once it is empty.
            let _ = inner.socket.try_io(Interest::ERROR, || {
                inner.drain_error_queue();
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
        if !ready.is_readable() {
            continue;
        }
        loop {
            match inner
                .socket
                .try_io(Interest::READABLE, || receive(&inner, &mut buf))
            {
                Ok((len, from, kernel)) => {
                    let arrival = Arrival {
                        at: Instant::now(),
                        kernel,
                    };
                    #[cfg(test)]
                    inner.stats.received.fetch_add(1, Ordering::Relaxed);
                    let received = classify(inner.family, inner.kind, &buf[..len], from);
                    inner.dispatch(received, arrival);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if inner.kind == SocketKind::Datagram => {
                    // The read consumed a pending ICMP error; its details are queued.
                    tracing::trace!(error = %err, "ICMP socket error; draining the error queue");
                    inner.drain_error_queue();
                }
                Err(err) => {
                    tracing::debug!(error = %err, "ICMP receive failed");
                    break;
                }
            }
        }
    }
}

/// Reads one datagram into `buf`: its length, its source, and the kernel's receive stamp if
/// the socket has them on (CLOCK_REALTIME, as a duration since the epoch).
fn receive(inner: &Inner, buf: &mut [u8]) -> io::Result<(usize, IpAddr, Option<Duration>)> {
    let mut control = nix::cmsg_space!(nix::libc::timespec);
    let mut iov = [IoSliceMut::new(buf)];
    let message = nix_socket::recvmsg::<SockaddrStorage>(
        inner.socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let from = message
        .address
        .as_ref()
        .and_then(|addr| {
            addr.as_sockaddr_in()
                .map(|a| IpAddr::V4(a.ip()))
                .or_else(|| addr.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
        })
        .ok_or_else(|| io::Error::other("ICMP datagram without a source address"))?;
    let kernel = message.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|cmsg| match cmsg {
            ControlMessageOwned::ScmTimestampns(stamp) => u64::try_from(stamp.tv_sec())
                .ok()
                .map(|secs| Duration::new(secs, stamp.tv_nsec() as u32)),
            _ => None,
        })
    });
    Ok((message.bytes, from, kernel))
}

impl Inner {
    fn dispatch(&self, received: Received<'_>, arrival: impl Into<Arrival>) {
        let arrival = arrival.into();
        let at = arrival.at;
        let (peer, ident, seq, echoed, outcome) = match received {
            Received::Irrelevant => return,
            Received::Reply {
                peer,
                ident,
                seq,
                payload,
            } => (peer, ident, seq, Echoed::Reply(payload), Ok(arrival)),
            Received::Error {
                peer,
                ident,
                seq,
                quoted,
                what,
            } => (
                peer,
                ident,
                seq,
                Echoed::Quote(quoted),
                Err(PingError::Unreachable(what)),
            ),
        };
        // Raw sockets see every process's ICMP; only our identifier is ours to judge.
        if self.kind == SocketKind::Raw && ident != self.ident {
            return;
        }
        let key = (peer, seq);
        let mut waiters = self.waiters.lock().expect("waiters lock");
        let claimed = match waiters.entry(key) {
            // Taken out of the map: no later packet can reach this probe again.
            Entry::Occupied(entry) if echoed.matches(&entry.get().token) => Some(entry.remove()),
            _ => None,
        };
        let mut answered = self.answered.lock().expect("answered lock");
        let duplicate = match &claimed {
            Some(waiter) => {
                answered.insert(key, waiter.token, at);
                false
            }
            None => answered.answered(key, &echoed, at),
        };
        drop(answered);
        drop(waiters);
        match claimed {
            // The probe may have timed out in the meantime; nothing to do then.
            Some(waiter) => {
                let _ = waiter.tx.send(outcome);
            }
            None if duplicate => {
                self.stats.duplicate.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, seq, "duplicate ICMP answer to a probe already answered");
            }
            None => {
                self.stats.unmatched.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, seq, "ICMP packet matches no waiting probe");
            }
        }
    }

    /// Reads every queued `IP_RECVERR` report: the request we sent comes back with the
    /// original destination as the address and the ICMP type and code in a control message.
    fn drain_error_queue(&self) -> usize {
        let mut drained = 0;
        let fd = self.socket.as_raw_fd();
        let mut data = [0u8; 64];
        // The report (the extended error and the offender's address) and, with timestamps on,
        // a receive stamp before it: without room for both the report is cut off.
        let mut control = nix::cmsg_space!(
            nix::libc::timespec,
            nix::libc::sock_extended_err,
            nix::libc::sockaddr_in6
        );
        loop {
            let mut iov = [IoSliceMut::new(&mut data)];
            let message = match nix_socket::recvmsg::<SockaddrStorage>(
                fd,
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(message) => message,
                Err(_) => return drained,
            };
            let at = Instant::now();
            drained += 1;
            self.errors_read.fetch_add(1, Ordering::Relaxed);
            let peer = message.address.as_ref().and_then(|addr| {
                addr.as_sockaddr_in()
                    .map(|a| IpAddr::V4(a.ip()))
                    .or_else(|| addr.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
            });
            let what = message.cmsgs().ok().and_then(|mut cmsgs| {
                cmsgs.find_map(|cmsg| match cmsg {
                    ControlMessageOwned::Ipv4RecvErr(err, _)
                    | ControlMessageOwned::Ipv6RecvErr(err, _) => Some(describe_queued_error(&err)),
                    _ => None,
                })
            });
            // The report's data is the quoted request from its ICMP header on, as much of it
            // as the error carried (and fits in `data`).
            let bytes = message.bytes.min(data.len());
            if let (Some(peer), Some(what), true) = (peer, what, bytes >= 8) {
                let seq = u16::from_be_bytes([data[6], data[7]]);
                let ident = u16::from_be_bytes([data[4], data[5]]);
                let quoted = &data[8..bytes.min(8 + TOKEN_LEN)];
                self.dispatch(
                    Received::Error {
                        peer,
                        ident,
                        seq,
                        quoted,
                        what,
                    },
                    at,
                );
            }
        }
    }
}

fn describe_queued_error(err: &nix::libc::sock_extended_err) -> String {
    const ORIGIN_ICMP: u8 = 2;
    const ORIGIN_ICMP6: u8 = 3;
    let errno = nix::errno::Errno::from_raw(err.ee_errno as i32);
    match err.ee_origin {
        ORIGIN_ICMP | ORIGIN_ICMP6 => format!(
            "{} (ICMP type {} code {})",
            errno.desc(),
            err.ee_type,
            err.ee_code
        ),
        _ => format!("{} (local)", errno.desc()),
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_echo_request() {
        // Words 0800 0000 1234 0001 6162 sum to 7b97; the complement is 8468.
        let mut packet = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'a', b'b'];
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
        // A packet with its checksum in place sums to zero.
        assert_eq!(checksum(&packet), 0);
        assert_eq!(sum, 0x8468);
    }

    #[test]
    fn echo_request_has_token_and_requested_size() {
        let token = [1, 2, 3, 4, 5, 6, 7, 8];
        let packet = echo_request(IpFamily::V4, 7, 9, &token, 56);
        assert_eq!(packet.len(), 64);
        assert_eq!(&packet[4..8], &[0, 7, 0, 9]);
        assert_eq!(&packet[8..16], &token);
        assert_eq!(checksum(&packet), 0);
        assert_eq!(echo_request(IpFamily::V6, 7, 9, &token, 16)[0], 128);
    }

    fn reply_v4(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut packet = echo_request(IpFamily::V4, 0x4242, seq, &[0; 8], 0);
        packet.truncate(8);
        packet[0] = 0;
        packet.extend_from_slice(payload);
        packet
    }

    #[test]
    fn classify_datagram_reply_exposes_payload() {
        let packet = reply_v4(5, b"tokentok-rest");
        let from: IpAddr = "192.0.2.7".parse().unwrap();
        match classify(IpFamily::V4, SocketKind::Datagram, &packet, from) {
            Received::Reply {
                peer, seq, payload, ..
            } => {
                assert_eq!(peer, from);
                assert_eq!(seq, 5);
                assert_eq!(payload, b"tokentok-rest");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn classify_ignores_echo_requests() {
        let packet = echo_request(IpFamily::V4, 1, 1, &[0; 8], 16);
        let from: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            classify(IpFamily::V4, SocketKind::Datagram, &packet, from),
            Received::Irrelevant
        );
    }

    #[test]
    fn classify_unreachable_routes_to_the_quoted_destination() {
        // Type 3 code 1 from a router, quoting an IPv4 header to 198.51.100.9 and our request.
        let mut packet = vec![3, 1, 0, 0, 0, 0, 0, 0];
        let mut ip = vec![
            0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 198, 51, 100, 9,
        ];
        ip.extend_from_slice(&[8, 0, 0, 0, 0x42, 0x42, 0x01, 0x02]);
        packet.extend_from_slice(&ip);
        let router: IpAddr = "10.0.0.254".parse().unwrap();
        match classify(IpFamily::V4, SocketKind::Datagram, &packet, router) {
            Received::Error {
                peer,
                ident,
                seq,
                quoted,
                what,
            } => {
                assert_eq!(peer, "198.51.100.9".parse::<IpAddr>().unwrap());
                assert_eq!((ident, seq), (0x4242, 0x0102));
                assert!(quoted.is_empty(), "an RFC 792-minimal quote holds no token");
                assert!(what.contains("unreachable"), "{what}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn reply_without_the_token_does_not_satisfy_the_probe() {
        let Ok(pinger) = Pinger::open(IpFamily::V4) else {
            eprintln!("SKIP: no ICMP socket available to this user");
            return;
        };
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let (tx, mut rx) = oneshot::channel();
        let registration = pinger.register(peer, [9; 8], tx).unwrap();
        let seq = registration.seq;
        let ident = pinger.inner.ident;
        let forged = Received::Reply {
            peer,
            ident,
            seq,
            payload: &[0; 8],
        };
        pinger.inner.dispatch(forged, Instant::now());
        assert!(
            rx.try_recv().is_err(),
            "a forged reply must not complete the probe"
        );
        assert_eq!(pinger.stats().unmatched.load(Ordering::Relaxed), 1);
        let genuine = Received::Reply {
            peer,
            ident,
            seq,
            payload: &[9; 8],
        };
        pinger.inner.dispatch(genuine, Instant::now());
        assert!(rx.try_recv().unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_duplicate_is_counted_once_and_never_answers_again() {
        let Ok(pinger) = Pinger::open(IpFamily::V4) else {
            eprintln!("SKIP: no ICMP socket available to this user");
            return;
        };
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let ident = pinger.inner.ident;
        let (tx, mut rx) = oneshot::channel();
        let registration = pinger.register(peer, [7; 8], tx).unwrap();
        let seq = registration.seq;
        let reply = |payload| Received::Reply {
            peer,
            ident,
            seq,
            payload,
        };
        let first = Instant::now();
        pinger.inner.dispatch(reply(&[7; 8]), first);
        assert_eq!(rx.try_recv().unwrap().unwrap().at, first);
        // The same reply again, and once more with a forged token: one duplicate, one stray.
        pinger.inner.dispatch(reply(&[7; 8]), Instant::now());
        pinger.inner.dispatch(reply(&[1; 8]), Instant::now());
        // An error quoting the request without any token byte proves nothing: stray.
        let error = Received::Error {
            peer,
            ident,
            seq,
            quoted: &[],
            what: "forged".into(),
        };
        pinger.inner.dispatch(error, Instant::now());
        let stats = pinger.stats();
        assert_eq!(stats.duplicate.load(Ordering::Relaxed), 1);
        assert_eq!(stats.unmatched.load(Ordering::Relaxed), 2);
        // Past the window a duplicate is indistinguishable from a stray reply.
        pinger.inner.dispatch(
            reply(&[7; 8]),
            first + ANSWERED_WINDOW + Duration::from_millis(1),
        );
        assert_eq!(stats.duplicate.load(Ordering::Relaxed), 1);
        assert_eq!(stats.unmatched.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn answered_probes_are_bounded_in_number_and_time() {
        let mut answered = Answered::default();
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let start = Instant::now();
        for seq in 0..=u16::try_from(ANSWERED_MAX).unwrap() {
            answered.insert((peer, seq), [1; 8], start);
        }
        assert_eq!(answered.order.len(), ANSWERED_MAX);
        assert_eq!(answered.by_key.len(), ANSWERED_MAX);
        // The oldest went first.
        assert!(!answered.answered((peer, 0), &Echoed::Reply(&[1; 8]), start));
        assert!(answered.answered((peer, 1), &Echoed::Reply(&[1; 8]), start));
        // A partial quote proves the token it holds; the wrong bytes do not.
        assert!(answered.answered((peer, 1), &Echoed::Quote(&[1, 1]), start));
        assert!(!answered.answered((peer, 1), &Echoed::Quote(&[1, 2]), start));
        // Everything expires after the window, and the next insert forgets it.
        let later = start + ANSWERED_WINDOW;
        assert!(!answered.answered((peer, 1), &Echoed::Reply(&[1; 8]), later));
        answered.insert((peer, 1), [2; 8], later);
        assert_eq!(answered.order.len(), 1);
        assert!(answered.answered((peer, 1), &Echoed::Reply(&[2; 8]), later));
        // The room of the burst goes back once it expired.
        assert!(
            answered.by_key.capacity() < 2048,
            "{}",
            answered.by_key.capacity()
        );
        assert!(
            answered.order.capacity() < 2048,
            "{}",
            answered.order.capacity()
        );
    }

    #[test]
    fn quoted_tokens_are_found_past_ipv4_options_and_ipv6_extension_headers() {
        let token = [0xa5; TOKEN_LEN];
        let echo = [8, 0, 0, 0, 0x42, 0x42, 0, 1];
        // IPv4 with 4 bytes of options (IHL 6), the echo header and 5 of the 8 token bytes.
        let mut v4 = vec![3, 1, 0, 0, 0, 0, 0, 0];
        v4.extend_from_slice(&[0x46; 1]);
        v4.extend_from_slice(&[0; 23]);
        v4.extend_from_slice(&echo);
        v4.extend_from_slice(&token[..5]);
        assert_eq!(quoted_token(IpFamily::V4, &v4), &token[..5]);
        // IPv6 with a hop-by-hop header (8 bytes) before the echo request, and more than the
        // token after it.
        let mut v6 = vec![1, 0, 0, 0, 0, 0, 0, 0];
        let mut ip = vec![0x60, 0, 0, 0, 0, 16, 0, 64];
        ip.extend_from_slice(&[0; 32]);
        v6.extend_from_slice(&ip);
        v6.extend_from_slice(&[58, 0, 0, 0, 0, 0, 0, 0]);
        v6.extend_from_slice(&[128, 0, 0, 0, 0x42, 0x42, 0, 1]);
        v6.extend_from_slice(&token);
        v6.extend_from_slice(&[0; 32]);
        assert_eq!(quoted_token(IpFamily::V6, &v6), &token[..]);
        // Truncated anywhere: no token, never a panic.
        for len in 0..v6.len() {
            let _ = quoted_token(IpFamily::V6, &v6[..len]);
            let _ = quoted_token(IpFamily::V4, &v4[..len.min(v4.len())]);
        }
        assert!(quoted_token(IpFamily::V6, &v6[..56]).is_empty());
    }

    /// The kernel hands a raw ICMP socket every ICMP packet of the host, our own echo requests
    /// looped back included; with the type filter, and no BPF filter, only the wanted types
    /// arrive: the reply to our request, never the request itself.
    #[test]
    fn the_type_filter_keeps_our_own_requests_out() {
        use std::io::Read;
        let Ok(socket) = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) else {
            eprintln!("SKIP: a raw ICMP socket needs CAP_NET_RAW");
            return;
        };
        block_other_icmp_types(&socket, IpFamily::V4).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let request = echo_request(IpFamily::V4, rand::random(), 1, &[7; TOKEN_LEN], 16);
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        socket.send_to(&request, &to.into()).unwrap();
        // Everything that arrives within the timeout (other processes' ICMP too).
        let mut types = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(len) = (&socket).read(&mut buf) {
            let header = usize::from(buf[0] & 0x0f) * 4;
            if len > header {
                types.push(buf[header]);
            }
        }
        assert!(types.contains(&0), "the echo reply passes: {types:?}");
        assert!(
            types
                .iter()
                .all(|t| wanted_icmp_types(IpFamily::V4).contains(t)),
            "only echo replies and errors reach the socket: {types:?}"
        );
    }

    #[tokio::test]
    async fn only_our_replies_reach_the_receive_task() {
        let Ok(pinger) = Pinger::open(IpFamily::V4) else {
            eprintln!("SKIP: no ICMP socket available to this user");
            return;
        };
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..20 {
            pinger.ping(loopback, 56).await.unwrap();
        }
        // A raw socket without its filter would also read the 20 requests looped back.
        assert_eq!(
            pinger.stats().received.load(Ordering::Relaxed),
            20,
            "{:?} socket",
            pinger.kind()
        );
    }

    /// Pings `peer` from a one-thread runtime whose only thread is blocked for `BLOCKED` while
    /// the reply comes back: the receive task reads it only afterwards. Returns the socket
    /// kind, the timestamps in use and the round trip, or `None` (after saying why) where no
    /// ICMP socket or no such loopback address is available.
    async fn ping_with_a_blocked_receive_task(
        family: IpFamily,
        wanted: Timestamps,
    ) -> Option<(SocketKind, Timestamps, Duration)> {
        let peer: IpAddr = match family {
            IpFamily::V4 => "127.0.0.1".parse().unwrap(),
            IpFamily::V6 => "::1".parse().unwrap(),
        };
        if family == IpFamily::V6 && std::net::UdpSocket::bind("[::1]:0").is_err() {
            eprintln!("SKIP: no IPv6 loopback here");
            return None;
        }
        let Ok(pinger) = Pinger::open_with(family, wanted) else {
            eprintln!("SKIP: no ICMP socket available to this user");
            return None;
        };
        // The first socket with timestamps on enables the kernel's stamping from a work queue:
        // until then it stamps datagrams only when they are read. One round trip and a pause
        // let it start, as it has long before any probe of a running exporter.
        pinger.ping(peer, 56).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let probe = tokio::spawn({
            let pinger = pinger.clone();
            async move { pinger.ping(peer, 56).await }
        });
        // Let the probe send its request (the receive task then waits for readiness) ...
        while pinger.stats().sent.load(Ordering::Relaxed) < 2 {
            tokio::task::yield_now().await;
        }
        // ... and hold the runtime's only thread while the reply arrives: with user-space
        // receive times this delay is part of the round trip.
        std::thread::sleep(BLOCKED);
        let rtt = probe.await.unwrap().unwrap();
        assert_eq!(pinger.stats().received.load(Ordering::Relaxed), 2);
        Some((pinger.kind(), pinger.timestamps(), rtt))
    }

    const BLOCKED: Duration = Duration::from_millis(300);

    /// Every (socket kind, family) the machine offers: as root, datagram and raw sockets in a
    /// network namespace of their own (a thread that `unshare`s one, with `lo` only and
    /// `ping_group_range` set for the kind); otherwise whatever this namespace gives.
    fn blocked_receive_round_trips(wanted: Timestamps) -> Vec<(SocketKind, Timestamps, Duration)> {
        let all_families = move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut results = Vec::new();
                    for family in [IpFamily::V4, IpFamily::V6] {
                        results.extend(ping_with_a_blocked_receive_task(family, wanted).await);
                    }
                    results
                })
        };
        if !regionprobe_testkit::black_box::is_root() {
            eprintln!("NOTE: not root: only the socket kind this user gets is tested");
            return all_families();
        }
        let mut results = Vec::new();
        for (kind, range) in [
            (SocketKind::Datagram, "0 2147483647"),
            (SocketKind::Raw, "1 0"),
        ] {
            let got = std::thread::spawn(move || {
                // This thread, and the processes it starts, move to a new namespace; the test
                // process's other threads stay where they are.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
                regionprobe_testkit::black_box::run(&["ip", "link", "set", "lo", "up"]);
                // Written by a child process, which is in the new namespace for sure.
                regionprobe_testkit::black_box::run(&[
                    "sh",
                    "-c",
                    r#"printf '%s\n' "$1" > /proc/sys/net/ipv4/ping_group_range"#,
                    "sh",
                    range,
                ]);
                all_families()
            })
            .join()
            .unwrap();
            assert!(
                !got.is_empty(),
                "no {kind:?} ICMP socket in a namespace of our own"
            );
            assert!(got.iter().all(|(k, _, _)| *k == kind), "{got:?}");
            results.extend(got);
        }
        results
    }

    /// The mechanism, not a timing: a loopback reply takes microseconds, the blocked thread
    /// 300 ms. Only a receive time taken by the kernel keeps the block out of the round trip
    /// (100 ms of margin for a loaded machine: the kernel stamps while the thread sleeps).
    #[test]
    fn kernel_receive_timestamps_leave_the_receive_task_delay_out() {
        for (kind, timestamps, rtt) in blocked_receive_round_trips(Timestamps::Kernel) {
            assert_eq!(timestamps, Timestamps::Kernel, "{kind:?}");
            assert!(
                rtt < Duration::from_millis(100),
                "{kind:?}: {rtt:?} includes the blocked receive task"
            );
        }
    }

    /// Without kernel stamps the prober still works, on the runtime's clock: the same round
    /// trip now contains the block (which is what proves the test above discriminates).
    #[test]
    fn without_kernel_timestamps_the_receive_task_clock_is_used() {
        for (kind, timestamps, rtt) in blocked_receive_round_trips(Timestamps::User) {
            assert_eq!(timestamps, Timestamps::User, "{kind:?}");
            assert!(rtt >= BLOCKED, "{kind:?}: {rtt:?}");
        }
    }

    #[test]
    fn a_stepped_wall_clock_falls_back_to_the_monotonic_round_trip() {
        let sent_at = Instant::now();
        let wall = Duration::from_secs(1_700_000_000);
        let sent = Departure {
            at: sent_at,
            wall: Some(wall),
        };
        let arrival = |mono_ms: u64, kernel: Option<Duration>| Arrival {
            at: sent_at + Duration::from_millis(mono_ms),
            kernel,
        };
        let ms = Duration::from_millis;
        // The kernel's stamp: 50 ms, although the receive task read the reply 2 ms later.
        assert_eq!(round_trip(sent, arrival(52, Some(wall + ms(50)))), ms(50));
        // No stamp (a kernel without SO_TIMESTAMPNS): the monotonic clocks.
        assert_eq!(round_trip(sent, arrival(52, None)), ms(52));
        // Wall clock stepped back by a second: negative; forward: longer than possible.
        assert_eq!(round_trip(sent, arrival(52, Some(wall - ms(950)))), ms(52));
        assert_eq!(round_trip(sent, arrival(52, Some(wall + ms(1050)))), ms(52));
        // No wall clock at the send (before the epoch): the monotonic clocks.
        let unset = Departure {
            at: sent_at,
            wall: None,
        };
        assert_eq!(round_trip(unset, arrival(52, Some(wall + ms(50)))), ms(52));
    }

    #[tokio::test]
    async fn concurrent_probes_of_one_host_get_distinct_sequences() {
        let Ok(pinger) = Pinger::open(IpFamily::V4) else {
            eprintln!("SKIP: no ICMP socket available to this user");
            return;
        };
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..1000 {
            let (tx, _rx) = oneshot::channel();
            held.push(pinger.register(peer, [0; 8], tx).unwrap());
        }
        let mut seqs: Vec<u16> = held.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 1000);
        drop(held);
        assert!(
            pinger.inner.waiters.lock().unwrap().is_empty(),
            "registrations clean up on drop"
        );
    }
}
