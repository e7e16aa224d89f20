//! The failover ranking engine: per-target sliding windows of probe results, the per-region
//! score and rank, and the hysteresis that picks the failover candidate.
//!
//! Pure: no I/O, no metrics, no clock reads. Every call takes `now`, so paused-time tests (and
//! the `rank` command) drive it as they like. How windows, quantiles and scores are computed,
//! and why: `docs/ranking.md`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// The most samples a window keeps, whatever its window and interval: 40 KB per target. A
/// 5m window at an interval under 30 ms therefore covers only the last 10,000 probes.
pub const MAX_SAMPLES: usize = 10_000;

/// `[ranking]`: how regions are scored and how the failover candidate is held.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// How far back samples count: a sample is in the window while younger than this.
    pub window: Duration,
    /// The latency quantile in the score, in (0, 1).
    pub quantile: f64,
    /// Added to the score at 100% loss, proportionally below.
    pub loss_penalty: Duration,
    /// How much better (a fraction of the current choice's score) a challenger must be.
    pub hysteresis: f64,
    /// How long a challenger must stay that much better before it takes over.
    pub hold: Duration,
    /// A target is down once this many of its probes in a row failed; a region is down when
    /// every target it has is down, and then ranks last at once.
    pub down_after: usize,
    /// A region whose replica lags more than this (the worst lag its database targets report)
    /// is not eligible as the failover candidate.
    pub max_replication_lag: Option<Duration>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            window: Duration::from_secs(300),
            quantile: 0.95,
            loss_penalty: Duration::from_secs(1),
            hysteresis: 0.10,
            hold: Duration::from_secs(60),
            down_after: 3,
            max_replication_lag: None,
        }
    }
}

/// Marks a failed probe in [`Window::latencies`]: the destination did not answer.
const FAILED: u32 = u32::MAX;
/// Marks a probe that failed on our side (`reason="error"`: no socket, no file descriptor,
/// ...): it says nothing of the destination, so it is neither a success nor a loss.
const LOCAL: u32 = u32::MAX - 1;
/// The largest latency a sample holds, microseconds (~71 minutes).
const MAX_LATENCY: u32 = u32::MAX - 2;
/// A sample's latency, in 3 bytes: [`pack`], [`unpack`].
type Packed = [u8; 3];
/// Latencies below this many microseconds (8.39 s) are held to the microsecond; longer ones in
/// steps of 1,024 us.
const EXACT_BELOW: u32 = 1 << 23;
const PACKED_FAILED: u32 = 0xFF_FFFF;
const PACKED_LOCAL: u32 = 0xFF_FFFE;

/// A latency (microseconds, up to [`MAX_LATENCY`]), [`FAILED`] or [`LOCAL`] in 3 bytes: a
/// window holds 301 samples per target (10,000 targets: 3 MB less than in 4 bytes).
fn pack(latency: u32) -> Packed {
    let code = match latency {
        FAILED => PACKED_FAILED,
        LOCAL => PACKED_LOCAL,
        us if us < EXACT_BELOW => us,
        us => EXACT_BELOW + (us.min(MAX_LATENCY) - EXACT_BELOW) / 1024,
    };
    let [a, b, c, _] = code.to_le_bytes();
    [a, b, c]
}

fn unpack([a, b, c]: Packed) -> u32 {
    match u32::from_le_bytes([a, b, c, 0]) {
        PACKED_FAILED => FAILED,
        PACKED_LOCAL => LOCAL,
        code if code < EXACT_BELOW => code,
        code => EXACT_BELOW + (code - EXACT_BELOW) * 1024,
    }
}

/// Marks a gap in [`Window::gaps`] more than 128 ms under or 126 ms over the interval (a
/// skipped tick, a stall): it is the next of [`Window::long_gaps`].
const ODD_GAP: u8 = u8::MAX;

/// One target's recent probe results, oldest first: 4 bytes a sample (its latency in 3, and
/// its time as the milliseconds since the sample before, relative to the interval, in 1), in
/// rings allocated once.
#[derive(Clone, Debug)]
pub struct Window {
    window: Duration,
    /// At most [`MAX_SAMPLES`].
    capacity: u16,
    /// The target's interval, milliseconds: the gap most samples have.
    interval_ms: u32,
    /// Set by the first sample; sample times are offsets from it, in milliseconds.
    epoch: Option<Instant>,
    /// The offset of the oldest sample held.
    front_at: u32,
    /// The offset of the newest sample held.
    back_at: u32,
    /// Microseconds, or [`FAILED`] or [`LOCAL`], [`pack`]ed.
    latencies: VecDeque<Packed>,
    /// Milliseconds since the sample before, as its difference from the interval plus 128, or
    /// [`ODD_GAP`]; the oldest sample's is meaningless. Samples are timed at their tick, so a
    /// gap is the interval give or take the scheduler's lag (milliseconds).
    gaps: VecDeque<u8>,
    /// The gaps the byte cannot hold, in order, exact (rare: skipped ticks, stalls).
    long_gaps: VecDeque<u32>,
}

impl Window {
    /// A window over `window` for a target probed every `interval`. The capacity follows from
    /// both, so a reload that changes either needs a new window.
    pub fn new(window: Duration, interval: Duration) -> Self {
        let per_window = window.as_nanos().div_ceil(interval.as_nanos().max(1));
        let capacity = usize::try_from(per_window)
            .unwrap_or(MAX_SAMPLES)
            .saturating_add(1)
            .min(MAX_SAMPLES);
        Window {
            window,
            capacity: u16::try_from(capacity).expect("MAX_SAMPLES fits 16 bits"),
            interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            epoch: None,
            front_at: 0,
            back_at: 0,
            latencies: VecDeque::with_capacity(capacity),
            gaps: VecDeque::with_capacity(capacity),
            long_gaps: VecDeque::new(),
        }
    }

    /// The most samples this window holds.
    pub fn capacity(&self) -> usize {
        usize::from(self.capacity)
    }

    /// Samples held, including any that expired since the last [`Window::record`].
    pub fn len(&self) -> usize {
        self.latencies.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.latencies.is_empty()
    }

    /// Records a probe at `at` (when it started: its tick): its latency, or `None` if the
    /// destination did not answer. One target's probes are sequential, so `at` should not go
    /// backwards; if it does, the sample is filed at the latest time already held.
    pub fn record(&mut self, at: Instant, latency: Option<Duration>) {
        let latency = match latency {
            Some(latency) => u32::try_from(latency.as_micros())
                .unwrap_or(MAX_LATENCY)
                .min(MAX_LATENCY),
            None => FAILED,
        };
        self.push(at, latency);
    }

    /// Records a probe at `at` that failed on our side: it counts neither as a success nor
    /// as the destination's loss, and marks the target as failing locally.
    pub fn record_local_failure(&mut self, at: Instant) {
        self.push(at, LOCAL);
    }

    fn push(&mut self, at: Instant, latency: u32) {
        self.expire(at);
        let offset = self.offset(at);
        let at = match self.latencies.is_empty() {
            true => offset,
            false => offset.max(self.back_at),
        };
        if self.latencies.len() >= self.capacity() {
            self.pop_front();
        }
        if self.latencies.is_empty() {
            self.front_at = at;
            self.back_at = at;
            self.gaps.push_back(0);
        } else {
            let gap = at - self.back_at;
            match u8::try_from(i64::from(gap) - i64::from(self.interval_ms) + 128) {
                Ok(code) if code != ODD_GAP => self.gaps.push_back(code),
                _ => {
                    self.gaps.push_back(ODD_GAP);
                    self.long_gaps.push_back(gap);
                }
            }
            self.back_at = at;
        }
        self.latencies.push_back(pack(latency));
    }

    /// Drops the oldest sample; the next one's time becomes the front's.
    fn pop_front(&mut self) {
        self.latencies.pop_front();
        self.gaps.pop_front();
        let Some(gap) = self.gaps.front_mut() else {
            return;
        };
        let code = std::mem::replace(gap, 0);
        self.front_at += if code == ODD_GAP {
            self.long_gaps
                .pop_front()
                .expect("a long gap for each marker")
        } else {
            self.gap(code)
        };
    }

    /// The milliseconds gap `code` (not [`ODD_GAP`]) stands for.
    fn gap(&self, code: u8) -> u32 {
        u32::try_from(i64::from(self.interval_ms) + i64::from(code) - 128)
            .expect("encoded from a gap of 0 or more")
    }

    /// Drops the samples that are a whole window old at `now`.
    pub fn expire(&mut self, now: Instant) {
        for _ in 0..self.expired(now) {
            self.pop_front();
        }
    }

    /// Every sample held, oldest first: its offset and its latency.
    fn timed(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let mut at = self.front_at;
        let mut long = self.long_gaps.iter();
        self.gaps
            .iter()
            .zip(&self.latencies)
            .enumerate()
            .map(move |(i, (gap, latency))| {
                if i > 0 {
                    at += if *gap == ODD_GAP {
                        *long.next().expect("a long gap for each marker")
                    } else {
                        self.gap(*gap)
                    };
                }
                (at, unpack(*latency))
            })
    }

