//! ICMP targets probed in batches: one task per group of targets that share a tick.
//!
//! Many targets at a short interval share their ticks anyway ([`BATCH`](super::schedule::BATCH)
//! rounds their offsets), so 1,000 targets at 1 s fire in 100 groups of 10. With one task per
//! target each probe paid for its own timer entry (the tick), a second one (its timeout), a
//! boxed future and two polls of its task; the timer wheel's walk over scattered entries alone
//! was a tenth of the probe thread's CPU (docs/scale.md, seventh and eighth rounds). A group's
//! task waits for the tick once, sends every member's echo request back to back, and waits for
//! the answers under one deadline: one timer entry and about two polls per group instead of
//! per target.
//!
//! Only ICMP targets with `addresses = "first"` are grouped: their probe's own work is a few
//! microseconds, so running a group's probes on one task costs nothing in parallelism. The
//! other kinds (a TLS handshake is a millisecond of CPU) keep a task each, which the runtime
//! may spread over its workers.
//!
//! Membership changes with reloads. The supervisor adds a member to the group of its key
//! (interval, offset, timeout) and keeps a [`Membership`]; dropping it withdraws the member.
//! The group's task applies both at its next tick, before it probes, so a removed target is
//! never probed again; a probe already in flight when its target is removed finishes into the
//! removed target's state, which nothing reads any more. A group left without members is
//! dropped by [`Batches::prune`], which stops its task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::live::LiveTarget;
use super::schedule::{Schedule, SchedulerMetrics, Ticker};
use crate::config::ProbeKind;
use crate::probe::{Failure, Outcome, Probe};

/// What makes targets share a group: the same ticks and the same deadline.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    interval: Duration,
    offset: Duration,
    timeout: Duration,
}

/// The grouped targets' tasks, by key.
#[derive(Debug, Default)]
pub struct Batches {
    groups: HashMap<Key, Group>,
    next_id: u64,
}

#[derive(Debug)]
struct Group {
    members: Arc<Mutex<Pending>>,
    task: JoinHandle<()>,
}

impl Drop for Group {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The changes a group's task has yet to apply, and how many members it will have then.
#[derive(Debug, Default)]
struct Pending {
    added: Vec<Member>,
    removed: Vec<u64>,
    count: usize,
}

/// A target's place in its group; dropping it withdraws the target.
#[derive(Debug)]
pub struct Membership {
    id: u64,
    members: Arc<Mutex<Pending>>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut pending = self.members.lock().expect("batch lock");
        pending.count -= 1;
        // Not applied yet: it never reached the task.
        if let Some(at) = pending.added.iter().position(|m| m.id == self.id) {
            pending.added.swap_remove(at);
        } else {
            pending.removed.push(self.id);
        }
    }
}

/// One grouped target, owned by its group's task.
#[derive(Debug)]
struct Member {
    id: u64,
    live: Arc<LiveTarget>,
    probe: Probe,
    was_up: Option<bool>,
    /// This tick's result is recorded.
    done: bool,
}

impl Member {
    async fn probe(&mut self, started: Instant) {
        let result = self.probe.run().await;
        self.finish(started, &result);
    }

    fn finish(&mut self, started: Instant, result: &Result<Outcome, Failure>) {
        self.live
            .settle(self.probe.host(), started, result, &mut self.was_up);
        self.done = true;
    }
}

impl Batches {
    /// Whether a target of this kind runs in a group (with `addresses = "first"`).
    pub fn grouped(kind: ProbeKind) -> bool {
        kind == ProbeKind::Icmp
    }

    /// Adds `live` (probed by `probe` on `schedule`) to its group, starting the group's task if
    /// it is the first.
    pub fn join(
        &mut self,
        schedule: Schedule,
        live: Arc<LiveTarget>,
        probe: Probe,
        scheduler: &SchedulerMetrics,
    ) -> Membership {
        let timeout = live.config.timeout;
        let key = Key {
            interval: schedule.interval,
            offset: schedule.offset,
            timeout,
        };
        let kind = live.config.probe.kind();
        let group = self.groups.entry(key).or_insert_with(|| {
            let members = Arc::<Mutex<Pending>>::default();
            let ticker = Ticker::new(schedule, scheduler.lateness(kind));
            Group {
                task: tokio::spawn(run(ticker, members.clone(), timeout)),
                members,
            }
        });
        self.next_id += 1;
        let id = self.next_id;
        let mut pending = group.members.lock().expect("batch lock");
        pending.count += 1;
        pending.added.push(Member {
            id,
            live,
            probe,
            was_up: None,
            done: false,
        });
        drop(pending);
        Membership {
            id,
            members: group.members.clone(),
        }
    }

    /// Stops the groups left without members.
    pub fn prune(&mut self) {
        self.groups
            .retain(|_, group| group.members.lock().expect("batch lock").count > 0);
        if self.groups.capacity() > 4 * self.groups.len() + 64 {
            self.groups.shrink_to(2 * self.groups.len());
        }
    }

    /// How many group tasks run.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.groups.len()
    }
}

