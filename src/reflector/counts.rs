//! The reflector's counters: what became of each datagram, per sender region.

use std::sync::atomic::{AtomicU64, Ordering};

/// What became of one datagram: the closed set of counter labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Reflected,
    // refused: the sender may not be answered now
    NotAllowed,
    RateLimited,
    Capacity,
    // dropped: the datagram is no packet due an answer
    Truncated,
    Oversized,
    BadHmac,
    Replayed,
    SendError,
}

impl Outcome {
    pub(super) const ALL: [Outcome; 9] = [
        Outcome::Reflected,
        Outcome::NotAllowed,
        Outcome::RateLimited,
        Outcome::Capacity,
        Outcome::Truncated,
        Outcome::Oversized,
        Outcome::BadHmac,
        Outcome::Replayed,
        Outcome::SendError,
    ];

    /// The family it counts in and its `reason` (none for reflected).
    pub(super) fn label(self) -> (Family, &'static str) {
        match self {
            Outcome::Reflected => (Family::Reflected, ""),
            Outcome::NotAllowed => (Family::Refused, "not_allowed"),
            Outcome::RateLimited => (Family::Refused, "rate_limited"),
            Outcome::Capacity => (Family::Refused, "capacity"),
            Outcome::Truncated => (Family::Dropped, "truncated"),
            Outcome::Oversized => (Family::Dropped, "oversized"),
            Outcome::BadHmac => (Family::Dropped, "bad_hmac"),
            Outcome::Replayed => (Family::Dropped, "replayed"),
            Outcome::SendError => (Family::Dropped, "send_error"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    Reflected,
    Refused,
    Dropped,
}

/// One sender region's counters, one per [`Outcome`].
#[derive(Debug, Default)]
pub(super) struct Counts([AtomicU64; 9]);

impl Counts {
    pub(super) fn add(&self, outcome: Outcome) {
        self.0[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn get(&self, outcome: Outcome) -> u64 {
        self.0[outcome as usize].load(Ordering::Relaxed)
    }
}