    /// Whether a sample taken at `offset` is a whole window old at `now`.
    fn is_expired(&self, epoch: Instant, offset: u32, now: Instant) -> bool {
        now.saturating_duration_since(epoch + Duration::from_millis(offset.into())) >= self.window
    }

    /// How many of the oldest samples are at least a window old at `now`.
    fn expired(&self, now: Instant) -> usize {
        let Some(epoch) = self.epoch else { return 0 };
        self.timed()
            .take_while(|(at, _)| self.is_expired(epoch, *at, now))
            .count()
    }

    /// The samples younger than a window at `now`, oldest first: how long before `now` each
    /// was taken, and its latency (`None`: the probe failed). For charts.
    pub fn samples(&self, now: Instant) -> impl Iterator<Item = (Duration, Option<Duration>)> + '_ {
        let epoch = self.epoch;
        self.timed()
            .skip_while(move |(at, _)| epoch.is_some_and(|e| self.is_expired(e, *at, now)))
            .map(move |(offset, latency)| {
                let at = epoch.map_or(now, |e| e + Duration::from_millis(offset.into()));
                let latency =
                    (latency <= MAX_LATENCY).then(|| Duration::from_micros(latency.into()));
                (now.saturating_duration_since(at), latency)
            })
    }

    /// Whether the destination is down at `now`: its last `down_after` answers (local
    /// failures skipped) are all failures. `None` before that many probes reached it.
    #[cfg(test)]
    pub fn down(&self, now: Instant, down_after: usize) -> Option<bool> {
        self.at(now).down(down_after)
    }

    /// The samples younger than a window at `now`: the expired ones are found once, however
    /// many questions the tally then asks of them.
    fn at(&self, now: Instant) -> Live<'_> {
        let skip = self.expired(now);
        let (front, back) = self.latencies.as_slices();
        match skip.checked_sub(front.len()) {
            None => Live {
                older: &front[skip..],
                newer: back,
            },
            Some(into_back) => Live {
                older: &[],
                newer: &back[into_back..],
            },
        }
    }

    /// `at` in milliseconds since the epoch. Past `u32::MAX` ms (~49.7 days) the epoch moves
    /// up to the oldest sample; samples older than that (only with such long windows) go.
    fn offset(&mut self, at: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(at);
        if let Ok(ms) = u32::try_from(at.saturating_duration_since(epoch).as_millis()) {
            return ms;
        }
        let span = Duration::from_millis(u32::MAX.into());
        while !self.latencies.is_empty()
            && at.saturating_duration_since(epoch + Duration::from_millis(self.front_at.into()))
                > span
        {
            self.pop_front();
        }
        let epoch = if self.latencies.is_empty() {
            at
        } else {
            let shift = self.front_at;
            self.front_at -= shift;
            self.back_at -= shift;
            epoch + Duration::from_millis(shift.into())
        };
        self.epoch = Some(epoch);
        u32::try_from(at.saturating_duration_since(epoch).as_millis())
            .expect("within u32::MAX ms of the rebased epoch")
    }
}

/// A window's live samples (younger than the window at some `now`), oldest first, as the
/// ring's two slices.
#[derive(Clone, Copy)]
struct Live<'a> {
    older: &'a [Packed],
    newer: &'a [Packed],
}

impl Live<'_> {
    fn latencies(self) -> impl DoubleEndedIterator<Item = u32> {
        self.older
            .iter()
            .chain(self.newer)
            .map(|packed| unpack(*packed))
    }

    /// Its last `down_after` answers (local failures skipped) are all failures; `None`
    /// before that many.
    fn down(self, down_after: usize) -> Option<bool> {
        let mut recent = self
            .latencies()
            .rev()
            .filter(|latency| *latency != LOCAL)
            .take(down_after.max(1));
        let mut seen = 0;
        for latency in recent.by_ref() {
            seen += 1;
            if latency != FAILED {
                return Some(false);
            }
        }
        (seen >= down_after.max(1)).then_some(true)
    }

    /// Its newest sample is a local failure.
    fn failing_locally(self) -> bool {
        self.latencies().next_back() == Some(LOCAL)
    }
}

/// Collects the live samples of every target's window by region, then ranks the regions.
///
/// It keeps no copy of the samples: each target's score quantile is taken as it is added (in
/// one scratch buffer, reused), and its successes go into its region's [`Pool`]. Copying every
/// sample until the ranking, as it once did, held 12 MB at 10,000 targets of 300 samples,
/// allocated and freed every second.
#[derive(Clone, Debug)]
pub struct Tally {
    /// The latency quantile of each target's score ([`Params::quantile`]).
    quantile: f64,
    regions: BTreeMap<String, RegionTally>,
    /// One target's successful latencies while it is added.
    scratch: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
struct RegionTally {
    targets: Vec<TargetSummary>,
    pool: Pool,
}

/// One target's live samples, as the tally summed them up.
#[derive(Clone, Debug, Default)]
struct TargetSummary {
    name: String,
    /// Its successful latencies' quantile of the score, microseconds.
    quantile: Option<u32>,
    successes: usize,
    failures: usize,
    /// Its last `down_after` answers failed (every address's, for several).
    down: Option<bool>,
    /// Addresses of the target that are down while others are not.
    addresses_down: usize,
    /// Its newest probe failed on our side.
    failing_locally: bool,
    /// Replication lag, seconds, by its last report (database targets that read it).
    lag: Option<f64>,
}

impl Tally {
    /// An empty tally whose targets are scored at `quantile`; rank it with [`Params`] of the
    /// same quantile.
    pub fn new(quantile: f64) -> Self {
        Tally {
            quantile,
            regions: BTreeMap::new(),
            scratch: Vec::new(),
        }
    }

    /// Adds target `name` of `region` with one window: [`Tally::add_all`].
    pub fn add(
        &mut self,
        region: &str,
        name: &str,
        window: &Window,
        now: Instant,
        down_after: usize,
        lag: Option<f64>,
    ) {
        self.add_all(region, name, &[window], now, down_after, lag);
    }

    /// Adds target `name` of `region` from its `windows` (one per address it probes): its
    /// samples live at `now`, and whether it is down after `down_after` failures in a row. A
    /// target with several addresses pools their samples; it is down when every address is,
    /// and counts its down addresses otherwise (the region is then degraded). A target without
    /// samples still counts, so a configured region shows up (at `+Inf`) before anything
    /// answered. `lag` is the target's replication lag (seconds) if it reads one.
    pub fn add_all(
        &mut self,
        region: &str,
        name: &str,
        windows: &[&Window],
        now: Instant,
        down_after: usize,
        lag: Option<f64>,
    ) {
        // One pass per window, its expired samples found once.
        let (mut down_count, mut any_up, mut failing_locally) = (0, false, false);
        let mut failures = 0;
        self.scratch.clear();
        for window in windows {
            let live = window.at(now);
            match live.down(down_after) {
                Some(true) => down_count += 1,
                Some(false) => any_up = true,
                None => {}
            }
            failing_locally |= live.failing_locally();
            for latency in live.latencies() {
                match latency {
                    FAILED => failures += 1,
                    LOCAL => {}
                    latency => self.scratch.push(latency),
                }
            }
        }
        let down = if !windows.is_empty() && down_count == windows.len() {
            Some(true)
        } else if any_up {
            Some(false)
        } else {
            None
        };
        let addresses_down = if down == Some(true) { 0 } else { down_count };
        if !self.regions.contains_key(region) {
            self.regions
                .insert(region.to_owned(), RegionTally::default());
        }
        let tally = self.regions.get_mut(region).expect("inserted above");
        tally.pool.add_all(&self.scratch);
        let [quantile] = quantiles(&mut self.scratch, [self.quantile]);
        tally.targets.push(TargetSummary {
            name: name.to_owned(),
            quantile,
            successes: self.scratch.len(),
            failures,
            down,
            addresses_down,
            failing_locally,
            lag,
        });
    }

    /// Scores and ranks the regions added so far; `own_region` (this sidecar's) is ranked too,
    /// but only other regions tell whether the sidecar itself is impaired. `params` has the
    /// quantile the tally was made with.
    pub fn rank(self, params: &Params, own_region: &str) -> Ranking {
        debug_assert_eq!(
            self.quantile, params.quantile,
            "a tally is ranked at the quantile it was made with"
        );
        let mut failing_locally = Vec::new();
        let regions: Vec<RegionRank> = self
            .regions
            .into_iter()
            .map(|(region, tally)| {
                failing_locally.extend(
                    tally
                        .targets
                        .iter()
                        .filter(|t| t.failing_locally)
                        .map(|t| t.name.clone()),
                );
                region_rank(region, tally, params)
            })
            .collect();
        let others: Vec<&RegionRank> = regions.iter().filter(|r| r.region != own_region).collect();
        let cut_off = others.len() >= 2 && others.iter().all(|r| r.up == Some(false));
        failing_locally.sort();
        let impaired = match (cut_off, failing_locally.is_empty()) {
            (true, _) => Some(Impairment::CutOff),
            (false, false) => Some(Impairment::LocalFailures(failing_locally)),
            (false, true) => None,
        };
        let mut ranking = ordered(regions);
        ranking.impaired = impaired;
        ranking
    }
}

/// A region's successful latencies pooled, as counts in log-linear buckets: every microsecond
/// its own bucket below 512 µs, then 256 buckets per power of two, so a pooled quantile is
/// within 0.2% of the exact one (the score, from each target's own samples, stays exact).
/// 25 KB per region with a success, whatever the number of its targets and samples.
#[derive(Clone, Debug, Default)]
struct Pool {
    counts: Vec<u32>,
    total: usize,
}

/// [`Pool`]'s buckets per power of two, log2.
const POOL_SUB_BITS: u32 = 8;
const POOL_SUB: u32 = 1 << POOL_SUB_BITS;
/// Exact below `2 * POOL_SUB`, then `POOL_SUB` buckets for each power of two up to 2^31.
const POOL_BUCKETS: usize = (2 * POOL_SUB + (31 - POOL_SUB_BITS) * POOL_SUB) as usize;

impl Pool {
    fn bucket(us: u32) -> usize {
        if us < 2 * POOL_SUB {
            return us as usize;
        }
        let exp = 31 - us.leading_zeros();
        let shift = exp - POOL_SUB_BITS;
        let mantissa = (us >> shift) - POOL_SUB;
        (2 * POOL_SUB + (shift - 1) * POOL_SUB + mantissa) as usize
    }

