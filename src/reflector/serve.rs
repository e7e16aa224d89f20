//! The reflector's loop: one thread, one socket, and what it remembers of each sender (rate
//! limit) and each session (sequence number, replay window). Every datagram gets exactly one
//! outcome: reflected, refused or dropped, with the reason.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::Socket;
use tokio::time::Instant;

use super::counts::{Counts, Outcome};
use crate::config::ReflectorConfig;
use crate::probe::stamp::packet::{ErrorEstimate, Key, Malformed, Mode, Reply, Request, Timestamp};
use crate::probe::stamp::socket::{self, Datagram};

/// Requests longer than this are dropped as `oversized` (a base packet with RFC 8972 TLVs
/// fits many times over); the receive buffer is one byte longer, to see the excess.
pub const MAX_REQUEST: usize = 2048;
/// Senders (addresses) and sessions remembered at most; past that, new ones are refused
/// (`capacity`) until idle ones age out. Bounds memory under spoofed floods.
const MAX_SENDERS: usize = 4096;
const MAX_SESSIONS: usize = 16_384;
/// A session idle this long is forgotten (its next packet starts a new one).
const SESSION_IDLE: Duration = Duration::from_secs(300);
/// A rate-limit bucket idle this long is full again anyway: forget it.
const SENDER_IDLE: Duration = Duration::from_secs(10);
/// How often the thread looks at its stop flag when nothing arrives.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
struct Session {
    /// The reflector's sequence number for its next reply.
    next_seq: u32,
    last: Instant,
    /// Authenticated mode: the highest sender sequence seen and a bitmap of the 64 below it.
    highest: Option<u32>,
    window: u64,
}

impl Session {
    /// Whether `seq` was seen before (or is too old to tell): a replay in authenticated mode.
    fn replayed(&mut self, seq: u32) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            self.window = 1;
            return false;
        };
        if seq > highest {
            let shift = seq - highest;
            self.window = if shift >= 64 { 0 } else { self.window << shift };
            self.window |= 1;
            self.highest = Some(seq);
            return false;
        }
        let behind = highest - seq;
        if behind >= 64 || self.window & (1 << behind) != 0 {
            return true;
        }
        self.window |= 1 << behind;
        false
    }
}

/// The reflector's state, owned by its thread.
pub(super) struct Reflector {
    socket: Socket,
    config: ReflectorConfig,
    mode: Mode,
    key: Option<Key>,
    error: ErrorEstimate,
    /// Counters per allow-list entry (by index), and for senders outside the list.
    counts: Vec<Arc<Counts>>,
    unknown: Arc<Counts>,
    senders: HashMap<IpAddr, Bucket>,
    sessions: HashMap<(SocketAddr, u16), Session>,
    /// Full tables are swept for idle entries at most once a second, so a flood of new
    /// (spoofed) senders costs a lookup per packet, not a sweep.
    swept: Option<Instant>,
}

