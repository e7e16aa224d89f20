//! `GET /`: the status page a person reads at a glance. The ranking in rank order, the
//! failover candidate, a latency chart per region over the window (inline SVG drawn here: the
//! page loads nothing from anywhere, so it works in an isolated container), and every target's
//! state and last error. It refreshes itself every 5 seconds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use tokio::time::Instant;

use super::api::{RankingView, TargetsView, millis};
use crate::targets::LiveTargets;

/// Columns of a region chart: each shows the median latency of the samples in its slice of
/// the window, and a red mark if any probe failed in it.
const CHART_SLICES: usize = 60;
const CHART_WIDTH: f64 = 300.0;
const CHART_HEIGHT: f64 = 60.0;

/// Every sample of every region's targets, as (seconds ago, latency in seconds or failure).
type Samples = BTreeMap<String, Vec<(f64, Option<f64>)>>;

/// Collects the windows of all live targets by region, for the charts.
pub fn samples(live: &LiveTargets) -> Samples {
    let now = Instant::now();
    let mut by_region = Samples::new();
    for target in live.read().expect("live targets lock").values() {
        let points = by_region.entry(target.config.region.clone()).or_default();
        target.for_each_status(|status| {
            points.extend(
                status
                    .window
                    .samples(now)
                    .map(|(ago, latency)| (ago.as_secs_f64(), latency.map(|l| l.as_secs_f64()))),
            );
        });
    }
    by_region
}

