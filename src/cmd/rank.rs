//! `regionprobe rank`: the latency benchmark a person runs by hand before choosing a failover
//! region. The configured probes run for a while on the exporter's own machinery (the
//! [`Supervisor`], the live windows, the [`Ranker`]) with no server, then the regions are
//! printed best first as a table, JSON or CSV.
//!
//! The failover candidate is the best region other than the own one with a finite score: the
//! first choice of a fresh [`Ranker`]. Hysteresis and hold judge a choice across rankings; a
//! one-shot run ranks once, so they do not apply.

use std::fmt::Write as _;
use std::future::Future;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::time::Instant;

use crate::config::Config;
use crate::http::api::{self, RegionView, millis};
use crate::metrics::Registry;
use crate::probe::Shared;
use crate::ranking::{Ranker, Snapshot, Window};
use crate::targets::{LiveTargets, SchedulerMetrics, Supervisor, tally};

/// Added to the run's duration for the ranking window, so that no sample of the run has
/// expired when the ranking is computed, a moment after the run ends.
pub const WINDOW_MARGIN: Duration = Duration::from_secs(10);

/// How often the progress bar is updated.
const PROGRESS_PERIOD: Duration = Duration::from_millis(250);

/// How the ranking is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, milliseconds, loss in percent.
    Table,
    /// One object; seconds as numbers, `null` for a missing value or an infinite score.
    Json,
    /// A header row, then one row per region; seconds as numbers, empty fields when missing.
    Csv,
}

/// The ranking window for a run of `duration`: the configured one, or longer so the whole run
/// counts.
pub fn window_for(configured: Duration, duration: Duration) -> Duration {
    configured.max(duration.saturating_add(WINDOW_MARGIN))
}

/// Probes every target of `config` for `duration`, or until `stop` completes (Ctrl-C), then
/// ranks what was gathered.
pub async fn run(
    mut config: Config,
    duration: Duration,
    progress: &Progress,
    stop: impl Future<Output = ()>,
) -> Report {
    config.ranking.window = window_for(config.ranking.window, duration);
    warn_if_capped(&config, duration);
    let live = LiveTargets::default();
    // Nothing scrapes the scheduler's families; the targets record into them all the same.
    let scheduler = SchedulerMetrics::register(&mut Registry::default());
    let mut supervisor = Supervisor::new(Shared::default(), scheduler, live.clone());
    supervisor.apply(&config);

    let start = Instant::now();
    progress.start(duration);
    let mut redraw = tokio::time::interval(PROGRESS_PERIOD);
    let mut stop = std::pin::pin!(stop);
    let mut deadline = std::pin::pin!(tokio::time::sleep_until(start + duration));
    let interrupted = loop {
        tokio::select! {
            () = &mut deadline => break false,
            () = &mut stop => break true,
            _ = redraw.tick() => if progress.is_visible() {
                let (probes, failures) = count(&live, Instant::now());
                progress.update(start.elapsed(), duration, probes, failures);
            },
        }
    };
    let elapsed = start.elapsed().min(duration);
    // Stops every target; a probe in flight is not counted.
    drop(supervisor);
    progress.finish();
    let now = Instant::now();
    let mut ranker = Ranker::new(&config.exporter.region, &config.ranking);
    let snapshot = ranker.rank(tally(&live, ranker.quantile(), now), now);
    Report {
        config,
        snapshot,
        duration,
        elapsed,
        interrupted,
    }
}

/// A window keeps at most `MAX_SAMPLES` (`ranking::engine`): say so when a run would overflow it.
fn warn_if_capped(config: &Config, duration: Duration) {
    for target in &config.targets {
        let capacity = Window::new(config.ranking.window, target.interval).capacity();
        let probes = duration.as_nanos() / target.interval.as_nanos().max(1) + 1;
        if probes > capacity as u128 {
            tracing::warn!(
                target = %target.name,
                "a {} run at interval {} makes about {probes} probes; only the last {capacity} count",
                humantime::format_duration(duration),
                humantime::format_duration(target.interval),
            );
        }
    }
}

/// Probes done and failed so far, over every target (the windows hold the whole run).
fn count(live: &LiveTargets, now: Instant) -> (usize, usize) {
    let live = live.read().expect("live targets lock");
    live.values()
        .map(|target| {
            let mut counts = (0, 0);
            target.for_each_status(|status| {
                for (_, latency) in status.window.samples(now) {
                    counts.0 += 1;
                    counts.1 += usize::from(latency.is_none());
                }
            });
            counts
        })
        .fold((0, 0), |(p, f), (probes, failures)| {
            (p + probes, f + failures)
        })
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The configuration probed, with the ranking window the run used.
    pub config: Config,
    /// The ranking, and in `best` the failover candidate.
    pub snapshot: Snapshot,
    /// How long the run was asked to last.
    pub duration: Duration,
    /// How long it lasted.
    pub elapsed: Duration,
    /// Stopped early by a signal.
    pub interrupted: bool,
}