    /// The middle of bucket `index`, microseconds: the value itself below 512 µs.
    fn value(index: usize) -> u32 {
        let index = index as u32;
        if index < 2 * POOL_SUB {
            return index;
        }
        let k = index - 2 * POOL_SUB;
        let shift = k / POOL_SUB + 1;
        let lower = (POOL_SUB + k % POOL_SUB) << shift;
        lower + ((1 << shift) - 1) / 2
    }

    #[cfg(test)]
    fn add(&mut self, us: u32) {
        self.add_all(&[us]);
    }

    fn add_all(&mut self, latencies: &[u32]) {
        if latencies.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; POOL_BUCKETS];
        }
        for us in latencies {
            self.counts[Pool::bucket(*us)] += 1;
        }
        self.total += latencies.len();
    }

    /// The nearest-rank quantiles `qs`, as [`quantiles`] ranks them; `None` when empty.
    fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<u32>; N] {
        let n = self.total;
        qs.map(|q| {
            if n == 0 {
                return None;
            }
            let index = ((q * n as f64 - 1e-9).ceil().max(1.0) as usize).min(n) - 1;
            let mut seen = 0;
            self.counts.iter().enumerate().find_map(|(bucket, count)| {
                seen += *count as usize;
                (seen > index).then(|| Pool::value(bucket))
            })
        })
    }
}

/// One region from its targets' samples. Its score is the worst of its targets' scores, so a
/// fast target of another kind (an ICMP echo beside an HTTP check) never makes the region look
/// better than its slowest one; a target with no sample of the destination in the window has
/// no say, and a region where no target has one scores `+Inf`. Its quantiles, loss and counts
/// are over every target's samples.
fn region_rank(region: String, tally: RegionTally, params: &Params) -> RegionRank {
    let targets = &tally.targets;
    let mut worst: Option<(f64, &str)> = None;
    for target in targets {
        let samples = target.successes + target.failures;
        // Nothing of the destination in the window (no probe yet, or only our own local
        // failures): no say in the score.
        if samples == 0 {
            continue;
        }
        let loss = target.failures as f64 / samples as f64;
        let score = match target.quantile {
            Some(us) => {
                Duration::from_micros(us.into()).as_secs_f64()
                    + loss * params.loss_penalty.as_secs_f64()
            }
            None => f64::INFINITY,
        };
        if worst.is_none_or(|(w, _)| score > w) {
            worst = Some((score, &target.name));
        }
    }
    let worst_target = worst.map(|(_, name)| name.to_owned());
    let mut score = worst.map_or(f64::INFINITY, |(score, _)| score);
    // Down when every target is: the region ranks last at once, whatever its window holds.
    let up = if targets.iter().all(|t| t.down == Some(true)) && !targets.is_empty() {
        Some(false)
    } else if targets.iter().any(|t| t.down == Some(false)) {
        Some(true)
    } else {
        None
    };
    if up == Some(false) {
        score = f64::INFINITY;
    }
    let degraded = up == Some(true)
        && targets
            .iter()
            .any(|t| t.down == Some(true) || t.addresses_down > 0);
    let failures: usize = targets.iter().map(|t| t.failures).sum();
    let [p50, p95, p99] = tally
        .pool
        .quantiles([0.50, 0.95, 0.99])
        .map(|us| us.map(|us| Duration::from_micros(us.into())));
    let successes = tally.pool.total;
    let samples = successes + failures;
    let replication_lag = targets
        .iter()
        .filter_map(|t| t.lag)
        .fold(None, |worst: Option<f64>, lag| {
            Some(worst.map_or(lag, |w| w.max(lag)))
        });
    let ineligible = match (replication_lag, params.max_replication_lag) {
        (Some(lag), Some(max)) if lag > max.as_secs_f64() => Some(Ineligible::ReplicationLag),
        _ => None,
    };
    RegionRank {
        replication_lag,
        ineligible,
        region,
        rank: 0,
        score,
        up,
        degraded,
        worst_target,
        p50,
        p95,
        p99,
        loss_ratio: (samples > 0).then(|| failures as f64 / samples as f64),
        samples,
        successes,
        targets: targets.len(),
    }
}

/// Why a region may not be the failover candidate, whatever its score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// Its replica lags more than `[ranking] max_replication_lag`.
    ReplicationLag,
}

impl Ineligible {
    /// The `reason` label and the API's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Ineligible::ReplicationLag => "replication_lag",
        }
    }
}

/// Why this sidecar's view cannot be trusted right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Impairment {
    /// Every other region is down at once (at least two of them): the fault is most likely
    /// ours (our network, our uplink), not the world's.
    CutOff,
    /// These targets fail on our side (`reason="error"`: no ICMP permission, no file
    /// descriptor, ...); their failures are not counted as anyone's loss.
    LocalFailures(Vec<String>),
}

/// Sorts by score, then name, and numbers the ranks.
fn ordered(mut regions: Vec<RegionRank>) -> Ranking {
    regions.sort_by(|a, b| {
        a.score
            .total_cmp(&b.score)
            .then_with(|| a.region.cmp(&b.region))
    });
    for (index, region) in regions.iter_mut().enumerate() {
        region.rank = index + 1;
    }
    Ranking {
        regions,
        impaired: None,
    }
}

/// The nearest-rank quantiles `qs` of `latencies`, which it reorders; `None` when empty.
///
/// One selection per distinct rank, each on what lies above the previous one, rather than a
/// sort: 1,000 targets of 300 samples rank in ~5 ms instead of ~23 ms (release build).
fn quantiles<const N: usize>(latencies: &mut [u32], qs: [f64; N]) -> [Option<u32>; N] {
    let n = latencies.len();
    if n == 0 {
        return [None; N];
    }
    // The tolerance keeps binary rounding from pushing an exact rank to the next one
    // (0.07 * 100 is 7.000000000000001 in f64).
    let index = qs.map(|q| ((q * n as f64 - 1e-9).ceil().max(1.0) as usize).min(n) - 1);
    let mut order: [usize; N] = std::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| index[i]);
    let mut found = [None; N];
    // Everything below `start` is in its sorted place.
    let mut start = 0;
    for i in order {
        if index[i] >= start {
            latencies[start..].select_nth_unstable(index[i] - start);
            start = index[i] + 1;
        }
        found[i] = Some(latencies[index[i]]);
    }
    found
}

/// Every region, best first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ranking {
    pub regions: Vec<RegionRank>,
    /// Set when this sidecar's own view is impaired.
    pub impaired: Option<Impairment>,
}

impl Ranking {
    pub fn get(&self, region: &str) -> Option<&RegionRank> {
        self.regions.iter().find(|r| r.region == region)
    }
}

/// One region's place in a [`Ranking`], over the window.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionRank {
    pub region: String,
    /// 1 is the best.
    pub rank: usize,
    /// Seconds: the worst of its targets' scores (a target's: its latency quantile plus its
    /// loss ratio times the loss penalty); `+Inf` when a target never succeeded in the window,
    /// or when the region is down.
    pub score: f64,
    /// `Some(false)` when every target is down (its last `down_after` probes failed),
    /// `Some(true)` when one is up, `None` before any target had that many probes.
    pub up: Option<bool>,
    /// Up, but some of its targets, or some addresses of an `addresses = "all"` target, are
    /// down: still a place to go, with less capacity behind it.
    pub degraded: bool,
    /// The target whose score is the region's.
    pub worst_target: Option<String>,
    /// Quantiles of the successful latencies; `None` without a success.
    pub p50: Option<Duration>,
    pub p95: Option<Duration>,
    pub p99: Option<Duration>,
    /// Failures / samples; `None` without samples.
    pub loss_ratio: Option<f64>,
    pub samples: usize,
    pub successes: usize,
    pub targets: usize,
    /// The worst replication lag its database targets report, seconds (`+Inf`: broken).
    pub replication_lag: Option<f64>,
    /// Set when the region may not be the failover candidate.
    pub ineligible: Option<Ineligible>,
}

