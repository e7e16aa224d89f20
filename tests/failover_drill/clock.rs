//! The drill's clock: progress lines as it goes, milestones awaited within bounds, and the
//! table of what each step took.

use std::cell::RefCell;
use std::time::{Duration, Instant};

pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[derive(Debug)]
pub struct Clock {
    start: Instant,
    lap: RefCell<Instant>,
    /// (step, took, bound)
    rows: RefCell<Vec<(String, Duration, Option<Duration>)>>,
}

impl Clock {
    pub fn new() -> Self {
        let now = Instant::now();
        Clock {
            start: now,
            lap: RefCell::new(now),
            rows: RefCell::default(),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn say(&self, what: &str) {
        println!("[{:>6.1}s] {what}", self.start.elapsed().as_secs_f64());
    }

    /// Ends a step that began where the previous one ended.
    pub fn lap(&self, what: &str) {
        let now = Instant::now();
        let took = now - self.lap.replace(now);
        self.say(&format!("{what}: {}", secs(took)));
        self.rows.borrow_mut().push((what.to_owned(), took, None));
    }

    /// Starts the next step now (after milestones, which are recorded on their own).
    pub fn restart_lap(&self) {
        self.lap.replace(Instant::now());
    }

    pub fn table(&self) -> String {
        let mut rows = self.rows.borrow().clone();
        rows.push(("total".into(), self.start.elapsed(), None));
        let width = rows
            .iter()
            .map(|(w, _, _)| w.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = format!("{:width$}  {:>8}  {:>8}\n", "step", "took", "bound");
        for (what, took, bound) in rows {
            let bound = bound.map(secs).unwrap_or_default();
            out.push_str(&format!("{what:width$}  {:>8}  {bound:>8}\n", secs(took)));
        }
        out
    }

    /// Polls every milestone (every 250 ms) until all are met, each within its bound of
    /// `since`; panics with what was seen instead when one misses it.
    pub fn watch(&self, since: Instant, label: &str, mut milestones: Vec<Milestone>) {
        for m in &milestones {
            self.say(&format!(
                "  {label} → {} (bound {})?",
                m.what,
                secs(m.bound)
            ));
        }
        loop {
            for m in milestones.iter_mut().filter(|m| !m.met) {
                match (m.check)() {
                    Ok(at) => {
                        let took = at.saturating_duration_since(since);
                        m.met = true;
                        let what = format!("{label} → {}", m.what);
                        self.say(&format!("  {what}: {}", secs(took)));
                        self.rows.borrow_mut().push((what, took, Some(m.bound)));
                    }
                    Err(seen) => m.seen = seen,
                }
            }
            if milestones.iter().all(|m| m.met) {
                return;
            }
            let late: Vec<String> = milestones
                .iter()
                .filter(|m| !m.met && since.elapsed() > m.bound)
                .map(|m| format!("{} (bound {}); seen: {}", m.what, secs(m.bound), m.seen))
                .collect();
            assert!(
                late.is_empty(),
                "{label}: not within the bound:\n{}",
                late.join("\n")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Something the drill waits for after an action, within `bound` of it. The check returns
/// when it happened (a notification's arrival, or now), or what it sees instead.
pub struct Milestone<'a> {
    what: String,
    bound: Duration,
    check: Box<dyn FnMut() -> Result<Instant, String> + 'a>,
    met: bool,
    seen: String,
}

pub fn milestone<'a>(
    what: &str,
    bound: Duration,
    check: impl FnMut() -> Result<Instant, String> + 'a,
) -> Milestone<'a> {
    Milestone {
        what: what.to_owned(),
        bound,
        check: Box::new(check),
        met: false,
        seen: String::new(),
    }
}

/// Both checks hold; it happened when the later did.
pub fn both<'a>(
    mut first: impl FnMut() -> Result<Instant, String> + 'a,
    mut second: impl FnMut() -> Result<Instant, String> + 'a,
) -> impl FnMut() -> Result<Instant, String> + 'a {
    move || Ok(first()?.max(second()?))
}