/// The JSON view: `/api/v1/ranking`'s region view plus the run's own facts.
#[derive(Debug, Serialize)]
pub struct RankView {
    pub source_region: String,
    /// When the ranking was computed, at the end of the run.
    pub computed_at: Option<String>,
    /// Asked for with `--duration`.
    pub duration_seconds: f64,
    /// Probed for; shorter than the duration when interrupted.
    pub elapsed_seconds: f64,
    pub interrupted: bool,
    pub window_seconds: f64,
    pub quantile: f64,
    pub loss_penalty_seconds: f64,
    /// The best other region with a finite score; `null` when no other region answered.
    pub candidate: Option<String>,
    /// Best first.
    pub regions: Vec<RankedRegionView>,
}

#[derive(Debug, Serialize)]
pub struct RankedRegionView {
    /// The region, its own-region mark included.
    #[serde(flatten)]
    pub view: RegionView,
    pub candidate: bool,
}

impl Report {
    /// The failover candidate.
    pub fn candidate(&self) -> Option<&str> {
        self.snapshot.best.as_deref()
    }

    /// Why the run failed (no other region answered), in one line; `None` when it succeeded.
    pub fn failure(&self) -> Option<String> {
        if self.candidate().is_some() {
            return None;
        }
        let own = &self.snapshot.source_region;
        let others = self
            .snapshot
            .ranking
            .regions
            .iter()
            .filter(|r| &r.region != own)
            .count();
        Some(match others {
            0 => format!("no region other than {own} is configured: nothing to fail over to"),
            n => format!(
                "no region other than {own} answered in {} ({n} other region{} probed)",
                seconds(self.elapsed),
                if n == 1 { "" } else { "s" }
            ),
        })
    }

    /// The line that says the run was cut short, if it was.
    pub fn interruption(&self) -> Option<String> {
        self.interrupted.then(|| {
            format!(
                "interrupted after {} of {}: ranking the probes gathered so far",
                seconds(self.elapsed),
                seconds(self.duration)
            )
        })
    }

    pub fn view(&self) -> RankView {
        let api::RankingView {
            source_region,
            computed_at,
            window_seconds,
            quantile,
            loss_penalty_seconds,
            best,
            regions,
            ..
        } = api::ranking(&self.snapshot, &self.config);
        let candidate = best.map(|best| best.region);
        RankView {
            regions: regions
                .into_iter()
                .map(|view| RankedRegionView {
                    candidate: candidate.as_ref() == Some(&view.region),
                    view,
                })
                .collect(),
            source_region,
            computed_at,
            duration_seconds: self.duration.as_secs_f64(),
            elapsed_seconds: self.elapsed.as_secs_f64(),
            interrupted: self.interrupted,
            window_seconds,
            quantile,
            loss_penalty_seconds,
            candidate,
        }
    }

