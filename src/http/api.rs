//! `/api/v1/ranking` and `/api/v1/targets`: the ranking and the targets' state as JSON, for
//! automation that must pick a failover region now. The status page renders the same views.
//!
//! Times are RFC 3339 strings (UTC), durations seconds as numbers. A score of `+Inf` (no
//! successful probe in the window) is `null`, as JSON has no infinity.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::Config;
use crate::probe;
use crate::ranking::{Snapshot, describe};
use crate::targets::LiveTargets;

#[derive(Debug, Serialize)]
pub struct RankingView {
    pub source_region: String,
    /// When the ranking was computed (`null` before the first, a second after start).
    pub computed_at: Option<String>,
    pub window_seconds: f64,
    pub quantile: f64,
    pub loss_penalty_seconds: f64,
    pub best: Option<BestView>,
    /// Is there a healthy place to go if this region failed now: a candidate that is up and
    /// has been the candidate for at least `[ranking] hold`.
    pub failover_ready: bool,
    /// `null` unless this sidecar cannot probe properly; then why, in words. Its failures of
    /// reason `local` count as no one's loss, and while every other region is down at once
    /// the candidate is kept.
    pub source_impaired: Option<String>,
    /// `null` unless this replica is one shard of several (`--shard K/N`); then `"K/N"`,
    /// and this ranking covers this shard's targets only: the ranking of the whole source
    /// region is the recording rules' (`regionprobe:region_score_seconds:5m`), which take
    /// every shard's targets together (docs/scale.md).
    pub shard: Option<String>,
    /// Best first.
    pub regions: Vec<RegionView>,
}

#[derive(Debug, Serialize)]
pub struct BestView {
    pub region: String,
    /// When this region became the candidate.
    pub since: Option<String>,
    /// Why it is the candidate: `first region to answer`, `previous candidate down`,
    /// `previous candidate removed` or `better for the whole hold`.
    pub why: Option<&'static str>,
    /// A better region that is waiting out the hold; `null` when none is.
    pub challenger: Option<ChallengerView>,
}

