//! The session-sender's bookkeeping: which packets are out, which came back, and what the
//! reflector's sequence numbers say about each direction. Pure (time is passed in), so the
//! accounting is tested without sockets.
//!
//! A packet is settled in sequence order: once answered and every earlier packet is settled,
//! or once it is older than the wait. The reflector numbers the packets it receives 0, 1, 2...
//! so once the packets up to the last settled answer (`end` of them) are settled, it had
//! received `r_max + 1` packets, less the later ones that overtook them (answered, still out,
//! with a smaller number). Of the `end`, those it never received were lost forward; those it
//! received and whose replies never came, backward. Unanswered packets after the last answer
//! wait for the next one. Counters only grow; reordering is counted, not taken for loss.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::packet::{Reply, Timestamp};
use crate::probe::outcome::{BACKWARD, FORWARD, StampReport as Report};

/// Remembered answers, for telling duplicates from strays.
const REMEMBERED: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Answer {
    reflector_seq: u32,
    /// Forward and backward delay on the two unsynchronised clocks (offset included).
    forward: f64,
    backward: f64,
}

#[derive(Clone, Copy, Debug)]
struct Sent {
    t1: Timestamp,
    at: Instant,
    answer: Option<Answer>,
}

/// One sender session (one socket, one reflector).
#[derive(Debug, Default)]
pub struct Session {
    next_seq: u32,
    out: BTreeMap<u32, Sent>,
    /// Answered packets settled recently: sequence to the reflector's sequence.
    answered: BTreeMap<u32, u32>,
    /// The last settled answered packet (sender seq), for IPDV and reordering.
    last: Option<(u32, Answer)>,
    /// Answered packets settled, the highest reflector sequence among them, and how many
    /// packets there are up to the last of them.
    settled_answered: u64,
    max_settled_r: Option<u32>,
    end: u64,
    /// Losses attributed so far, per direction.
    attributed: [u64; 2],
    /// Highest reflector sequence number that has arrived here.
    max_reflector_seq: Option<u32>,
    report: Report,
}

