//! A user-space WAN emulator over two TUN devices, for tests and benchmarks that need a path
//! with delay, jitter and loss (this kernel has no netem). The `wan` binary is its command line
//! (for `bench/`); tests start it in their own process with [`Wan::start`].
//!
//! [`Wan::start`] creates the TUN devices `a` and `b` (raw IP packets, no packet information
//! header) in the caller's namespace; the caller then moves each device into its namespace
//! (`ip link set NAME netns NS`: the open file keeps working) and gives it addresses. Every
//! packet read from A is written to B after the A→B one-way delay plus a uniform jitter,
//! unless it is dropped with the A→B loss probability, and the same the other way with the B→A
//! settings. Without jitter packets keep their order.
//!
//! Why not the Python forwarder it replaces: its scheduling noise (a `select` loop, an
//! interpreter) was larger than the 0.05 ms the accuracy goals ask about. Here each direction
//! has a reader thread that stamps a packet the moment it is readable, and a writer thread that
//! sleeps until shortly before a packet is due and then spins to the deadline, so a packet
//! leaves within a few microseconds of its schedule ([`Stats::late_us`] says how late).
//!
//! The drops and the jitter are drawn from one random stream per address on the B side, each
//! seeded alike: the nth packet to 10.77.0.11 is delayed and dropped exactly as the nth packet
//! to 10.77.0.12, so probers of different addresses behind one path can be compared packet for
//! packet (with independent draws, the medians of 600 probes over ±2 ms of jitter differ by
//! about 0.06 ms by chance alone).

// The emulator measures its own lateness on the real clock (no tokio runtime here).
#![allow(clippy::disallowed_types)]

use std::collections::{BTreeMap, BinaryHeap};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How long before a packet is due the writer stops sleeping and spins: covers the wake-up
/// latency of a sleeping thread on a busy 2-core machine.
const SPIN: Duration = Duration::from_micros(400);

/// One direction of the path.
#[derive(Clone, Copy, Debug, Default)]
pub struct Direction {
    /// One-way delay.
    pub delay: Duration,
    /// Uniform jitter in `[-jitter, +jitter]` added to each packet's delay.
    pub jitter: Duration,
    /// Probability that a packet is dropped.
    pub loss: f64,
}

/// Both directions of one path.
#[derive(Clone, Copy, Debug, Default)]
pub struct Path {
    /// A→B.
    pub ab: Direction,
    /// B→A.
    pub ba: Direction,
}

/// A running emulator: stops (and releases its devices) on drop.
#[derive(Debug)]
pub struct Wan {
    stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Wan {
    /// Creates the TUN devices `a` and `b` and starts forwarding between them; `seed` makes
    /// the drops and the jitter repeatable.
    pub fn start(
        a: &str,
        b: &str,
        ab: Direction,
        ba: Direction,
        seed: u64,
    ) -> std::io::Result<Wan> {
        Wan::start_with_paths(a, b, Path { ab, ba }, BTreeMap::new(), seed)
    }

    /// As [`Wan::start`], with a path of its own for some addresses on the B side: a packet
    /// whose B-side address is a key of `paths` takes that path, any other `default`. One
    /// emulator then carries several paths at once (the accuracy benchmark runs its four side
    /// by side), each address still with its own random stream, seeded alike.
    pub fn start_with_paths(
        a: &str,
        b: &str,
        default: Path,
        paths: BTreeMap<IpAddr, Path>,
        seed: u64,
    ) -> std::io::Result<Wan> {
        let (dev_a, dev_b) = (tun::open(a)?, tun::open(b)?);
        let paths = Arc::new(paths);
        let stats = Arc::new(Mutex::new(Stats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (a_to_b, input, output, seed) in [
            (true, &dev_a, &dev_b, seed),
            (false, &dev_b, &dev_a, seed.wrapping_add(1)),
        ] {
            let (default, paths) = (default, paths.clone());
            let direction = move |addr: &IpAddr| {
                let path = paths.get(addr).unwrap_or(&default);
                if a_to_b { path.ab } else { path.ba }
            };
            let (tx, rx) = mpsc::channel();
            let (input, output) = (input.try_clone()?, output.try_clone()?);
            let (s1, s2) = (stats.clone(), stats.clone());
            let (stop1, stop2) = (stop.clone(), stop.clone());
            threads.push(thread::spawn(move || {
                reader(input, a_to_b, direction, seed, s1, tx, stop1)
            }));
            threads.push(thread::spawn(move || writer(output, a_to_b, rx, s2, stop2)));
        }
        Ok(Wan {
            stats,
            stop,
            threads,
        })
    }

    /// A copy of the counts so far.
    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }

    /// Whether it stopped on its own (a device went away with its namespace).
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Waits up to 100 ms for `file` to be readable, so a stop is seen promptly.
fn readable(file: &File) -> nix::Result<bool> {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::from(100u16))?;
    if n == 0 {
        return Ok(false);
    }
    let revents = fds[0].revents().unwrap_or(PollFlags::empty());
    if revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
        return Err(nix::errno::Errno::EIO);
    }
    Ok(true)
}

pub(crate) mod tun {
    //! Opening a TUN device: one `ioctl` that nothing in the dependency tree wraps.
    #![allow(unsafe_code)]

