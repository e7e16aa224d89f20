//! `wan`: the command line of the test kit's WAN emulator ([`regionprobe_testkit::wan`]), for
//! the benchmarks in `bench/`.
//!
//! ```text
//! wan --a NAME_A --b NAME_B --stats FILE [--delay-ms D] [--jitter-ms J] [--loss P]
//!     [--ab-delay-ms D] [--ba-delay-ms D] [--ab-jitter-ms J] [--ba-jitter-ms J]
//!     [--ab-loss P] [--ba-loss P] [--seed N] [--path ADDR=DELAY_MS[/JITTER_MS[/LOSS]]]...
//! ```
//!
//! `--path` gives packets whose B-side address is ADDR a path of their own (both directions
//! alike; repeatable), so one emulator carries several paths at once; every other packet takes
//! the path the other flags describe.
//!
//! Creates the TUN devices, prints `ready`, and forwards until SIGTERM or SIGINT (or a device
//! gone with its namespace). `--delay-ms`, `--jitter-ms` and `--loss` set both directions.
//! Writes the counts as JSON to `--stats` every 200 ms and at exit:
//!
//! ```json
//! {"seen": {addr: n}, "seen_ba": {addr: n}, "dropped_ab": {addr: n}, "dropped_ba": {addr: n},
//!  "forwarded_ab": n, "forwarded_ba": n, "late_us_max": x, "late_us_p99": x}
//! ```
//! (`seen` counts A→B packets by the B side's address: the destination going A→B.)

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use regionprobe_testkit::wan::{Direction, Path, Wan};

#[derive(Debug)]
struct Args {
    a: String,
    b: String,
    stats: String,
    ab: Direction,
    ba: Direction,
    paths: BTreeMap<IpAddr, Path>,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = None;
    let mut b = None;
    let mut stats = None;
    let (mut ab, mut ba) = (Direction::default(), Direction::default());
    let mut seed = 13;
    let mut paths = BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let ms = |v: &str| -> Result<Duration, String> {
            let ms: f64 = v
                .parse()
                .map_err(|_| format!("{flag}: not a number: {v}"))?;
            if !(0.0..=60_000.0).contains(&ms) {
                return Err(format!("{flag}: {ms} ms is out of range"));
            }
            Ok(Duration::from_secs_f64(ms / 1e3))
        };
        let ratio = |v: &str| -> Result<f64, String> {
            let p: f64 = v
                .parse()
                .map_err(|_| format!("{flag}: not a number: {v}"))?;
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{flag}: {p} is not a ratio in [0, 1]"));
            }
            Ok(p)
        };
        match flag.as_str() {
            "--a" => a = Some(value),
            "--b" => b = Some(value),
            "--stats" => stats = Some(value),
            "--delay-ms" => (ab.delay, ba.delay) = (ms(&value)?, ms(&value)?),
            "--jitter-ms" => (ab.jitter, ba.jitter) = (ms(&value)?, ms(&value)?),
            "--loss" => (ab.loss, ba.loss) = (ratio(&value)?, ratio(&value)?),
            "--ab-delay-ms" => ab.delay = ms(&value)?,
            "--ba-delay-ms" => ba.delay = ms(&value)?,
            "--ab-jitter-ms" => ab.jitter = ms(&value)?,
            "--ba-jitter-ms" => ba.jitter = ms(&value)?,
            "--ab-loss" => ab.loss = ratio(&value)?,
            "--ba-loss" => ba.loss = ratio(&value)?,
            "--path" => {
                let (addr, spec) = value.split_once('=').ok_or_else(|| {
                    format!("--path {value}: expected ADDR=DELAY_MS[/JITTER_MS[/LOSS]]")
                })?;
                let addr: IpAddr = addr
                    .parse()
                    .map_err(|_| format!("--path {value}: not an address: {addr}"))?;
                let mut parts = spec.split('/');
                let mut one = Direction {
                    delay: ms(parts.next().unwrap_or_default())?,
                    ..Direction::default()
                };
                if let Some(jitter) = parts.next() {
                    one.jitter = ms(jitter)?;
                }
                if let Some(loss) = parts.next() {
                    one.loss = ratio(loss)?;
                }
                if parts.next().is_some() {
                    return Err(format!("--path {value}: too many fields"));
                }
                paths.insert(addr, Path { ab: one, ba: one });
            }
            "--seed" => seed = value.parse().map_err(|_| format!("--seed: {value}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        a: a.ok_or("--a is required")?,
        b: b.ok_or("--b is required")?,
        stats: stats.ok_or("--stats is required")?,
        ab,
        ba,
        paths,
        seed,
    })
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("wan: {message}");
            std::process::exit(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(&stop);
    let default = Path {
        ab: args.ab,
        ba: args.ba,
    };
    let wan = Wan::start_with_paths(&args.a, &args.b, default, args.paths, args.seed)
        .unwrap_or_else(|err| {
            eprintln!(
                "wan: cannot open the TUN devices {} and {}: {err}",
                args.a, args.b
            );
            std::process::exit(1);
        });
    println!("ready");
    let _ = std::io::stdout().flush();
    while !stop.load(Ordering::Relaxed) && !wan.stopped() {
        thread::sleep(Duration::from_millis(200));
        wan.stats().write(&args.stats);
    }
    wan.stats().write(&args.stats);
}

/// Sets `stop` when SIGTERM or SIGINT arrives. Called before any other thread starts: the
/// signals are blocked in every thread (the mask is inherited) and taken by one that waits.
fn stop_on_signals(stop: &Arc<AtomicBool>) {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).expect("sigmask");
    let stop = stop.clone();
    thread::spawn(move || {
        if set.wait().is_ok() {
            stop.store(true, Ordering::Relaxed);
        }
    });
}