impl Session {
    /// The next sequence number, recorded as sent now with timestamp `t1`.
    pub fn send(&mut self, t1: Timestamp, at: Instant) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.out.insert(
            seq,
            Sent {
                t1,
                at,
                answer: None,
            },
        );
        seq
    }

    /// Forgets a packet whose send failed: it never left, so it is neither sent nor lost.
    pub fn unsend(&mut self, seq: u32) {
        if self.out.remove(&seq).is_some() && seq.wrapping_add(1) == self.next_seq {
            self.next_seq = seq;
        }
    }

    pub fn invalid(&mut self) {
        self.report.invalid += 1;
    }

    /// A reply that arrived at `t4` with the TTL the socket reported. Returns the round trip
    /// in seconds for a first answer to a packet still out.
    pub fn answer(
        &mut self,
        reply: &Reply,
        t4: Timestamp,
        ttl: Option<u8>,
        synchronised: Option<f64>,
    ) -> Option<f64> {
        let s = reply.sender_seq;
        let r = reply.seq;
        if let Some(sent) = self.out.get_mut(&s) {
            if let Some(first) = sent.answer {
                self.report.duplicated[duplicate_direction(first.reflector_seq, r)] += 1;
                return None;
            }
            // The echoed T1 must be ours: a reply that forged or garbled it is no answer.
            if reply.sender_timestamp != sent.t1 {
                self.report.invalid += 1;
                return None;
            }
            match self.max_reflector_seq {
                Some(max) if r < max => self.report.reordered[BACKWARD] += 1,
                _ => self.max_reflector_seq = Some(r),
            }
            let t1 = sent.t1;
            let forward = reply.receive.since(t1);
            let backward = t4.since(reply.timestamp);
            sent.answer = Some(Answer {
                reflector_seq: r,
                forward,
                backward,
            });
            self.report.ttl[BACKWARD] = ttl.or(self.report.ttl[BACKWARD]);
            if reply.sender_ttl != 0 {
                self.report.ttl[FORWARD] = Some(reply.sender_ttl);
            }
            if let Some(ours) = synchronised
                && reply.error.synchronised_flag()
                && !reply.error.ptp()
                && let Some(theirs) = reply.error.seconds()
            {
                self.report.clock_error = Some([ours, theirs]);
                // A negative one-way delay contradicts the clocks' claim: no sample rather
                // than a wrong one.
                for (d, delay) in [(FORWARD, forward), (BACKWARD, backward)] {
                    if delay >= 0.0 {
                        self.report.one_way[d].push(delay);
                    }
                }
            }
            let total = t4.since(t1);
            let residence = reply.timestamp.since(reply.receive);
            let rtt = if (0.0..total).contains(&residence) {
                total - residence
            } else {
                total
            };
            return Some(rtt.max(0.0));
        }
        match self.answered.get(&s) {
            Some(&first) => self.report.duplicated[duplicate_direction(first, r)] += 1,
            // Given up on (or never sent): late if it is one of ours from the past.
            None if s < self.next_seq && self.next_seq - s <= REMEMBERED as u32 * 4 => {
                self.report.late += 1
            }
            None => self.report.invalid += 1,
        }
        None
    }

    /// Whether every packet from `first` on has been answered.
    pub fn all_answered_from(&self, first: u32) -> bool {
        self.out
            .range(first..)
            .all(|(_, sent)| sent.answer.is_some())
    }

    /// Settles, in order, what is answered or was sent before `expired_before`.
    pub fn settle(&mut self, expired_before: Instant) {
        while let Some(entry) = self.out.first_entry() {
            let sent = *entry.get();
            if sent.answer.is_none() && sent.at >= expired_before {
                break;
            }
            let s = *entry.key();
            entry.remove();
            self.report.settled += 1;
            let Some(answer) = sent.answer else {
                continue; // attributed when the next answer settles
            };
            let r = answer.reflector_seq;
            if let Some((s0, a0)) = self.last {
                if r < a0.reflector_seq {
                    self.report.reordered[FORWARD] += 1;
                }
                if s0.wrapping_add(1) == s {
                    self.report.ipdv[FORWARD].push(answer.forward - a0.forward);
                    self.report.ipdv[BACKWARD].push(answer.backward - a0.backward);
                }
            }
            self.last = Some((s, answer));
            self.settled_answered += 1;
            self.max_settled_r = Some(self.max_settled_r.map_or(r, |m| m.max(r)));
            self.end = u64::from(s) + 1;
            self.answered.insert(s, r);
            if self.answered.len() > REMEMBERED {
                self.answered.pop_first();
            }
        }
        self.attribute();
    }

    /// Splits the unanswered packets up to `end` into the two directions (see the module doc).
    fn attribute(&mut self) {
        let Some(max_r) = self.max_settled_r else {
            return;
        };
        let overtakers = self
            .out
            .values()
            .filter(|sent| sent.answer.is_some_and(|a| a.reflector_seq < max_r))
            .count() as u64;
        let received = (u64::from(max_r) + 1)
            .saturating_sub(overtakers)
            .clamp(self.settled_answered, self.end);
        let totals = [self.end - received, received - self.settled_answered];
        for d in [FORWARD, BACKWARD] {
            let new = totals[d].saturating_sub(self.attributed[d]);
            self.report.lost[d] += new;
            self.attributed[d] += new;
        }
    }

    /// The changes since the last call.
    pub fn take(&mut self) -> Report {
        std::mem::take(&mut self.report)
    }
}

/// A second answer with the same reflector sequence is a copy made on the way back; with a
/// new one, the reflector received the request twice.
fn duplicate_direction(first: u32, again: u32) -> usize {
    if first == again { BACKWARD } else { FORWARD }
}

#[cfg(test)]
mod tests {
    use super::super::packet::ErrorEstimate;
    use super::*;
    use std::time::Duration;

    /// A reflector and two links for the session: each packet's fate decided by the test.
    struct Link {
        session: Session,
        reflector_seq: u32,
        start: Instant,
    }

    #[derive(Clone, Copy)]
    enum Fate {
        Ok,
        LostForward,
        LostBackward,
    }

    impl Link {
        fn new() -> Self {
            Link {
                session: Session::default(),
                reflector_seq: 0,
                start: Instant::now(),
            }
        }