/// A group, forever: at each tick, apply the membership changes, probe every member at once,
/// and record a timeout for each one the deadline (tick + timeout) finds unanswered.
async fn run(mut ticker: Ticker, shared: Arc<Mutex<Pending>>, timeout: Duration) {
    let mut members: Vec<Member> = Vec::new();
    loop {
        let started = ticker
            .tick_for(|| {
                update(&shared, &mut members);
                members.len()
            })
            .await;
        for member in &mut members {
            member.done = false;
        }
        {
            let probes = join_all(members.iter_mut().map(|member| member.probe(started)));
            // Polled before the deadline, as `tokio::time::timeout` does: an answer that is in
            // when the deadline passes still counts.
            tokio::select! {
                biased;
                _ = probes => {}
                _ = sleep_until(started + timeout) => {}
            }
        }
        for member in members.iter_mut().filter(|member| !member.done) {
            let failure = member.probe.timed_out(timeout);
            member.finish(started, &Err(failure));
        }
    }
}

/// Applies the pending membership changes to the task's own list.
fn update(shared: &Mutex<Pending>, members: &mut Vec<Member>) {
    let mut pending = shared.lock().expect("batch lock");
    if pending.removed.is_empty() && pending.added.is_empty() {
        return;
    }
    let mut removed = std::mem::take(&mut pending.removed);
    removed.sort_unstable();
    members.retain(|member| removed.binary_search(&member.id).is_err());
    members.append(&mut pending.added);
    drop(pending);
    if members.capacity() > 4 * members.len() + 16 {
        members.shrink_to(2 * members.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Shared;

    /// Four ICMP targets on 127.0.0.1 (as root they answer; otherwise each probe fails for
    /// want of a socket, which is recorded all the same: either way every tick counts one
    /// probe per member).
    fn targets() -> Vec<Arc<LiveTarget>> {
        let mut text = String::from("[exporter]\nregion = \"eu\"\n");
        for name in ["a", "b", "c", "d"] {
            text.push_str(&format!(
                "[[target]]\nname = \"{name}\"\nregion = \"us\"\nprobe = \"icmp\"\nhost = \"127.0.0.1\"\n"
            ));
        }
        let config = crate::config::parse("t.toml", &text, Some(Default::default())).unwrap();
        config
            .targets
            .iter()
            .map(|t| Arc::new(LiveTarget::new(&"eu".into(), t, config.ranking.window)))
            .collect()
    }

    /// What a grouped target costs its group's task, besides its state in `LiveTarget`: 10,000
    /// targets, every 100 bytes here is a MiB. (Its own task was about 600 bytes.)
    #[test]
    fn a_member_stays_small() {
        let size = std::mem::size_of::<Member>();
        assert!(size <= 144, "a member is {size} bytes");
    }

    #[tokio::test]
    async fn members_share_a_task_per_tick_and_leave_it_at_once() {
        let mut registry = crate::metrics::Registry::default();
        let scheduler = SchedulerMetrics::register(&mut registry);
        let lag_count = || {
            let text = registry.encode_to_vec(crate::metrics::Exposition::Text);
            String::from_utf8(text)
                .unwrap()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("regionprobe_scheduler_lag_seconds_count{probe=\"icmp\"} ")
                })
                .map(|v| v.parse::<u64>().unwrap())
                .unwrap()
        };
        let shared = Shared::default();
        let live = targets();
        let anchor = Instant::now();
        let schedule = |offset_ms| Schedule {
            anchor,
            offset: Duration::from_millis(offset_ms),
            interval: Duration::from_millis(40),
        };
        let mut batches = Batches::default();
        let join = |batches: &mut Batches, i: usize, offset_ms| {
            let probe = Probe::new(&live[i].config.probe, &shared, "eu");
            batches.join(schedule(offset_ms), live[i].clone(), probe, &scheduler)
        };
        let a = join(&mut batches, 0, 0);
        let b = join(&mut batches, 1, 0);
        let c = join(&mut batches, 2, 20);
        // Joined and left before its group's first tick: never probed.
        drop(join(&mut batches, 3, 20));
        assert_eq!(batches.len(), 2, "one task per tick, not per target");

        let probes = |i: usize| live[i].metrics.probes.get();
        let settle = || tokio::time::sleep(Duration::from_millis(300));
        settle().await;
        assert!(
            (0..3).all(|i| probes(i) >= 4),
            "every member probes each tick"
        );
        assert_eq!(probes(3), 0, "a target that left before the tick");
        // Each probe's lag is observed before its result: read the results first. A tick may
        // come between the two reads (two groups of at most two members).
        let recorded: u64 = (0..3).map(probes).sum();
        let lags = lag_count();
        assert!(
            (recorded..=recorded + 4).contains(&lags),
            "one lag sample per probe, as with a task per target: {lags} for {recorded} probes"
        );

        // Leaving: probed no more from the group's next tick on (a probe in flight may end).
        drop(b);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (b_left, a_then) = (probes(1), probes(0));
        settle().await;
        assert_eq!(probes(1), b_left, "a member that left is not probed again");
        assert!(probes(0) >= a_then + 3, "the rest of its group goes on");

        // The last member out stops its group's task.
        drop(c);
        batches.prune();
        assert_eq!(batches.len(), 1);
        drop(a);
        batches.prune();
        assert_eq!(batches.len(), 0);
        let a_stopped = probes(0);
        settle().await;
        assert!(probes(0) <= a_stopped + 1, "an emptied group's task stops");
    }
}