    use std::fs::{File, OpenOptions};
    use std::os::fd::AsRawFd;

    nix::ioctl_write_ptr_bad!(tunsetiff, 0x4004_54ca, nix::libc::ifreq);

    /// Creates (or attaches to) the TUN device `name`: raw IP packets (`IFF_TUN | IFF_NO_PI`),
    /// blocking reads and writes.
    pub fn open(name: &str) -> std::io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        if name.len() >= nix::libc::IFNAMSIZ {
            return Err(std::io::Error::other(format!(
                "device name {name:?} is too long"
            )));
        }
        // SAFETY: ifreq is plain old data, all zeroes is a valid value.
        let mut request: nix::libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *slot = byte as nix::libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (nix::libc::IFF_TUN | nix::libc::IFF_NO_PI) as i16;
        // SAFETY: the fd is open on /dev/net/tun and `request` a valid ifreq that outlives the
        // call, as TUNSETIFF expects.
        unsafe { tunsetiff(file.as_raw_fd(), &request) }.map_err(std::io::Error::from)?;
        Ok(file)
    }
}

/// Per-address counts, shared by the threads and written out as the stats file.
/// What the emulator counted.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Packets read going A→B, by the B side's address.
    pub seen_ab: BTreeMap<IpAddr, u64>,
    /// Packets read going B→A, by the B side's address.
    pub seen_ba: BTreeMap<IpAddr, u64>,
    /// Packets dropped going A→B, by the B side's address.
    pub dropped_ab: BTreeMap<IpAddr, u64>,
    /// Packets dropped going B→A, by the B side's address.
    pub dropped_ba: BTreeMap<IpAddr, u64>,
    /// Packets written to B.
    pub forwarded_ab: u64,
    /// Packets written to A.
    pub forwarded_ba: u64,
    /// Lateness of each write against its schedule, in microseconds (for the max and p99).
    pub late_us: Vec<u32>,
}