        fn ts(ms: f64) -> Timestamp {
            Timestamp::from_unix(
                Duration::from_secs(1_700_000_000) + Duration::from_secs_f64(ms / 1e3),
            )
        }

        /// Sends one packet at `t` ms with forward/backward delays in ms.
        fn packet(&mut self, t: f64, fate: Fate, fwd: f64, bwd: f64) {
            let at = self.start + Duration::from_secs_f64(t / 1e3);
            let t1 = Self::ts(t);
            let s = self.session.send(t1, at);
            if matches!(fate, Fate::LostForward) {
                return;
            }
            let r = self.reflector_seq;
            self.reflector_seq += 1;
            if matches!(fate, Fate::LostBackward) {
                return;
            }
            let reply = Reply {
                seq: r,
                timestamp: Self::ts(t + fwd + 0.1),
                error: ErrorEstimate::UNSYNCHRONISED,
                ssid: 0,
                receive: Self::ts(t + fwd),
                sender_seq: s,
                sender_timestamp: t1,
                sender_error: ErrorEstimate::UNSYNCHRONISED,
                sender_ttl: 64,
            };
            let rtt = self
                .session
                .answer(&reply, Self::ts(t + fwd + 0.1 + bwd), Some(60), None)
                .unwrap();
            assert!((rtt * 1e3 - (fwd + bwd)).abs() < 1e-3, "{rtt}");
        }
    }

    #[test]
    fn losses_are_told_apart_by_the_reflectors_sequence() {
        let mut link = Link::new();
        let fates = [
            Fate::Ok,
            Fate::LostForward,
            Fate::LostBackward,
            Fate::Ok,
            Fate::LostBackward,
            Fate::LostForward,
            Fate::LostForward,
            Fate::Ok,
            Fate::LostForward,
        ];
        for (i, fate) in fates.iter().enumerate() {
            link.packet(i as f64 * 10.0, *fate, 5.0, 1.0);
        }
        link.session.settle(link.start + Duration::from_secs(10));
        let report = link.session.take();
        assert_eq!(report.settled, 9);
        // The trailing forward loss waits for the next answer.
        assert_eq!(report.lost, [3, 2]);
        link.packet(100.0, Fate::Ok, 5.0, 1.0);
        link.session.settle(link.start + Duration::from_secs(10));
        let report = link.session.take();
        assert_eq!(report.lost, [1, 0]);
        assert_eq!(report.ttl, [Some(64), Some(60)]);
        assert!(
            report.one_way[FORWARD].is_empty(),
            "no clock claim, no one-way delay"
        );
    }

    #[test]
    fn a_packet_that_overtook_another_is_reordering_not_loss() {
        let mut session = Session::default();
        let start = Instant::now();
        let reply = |s: u32, r: u32, t1: Timestamp| Reply {
            seq: r,
            timestamp: Link::ts(2.0),
            error: ErrorEstimate::UNSYNCHRONISED,
            ssid: 0,
            receive: Link::ts(1.0),
            sender_seq: s,
            sender_timestamp: t1,
            sender_error: ErrorEstimate::UNSYNCHRONISED,
            sender_ttl: 0,
        };
        let t1 = Link::ts(0.0);
        let (s0, s1, s2) = (
            session.send(t1, start),
            session.send(t1, start),
            session.send(t1, start),
        );
        // s1 reached the reflector first; its reply also came back first.
        session.answer(&reply(s1, 0, t1), Link::ts(3.0), None, None);
        session.settle(start);
        session.answer(&reply(s0, 1, t1), Link::ts(3.0), None, None);
        session.settle(start);
        let report = session.take();
        assert_eq!(report.lost, [0, 0]);
        assert_eq!(report.reordered[FORWARD], 1);
        // s2 lost on the way back: the reflector numbered it 2, which the next answer shows.
        let s3 = session.send(t1, start);
        session.answer(&reply(s3, 3, t1), Link::ts(3.0), None, None);
        session.settle(start + Duration::from_secs(1));
        let report = session.take();
        assert_eq!((report.settled, report.lost), (2, [0, 1]));
        let _ = s2;
    }