pub fn render(ranking: &RankingView, targets: &TargetsView, samples: &Samples) -> String {
    let mut page = String::with_capacity(16 * 1024);
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"5\"><title>regionprobe: {region}</title><style>{STYLE}</style></head><body>\
<header><h1>regionprobe</h1><p>region <b>{region}</b> &middot; version {version} &middot; ranked {computed}</p>\
<nav><a href=\"/metrics\">/metrics</a> <a href=\"/api/v1/ranking\">/api/v1/ranking</a> \
<a href=\"/api/v1/targets\">/api/v1/targets</a> <a href=\"/-/healthy\">/-/healthy</a> <a href=\"/-/ready\">/-/ready</a></nav></header>",
        region = escape(&ranking.source_region),
        version = env!("CARGO_PKG_VERSION"),
        computed = ranking.computed_at.as_deref().unwrap_or("not yet"),
    );

    if let Some(impaired) = &ranking.source_impaired {
        let _ = write!(
            page,
            "<p id=\"impaired\" class=\"best none\">This sidecar cannot probe properly: {}. \
Its own failures count as no one's loss, and the candidate is kept while every other region looks down.</p>",
            escape(impaired),
        );
    }
    match &ranking.best {
        Some(best) => {
            let ready = if ranking.failover_ready {
                "ready: up and stable for the hold"
            } else {
                "not ready: down, or the candidate for less than the hold"
            };
            let _ = write!(
                page,
                "<p id=\"best\" class=\"best\">Failover candidate: <b>{}</b> (since {}; {}; {})</p>",
                escape(&best.region),
                best.since.as_deref().unwrap_or("-"),
                best.why.unwrap_or("-"),
                ready,
            );
            if let Some(challenger) = &best.challenger {
                let _ = write!(
                    page,
                    "<p id=\"challenger\" class=\"note\">Challenger: <b>{}</b>, {:.0}% better, takes over in {:.0} s if it stays that much better.</p>",
                    escape(&challenger.region),
                    challenger.better_by * 100.0,
                    challenger.takes_over_in_seconds,
                );
            }
        }
        None => page.push_str(
            "<p id=\"best\" class=\"best none\">No failover candidate: no other region answered in the window.</p>",
        ),
    }

    let _ = write!(
        page,
        "<h2>Ranking</h2><p class=\"note\">score = the worst target's p{q} latency + its loss &times; {penalty} s over the last {window}; \
a region whose every target is down ranks last</p>\
<table id=\"ranking\"><thead><tr><th>rank</th><th>region</th><th>state</th><th>score</th><th>p50</th><th>p95</th><th>p99</th>\
<th>loss</th><th>samples</th><th>latency over the window</th></tr></thead><tbody>",
        q = (ranking.quantile * 100.0).round(),
        penalty = ranking.loss_penalty_seconds,
        window = humantime::format_duration(Duration::from_secs_f64(ranking.window_seconds)),
    );
    for region in &ranking.regions {
        let best = ranking
            .best
            .as_ref()
            .is_some_and(|b| b.region == region.region);
        let class = match (region.score_seconds, best, region.own) {
            (None, _, _) => " class=\"unreachable\"",
            (_, true, _) => " class=\"chosen\"",
            (_, _, true) => " class=\"own\"",
            _ => "",
        };
        let state = match region.up {
            Some(true) if region.degraded => "degraded",
            Some(true) => "up",
            Some(false) => "down",
            None => "pending",
        };
        let own = if region.own { " (own)" } else { "" };
        let own = match &region.ineligible {
            Some(why) => format!(
                "{own} <span class=\"ineligible\">not eligible: {}</span>",
                escape(why)
            ),
            None => own.to_owned(),
        };
        let chart = chart(
            samples.get(&region.region).map_or(&[][..], Vec::as_slice),
            ranking.window_seconds,
        );
        let _ = write!(
            page,
            "<tr{class} data-region=\"{name}\"><td>{rank}</td><td>{name}{own}</td><td class=\"{state}\">{state}</td><td>{score}</td><td>{p50}</td><td>{p95}</td>\
<td>{p99}</td><td>{loss}</td><td>{samples}</td><td>{chart}</td></tr>",
            rank = region.rank,
            name = escape(&region.region),
            score = region
                .score_seconds
                .map_or("unreachable".to_owned(), millis),
            p50 = region.p50_seconds.map_or("-".to_owned(), millis),
            p95 = region.p95_seconds.map_or("-".to_owned(), millis),
            p99 = region.p99_seconds.map_or("-".to_owned(), millis),
            loss = region
                .loss_ratio
                .map_or("-".to_owned(), |l| format!("{:.1}%", l * 100.0)),
            samples = region.samples,
        );
    }
    page.push_str("</tbody></table>");

    page.push_str(
        "<h2>Targets</h2><table id=\"targets\"><thead><tr><th>target</th><th>region</th><th>probe</th><th>endpoint</th>\
<th>source</th><th>state</th><th>last latency</th><th>last success</th><th>last error</th></tr></thead><tbody>",
    );
    for target in &targets.targets {
        let state = target.state;
        // Where it came from, and each address of an `addresses = "all"` target.
        let mut endpoint = escape(&target.endpoint);
        if let Some(resolution) = &target.resolution
            && resolution.stale
        {
            endpoint.push_str(
                " <span class=\"down\">(name does not resolve: last good addresses)</span>",
            );
        }
        if let Some(addresses) = &target.addresses {
            endpoint.push_str("<ul class=\"addresses\">");
            for address in addresses {
                let state = match address.up {
                    Some(true) => "up",
                    Some(false) => "down",
                    None => "pending",
                };
                let _ = write!(
                    endpoint,
                    "<li data-address=\"{address}\">#{index} {address}: <span class=\"{state}\">{state}</span>{reason}</li>",
                    index = address.index,
                    address = escape(&address.address),
                    reason = address
                        .last
                        .as_ref()
                        .and_then(|l| l.reason)
                        .map_or(String::new(), |r| format!(" ({r})")),
                );
            }
            endpoint.push_str("</ul>");
        }
        let error = target.last_error.as_ref().map_or("-".to_owned(), |e| {
            format!(
                "{}: {} <span class=\"when\">({})</span>",
                e.reason,
                escape(&e.error),
                e.at
            )
        });
        let _ = write!(
            page,
            "<tr data-target=\"{name}\"><td>{name}</td><td>{region}</td><td>{probe}</td><td>{endpoint}</td><td>{source}</td><td class=\"{state}\">{state}</td>\
<td>{latency}</td><td>{success}</td><td>{error}</td></tr>",
            name = escape(&target.name),
            region = escape(&target.region),
            probe = target.probe,
            source = escape(&target.source),
            latency = target
                .last
                .as_ref()
                .and_then(|l| l.latency_seconds)
                .map_or("-".to_owned(), millis),
            success = target.last_success.as_deref().unwrap_or("never"),
        );
    }
    page.push_str("</tbody></table></body></html>\n");
    page
}