impl Reflector {
    pub(super) fn new(
        socket: Socket,
        config: ReflectorConfig,
        counts: Vec<Arc<Counts>>,
        unknown: Arc<Counts>,
    ) -> io::Result<Self> {
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(POLL))?;
        let key = config.key.as_ref().map(|k| Key::new(k.bytes()));
        Ok(Reflector {
            socket,
            mode: if key.is_some() {
                Mode::Authenticated
            } else {
                Mode::Unauthenticated
            },
            key,
            error: config
                .clock_sync_error
                .map_or(ErrorEstimate::UNSYNCHRONISED, ErrorEstimate::synchronised),
            config,
            counts,
            unknown,
            senders: HashMap::new(),
            sessions: HashMap::new(),
            swept: None,
        })
    }

    /// Answers until `stop` is set.
    pub(super) fn run(mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; MAX_REQUEST + 1];
        let mut out = vec![0u8; self.mode.size()];
        while !stop.load(Ordering::Relaxed) {
            match socket::receive_blocking(&self.socket, &mut buf) {
                Ok(datagram) => self.handle(&datagram, &buf, &mut out),
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(err) => {
                    tracing::debug!(error = %err, "STAMP reflector receive failed");
                }
            }
        }
    }

    fn handle(&mut self, datagram: &Datagram, buf: &[u8], out: &mut [u8]) {
        let t2 = datagram.stamp.unwrap_or_else(socket::realtime);
        let now = Instant::now();
        let from = datagram.from;
        let Some(index) = self
            .config
            .allow
            .iter()
            .position(|entry| entry.network.contains(&from.ip()))
        else {
            self.unknown.add(Outcome::NotAllowed);
            return;
        };
        let counts = self.counts[index].clone();
        if let Err(outcome) = self.admit(from.ip(), now) {
            counts.add(outcome);
            return;
        }
        if datagram.truncated || datagram.len > MAX_REQUEST {
            counts.add(Outcome::Oversized);
            return;
        }
        let request = match Request::decode(self.mode, &buf[..datagram.len], self.key.as_ref()) {
            Ok(request) => request,
            Err(Malformed::Truncated) => return counts.add(Outcome::Truncated),
            Err(Malformed::BadHmac) => return counts.add(Outcome::BadHmac),
        };
        let authenticated = self.mode == Mode::Authenticated;
        let session = match self.session(from, request.ssid, now) {
            Some(session) => session,
            None => return counts.add(Outcome::Capacity),
        };
        // Unauthenticated senders see network duplicates as such (the sender counts them);
        // an authenticated session refuses to answer the same packet twice.
        if authenticated && session.replayed(request.seq) {
            return counts.add(Outcome::Replayed);
        }
        let seq = session.next_seq;
        session.next_seq = seq.wrapping_add(1);
        let reply = Reply {
            seq,
            timestamp: Timestamp::from_unix(socket::realtime()),
            error: self.error,
            ssid: request.ssid,
            receive: Timestamp::from_unix(t2),
            sender_seq: request.seq,
            sender_timestamp: request.timestamp,
            sender_error: request.error,
            sender_ttl: datagram.ttl.unwrap_or(0),
        };
        // Never longer than the request: the base packet of its own mode, whatever followed.
        reply.encode(self.mode, self.key.as_ref(), out);
        match self.socket.send_to(out, &from.into()) {
            Ok(_) => counts.add(Outcome::Reflected),
            Err(_) => counts.add(Outcome::SendError),
        }
    }

    /// The sender's token bucket: `rate_limit` packets a second, bursts of as many.
    fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Outcome> {
        let rate = f64::from(self.config.rate_limit);
        if !self.senders.contains_key(&ip) && self.senders.len() >= MAX_SENDERS {
            if self.sweep_due(now) {
                self.senders
                    .retain(|_, bucket| now.duration_since(bucket.last) < SENDER_IDLE);
            }
            if self.senders.len() >= MAX_SENDERS {
                return Err(Outcome::Capacity);
            }
        }
        let bucket = self.senders.entry(ip).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.last = now;
        if bucket.tokens < 1.0 {
            return Err(Outcome::RateLimited);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    fn sweep_due(&mut self, now: Instant) -> bool {
        let due = self
            .swept
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if due {
            self.swept = Some(now);
        }
        due
    }

    fn session(&mut self, from: SocketAddr, ssid: u16, now: Instant) -> Option<&mut Session> {
        let key = (from, ssid);
        if !self.sessions.contains_key(&key) {
            if self.sessions.len() >= MAX_SESSIONS && self.sweep_due(now) {
                self.sessions
                    .retain(|_, s| now.duration_since(s.last) < SESSION_IDLE);
            }
            if self.sessions.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let session = self.sessions.entry(key).or_insert(Session {
            next_seq: 0,
            last: now,
            highest: None,
            window: 0,
        });
        if now.duration_since(session.last) >= SESSION_IDLE {
            *session = Session {
                next_seq: 0,
                last: now,
                highest: None,
                window: 0,
            };
        }
        session.last = now;
        Some(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_window_answers_each_sequence_once() {
        let mut session = Session {
            next_seq: 0,
            last: Instant::now(),
            highest: None,
            window: 0,
        };
        assert!(!session.replayed(10));
        assert!(session.replayed(10));
        assert!(!session.replayed(8), "reordered, not replayed");
        assert!(session.replayed(8));
        assert!(!session.replayed(100));
        assert!(session.replayed(30), "too old to tell: refused");
        assert!(!session.replayed(99));
    }
}
