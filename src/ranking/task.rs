//! The ranking, kept current: every [`PERIOD`] the targets' windows are ranked and the
//! failover choice updated; the result is a [`Snapshot`] that `/metrics`, the APIs and the
//! status page read without recomputing anything.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::engine::{Failover, Params, Ranking, Tally};

/// How often the ranking is recomputed. The failover hold is judged at these updates.
pub const PERIOD: Duration = Duration::from_secs(1);

/// The latest ranking and failover choice.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// This sidecar's region.
    pub source_region: String,
    /// Wall-clock time of the computation (`None` before the first).
    pub computed_at: Option<SystemTime>,
    pub ranking: Ranking,
    /// The failover candidate.
    pub best: Option<String>,
    /// When the candidate last changed.
    pub best_since: Option<SystemTime>,
}

/// Shared by the ranker (writer) and the readers.
pub type SharedSnapshot = Arc<RwLock<Arc<Snapshot>>>;

/// Computes rankings; owns the failover state.
#[derive(Debug)]
pub struct Ranker {
    params: Params,
    failover: Failover,
    source_region: String,
    best_since: Option<SystemTime>,
}

impl Ranker {
    pub fn new(source_region: &str, params: &Params) -> Self {
        Ranker {
            params: params.clone(),
            failover: Failover::new(source_region, params),
            source_region: source_region.to_owned(),
            best_since: None,
        }
    }

    /// A reload: new parameters keep the choice; a new own region starts over.
    pub fn reconfigure(&mut self, source_region: &str, params: &Params) {
        if source_region != self.source_region {
            *self = Ranker::new(source_region, params);
        } else {
            self.failover.set_params(params);
            self.params = params.clone();
        }
    }

    /// Ranks the targets' windows as tallied at `now` and updates the failover choice.
    pub fn rank(&mut self, tally: Tally, now: Instant) -> Snapshot {
        let ranking = tally.rank(&self.params);
        if let Some(change) = self.failover.update(&ranking, now) {
            self.best_since = Some(SystemTime::now());
            tracing::info!(
                from = change.from.as_deref().unwrap_or("none"),
                to = change.to.as_deref().unwrap_or("none"),
                "failover candidate changed"
            );
        }
        Snapshot {
            source_region: self.source_region.clone(),
            computed_at: Some(SystemTime::now()),
            ranking,
            best: self.failover.current().map(str::to_owned),
            best_since: self.best_since,
        }
    }
}

/// An empty snapshot, until the first ranking.
pub fn initial(source_region: &str) -> SharedSnapshot {
    Arc::new(RwLock::new(Arc::new(Snapshot {
        source_region: source_region.to_owned(),
        computed_at: None,
        ranking: Ranking::default(),
        best: None,
        best_since: None,
    })))
}