impl Stats {
    /// The stats file's JSON.
    pub fn json(&self) -> String {
        let map = |m: &BTreeMap<IpAddr, u64>| {
            let body: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            format!("{{{}}}", body.join(", "))
        };
        let mut late = self.late_us.clone();
        late.sort_unstable();
        let max = late.last().copied().unwrap_or(0);
        let p99 = late
            .get((late.len() * 99 / 100).min(late.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0);
        format!(
            "{{\"seen\": {}, \"seen_ba\": {}, \"dropped_ab\": {}, \"dropped_ba\": {}, \
             \"forwarded_ab\": {}, \"forwarded_ba\": {}, \"late_us_max\": {max}, \
             \"late_us_p99\": {p99}}}\n",
            map(&self.seen_ab),
            map(&self.seen_ba),
            map(&self.dropped_ab),
            map(&self.dropped_ba),
            self.forwarded_ab,
            self.forwarded_ba,
        )
    }

    /// Writes [`Stats::json`] to `path` atomically (a rename).
    pub fn write(&self, path: &str) {
        let tmp = format!("{path}.tmp");
        if std::fs::write(&tmp, self.json()).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

/// The B side's address of a packet: its destination going A→B, its source coming back.
fn b_side(packet: &[u8], a_to_b: bool) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let at = if a_to_b { 16 } else { 12 };
            let octets: [u8; 4] = packet[at..at + 4].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        6 if packet.len() >= 40 => {
            let at = if a_to_b { 24 } else { 8 };
            let octets: [u8; 16] = packet[at..at + 16].try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

/// A packet waiting for its time, ordered by due time then arrival (a min-heap).
#[derive(Debug, PartialEq, Eq)]
struct Due {
    at: Instant,
    order: u64,
    packet: Vec<u8>,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Reads packets from `input`, stamps them on arrival, drops or schedules them.
fn reader(
    mut input: File,
    a_to_b: bool,
    direction: impl Fn(&IpAddr) -> Direction,
    seed: u64,
    stats: Arc<Mutex<Stats>>,
    out: Sender<Due>,
    stop: Arc<AtomicBool>,
) {
    // One random stream per address on the B side, every one seeded alike: the probers of
    // different addresses behind this path see the same sequence of delays and drops (their
    // nth packets are treated alike), so comparing them compares the probers, not the draws.
    let mut streams: BTreeMap<IpAddr, StdRng> = BTreeMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut order = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match readable(&input) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => break,
        }
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break, // the device went away with its namespace
        };
        let arrived = Instant::now();
        let Some(addr) = b_side(&buf[..n], a_to_b) else {
            continue; // not IP
        };
        let direction = direction(&addr);
        let rng = streams
            .entry(addr)
            .or_insert_with(|| StdRng::seed_from_u64(seed));
        let dropped = direction.loss > 0.0 && rng.random::<f64>() < direction.loss;
        {
            let mut guard = stats.lock().unwrap();
            let stats = &mut *guard;
            let (seen, lost) = if a_to_b {
                (&mut stats.seen_ab, &mut stats.dropped_ab)
            } else {
                (&mut stats.seen_ba, &mut stats.dropped_ba)
            };
            *seen.entry(addr).or_default() += 1;
            if dropped {
                *lost.entry(addr).or_default() += 1;
            }
        }
        if dropped {
            continue;
        }
        let mut delay = direction.delay.as_secs_f64();
        if !direction.jitter.is_zero() {
            let j = direction.jitter.as_secs_f64();
            delay += rng.random_range(-j..=j);
        }
        order += 1;
        let due = Due {
            at: arrived + Duration::from_secs_f64(delay.max(0.0)),
            order,
            packet: buf[..n].to_vec(),
        };
        if out.send(due).is_err() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
}

/// Writes each packet to `output` at its due time: sleeps until [`SPIN`] before it, then spins.
fn writer(
    mut output: File,
    a_to_b: bool,
    input: Receiver<Due>,
    stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
) {
    let mut queue = BinaryHeap::new();
    while !stop.load(Ordering::Relaxed) {
        let next = queue.peek().map(|due: &Due| due.at);
        let received = match next {
            None => input
                .recv_timeout(Duration::from_millis(200))
                .map_err(|err| err == RecvTimeoutError::Disconnected),
            Some(at) => {
                let now = Instant::now();
                if at > now + SPIN {
                    input
                        .recv_timeout(at - now - SPIN)
                        .map_err(|err| err == RecvTimeoutError::Disconnected)
                } else {
                    Err(false)
                }
            }
        };
        match received {
            Ok(due) => {
                queue.push(due);
                // More may be waiting: take them all before deciding what is next.
                while let Ok(due) = input.try_recv() {
                    queue.push(due);
                }
                continue;
            }
            Err(true) => break,
            Err(false) => {}
        }
        let Some(head) = queue.peek() else { continue };
        if head.at > Instant::now() + SPIN {
            continue;
        }
        while Instant::now() < head.at {
            std::hint::spin_loop();
        }
        let due = queue.pop().expect("peeked");
        let late = Instant::now().saturating_duration_since(due.at);
        // A full queue or a device gone: the packet is lost, as on a real link.
        let _ = output.write(&due.packet);
        let mut stats = stats.lock().unwrap();
        if a_to_b {
            stats.forwarded_ab += 1;
        } else {
            stats.forwarded_ba += 1;
        }
        stats
            .late_us
            .push(u32::try_from(late.as_micros()).unwrap_or(u32::MAX));
    }
}
