//! `/api/v1/ranking` and `/api/v1/targets`: the ranking and the targets' state as JSON, for
//! automation that must pick a failover region now. The status page renders the same views.
//!
//! Times are RFC 3339 strings (UTC), durations seconds as numbers. A score of `+Inf` (no
//! successful probe in the window) is `null`, as JSON has no infinity.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use std::sync::atomic::Ordering;

use crate::config::{Addresses, Config};
use crate::probe::{self, Failure, Reason};
use crate::ranking::{Snapshot, describe};
use crate::targets::{LastResult, LiveTarget, LiveTargets};

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
    /// Up, but some of its targets, or some addresses of an `addresses = "all"` target, are
    /// down.
    pub degraded: bool,
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
    /// The worst replication lag its database targets report, seconds; `null` when none
    /// reports one or replication is broken (then `ineligible` says so).
    pub replication_lag_seconds: Option<f64>,
    /// Whether the region may be the failover candidate (a finite score, nothing against it).
    pub eligible: bool,
    /// Why it may not, in words (`replication_lag: ...`); `null` otherwise.
    pub ineligible: Option<String>,
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
    /// Where the target came from: `inline` (a `[[target]]` of the configuration file) or
    /// `file:<path>` (an entry of a `[[target_file]]`).
    pub source: String,
    /// `null` before the first probe. With `addresses = "all"`: whether any address answered
    /// its last probe.
    pub up: Option<bool>,
    /// `up`, `degraded` (`addresses = "all"`: some addresses fail), `down` or `pending`.
    pub state: &'static str,
    pub last: Option<LastView>,
    pub last_success: Option<String>,
    pub last_error: Option<ErrorView>,
    /// Samples in the ranking window (of every address).
    pub window_samples: usize,
    /// The host name's resolution; `null` for a literal address or a DNS probe.
    pub resolution: Option<ResolutionView>,
    /// `addresses = "all"`: each address probed, by index; `null` otherwise.
    pub addresses: Option<Vec<AddressView>>,
}

#[derive(Debug, Serialize)]
pub struct ResolutionView {
    /// Times the name resolved to a different set of addresses.
    pub changes: u64,
    /// The name does not resolve and its last good addresses are in use.
    pub stale: bool,
}

#[derive(Debug, Serialize)]
pub struct AddressView {
    /// The `address_index` label of its series.
    pub index: usize,
    pub address: String,
    pub up: Option<bool>,
    pub last: Option<LastView>,
    pub last_error: Option<ErrorView>,
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
                degraded: r.degraded,
                worst_target: r.worst_target.clone(),
                score_seconds: r.score.is_finite().then_some(r.score),
                p50_seconds: r.p50.map(secs),
                p95_seconds: r.p95.map(secs),
                p99_seconds: r.p99.map(secs),
                loss_ratio: r.loss_ratio,
                samples: r.samples,
                successes: r.successes,
                targets: targets_of(&r.region),
                replication_lag_seconds: r.replication_lag.filter(|lag| lag.is_finite()),
                eligible: r.eligible(),
                ineligible: r.ineligible.map(|why| {
                    let lag = match r.replication_lag {
                        Some(lag) if lag.is_finite() => format!("replica {lag:.1} s behind"),
                        _ => "replication broken".to_owned(),
                    };
                    let max = config
                        .ranking
                        .max_replication_lag
                        .map(|max| {
                            format!(", max_replication_lag {}", humantime::format_duration(max))
                        })
                        .unwrap_or_default();
                    format!("{}: {lag}{max}", why.as_str())
                }),
            })
            .collect(),
    }
}

pub fn targets(live: &LiveTargets) -> TargetsView {
    let live = live.read().expect("live targets lock");
    TargetsView {
        targets: live.values().map(|target| target_view(target)).collect(),
    }
}

fn last_view(last: &LastResult) -> LastView {
    LastView {
        at: time(last.at),
        success: last.reason.is_none(),
        latency_seconds: last.latency.map(secs),
        reason: last.reason.map(Reason::as_str),
    }
}

fn error_view((at, failure): &(SystemTime, Failure)) -> ErrorView {
    ErrorView {
        at: time(*at),
        reason: failure.reason.as_str(),
        error: failure.detail.clone(),
    }
}

fn target_view(target: &LiveTarget) -> TargetView {
    let config = &target.config;
    let resolution = target
        .resolution
        .named
        .load(Ordering::Relaxed)
        .then(|| ResolutionView {
            changes: target.resolution.changes.load(Ordering::Relaxed),
            stale: target.resolution.stale.load(Ordering::Relaxed),
        });
    let mut view = target.with_status(|status| TargetView {
        name: config.name.clone(),
        region: config.region.clone(),
        probe: config.probe.kind().as_str(),
        endpoint: probe::endpoint(&config.probe),
        interval_seconds: secs(config.interval),
        timeout_seconds: secs(config.timeout),
        source: config.source.to_string(),
        up: status.last.as_ref().map(|last| last.reason.is_none()),
        state: "pending",
        last: status.last.as_ref().map(last_view),
        last_success: status.last_success.map(time),
        last_error: status.last_failure.as_ref().map(error_view),
        window_samples: status.window.len(),
        resolution,
        addresses: None,
    });
    let slots = target.slots();
    if matches!(config.addresses, Addresses::All { .. }) && !slots.is_empty() {
        let mut addresses = Vec::with_capacity(slots.len());
        let mut samples = 0;
        let mut newest: Option<(SystemTime, LastView)> = None;
        let mut last_success = None;
        let mut last_error: Option<(SystemTime, Failure)> = None;
        for slot in &slots {
            slot.with_status(|status| {
                samples += status.window.len();
                if let Some(last) = &status.last
                    && newest.as_ref().is_none_or(|(at, _)| last.at > *at)
                {
                    newest = Some((last.at, last_view(last)));
                }
                last_success = last_success.max(status.last_success);
                if let Some(failure) = &status.last_failure
                    && last_error.as_ref().is_none_or(|(at, _)| failure.0 > *at)
                {
                    last_error = Some(failure.clone());
                }
                addresses.push(AddressView {
                    index: slot.index,
                    address: slot.address.to_string(),
                    up: status.last.as_ref().map(|last| last.reason.is_none()),
                    last: status.last.as_ref().map(last_view),
                    last_error: status.last_failure.as_ref().map(error_view),
                });
            });
        }
        let up = addresses.iter().filter(|a| a.up == Some(true)).count();
        let known = addresses.iter().filter(|a| a.up.is_some()).count();
        view.up = (known > 0).then_some(up > 0);
        view.state = match (known, up) {
            (0, _) => "pending",
            (_, 0) => "down",
            (_, up) if up < addresses.len() => "degraded",
            _ => "up",
        };
        view.window_samples = samples;
        view.last = newest.map(|(_, last)| last);
        view.last_success = last_success.map(time);
        view.last_error = last_error.as_ref().map(error_view);
        view.addresses = Some(addresses);
    } else {
        view.state = match view.up {
            Some(true) => "up",
            Some(false) => "down",
            None => "pending",
        };
    }
    view
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
            .as_ref()
            .clone()
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
