//! The ranking, kept current: every [`PERIOD`] the targets' windows are ranked and the
//! failover choice updated; the result is a [`Snapshot`] that `/metrics`, the APIs and the
//! status page read without recomputing anything.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::engine::{Failover, Impairment, Params, Ranking, Tally, Why};

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
    /// Why the candidate is the candidate.
    pub why: Option<Why>,
    /// A better region waiting out the hold.
    pub challenger: Option<ChallengerView>,
    /// Whether there is a healthy place to go if our region failed now: a candidate that is
    /// up and has been the candidate for at least `hold`.
    pub ready: bool,
}

/// A challenger as the readers show it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChallengerView {
    pub region: String,
    /// How much lower its score is than the candidate's, as a fraction of the candidate's.
    pub better_by: f64,
    /// How long it must stay that much better to take over.
    pub hold_left: Duration,
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
    /// When the candidate last changed, on the ranking's clock (for readiness).
    changed_at: Option<Instant>,
    why: Option<Why>,
    /// Whether the last ranking said impaired, to log changes of that state once.
    impaired: Option<Impairment>,
}

impl Ranker {
    pub fn new(source_region: &str, params: &Params) -> Self {
        Ranker {
            params: params.clone(),
            failover: Failover::new(source_region, params),
            source_region: source_region.to_owned(),
            best_since: None,
            changed_at: None,
            why: None,
            impaired: None,
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

    /// The quantile a [`Tally`] for [`Ranker::rank`] scores its targets at.
    pub fn quantile(&self) -> f64 {
        self.params.quantile
    }

    /// Ranks the targets' windows as tallied at `now` and updates the failover choice.
    pub fn rank(&mut self, tally: Tally, now: Instant) -> Snapshot {
        let ranking = tally.rank(&self.params, &self.source_region);
        let before = self
            .failover
            .current()
            .and_then(|region| ranking.get(region))
            .map(|r| r.score);
        if let Some(change) = self.failover.update(&ranking, now) {
            self.best_since = Some(SystemTime::now());
            self.changed_at = Some(now);
            self.why = Some(change.why);
            let after = change
                .to
                .as_deref()
                .and_then(|region| ranking.get(region))
                .map(|r| r.score);
            tracing::info!(
                from = change.from.as_deref().unwrap_or("none"),
                to = change.to.as_deref().unwrap_or("none"),
                from_score = %score_text(before),
                to_score = %score_text(after),
                why = change.why.as_str(),
                "failover candidate changed"
            );
        }
        if ranking.impaired != self.impaired {
            match &ranking.impaired {
                Some(impairment) => tracing::warn!(
                    impairment = %describe(impairment),
                    "this sidecar cannot probe properly; its failures are not counted as the destinations' loss"
                ),
                None => tracing::info!("this sidecar probes properly again"),
            }
            self.impaired = ranking.impaired.clone();
        }
        let best = self.failover.current().map(str::to_owned);
        let best_rank = best.as_deref().and_then(|region| ranking.get(region));
        let challenger = self.failover.challenger(&ranking).and_then(|challenger| {
            let current = best_rank?.score;
            let score = ranking.get(&challenger.region)?.score;
            Some(ChallengerView {
                better_by: if current > 0.0 {
                    (current - score) / current
                } else {
                    0.0
                },
                hold_left: self
                    .failover
                    .hold()
                    .saturating_sub(now.saturating_duration_since(challenger.since)),
                region: challenger.region,
            })
        });
        let ready = best_rank.is_some_and(|r| r.eligible() && r.up != Some(false))
            && self
                .changed_at
                .is_some_and(|at| now.saturating_duration_since(at) >= self.params.hold);
        Snapshot {
            source_region: self.source_region.clone(),
            computed_at: Some(SystemTime::now()),
            ranking,
            best,
            best_since: self.best_since,
            why: self.why,
            challenger,
            ready,
        }
    }
}

/// A score for the log: milliseconds, or `unreachable`.
fn score_text(score: Option<f64>) -> String {
    match score {
        Some(s) if s.is_finite() => format!("{:.3}ms", s * 1000.0),
        Some(_) => "unreachable".to_owned(),
        None => "none".to_owned(),
    }
}

/// An impairment in words, for the log, the API and the page.
pub fn describe(impairment: &Impairment) -> String {
    match impairment {
        Impairment::CutOff => {
            "every other region is down at once: most likely this sidecar's own network".to_owned()
        }
        Impairment::LocalFailures(targets) => format!(
            "probes fail on this side (reason=\"local\") for {}",
            targets.join(", ")
        ),
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
        why: None,
        challenger: None,
        ready: false,
    })))
}