/// A region's samples as a small SVG: the median latency per slice of the window as a line
/// (oldest on the left), failures as red ticks along the bottom.
fn chart(samples: &[(f64, Option<f64>)], window: f64) -> String {
    let mut slices: Vec<(Vec<f64>, bool)> = vec![(Vec::new(), false); CHART_SLICES];
    for (ago, latency) in samples {
        let position = ((window - ago) / window * CHART_SLICES as f64).floor();
        let Some(slice) = slices.get_mut(position.max(0.0) as usize) else {
            continue;
        };
        match latency {
            Some(latency) => slice.0.push(*latency),
            None => slice.1 = true,
        }
    }
    let medians: Vec<Option<f64>> = slices
        .iter_mut()
        .map(|(latencies, _)| {
            latencies.sort_by(f64::total_cmp);
            latencies.get(latencies.len() / 2).copied()
        })
        .collect();
    let top = medians.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    let step = CHART_WIDTH / CHART_SLICES as f64;
    let mut svg = format!(
        "<svg class=\"chart\" width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\" viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" \
role=\"img\"><title>median latency, max {}</title><rect width=\"100%\" height=\"100%\" class=\"bg\"/>",
        millis(top),
    );
    let mut line = String::new();
    for (i, median) in medians.iter().enumerate() {
        if let (Some(median), true) = (median, top > 0.0) {
            let x = step * (i as f64 + 0.5);
            // From 4 px above the bottom (failure marks) to 14 px below the top (the label).
            let y = CHART_HEIGHT - 4.0 - median / top * (CHART_HEIGHT - 18.0);
            let _ = write!(line, "{x:.1},{y:.1} ");
        }
    }
    if !line.is_empty() {
        let _ = write!(
            svg,
            "<polyline class=\"latency\" points=\"{}\"/>",
            line.trim_end()
        );
        // Each chart has its own scale: say which, or a 2 ms wobble looks like a 200 ms one.
        let _ = write!(
            svg,
            "<text class=\"max\" x=\"3\" y=\"11\">{}</text>",
            millis(top)
        );
    }
    for (i, (_, failed)) in slices.iter().enumerate() {
        if *failed {
            let x = step * i as f64;
            let _ = write!(
                svg,
                "<rect class=\"failure\" x=\"{x:.1}\" y=\"{}\" width=\"{step:.1}\" height=\"4\"/>",
                CHART_HEIGHT - 4.0
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{margin:0}header p{margin:.2em 0}nav a{margin-right:1em}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .7em;text-align:left;border-bottom:1px solid #ddd;vertical-align:middle}\
.best{font-size:1.2em;padding:.4em .8em;background:#eef6ee;border-left:4px solid #2a7}\
.best.none{background:#fbeeee;border-color:#c33}.note{color:#666;margin:0}\
tr.chosen td{background:#eef6ee}tr.unreachable td{color:#a33}\
#targets td{white-space:nowrap}#targets td:last-child{white-space:normal}\
.up{color:#2a7;font-weight:bold}.degraded{color:#c80;font-weight:bold}.down{color:#c33;font-weight:bold}.pending{color:#888}.when{color:#888;white-space:nowrap}\
svg.chart .bg{fill:#f7f7f7}svg.chart .latency{fill:none;stroke:#2563eb;stroke-width:1.5}svg.chart .failure{fill:#dc2626}\
svg.chart .max{font-size:10px;fill:#666;stroke:#f7f7f7;stroke-width:3px;paint-order:stroke}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_draws_medians_oldest_left_and_marks_failures() {
        // A 60 s window: slow samples a minute ago, fast ones now, a failure half-way.
        let samples = [(59.5, Some(0.2)), (30.2, None), (0.5, Some(0.02))];
        let svg = chart(&samples, 60.0);
        let points = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let xy: Vec<(f64, f64)> = points
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(xy.len(), 2);
        assert!(xy[0].0 < xy[1].0, "older first");
        assert!(
            xy[0].1 < xy[1].1,
            "the slow sample is drawn higher (smaller y)"
        );
        assert_eq!(svg.matches("class=\"failure\"").count(), 1);
        assert!(svg.contains(">200 ms</text>"), "the scale is shown: {svg}");
    }

    #[test]
    fn an_empty_region_draws_an_empty_chart() {
        let svg = chart(&[], 300.0);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(!svg.contains("polyline"));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&"),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
    }
}