    /// Writes the ranking to `out` in `format`.
    pub fn write(&self, format: Format, out: &mut impl Write) -> io::Result<()> {
        let view = self.view();
        let text = match format {
            Format::Table => table(&view, self.config.ranking.loss_penalty),
            Format::Json => {
                let mut text = serde_json::to_string_pretty(&view).map_err(io::Error::other)?;
                text.push('\n');
                text
            }
            Format::Csv => csv(&view),
        };
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

const TABLE_HEADER: [&str; 10] = [
    "RANK",
    "REGION",
    "P50",
    "P95",
    "P99",
    "LOSS",
    "SCORE",
    "SAMPLES",
    "SUCCESSES",
    "TARGETS",
];

/// Aligned columns (the region left, numbers right), then the candidate and how scores were
/// computed.
fn table(view: &RankView, loss_penalty: Duration) -> String {
    let rows: Vec<[String; 10]> = view
        .regions
        .iter()
        .map(|r| {
            let v = &r.view;
            let region = if r.view.own {
                format!("{} (own)", v.region)
            } else {
                v.region.clone()
            };
            [
                v.rank.to_string(),
                region,
                v.p50_seconds.map_or_else(dash, millis),
                v.p95_seconds.map_or_else(dash, millis),
                v.p99_seconds.map_or_else(dash, millis),
                v.loss_ratio
                    .map_or_else(dash, |ratio| format!("{:.1}%", ratio * 100.0)),
                v.score_seconds
                    .map_or_else(|| "unreachable".to_owned(), millis),
                v.samples.to_string(),
                v.successes.to_string(),
                v.targets.len().to_string(),
            ]
        })
        .collect();
    let mut widths = TABLE_HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = TABLE_HEADER.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            if column == 1 {
                let _ = write!(line, "{cell:<width$}");
            } else {
                let _ = write!(line, "{cell:>width$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push('\n');
    match &view.candidate {
        Some(region) => {
            let _ = writeln!(
                out,
                "Failover candidate: {region} (the best other region that answered)"
            );
        }
        None if view.regions.iter().all(|r| r.view.own) => {
            out.push_str("Failover candidate: none (no other region is configured)\n");
        }
        None => out.push_str("Failover candidate: none (no other region answered)\n"),
    }
    let _ = writeln!(
        out,
        "Score: p{} latency + loss ratio x {}, over {} of probes from {}{}.",
        trimmed(view.quantile * 100.0, 4),
        humantime::format_duration(loss_penalty),
        seconds(Duration::from_secs_f64(view.elapsed_seconds)),
        view.source_region,
        if view.interrupted {
            " (interrupted)"
        } else {
            ""
        },
    );
    out
}

const CSV_HEADER: &str = "region,rank,own,candidate,score_seconds,p50_seconds,p95_seconds,p99_seconds,loss_ratio,samples,successes,targets";

/// RFC 4180 fields, `\n` line ends; target names separated by spaces (names have none).
fn csv(view: &RankView) -> String {
    let number = |value: Option<f64>| value.map(|v| trimmed(v, 6)).unwrap_or_default();
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in &view.regions {
        let v = &r.view;
        let fields = [
            csv_field(&v.region),
            v.rank.to_string(),
            r.view.own.to_string(),
            r.candidate.to_string(),
            number(v.score_seconds),
            number(v.p50_seconds),
            number(v.p95_seconds),
            number(v.p99_seconds),
            number(v.loss_ratio),
            v.samples.to_string(),
            v.successes.to_string(),
            csv_field(&v.targets.join(" ")),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// Quoted, with quotes doubled, when it holds a comma, a quote or a line break.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

fn dash() -> String {
    "-".to_owned()
}

/// `value` with at most `decimals` decimals and no trailing zeros: `0.0603`, `1`.
fn trimmed(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A duration for people, in seconds to a tenth: `2s`, `12.3s`, `300s`.
fn seconds(duration: Duration) -> String {
    format!("{}s", trimmed(duration.as_secs_f64(), 1))
}

/// The progress bar, on stderr and only when stderr is a terminal. It is also the log writer
/// of the `rank` command, so that a warning never tears the bar.
#[derive(Clone, Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar on stderr if it is a terminal, else nothing at all.
    pub fn stderr() -> Self {
        if !io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("[{bar:30}] {msg}")
            .expect("a valid template")
            .progress_chars("=> ");
        bar.set_style(style);
        Progress { bar }
    }

    /// Draws nothing.
    pub fn hidden() -> Self {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    fn is_visible(&self) -> bool {
        !self.bar.is_hidden()
    }

    fn start(&self, total: Duration) {
        self.bar
            .set_length(total.as_millis().try_into().unwrap_or(u64::MAX));
    }

    fn update(&self, elapsed: Duration, total: Duration, probes: usize, failures: usize) {
        self.bar
            .set_position(elapsed.as_millis().try_into().unwrap_or(u64::MAX));
        self.bar.set_message(format!(
            "{}/{}  {probes} probes, {failures} failed",
            humantime::format_duration(Duration::from_secs(elapsed.as_secs())),
            humantime::format_duration(total),
        ));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Progress {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.bar.clone())
    }
}

/// Writes log lines to stderr with the bar cleared, then redraws it.
#[derive(Debug)]
pub struct LogWriter(ProgressBar);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.suspend(|| io::stderr().write(buf))
    }

    // tracing writes each formatted event with one `write_all`: keep it one suspension.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.suspend(|| io::stderr().write_all(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_covers_the_whole_run() {
        let five_minutes = Duration::from_secs(300);
        assert_eq!(
            window_for(five_minutes, Duration::from_secs(30)),
            five_minutes
        );
        assert_eq!(
            window_for(five_minutes, Duration::from_secs(600)),
            Duration::from_secs(600) + WINDOW_MARGIN
        );
    }

    #[test]
    fn numbers_lose_trailing_zeros_only() {
        assert_eq!(trimmed(0.060_300, 6), "0.0603");
        assert_eq!(trimmed(1.0, 6), "1");
        assert_eq!(trimmed(0.000_000_4, 6), "0");
        assert_eq!(trimmed(120.0, 0), "120");
        assert_eq!(seconds(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(seconds(Duration::from_secs(30)), "30s");
    }

    #[test]
    fn csv_fields_are_quoted_per_rfc_4180() {
        assert_eq!(csv_field("eu-west-1"), "eu-west-1");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