impl RegionRank {
    /// Whether the region may be chosen: a finite score and nothing against it.
    pub fn eligible(&self) -> bool {
        self.score.is_finite() && self.ineligible.is_none()
    }
}

/// The failover candidate: the best region other than the sidecar's own, held against noise.
///
/// - With no current choice, the best region with a finite score is chosen at once.
/// - A challenger takes over once its score has been at most `(1 - hysteresis)` times the
///   current choice's (and lower) at every [`Failover::update`] for at least `hold`; continuity
///   is judged at the updates, so call it on every ranking. When several qualify, the
///   best-ranked wins.
/// - A current choice that scores `+Inf` (not one success in the whole window) is replaced at
///   once by the best finite region. The window has already debounced that verdict for far
///   longer than `hold`, and holding on would point failover at a region known to be down. A
///   region that dies usually loses its place sooner, the normal way: its loss term grows
///   sample by sample until a healthy challenger passes the hysteresis and the hold.
/// - If no other region is finite either, the choice stays: when nothing answers, the fault is
///   most likely our own network, and dropping the choice would help no one.
/// - A current choice that left the ranking (removed from the configuration) is replaced at
///   once by the best finite region, or by none.
#[derive(Clone, Debug)]
pub struct Failover {
    own_region: String,
    hysteresis: f64,
    hold: Duration,
    current: Option<String>,
    /// Since when each challenger has been better by the hysteresis, as seen by `update`.
    better_since: BTreeMap<String, Instant>,
}

/// A change of the failover choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub from: Option<String>,
    pub to: Option<String>,
    pub at: Instant,
    pub why: Why,
}

/// Why the failover choice is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The first region that answered.
    First,
    /// The previous choice is down, or never answered in the window.
    PreviousDown,
    /// The previous choice left the configuration.
    PreviousRemoved,
    /// Better by the hysteresis for the whole hold.
    Better,
    /// The previous choice became ineligible (its replica lags too far behind).
    PreviousIneligible,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::First => "first region to answer",
            Why::PreviousDown => "previous candidate down",
            Why::PreviousRemoved => "previous candidate removed",
            Why::Better => "better for the whole hold",
            Why::PreviousIneligible => "previous candidate's replica lags too far behind",
        }
    }
}

/// The region that would take over if it stays better, and since when it has been.
#[derive(Clone, Debug, PartialEq)]
pub struct Challenger {
    pub region: String,
    pub since: Instant,
}

impl Failover {
    /// No choice yet; `own_region` is never chosen.
    pub fn new(own_region: impl Into<String>, params: &Params) -> Self {
        Failover {
            own_region: own_region.into(),
            hysteresis: params.hysteresis,
            hold: params.hold,
            current: None,
            better_since: BTreeMap::new(),
        }
    }

    /// The chosen region.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Takes new `hysteresis` and `hold` (a reload) and keeps the choice. Challengers keep
    /// their start, so a shorter hold can let one through at the next update.
    pub fn set_params(&mut self, params: &Params) {
        self.hysteresis = params.hysteresis;
        self.hold = params.hold;
    }

    /// The best-ranked challenger on its way through the hold, if any.
    pub fn challenger(&self, ranking: &Ranking) -> Option<Challenger> {
        ranking.regions.iter().find_map(|r| {
            self.better_since.get(&r.region).map(|since| Challenger {
                region: r.region.clone(),
                since: *since,
            })
        })
    }

    /// The hold a challenger must last.
    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// Takes in a new ranking computed at `now`; returns the change it caused, if any.
    ///
    /// While the ranking says this sidecar is cut off (every other region down at once), the
    /// choice stays and no challenger advances: the fault is most likely ours.
    pub fn update(&mut self, ranking: &Ranking, now: Instant) -> Option<Change> {
        if ranking.impaired == Some(Impairment::CutOff) && self.current.is_some() {
            self.better_since.clear();
            return None;
        }
        let mut candidates = ranking
            .regions
            .iter()
            .filter(|r| r.region != self.own_region && r.eligible());
        let Some(current) = self.current.as_deref() else {
            let best = candidates.next()?;
            return self.change(Some(best.region.clone()), now, Why::First);
        };
        let current_rank = ranking.get(current);
        let current_score = current_rank.map_or(f64::INFINITY, |r| r.score);
        // A candidate whose replica fell behind is replaced at once: failing over to it would
        // lose the writes it lacks. With no eligible region left there is no candidate.
        if let Some(r) = current_rank
            && r.score.is_finite()
            && r.ineligible.is_some()
        {
            let to = candidates.next().map(|best| best.region.clone());
            return self.change(to, now, Why::PreviousIneligible);
        }
        if current_score == f64::INFINITY {
            let why = if ranking.get(current).is_none() {
                Why::PreviousRemoved
            } else {
                Why::PreviousDown
            };
            return match candidates.next() {
                Some(best) => self.change(Some(best.region.clone()), now, why),
                None if ranking.get(current).is_none() => self.change(None, now, why),
                None => {
                    self.better_since.clear();
                    None
                }
            };
        }
        let bar = current_score * (1.0 - self.hysteresis);
        let better: Vec<&RegionRank> = candidates
            .filter(|r| r.region != current && r.score < current_score && r.score <= bar)
            .collect();
        self.better_since
            .retain(|region, _| better.iter().any(|r| &r.region == region));
        let mut winner = None;
        for challenger in &better {
            let since = *self
                .better_since
                .entry(challenger.region.clone())
                .or_insert(now);
            if winner.is_none() && now.saturating_duration_since(since) >= self.hold {
                winner = Some(challenger.region.clone());
            }
        }
        winner.and_then(|region| self.change(Some(region), now, Why::Better))
    }