#[derive(Debug, Serialize)]
pub struct ChallengerView {
    pub region: String,
    /// How much lower its score is than the candidate's, as a fraction of the candidate's.
    pub better_by: f64,
    /// Seconds it must stay that much better before it takes over.
    pub takes_over_in_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct RegionView {
    pub region: String,
    pub rank: usize,
    /// This sidecar's own region: ranked, never the candidate.
    pub own: bool,
    /// `false` when every target of the region is down (its last `down_after` probes
    /// failed), `true` when one is up, `null` before that is known.
    pub up: Option<bool>,
    /// The target whose score is the region's (the worst one).
    pub worst_target: Option<String>,
    /// `null` when nothing answered in the window (the score is +Inf).
    pub score_seconds: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// Failed / all samples in the window; `null` without samples.
    pub loss_ratio: Option<f64>,
    pub samples: usize,
    pub successes: usize,
    /// The region's targets, by name.
    pub targets: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TargetsView {
    pub targets: Vec<TargetView>,
}

#[derive(Debug, Serialize)]
pub struct TargetView {
    pub name: String,
    pub region: String,
    pub probe: &'static str,
    /// What is probed, without secrets (no headers, no URL credentials).
    pub endpoint: String,
    pub interval_seconds: f64,
    pub timeout_seconds: f64,
    /// `null` before the first probe.
    pub up: Option<bool>,
    pub last: Option<LastView>,
    pub last_success: Option<String>,
    pub last_error: Option<ErrorView>,
    /// Samples in the ranking window.
    pub window_samples: usize,
}

#[derive(Debug, Serialize)]
pub struct LastView {
    pub at: String,
    pub success: bool,
    pub latency_seconds: Option<f64>,
    /// The failure reason label, e.g. `timeout`.
    pub reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct ErrorView {
    pub at: String,
    pub reason: &'static str,
    /// In words: which status, which certificate error.
    pub error: String,
}

fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

pub fn ranking(snapshot: &Snapshot, config: &Config) -> RankingView {
    let targets_of = |region: &str| {
        config
            .targets
            .iter()
            .filter(|t| t.region == region)
            .map(|t| t.name.clone())
            .collect()
    };
    RankingView {
        source_region: snapshot.source_region.clone(),
        computed_at: snapshot.computed_at.map(time),
        shard: config.exporter.shard.map(|shard| shard.to_string()),
        window_seconds: secs(config.ranking.window),
        quantile: config.ranking.quantile,
        loss_penalty_seconds: secs(config.ranking.loss_penalty),
        best: snapshot.best.as_ref().map(|region| BestView {
            region: region.clone(),
            since: snapshot.best_since.map(time),
            why: snapshot.why.map(|why| why.as_str()),
            challenger: snapshot.challenger.as_ref().map(|c| ChallengerView {
                region: c.region.clone(),
                better_by: c.better_by,
                takes_over_in_seconds: secs(c.hold_left),
            }),
        }),
        failover_ready: snapshot.ready,
        source_impaired: snapshot.ranking.impaired.as_ref().map(describe),
        regions: snapshot
            .ranking
            .regions
            .iter()
            .map(|r| RegionView {
                region: r.region.clone(),
                rank: r.rank,
                own: r.region == snapshot.source_region,
                up: r.up,
                worst_target: r.worst_target.clone(),
                score_seconds: r.score.is_finite().then_some(r.score),
                p50_seconds: r.p50.map(secs),
                p95_seconds: r.p95.map(secs),
                p99_seconds: r.p99.map(secs),
                loss_ratio: r.loss_ratio,
                samples: r.samples,
                successes: r.successes,
                targets: targets_of(&r.region),
            })
            .collect(),
    }
}

pub fn targets(live: &LiveTargets) -> TargetsView {
    let live = live.read().expect("live targets lock");
    TargetsView {
        targets: live
            .values()
            .map(|target| {
                let config = &target.config;
                target.with_status(|status| TargetView {
                    name: config.name.clone(),
                    region: config.region.clone(),
                    probe: config.probe.kind().as_str(),
                    endpoint: probe::endpoint(&config.probe),
                    interval_seconds: secs(config.interval),
                    timeout_seconds: secs(config.timeout),
                    up: status.last.as_ref().map(|last| last.failure.is_none()),
                    last: status.last.as_ref().map(|last| LastView {
                        at: time(last.at),
                        success: last.failure.is_none(),
                        latency_seconds: last.latency.map(secs),
                        reason: last.failure.as_ref().map(|f| f.reason.as_str()),
                    }),
                    last_success: status.last_success.map(time),
                    last_error: status.last_failure.as_ref().map(|(at, failure)| ErrorView {
                        at: time(*at),
                        reason: failure.reason.as_str(),
                        error: failure.detail.clone(),
                    }),
                    window_samples: status.window.len(),
                })
            })
            .collect(),
    }
}

/// Seconds as milliseconds, to about three significant digits (latencies are measured in
/// microseconds).
pub fn millis(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    let decimals = match ms {
        ms if ms < 1.0 => 3,
        ms if ms < 10.0 => 2,
        ms if ms < 100.0 => 1,
        _ => 0,
    };
    format!("{ms:.decimals$} ms")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Target, parse};

    /// What a target's line says of it, through the real parser.
    fn endpoint(target: &Target) -> String {
        probe::endpoint(&target.probe)
    }

    fn target(lines: &str) -> Target {
        let text = format!("[[target]]\nname = \"t\"\nregion = \"r\"\n{lines}");
        parse("t.toml", &text, Some(Default::default()))
            .unwrap()
            .targets
            .remove(0)
    }

    #[test]
    fn endpoints_name_the_peer_without_secrets() {
        let http = target(
            "probe = \"http\"\nurl = \"https://user:hunter2@api.example.com/health?full=1\"\nheaders = { X-Api-Key = \"s3cret\" }",
        );
        let shown = endpoint(&http);
        assert_eq!(shown, "GET https://api.example.com/health?full=1");
        assert!(!shown.contains("hunter2") && !shown.contains("s3cret"));
        assert_eq!(
            endpoint(&target(
                "probe = \"tcp\"\naddress = \"[::1]:5432\"\ntls = true"
            )),
            "[::1]:5432 (tls)"
        );
        assert_eq!(
            endpoint(&target(
                "probe = \"dns\"\nquery = \"example.com\"\nserver = \"10.0.0.2\"\ntransport = \"tcp\""
            )),
            "example.com. A @10.0.0.2:53 (tcp)"
        );
        assert_eq!(
            endpoint(&target("probe = \"icmp\"\nhost = \"10.1.2.3\"")),
            "10.1.2.3"
        );
    }

    #[test]
    fn milliseconds_keep_about_three_digits() {
        assert_eq!(millis(0.000_085), "0.085 ms");
        assert_eq!(millis(0.001_234), "1.23 ms");
        assert_eq!(millis(0.060_349), "60.3 ms");
        assert_eq!(millis(1.503_2), "1503 ms");
    }
}