    #[test]
    fn ipdv_is_the_delay_difference_of_consecutive_packets_per_direction() {
        let mut link = Link::new();
        link.packet(0.0, Fate::Ok, 5.0, 1.0);
        link.packet(10.0, Fate::Ok, 7.0, 1.5);
        link.packet(20.0, Fate::LostForward, 0.0, 0.0);
        link.packet(30.0, Fate::Ok, 4.0, 1.0);
        link.packet(40.0, Fate::Ok, 4.0, 3.0);
        link.session.settle(link.start + Duration::from_secs(10));
        let report = link.session.take();
        let ms = |v: &[f64]| {
            v.iter()
                .map(|x| (x * 1e3 * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(ms(&report.ipdv[FORWARD]), vec![2.0, 0.0]);
        assert_eq!(ms(&report.ipdv[BACKWARD]), vec![0.5, 2.0]);
    }

    #[test]
    fn an_unanswered_packet_holds_later_answers_until_it_expires() {
        let mut link = Link::new();
        link.packet(0.0, Fate::LostBackward, 5.0, 1.0);
        link.packet(1.0, Fate::Ok, 5.0, 1.0);
        link.session.settle(link.start);
        assert_eq!(link.session.take().settled, 0);
        link.session.settle(link.start + Duration::from_millis(500));
        let report = link.session.take();
        assert_eq!((report.settled, report.lost), (2, [0, 1]));
    }

    #[test]
    fn duplicates_and_late_answers_are_counted_never_answered_twice() {
        let mut session = Session::default();
        let start = Instant::now();
        let t1 = Link::ts(0.0);
        let s = session.send(t1, start);
        let reply = Reply {
            seq: 0,
            timestamp: Link::ts(2.0),
            error: ErrorEstimate::UNSYNCHRONISED,
            ssid: 0,
            receive: Link::ts(1.0),
            sender_seq: s,
            sender_timestamp: t1,
            sender_error: ErrorEstimate::UNSYNCHRONISED,
            sender_ttl: 0,
        };
        assert!(session.answer(&reply, Link::ts(3.0), None, None).is_some());
        assert!(session.answer(&reply, Link::ts(3.1), None, None).is_none());
        let again = Reply { seq: 1, ..reply };
        assert!(session.answer(&again, Link::ts(3.2), None, None).is_none());
        session.settle(start);
        assert!(session.answer(&reply, Link::ts(3.3), None, None).is_none());
        let forged = Reply {
            sender_timestamp: Link::ts(9.0),
            sender_seq: session.send(Link::ts(5.0), start),
            ..reply
        };
        assert!(session.answer(&forged, Link::ts(6.0), None, None).is_none());
        let report = session.take();
        assert_eq!(report.duplicated, [1, 2]);
        assert_eq!(report.invalid, 1);
        assert_eq!(report.ttl, [None, None]);
    }

    #[test]
    fn one_way_delays_need_both_clocks_synchronised() {
        let mut session = Session::default();
        let start = Instant::now();
        let t1 = Link::ts(0.0);
        let s = session.send(t1, start);
        let synced = ErrorEstimate::synchronised(Duration::from_micros(100));
        let reply = Reply {
            seq: 0,
            timestamp: Link::ts(30.5),
            error: synced,
            ssid: 0,
            receive: Link::ts(30.0),
            sender_seq: s,
            sender_timestamp: t1,
            sender_error: synced,
            sender_ttl: 0,
        };
        session.answer(&reply, Link::ts(35.5), None, Some(1e-4));
        let report = session.take();
        let ms: Vec<f64> = report
            .one_way
            .iter()
            .map(|v| (v[0] * 1e3).round())
            .collect();
        assert_eq!(ms, vec![30.0, 5.0]);
        assert!(report.clock_error.is_some());

        let s = session.send(t1, start);
        let unsynced = Reply {
            sender_seq: s,
            error: ErrorEstimate::UNSYNCHRONISED,
            ..reply
        };
        session.answer(&unsynced, Link::ts(35.5), None, Some(1e-4));
        let report = session.take();
        assert!(report.one_way[FORWARD].is_empty() && report.clock_error.is_none());
    }
}
