//! When probes run: each target (or group of ICMP targets) on a fixed-rate schedule.
//!
//! Ticks are `anchor + offset + k * interval`, computed from the anchor rather than from the
//! previous tick, so they never drift. A tick is late when the runtime wakes us after it; if
//! whole intervals went by, the missed ticks are skipped and counted rather than run back to
//! back (bunching would distort latency and load). Offsets spread targets over the interval.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::{Instant, sleep_until};

use crate::config::ProbeKind;
use crate::metrics::{LAG_BUCKETS, ProbeLabel, Registry, latency_histogram};

/// Targets spaced closer than this share a wake-up: 1,000 targets at 1 s wake the process 100
/// times a second in groups of 10 instead of 1,000 times one by one (timer, epoll and
/// scheduler work per wake-up dominate the cost of an ICMP probe).
pub const BATCH: Duration = Duration::from_millis(10);

/// Where in its interval a target fires, relative to the shared anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub anchor: Instant,
    pub offset: Duration,
    pub interval: Duration,
}

impl Schedule {
    /// The schedule of target `index` among `count` targets: evenly spread over the interval, in
    /// steps of at least [`BATCH`]. Sidecars started together still differ: each one's anchor
    /// carries a random phase (see `Supervisor`).
    pub fn spread(anchor: Instant, interval: Duration, index: usize, count: usize) -> Self {
        let count = count.max(1) as u32;
        let width = interval / count;
        let mut offset = width * (index as u32 % count);
        if width < BATCH {
            let batch = BATCH.as_nanos();
            offset = Duration::from_nanos((offset.as_nanos() / batch * batch) as u64);
        }
        Schedule {
            anchor,
            offset,
            interval,
        }
    }

    /// The first tick at or after `now`.
    pub fn first_tick_after(&self, now: Instant) -> Instant {
        let start = self.anchor + self.offset;
        if now <= start {
            return start;
        }
        let elapsed = now - start;
        let periods = elapsed.as_nanos().div_ceil(self.interval.as_nanos());
        start + self.interval * periods as u32
    }
}

/// The scheduler's self-measurement families, per probe kind.
#[derive(Clone, Debug)]
pub struct SchedulerMetrics {
    lag: Family<ProbeLabel, Histogram>,
    skipped: Family<ProbeLabel, Counter>,
}

impl SchedulerMetrics {
    /// Registers both families, with a series for every kind from the start.
    pub fn register(registry: &mut Registry) -> Self {
        let lag = Family::<ProbeLabel, Histogram>::new_with_constructor(|| {
            latency_histogram(LAG_BUCKETS)
        });
        registry.register(
            "regionprobe_scheduler_lag_seconds",
            "How late each probe started against its schedule",
            lag.clone(),
        );
        let skipped = Family::<ProbeLabel, Counter>::default();
        registry.register(
            "regionprobe_scheduler_skipped_ticks",
            "Probe ticks skipped because the previous probe or the runtime ran late",
            skipped.clone(),
        );
        for kind in ProbeKind::ALL {
            let label = ProbeLabel {
                probe: kind.as_str(),
            };
            let _ = lag.get_or_create(&label);
            let _ = skipped.get_or_create(&label);
        }
        SchedulerMetrics { lag, skipped }
    }

    /// The handles a target of `kind` reports its lateness into.
    pub fn lateness(&self, kind: ProbeKind) -> Lateness {
        let label = ProbeLabel {
            probe: kind.as_str(),
        };
        Lateness {
            lag: self.lag.get_or_create(&label).clone(),
            skipped: self.skipped.get_or_create(&label).clone(),
        }
    }
}

/// Self-measurement handles for one target.
#[derive(Clone, Debug)]
pub struct Lateness {
    pub lag: Histogram,
    pub skipped: Counter,
}

/// Waits for a schedule's ticks, measuring and reporting its own lateness.
#[derive(Debug)]
pub struct Ticker {
    schedule: Schedule,
    next: Instant,
    lateness: Lateness,
}

impl Ticker {
    pub fn new(schedule: Schedule, lateness: Lateness) -> Self {
        Ticker {
            next: schedule.first_tick_after(Instant::now()),
            schedule,
            lateness,
        }
    }

    /// Waits for the next tick and returns when it woke (the probe's start). The work done
    /// between two calls must fit in the interval (the target's timeout guarantees it); ticks
    /// it overran are skipped and counted.
    pub async fn tick(&mut self) -> Instant {
        self.tick_for(|| 1).await
    }