    fn change(&mut self, to: Option<String>, now: Instant, why: Why) -> Option<Change> {
        self.better_since.clear();
        if to == self.current {
            return None;
        }
        let from = std::mem::replace(&mut self.current, to.clone());
        Some(Change {
            from,
            to,
            at: now,
            why,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::time::advance;

    const SECOND: Duration = Duration::from_secs(1);

    fn ms(ms: u64) -> Option<Duration> {
        Some(Duration::from_millis(ms))
    }

    const FAILURE: Option<Duration> = None;

    /// A window holding `failures` then `latencies` (ms), all recorded at `now`: up unless
    /// nothing succeeded.
    fn window(latencies: &[u64], failures: usize, now: Instant) -> Window {
        let mut window = Window::new(Duration::from_secs(300), Duration::from_millis(1));
        for _ in 0..failures {
            window.record(now, FAILURE);
        }
        for latency in latencies {
            window.record(now, ms(*latency));
        }
        window
    }

    /// Ranks one window per region, each given as (name, latencies in ms, failures).
    fn rank_regions(regions: &[(&str, Vec<u64>, usize)], params: &Params) -> Ranking {
        let now = Instant::now();
        let mut tally = Tally::new(params.quantile);
        for (region, latencies, failures) in regions {
            tally.add(
                region,
                region,
                &window(latencies, *failures, now),
                now,
                3,
                None,
            );
        }
        tally.rank(params, "local")
    }

    #[test]
    fn one_dead_address_of_three_makes_the_region_degraded_not_down() {
        let now = Instant::now();
        let params = Params::default();
        let live = window(&[10; 20], 0, now);
        let dead = window(&[], 20, now);
        let mut tally = Tally::new(Params::default().quantile);
        tally.add_all("eu", "lb", &[&live, &live, &dead], now, 3, None);
        tally.add("us", "api", &window(&[10; 20], 0, now), now, 3, None);
        let ranking = tally.rank(&params, "local");
        let eu = ranking.get("eu").unwrap();
        assert_eq!((eu.up, eu.degraded), (Some(true), true));
        // The pooled loss (a third) costs its share of the penalty, not +Inf.
        let expected = 0.010 + params.loss_penalty.as_secs_f64() / 3.0;
        assert!((eu.score - expected).abs() < 1e-9, "{}", eu.score);
        let us = ranking.get("us").unwrap();
        assert_eq!((us.up, us.degraded), (Some(true), false));
        assert_eq!(ranking.regions[0].region, "us");

        // Every address dead: the target, and so the region, is down (and not degraded).
        let mut tally = Tally::new(Params::default().quantile);
        tally.add_all("eu", "lb", &[&dead, &dead, &dead], now, 3, None);
        let eu = tally.rank(&params, "local").get("eu").cloned().unwrap();
        assert_eq!(
            (eu.up, eu.degraded, eu.score),
            (Some(false), false, f64::INFINITY)
        );
    }

    /// A ranking with the given scores and nothing else.
    fn ranking(scores: &[(&str, f64)]) -> Ranking {
        ordered(
            scores
                .iter()
                .map(|(region, score)| RegionRank {
                    region: (*region).to_owned(),
                    rank: 0,
                    score: *score,
                    up: Some(score.is_finite()),
                    degraded: false,
                    worst_target: None,
                    p50: None,
                    p95: None,
                    p99: None,
                    loss_ratio: None,
                    samples: 0,
                    successes: 0,
                    targets: 1,
                    replication_lag: None,
                    ineligible: None,
                })
                .collect(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_replica_makes_its_region_ineligible_at_once_and_it_comes_back() {
        let params = Params {
            max_replication_lag: Some(Duration::from_secs(5)),
            hold: Duration::from_secs(2),
            ..Params::default()
        };
        let tally = |eu_lag: Option<f64>, now: Instant| {
            let mut tally = Tally::new(Params::default().quantile);
            tally.add("eu", "eu-db", &window(&[10; 20], 0, now), now, 3, eu_lag);
            tally.add("us", "us-http", &window(&[80; 20], 0, now), now, 3, None);
            tally.rank(&params, "local")
        };
        let mut failover = Failover::new("local", &params);
        let now = Instant::now();
        let ranking = tally(Some(1.0), now);
        assert!(ranking.get("eu").unwrap().eligible());
        failover.update(&ranking, now);
        assert_eq!(failover.current(), Some("eu"));

        // Past the bound (+Inf: broken is past any bound): replaced at once, no hold.
        for lag in [6.0, f64::INFINITY] {
            let ranking = tally(Some(lag), now);
            let eu = ranking.get("eu").unwrap();
            assert_eq!(eu.ineligible, Some(Ineligible::ReplicationLag));
            assert_eq!(eu.replication_lag, Some(lag));
            assert_eq!(eu.rank, 1, "the score is unchanged: still the fastest");
            let change = failover.update(&ranking, now);
            assert_eq!(failover.current(), Some("us"), "{change:?}");
            if let Some(change) = change {
                assert_eq!(change.why, Why::PreviousIneligible);
            }
        }
        // Exactly at the bound is fine; it takes the candidate back through the hold.
        let ranking = tally(Some(5.0), now);
        assert!(ranking.get("eu").unwrap().eligible());
        assert_eq!(failover.update(&ranking, now), None);
        advance(Duration::from_secs(2)).await;
        let later = Instant::now();
        let change = failover.update(&tally(Some(0.0), later), later).unwrap();
        assert_eq!(
            (change.to.as_deref(), change.why),
            (Some("eu"), Why::Better)
        );

        // Without max_replication_lag, lag never matters.
        let mut tally = Tally::new(Params::default().quantile);
        tally.add(
            "eu",
            "eu-db",
            &window(&[10; 20], 0, later),
            later,
            3,
            Some(1e9),
        );
        assert!(
            tally
                .rank(&Params::default(), "local")
                .get("eu")
                .unwrap()
                .eligible()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn samples_are_listed_with_their_age() {
        let mut window = Window::new(Duration::from_secs(10), Duration::from_secs(1));
        let start = Instant::now();
        window.record(start, Some(Duration::from_millis(5)));
        window.record(start + Duration::from_secs(4), None);
        let now = start + Duration::from_secs(6);
        let listed: Vec<_> = window.samples(now).collect();
        assert_eq!(
            listed,
            vec![
                (Duration::from_secs(6), Some(Duration::from_millis(5))),
                (Duration::from_secs(2), None),
            ]
        );
        assert_eq!(
            window.samples(start + Duration::from_secs(12)).count(),
            1,
            "the first expired"
        );
    }

    #[test]
    fn samples_keep_their_microsecond_below_8_s_and_their_millisecond_above() {
        for us in (0..EXACT_BELOW).step_by(997).chain([EXACT_BELOW - 1]) {
            assert_eq!(unpack(pack(us)), us);
        }
        for us in (EXACT_BELOW..=MAX_LATENCY)
            .step_by(1_234_567)
            .chain([MAX_LATENCY])
        {
            let back = unpack(pack(us));
            assert!(back <= us && us - back < 1024, "{us} -> {back}");
        }
        assert_eq!(unpack(pack(FAILED)), FAILED);
        assert_eq!(unpack(pack(LOCAL)), LOCAL);
        let now = Instant::now();
        let mut window = Window::new(Duration::from_secs(60), Duration::from_secs(1));
        window.record(now, Some(Duration::from_micros(8_388_607)));
        window.record(now, Some(Duration::from_micros(3_600_001_000)));
        window.record(now, None);
        let held: Vec<_> = window.samples(now).map(|(_, latency)| latency).collect();
        assert_eq!(
            held,
            [
                Some(Duration::from_micros(8_388_607)),
                Some(Duration::from_secs(3_600)),
                None
            ]
        );
    }

    #[test]
    fn pool_buckets_are_exact_below_512_us_and_within_0_2_percent_above() {
        let mut previous = 0;
        for us in (0..600)
            .chain((600..u32::MAX - 2).step_by(9_973))
            .chain([u32::MAX - 2])
        {
            let bucket = Pool::bucket(us);
            assert!(bucket < POOL_BUCKETS, "{us} -> {bucket}");
            assert!(bucket >= previous, "buckets follow values ({us})");
            previous = bucket;
            let value = Pool::value(bucket);
            if us < 512 {
                assert_eq!(value, us);
            }
            let error = (f64::from(value) - f64::from(us)).abs() / f64::from(us.max(1));
            assert!(error <= 0.002, "{us} -> {value}: {error}");
            assert_eq!(
                Pool::bucket(value),
                bucket,
                "{us}: the middle is in its bucket"
            );
        }
    }

    #[test]
    fn pooled_quantiles_follow_the_exact_ones() {
        // Latencies from 0.1 ms to ~2 s, spread over many powers of two.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut samples: Vec<u32> = (0..50_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                100 + (x % 2_000_000) as u32 / (1 + (x >> 40) as u32 % 64)
            })
            .collect();
        let mut pool = Pool::default();
        samples.iter().for_each(|us| pool.add(*us));
        let qs = [0.001, 0.25, 0.5, 0.95, 0.99, 1.0];
        for (exact, pooled) in quantiles(&mut samples, qs).iter().zip(pool.quantiles(qs)) {
            let (exact, pooled) = (f64::from(exact.unwrap()), f64::from(pooled.unwrap()));
            assert!((pooled - exact).abs() / exact <= 0.002, "{exact} {pooled}");
        }
        assert_eq!(Pool::default().quantiles([0.5]), [None]);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let descending: Vec<u64> = (1..=100).rev().collect();
        let params = Params {
            quantile: 0.9,
            ..Params::default()
        };
        let ranking = rank_regions(&[("eu", descending, 0)], &params);
        let eu = &ranking.regions[0];
        // The pooled quantiles, within their 0.2%; the score, exact.
        for (pooled, exact) in [(eu.p50, 50.0), (eu.p95, 95.0), (eu.p99, 99.0)] {
            let pooled = pooled.unwrap().as_secs_f64() * 1e3;
            assert!((pooled - exact).abs() / exact <= 0.002, "{pooled} {exact}");
        }
        assert_eq!(eu.score, 0.090);

        let mut shuffled: Vec<u32> = (1..=100).map(|i| i * 37 % 101).collect();
        assert_eq!(
            quantiles(&mut shuffled, [0.07, 0.001, 0.999, 0.5, 0.07]),
            [Some(7), Some(1), Some(100), Some(50), Some(7)]
        );
        assert_eq!(quantiles(&mut [3, 1, 2], [0.5, 0.34]), [Some(2), Some(2)]);
        assert_eq!(quantiles(&mut [4], [0.01, 0.99]), [Some(4), Some(4)]);
        assert_eq!(quantiles(&mut [], [0.5]), [None]);
    }

    #[test]
    fn the_score_is_the_worst_of_the_targets_scores() {
        let now = Instant::now();
        let mut tally = Tally::new(Params::default().quantile);
        tally.add(
            "eu",
            "fast",
            &window(&(1..=50).collect::<Vec<_>>(), 5, now),
            now,
            3,
            None,
        );
        tally.add(
            "eu",
            "slow",
            &window(&(51..=100).collect::<Vec<_>>(), 20, now),
            now,
            3,
            None,
        );
        let params = Params {
            loss_penalty: Duration::from_secs(2),
            ..Params::default()
        };
        let ranking = tally.rank(&params, "local");
        let eu = ranking.get("eu").unwrap();
        assert_eq!((eu.samples, eu.successes, eu.targets), (125, 100, 2));
        assert_eq!(eu.loss_ratio, Some(0.2));
        // slow: p95 of 51..=100 ms is 98 ms, loss 20/70; fast: 48 ms + 5/55 of the penalty.
        let slow = 0.098 + 20.0 / 70.0 * 2.0;
        assert!((eu.score - slow).abs() < 1e-12, "{}", eu.score);
        assert_eq!(eu.worst_target.as_deref(), Some("slow"));
        // The pooled quantiles stay what the region's probes measured (within 0.2%).
        let p95 = eu.p95.unwrap().as_secs_f64();
        assert!((p95 - 0.095).abs() <= 0.095 * 0.002, "{p95}");
    }

    #[test]
    fn a_faster_target_of_another_kind_never_makes_a_region_look_better() {
        let now = Instant::now();
        let params = Params::default();
        let mut http_only = Tally::new(Params::default().quantile);
        http_only.add("eu", "http", &window(&[190; 100], 0, now), now, 3, None);
        let alone = http_only.rank(&params, "local").get("eu").unwrap().score;
        let mut mixed = Tally::new(Params::default().quantile);
        mixed.add("eu", "http", &window(&[190; 100], 0, now), now, 3, None);
        mixed.add("eu", "icmp", &window(&[1; 1000], 0, now), now, 3, None);
        let with_icmp = mixed.rank(&params, "local").get("eu").unwrap().score;
        assert_eq!(alone, with_icmp);
        assert!((alone - 0.190).abs() < 1e-12);
    }

    #[test]
    fn unreachable_regions_rank_last_at_infinity_by_name() {
        let ranking = rank_regions(
            &[
                ("a-down", vec![], 30),
                ("b-empty", vec![], 0),
                ("c-slow", vec![500], 0),
                ("d-lossy", vec![10], 1),
            ],
            &Params::default(),
        );
        let order: Vec<(&str, usize)> = ranking
            .regions
            .iter()
            .map(|r| (r.region.as_str(), r.rank))
            .collect();
        assert_eq!(
            order,
            [("c-slow", 1), ("d-lossy", 2), ("a-down", 3), ("b-empty", 4)]
        );
        let down = ranking.get("a-down").unwrap();
        assert_eq!(down.score, f64::INFINITY);
        assert_eq!((down.loss_ratio, down.p50), (Some(1.0), None));
        let empty = ranking.get("b-empty").unwrap();
        assert_eq!((empty.score, empty.loss_ratio), (f64::INFINITY, None));
        assert_eq!(empty.targets, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn samples_leave_the_window_when_they_expire() {
        let params = Params {
            window: Duration::from_secs(60),
            ..Params::default()
        };
        let mut old = Window::new(params.window, SECOND);
        let mut fresh = Window::new(params.window, SECOND);
        let start = Instant::now();
        for _ in 0..10 {
            old.record(Instant::now(), ms(20));
            advance(SECOND).await;
        }
        advance(Duration::from_secs(55)).await;
        fresh.record(Instant::now(), ms(80));
        // Now start + 65 s: the samples taken at 6..=9 s are younger than 60 s.
        let tally = |now| {
            let mut tally = Tally::new(Params::default().quantile);
            tally.add("old", "old", &old, now, 3, None);
            tally.add("fresh", "fresh", &fresh, now, 3, None);
            tally.rank(&params, "local")
        };
        let ranking = tally(Instant::now());
        assert_eq!(ranking.get("old").unwrap().samples, 4);
        assert_eq!(ranking.regions[0].region, "old");

        // The sample taken at 9 s expires at exactly 69 s.
        let edge = start + Duration::from_secs(69);
        assert_eq!(
            tally(edge - Duration::from_millis(1))
                .get("old")
                .unwrap()
                .samples,
            1
        );
        let ranking = tally(edge);
        let gone = ranking.get("old").unwrap();
        assert_eq!((gone.samples, gone.score), (0, f64::INFINITY));
        assert_eq!(ranking.regions[0].region, "fresh");

        assert_eq!(old.len(), 10, "reads do not drop samples");
        old.expire(edge);
        assert!(old.is_empty());
    }

    #[test]
    fn memory_stays_bounded() {
        assert_eq!(std::mem::size_of::<Window>(), 144);
        let mut window = Window::new(Duration::from_secs(300), SECOND);
        assert_eq!(window.capacity(), 301);
        let allocated = |w: &Window| (w.latencies.capacity(), w.gaps.capacity());
        assert_eq!(
            allocated(&window),
            (301, 301),
            "no allocation beyond capacity"
        );
        assert_eq!(
            Window::new(Duration::from_secs(300), Duration::from_millis(10)).capacity(),
            MAX_SAMPLES
        );
        assert_eq!(Window::new(SECOND, Duration::ZERO).capacity(), MAX_SAMPLES);

        // 100,000 probes 1 ms apart all fall within the window: only the newest 301 stay.
        let start = Instant::now();
        for i in 0..100_000 {
            window.record(start + Duration::from_millis(i), ms(i));
            assert!(window.len() <= 301);
        }
        assert_eq!(allocated(&window), (301, 301));
        // 1 ms apart where the interval is 1 s: every gap is odd, held exactly aside.
        assert_eq!(window.long_gaps.len(), 300);
        let now = start + Duration::from_millis(100_000);
        let mut tally = Tally::new(Params::default().quantile);
        tally.add("eu", "eu", &window, now, 3, None);
        let eu = &tally.rank(&Params::default(), "local").regions[0];
        assert_eq!(eu.samples, 301);
        let p50 = eu.p50.unwrap().as_secs_f64();
        assert!((p50 - 99.849).abs() <= 99.849 * 0.002, "{p50}");
    }

    /// Gaps near the interval take one byte; every sample keeps its exact time.
    #[test]
    fn gaps_near_the_interval_take_one_byte_and_keep_their_time() {
        let mut window = Window::new(Duration::from_secs(300), SECOND);
        let start = Instant::now();
        let mut at = start;
        let mut times = vec![at];
        window.record(at, ms(1));
        // The scheduler's lag moves ticks by a few ms; one byte holds 128 ms under to 126 over.
        for gap in [1000, 1003, 997, 1126, 872, 1000, 1125, 873, 1000] {
            at += Duration::from_millis(gap);
            times.push(at);
            window.record(at, ms(1));
        }
        assert!(window.long_gaps.is_empty(), "{:?}", window.long_gaps);
        for gap in [1127, 871, 2000, 0] {
            at += Duration::from_millis(gap);
            times.push(at);
            window.record(at, ms(1));
        }
        assert_eq!(window.long_gaps, [1127, 871, 2000, 0]);
        let ages: Vec<Duration> = window.samples(at).map(|(age, _)| age).collect();
        let expected: Vec<Duration> = times.iter().map(|t| at - *t).collect();
        assert_eq!(ages, expected);
        // Popping odd gaps from the front keeps the rest in step.
        window.expire(times[11] + Duration::from_secs(300));
        assert_eq!(window.len(), 2);
        assert_eq!(window.long_gaps, [0]);
        let ages: Vec<Duration> = window.samples(at).map(|(age, _)| age).collect();
        assert_eq!(ages, expected[12..].to_vec());
    }

    /// Gaps far off the interval (a stall, a skipped tick) keep their exact length.
    #[test]
    fn long_gaps_keep_their_time() {
        let hour = Duration::from_secs(3600);
        let mut window = Window::new(hour, Duration::from_secs(10));
        let start = Instant::now();
        let gaps_ms = [0, 65_534, 65_535 + 65_534, 300_000, 1, 1_000_000, 0];
        let mut times = Vec::new();
        let mut at = start;
        for (i, gap) in gaps_ms.iter().enumerate() {
            at += Duration::from_millis(*gap);
            times.push(at);
            window.record(at, ms(i as u64 + 1));
        }
        assert_eq!(window.long_gaps.len(), 6, "none is near the 10 s interval");
        let now = *times.last().unwrap();
        let ages: Vec<Duration> = window.samples(now).map(|(age, _)| age).collect();
        let expected: Vec<Duration> = times.iter().map(|t| now - *t).collect();
        assert_eq!(ages, expected);
        // Each sample leaves exactly a window after it was taken, long gaps or not.
        for (i, taken) in times.iter().enumerate() {
            let mut tally = Tally::new(Params::default().quantile);
            tally.add(
                "eu",
                "eu",
                &window,
                *taken + hour - Duration::from_millis(1),
                3,
                None,
            );
            let live = tally.rank(&Params::default(), "local").regions[0].samples;
            let younger = times.iter().filter(|t| **t >= *taken).count();
            assert_eq!(live, younger, "before sample {i} expires");
        }
        window.expire(times[3] + hour);
        assert_eq!(window.len(), 3);
        assert_eq!(window.long_gaps.len(), 2);
        let ages: Vec<Duration> = window.samples(now).map(|(age, _)| age).collect();
        assert_eq!(ages, expected[4..].to_vec());
    }

    #[test]
    fn the_epoch_moves_up_before_offsets_overflow() {
        let window_length = Duration::from_secs(300);
        let mut window = Window::new(window_length, SECOND);
        let start = Instant::now();
        window.record(start, ms(1));
        let overflow = start + Duration::from_millis(u32::MAX.into());
        let times = [overflow - SECOND, overflow + SECOND, overflow + 2 * SECOND];
        for at in times {
            window.record(at, ms(2));
        }
        assert_eq!(window.len(), 3);
        let live = |now| {
            let mut tally = Tally::new(Params::default().quantile);
            tally.add("eu", "eu", &window, now, 3, None);
            tally.rank(&Params::default(), "local").regions[0].samples
        };
        assert_eq!(live(times[2]), 3);
        assert_eq!(live(times[0] + window_length - Duration::from_millis(1)), 3);
        assert_eq!(live(times[0] + window_length), 2);
        assert_eq!(live(times[2] + window_length), 0);
    }

    #[test]
    fn a_sample_recorded_out_of_order_is_filed_at_the_latest_time() {
        let mut window = Window::new(Duration::from_secs(60), SECOND);
        let start = Instant::now();
        window.record(start, ms(1));
        window.record(start + 10 * SECOND, ms(1));
        window.record(start + 5 * SECOND, ms(2));
        let times: Vec<u32> = window.timed().map(|(at, _)| at).collect();
        assert_eq!(times[1], times[2]);
        window.expire(start + 69 * SECOND);
        assert_eq!(window.len(), 2);
        window.expire(start + 70 * SECOND);
        assert!(window.is_empty());
    }

    #[test]
    fn the_first_choice_is_immediate_and_never_the_own_region() {
        let params = Params::default();
        let mut failover = Failover::new("local", &params);
        let now = Instant::now();
        let dark = ranking(&[("local", 0.001), ("eu", f64::INFINITY)]);
        assert_eq!(failover.update(&dark, now), None);
        assert_eq!(failover.current(), None);

        let later = now + SECOND;
        let lit = ranking(&[("local", 0.001), ("eu", 0.2), ("us", 0.1)]);
        let change = failover.update(&lit, later);
        assert_eq!(
            change,
            Some(Change {
                from: None,
                to: Some("us".into()),
                at: later,
                why: Why::First,
            })
        );
    }

    /// Updates `failover` once a second for `seconds` with `scores`; returns the changes.
    async fn hold_scores(
        failover: &mut Failover,
        scores: &[(&str, f64)],
        seconds: u64,
    ) -> Vec<Change> {
        let ranking = ranking(scores);
        let mut changes = Vec::new();
        for _ in 0..seconds {
            changes.extend(failover.update(&ranking, Instant::now()));
            advance(SECOND).await;
        }
        changes
    }

    #[tokio::test(start_paused = true)]
    async fn a_challenger_takes_over_exactly_after_the_hold() {
        let params = Params::default();
        let mut failover = Failover::new("local", &params);
        hold_scores(&mut failover, &[("eu", 0.100), ("us", 0.200)], 1).await;
        assert_eq!(failover.current(), Some("eu"));

        // 5% better for ten minutes is noise.
        let changes = hold_scores(&mut failover, &[("eu", 0.100), ("us", 0.095)], 600).await;
        assert_eq!(changes, []);

        // 11% better: the hold restarts after a single update that is not better enough.
        let changes = hold_scores(&mut failover, &[("eu", 0.100), ("us", 0.089)], 50).await;
        assert_eq!(changes, []);
        hold_scores(&mut failover, &[("eu", 0.100), ("us", 0.091)], 1).await;
        let since = Instant::now();
        let changes = hold_scores(&mut failover, &[("eu", 0.100), ("us", 0.089)], 60).await;
        assert_eq!(changes, [], "not before the hold");
        let changes = hold_scores(&mut failover, &[("eu", 0.100), ("us", 0.089)], 1).await;
        let at = since + params.hold;
        let expected = Change {
            from: Some("eu".into()),
            to: Some("us".into()),
            at,
            why: Why::Better,
        };
        assert_eq!(changes, [expected]);
    }

    #[tokio::test(start_paused = true)]
    async fn new_params_keep_the_choice_and_apply_to_challengers() {
        let mut failover = Failover::new("local", &Params::default());
        hold_scores(&mut failover, &[("eu", 0.100), ("us", 0.200)], 1).await;
        let shorter = Params {
            hysteresis: 0.5,
            hold: Duration::from_secs(10),
            ..Params::default()
        };
        failover.set_params(&shorter);
        assert_eq!(failover.current(), Some("eu"));
        let scores = [("eu", 0.100), ("us", 0.060)];
        assert_eq!(hold_scores(&mut failover, &scores, 70).await, []);
        let scores = [("eu", 0.100), ("us", 0.050)];
        let changes = hold_scores(&mut failover, &scores, 11).await;
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to.as_deref(), Some("us"));
        assert_eq!(failover.current(), Some("us"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_choice_is_replaced_at_once_if_anything_answers() {
        let mut failover = Failover::new("local", &Params::default());
        hold_scores(&mut failover, &[("eu", 0.1), ("us", 0.5)], 1).await;

        let all_dark = [("eu", f64::INFINITY), ("us", f64::INFINITY)];
        assert_eq!(hold_scores(&mut failover, &all_dark, 120).await, []);
        assert_eq!(failover.current(), Some("eu"), "kept while nothing answers");

        let changes = hold_scores(&mut failover, &[("eu", f64::INFINITY), ("us", 0.5)], 1).await;
        assert_eq!(changes.len(), 1);
        assert_eq!(failover.current(), Some("us"));

        // Removed from the configuration: replaced at once, by nothing if nothing answers.
        hold_scores(&mut failover, &[("eu", 0.1)], 1).await;
        assert_eq!(failover.current(), Some("eu"));
        hold_scores(&mut failover, &[("ap", f64::INFINITY)], 1).await;
        assert_eq!(failover.current(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_region_that_stops_answering_loses_the_choice_once_it_is_down() {
        let params = Params::default();
        let mut windows: Vec<(&str, Window)> = ["eu", "local", "us"]
            .into_iter()
            .map(|region| (region, Window::new(params.window, SECOND)))
            .collect();
        let mut failover = Failover::new("local", &params);
        // Probes every region once, ranks, updates.
        let tick = |eu_up: bool, windows: &mut [(&str, Window)], failover: &mut Failover| {
            let now = Instant::now();
            let mut tally = Tally::new(Params::default().quantile);
            for (region, window) in windows.iter_mut() {
                let result = if *region == "eu" && !eu_up {
                    FAILURE
                } else {
                    ms(50)
                };
                window.record(now, result);
                tally.add(region, region, window, now, 3, None);
            }
            failover.update(&tally.rank(&params, "local"), now)
        };
        for _ in 0..300 {
            tick(true, &mut windows, &mut failover);
            advance(SECOND).await;
        }
        assert_eq!(
            failover.current(),
            Some("eu"),
            "equal scores: the first by name"
        );

        let down = Instant::now();
        let change = loop {
            if let Some(change) = tick(false, &mut windows, &mut failover) {
                break change;
            }
            advance(SECOND).await;
        };
        assert_eq!(change.to.as_deref(), Some("us"));
        assert_eq!(change.why, Why::PreviousDown);
        // Down after `down_after` failures in a row: the third probe, two seconds in.
        assert_eq!(change.at - down, SECOND * (params.down_after as u32 - 1));

        // Coming back goes through hysteresis and hold like any challenger: equal scores
        // never take over.
        for _ in 0..120 {
            assert_eq!(tick(true, &mut windows, &mut failover), None);
            advance(SECOND).await;
        }
        assert_eq!(failover.current(), Some("us"));
    }

    #[tokio::test(start_paused = true)]
    async fn local_failures_are_nobodys_loss_and_mark_the_sidecar_impaired() {
        let params = Params::default();
        let now = Instant::now();
        let mut icmp = Window::new(params.window, SECOND);
        let mut http = Window::new(params.window, SECOND);
        for _ in 0..100 {
            icmp.record_local_failure(now);
            http.record(now, ms(20));
        }
        let mut tally = Tally::new(Params::default().quantile);
        tally.add("eu", "eu-icmp", &icmp, now, 3, None);
        tally.add("eu", "eu-http", &http, now, 3, None);
        let ranking = tally.rank(&params, "local");
        let eu = ranking.get("eu").unwrap();
        assert_eq!(eu.loss_ratio, Some(0.0));
        assert_eq!(eu.samples, 100);
        assert_eq!(eu.up, Some(true));
        assert_eq!(
            icmp.down(now, 3),
            None,
            "local failures say nothing of the target"
        );
        assert_eq!(
            ranking.impaired,
            Some(Impairment::LocalFailures(vec!["eu-icmp".into()]))
        );
    }

    #[test]
    fn a_sidecar_cut_off_from_every_region_keeps_its_candidate() {
        let params = Params::default();
        let now = Instant::now();
        let up = window(&[30; 10], 0, now);
        let mut dead = window(&[30; 10], 0, now);
        for _ in 0..params.down_after {
            dead.record(now, FAILURE);
        }
        let rank = |eu: &Window, us: &Window| {
            let mut tally = Tally::new(Params::default().quantile);
            tally.add("eu", "eu", eu, now, 3, None);
            tally.add("us", "us", us, now, 3, None);
            tally.add("local", "local", &up, now, 3, None);
            tally.rank(&params, "local")
        };
        let mut failover = Failover::new("local", &params);
        assert!(failover.update(&rank(&up, &up), now).is_some());
        assert_eq!(
            failover.current(),
            Some("eu"),
            "equal scores: the first by name"
        );

        // One region down: a destination's fault; the other takes over at once.
        let one = rank(&dead, &up);
        assert_eq!(one.impaired, None);
        assert_eq!(one.get("eu").unwrap().up, Some(false));
        let mut switched = failover.clone();
        let change = switched.update(&one, now).unwrap();
        assert_eq!(
            (change.to.as_deref(), change.why),
            (Some("us"), Why::PreviousDown)
        );

        // Both down while our own region answers: we are cut off; nothing changes.
        let both = rank(&dead, &dead);
        assert_eq!(both.impaired, Some(Impairment::CutOff));
        assert_eq!(failover.update(&both, now), None);
        assert_eq!(failover.current(), Some("eu"));
    }

    /// A region's successful latencies in ms (often none) and its failures.
    fn region_data() -> impl Strategy<Value = (Vec<u64>, usize)> {
        let latencies = prop_oneof![
            1 => Just(Vec::new()),
            3 => prop::collection::vec(1..5_000u64, 1..60),
        ];
        (latencies, 0..30usize)
    }

    proptest! {
        /// The tally reads a window through [`Window::at`], the ring's two slices cut past
        /// the expired samples; [`Window::samples`] walks the same samples by their times. They
        /// agree on every window: wrapped rings (more samples than the capacity), odd gaps
        /// (stalls), local failures and any `now`.
        #[test]
        fn the_live_slices_are_the_samples_younger_than_the_window(
            window_s in 1..20u64,
            steps in prop::collection::vec((0..3_000u64, 0..20u8), 1..120),
            after_ms in 0..25_000u64,
        ) {
            let interval = Duration::from_secs(1);
            let mut window = Window::new(Duration::from_secs(window_s), interval);
            let start = Instant::now();
            let mut at = start;
            for (gap_ms, kind) in &steps {
                at += Duration::from_millis(*gap_ms);
                match kind {
                    0 => window.record_local_failure(at),
                    1..=3 => window.record(at, None),
                    us => window.record(at, Some(Duration::from_micros(u64::from(*us) * 37))),
                }
            }
            let now = at + Duration::from_millis(after_ms);
            // `samples` shows either failure as no latency.
            let expected: Vec<Option<u32>> = window
                .samples(now)
                .map(|(_, latency)| latency.map(|l| l.as_micros() as u32))
                .collect();
            let live = window.at(now);
            let got: Vec<Option<u32>> = live
                .latencies()
                .map(|l| (l <= MAX_LATENCY).then_some(l))
                .collect();
            prop_assert_eq!(&got, &expected);
            prop_assert!(live.older.len() + live.newer.len() <= window.capacity());
            // The newest sample is the last one recorded, if it is still in the window.
            let last_was_local = steps.last().is_some_and(|(_, kind)| *kind == 0);
            prop_assert_eq!(live.failing_locally(), last_was_local && !expected.is_empty());
        }

        #[test]
        fn selected_quantiles_match_the_sorted_definition(
            mut latencies in prop::collection::vec(0..1_000u32, 1..300),
            qs in prop::array::uniform4(0.001..1.0f64),
        ) {
            let mut sorted = latencies.clone();
            sorted.sort_unstable();
            let n = sorted.len() as f64;
            let expected = qs.map(|q| Some(sorted[((q * n - 1e-9).ceil() as usize).max(1) - 1]));
            prop_assert_eq!(quantiles(&mut latencies, qs), expected);
        }

        #[test]
        fn more_loss_never_improves_a_score(
            (latencies, failures) in region_data(),
            extra in 1..30usize,
            quantile in 0.01..0.99f64,
            penalty_ms in 0..10_000u64,
        ) {
            let params = Params {
                quantile,
                loss_penalty: Duration::from_millis(penalty_ms),
                ..Params::default()
            };
            let ranking = rank_regions(
                &[("a", latencies.clone(), failures), ("b", latencies, failures + extra)],
                &params,
            );
            let (a, b) = (ranking.get("a").unwrap(), ranking.get("b").unwrap());
            prop_assert!(b.score >= a.score, "{} < {}", b.score, a.score);
            prop_assert!(b.loss_ratio >= a.loss_ratio);
        }

        #[test]
        fn a_dominated_region_never_ranks_above_its_dominator(
            (latencies, failures) in region_data(),
            slower in prop::collection::vec(0..1_000u64, 60),
            extra in 0..30usize,
            others in prop::collection::vec(region_data(), 0..4),
            quantile in 0.01..0.99f64,
        ) {
            let dominated: Vec<u64> = latencies.iter().zip(&slower).map(|(l, s)| l + s).collect();
            // Named to sort first, so that equal scores would put it above.
            let mut regions = vec![
                ("a-dominated", dominated, failures + extra),
                ("b-dominator", latencies, failures),
            ];
            let names = ["c", "d", "e", "f"];
            regions.extend(others.into_iter().zip(names).map(|((l, f), name)| (name, l, f)));
            let params = Params { quantile, ..Params::default() };
            let ranking = rank_regions(&regions, &params);
            let a = ranking.get("a-dominated").unwrap();
            let b = ranking.get("b-dominator").unwrap();
            prop_assert!(a.score >= b.score, "{} < {}", a.score, b.score);
            prop_assert!(a.rank > b.rank || a.score == b.score);
        }

        #[test]
        fn ranks_are_a_total_order_with_unreachable_regions_last(
            regions in prop::collection::vec(region_data(), 1..8),
        ) {
            let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
            let regions: Vec<_> = regions.into_iter().zip(names).map(|((l, f), n)| (n, l, f)).collect();
            let ranking = rank_regions(&regions, &Params::default());
            prop_assert_eq!(ranking.regions.len(), regions.len());
            for (index, region) in ranking.regions.iter().enumerate() {
                prop_assert_eq!(region.rank, index + 1);
                prop_assert_eq!(region.score == f64::INFINITY, region.successes == 0);
            }
            for pair in ranking.regions.windows(2) {
                let key = |r: &RegionRank| (r.score, r.region.clone());
                prop_assert!(key(&pair[0]) < key(&pair[1]));
            }
        }

        #[test]
        fn alternating_noise_never_flips_the_choice(
            phases in prop::collection::vec((0.05..0.20f64, 1..10u64), 1..120),
            base in 0.001..2.0f64,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let changes = runtime.block_on(async {
                let mut failover = Failover::new("local", &Params::default());
                let mut changes = Vec::new();
                for (index, (margin, seconds)) in phases.iter().enumerate() {
                    let better = base * (1.0 - margin);
                    let scores = if index % 2 == 0 {
                        [("eu", better), ("us", base), ("local", 0.0)]
                    } else {
                        [("eu", base), ("us", better), ("local", 0.0)]
                    };
                    changes.extend(hold_scores(&mut failover, &scores, *seconds).await);
                }
                changes
            });
            prop_assert_eq!(changes.len(), 1, "only the first choice: {:?}", changes);
            prop_assert_eq!(changes[0].to.as_deref(), Some("eu"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_between_two_close_regions_never_moves_the_candidate() {
        // Two regions 5% apart (100 ms and 105 ms), each probe ±15% of that at random, one
        // probe a second: after the window fills, five minutes without a single change.
        let params = Params::default();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut jitter = move || {
            // xorshift64*: deterministic, and enough for noise.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let unit =
                (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
            1.0 + (unit * 2.0 - 1.0) * 0.15
        };
        let mut eu = Window::new(params.window, SECOND);
        let mut us = Window::new(params.window, SECOND);
        let mut failover = Failover::new("local", &params);
        let mut changes = Vec::new();
        for second in 0..600 {
            let now = Instant::now();
            eu.record(now, Some(Duration::from_secs_f64(0.100 * jitter())));
            us.record(now, Some(Duration::from_secs_f64(0.105 * jitter())));
            let mut tally = Tally::new(Params::default().quantile);
            tally.add("eu", "eu", &eu, now, 3, None);
            tally.add("us", "us", &us, now, 3, None);
            if let Some(change) = failover.update(&tally.rank(&params, "local"), now) {
                changes.push((second, change));
            }
            advance(SECOND).await;
        }
        assert_eq!(changes.len(), 1, "only the first choice: {changes:?}");
        assert_eq!(changes[0].0, 0);
    }
}

/// A benchmark, not a test: `bench/tally.sh` runs it (release build) and prints what one
/// ranking of 1,000 targets with full 5-minute windows at 1 s costs. It lives here because the
/// engine is private to the crate.
#[cfg(test)]
mod tally_bench {
    use super::*;

    #[test]
    #[ignore = "a benchmark: bench/tally.sh"]
    fn tally_of_1000_full_windows() {
        let start = Instant::now();
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        let windows: Vec<Window> = (0..1000)
            .map(|_| {
                let mut window = Window::new(Duration::from_secs(300), Duration::from_secs(1));
                for s in 0..310u64 {
                    let r = next();
                    // Loopback-like: 40-120 us, one loss in a thousand, a little jitter.
                    let latency = (r % 1000 != 0).then(|| Duration::from_micros(40 + r % 80));
                    window.record(start + Duration::from_millis(s * 1000 + r % 3), latency);
                }
                window
            })
            .collect();
        let now = start + Duration::from_secs(310);
        let names: Vec<String> = (0..1000).map(|i| format!("t{i:05}")).collect();
        let params = Params::default();
        let rounds = 200;
        let clock = Instant::now();
        let mut successes = 0;
        for _ in 0..rounds {
            let mut tally = Tally::new(params.quantile);
            for (window, name) in windows.iter().zip(&names) {
                tally.add("bench", name, window, now, params.down_after, None);
            }
            successes = tally.rank(&params, "here").regions[0].successes;
        }
        let per = clock.elapsed() / rounds;
        assert!(successes > 290_000, "{successes} successes in the windows");
        println!("tally: 1,000 targets x 300 samples: {per:?} per ranking ({rounds} rankings)");
    }
}
