//! The failover ranking: the pure [`engine`] (windows, scores, ranks, hysteresis), the
//! [`task`] state that keeps it current every second, and the [`collector`] that exports it.

mod collector;
mod engine;
mod task;

pub use collector::register;
pub use engine::{Params, Tally, Window};
pub use task::{PERIOD, Ranker, SharedSnapshot, Snapshot, describe, initial};