    /// [`Ticker::tick`] for a tick that starts `probes()` probes (a batch's members, counted
    /// once it woke): each one's lag is observed and each one's skipped ticks are counted, as
    /// if every probe had its own ticker.
    pub async fn tick_for(&mut self, probes: impl FnOnce() -> usize) -> Instant {
        sleep_until(self.next).await;
        let now = Instant::now();
        let probes = probes() as u64;
        let mut late = now - self.next;
        if late >= self.schedule.interval {
            let missed = (late.as_nanos() / self.schedule.interval.as_nanos()) as u32;
            self.lateness.skipped.inc_by(u64::from(missed) * probes);
            self.next += self.schedule.interval * missed;
            late = now - self.next;
        }
        for _ in 0..probes {
            self.lateness.lag.observe(late.as_secs_f64());
        }
        self.next += self.schedule.interval;
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn lateness() -> Lateness {
        Lateness {
            lag: Histogram::new([0.001, 0.01, 0.1]),
            skipped: Counter::default(),
        }
    }

    #[test]
    fn spread_fills_every_batch_evenly() {
        let anchor = Instant::now();
        let interval = Duration::from_secs(1);
        let offsets: Vec<Duration> = (0..1000)
            .map(|i| Schedule::spread(anchor, interval, i, 1000).offset)
            .collect();
        // 1,000 targets never fire in one burst: 10 per 10 ms batch, in every batch.
        let mut per_batch = [0u32; 100];
        for offset in &offsets {
            assert_eq!(
                offset.as_nanos() % BATCH.as_nanos(),
                0,
                "{offset:?} is not on a batch"
            );
            per_batch[(offset.as_millis() / 10) as usize] += 1;
        }
        assert!(per_batch.iter().all(|n| *n == 10), "{per_batch:?}");

        // Few targets keep their even spacing.
        let few: Vec<u128> = (0..4)
            .map(|i| Schedule::spread(anchor, interval, i, 4).offset.as_millis())
            .collect();
        assert_eq!(few, vec![0, 250, 500, 750]);
    }

    #[test]
    fn first_tick_is_aligned_to_the_anchor() {
        let anchor = Instant::now();
        let slot = Schedule {
            anchor,
            offset: Duration::from_millis(300),
            interval: Duration::from_secs(1),
        };
        assert_eq!(
            slot.first_tick_after(anchor),
            anchor + Duration::from_millis(300)
        );
        assert_eq!(
            slot.first_tick_after(anchor + Duration::from_millis(301)),
            anchor + Duration::from_millis(1300)
        );
        assert_eq!(
            slot.first_tick_after(anchor + Duration::from_millis(2300)),
            anchor + Duration::from_millis(2300)
        );
    }

    /// Records when each tick started, relative to the anchor.
    async fn ticks_with(
        probe_time: impl Fn(usize) -> Duration + Send + 'static,
        run_for: Duration,
    ) -> (Vec<Duration>, u64) {
        let anchor = Instant::now();
        let slot = Schedule {
            anchor,
            offset: Duration::from_millis(100),
            interval: Duration::from_secs(1),
        };
        let starts = Arc::new(Mutex::new(Vec::new()));
        let lateness = lateness();
        let task = {
            let starts = starts.clone();
            let lateness = lateness.clone();
            tokio::spawn(async move {
                let mut ticker = Ticker::new(slot, lateness);
                for n in 0.. {
                    ticker.tick().await;
                    starts.lock().unwrap().push(Instant::now() - anchor);
                    tokio::time::sleep(probe_time(n)).await;
                }
            })
        };
        tokio::time::sleep(run_for).await;
        task.abort();
        let starts = starts.lock().unwrap().clone();
        (starts, lateness.skipped.get())
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_are_fixed_rate_without_drift() {
        // Each probe takes 300 ms: a naive "sleep(interval) after the probe" would drift.
        let (starts, skipped) = ticks_with(
            |_| Duration::from_millis(300),
            Duration::from_millis(10_050),
        )
        .await;
        let expected: Vec<Duration> = (0..10)
            .map(|k| Duration::from_millis(100 + 1000 * k))
            .collect();
        assert_eq!(starts, expected);
        assert_eq!(skipped, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overrun_skips_and_counts_instead_of_bunching() {
        // The third probe (k = 2, at 2.1 s) hangs for 2.5 s, past the ticks at 3.1 s and 4.1 s.
        let (starts, skipped) = ticks_with(
            |n| {
                if n == 2 {
                    Duration::from_millis(2500)
                } else {
                    Duration::from_millis(10)
                }
            },
            Duration::from_millis(7_050),
        )
        .await;
        let ms: Vec<u128> = starts.iter().map(|d| d.as_millis()).collect();
        // 3.1 s is missed, 4.1 s started late (at 4.6 s) exactly once, then back on schedule.
        assert_eq!(ms, vec![100, 1100, 2100, 4600, 5100, 6100]);
        assert_eq!(skipped, 1);
    }
}
