//! Refused requests and connections: counted by reason in
//! `regionprobe_http_requests_refused_total`, and logged at most [`LINES_PER_SECOND`] a second,
//! with paths cut to [`PATH_CHARS`] characters, so a client cannot flood the log.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;

use crate::metrics::Registry;

/// Most refusal lines logged in a second; the rest are counted and summed up in one line.
pub const LINES_PER_SECOND: u32 = 10;

/// Longest path logged, in characters.
pub const PATH_CHARS: usize = 64;

/// Why a request or a connection was refused: the `reason` label, a closed set.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reason {
    /// 401: no, malformed or wrong credentials.
    unauthorized,
    /// 503: too many password verifications waiting.
    auth_overloaded,
    /// 404.
    not_found,
    /// 405.
    method_not_allowed,
    /// 403: `POST /-/reload` with `--web.enable-lifecycle=false`.
    lifecycle_disabled,
    /// The TLS handshake failed or timed out.
    tls_handshake,
    /// No or an untrusted client certificate.
    client_certificate,
    /// Plain HTTP on the TLS port (answered 400).
    plain_http_on_tls,
    /// 503: every connection under the cap had a request in flight.
    connection_limit,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::unauthorized,
        Reason::auth_overloaded,
        Reason::not_found,
        Reason::method_not_allowed,
        Reason::lifecycle_disabled,
        Reason::tls_handshake,
        Reason::client_certificate,
        Reason::plain_http_on_tls,
        Reason::connection_limit,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Reason,
}

/// The refusal counter and the log's rate limit.
#[derive(Clone, Debug, Default)]
pub struct Refusals {
    counter: Family<ReasonLabel, Counter>,
    window: Arc<Mutex<Window>>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            start: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }
}

/// How loud a refusal is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Warn,
    Debug,
}

impl Refusals {
    /// Registers the counter, with a series for every reason from the start.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "regionprobe_http_requests_refused",
            "Requests and connections the endpoint refused, by reason",
            self.counter.clone(),
        );
        for reason in Reason::ALL {
            let _ = self.counter.get_or_create(&ReasonLabel { reason });
        }
    }

    /// Counts a refusal and logs it unless [`LINES_PER_SECOND`] were logged in this second.
    /// `path` and `user` (what the client sent) are cut and escaped; `detail` must be bounded
    /// by the caller.
    pub fn refuse(
        &self,
        reason: Reason,
        level: Level,
        peer: SocketAddr,
        (path, user): (Option<&str>, Option<&str>),
        detail: &str,
    ) {
        self.counter.get_or_create(&ReasonLabel { reason }).inc();
        let enabled = match level {
            Level::Warn => tracing::enabled!(tracing::Level::WARN),
            Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
        };
        if !enabled || !self.admit() {
            return;
        }
        let path = path.map(truncate);
        let user = user.map(truncate);
        let what = match reason {
            Reason::unauthorized => "unauthorized request",
            _ => "request refused",
        };
        let reason = format!("{reason:?}");
        match level {
            Level::Warn => tracing::warn!(%peer, path, user, reason, detail, "{what}"),
            Level::Debug => tracing::debug!(%peer, path, user, reason, detail, "{what}"),
        }
    }

    /// Whether one more line may be logged now; logs the previous window's suppressed count
    /// when a new window starts.
    fn admit(&self) -> bool {
        let mut window = self.window.lock().expect("refusal log lock");
        let elapsed = window.start.elapsed();
        if elapsed >= Duration::from_secs(1) {
            if window.suppressed > 0 {
                tracing::warn!(
                    suppressed = window.suppressed,
                    "{} more refused requests were not logged in the last {:.1} s (at most {LINES_PER_SECOND} lines a second; regionprobe_http_requests_refused_total counts them all)",
                    window.suppressed,
                    elapsed.as_secs_f64()
                );
            }
            *window = Window::default();
        }
        if window.logged < LINES_PER_SECOND {
            window.logged += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }
}

/// At most [`PATH_CHARS`] characters of `text`, with how long it was when cut, and control
/// characters escaped (the log's `Debug` formatting of the field then quotes it).
pub fn truncate(text: &str) -> String {
    let escape = |text: &str| {
        text.chars()
            .flat_map(char::escape_debug)
            .collect::<String>()
    };
    match text.char_indices().nth(PATH_CHARS) {
        None => escape(text),
        Some((end, _)) => format!("{}... ({} bytes)", escape(&text[..end]), text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_cut_and_escaped() {
        assert_eq!(truncate("/x"), "/x");
        let long = format!("/{}", "a".repeat(8000));
        let cut = truncate(&long);
        assert!(cut.len() < PATH_CHARS + 30, "{cut}");
        assert!(cut.ends_with("... (8001 bytes)"), "{cut}");
        assert_eq!(truncate("/\u{1b}[31m"), "/\\u{1b}[31m");
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_the_budget_is_logged_each_second() {
        let refusals = Refusals::default();
        let admitted = (0..100).filter(|_| refusals.admit()).count();
        assert_eq!(admitted, LINES_PER_SECOND as usize);
        assert_eq!(refusals.window.lock().unwrap().suppressed, 90);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(refusals.admit());
        assert_eq!(refusals.window.lock().unwrap().suppressed, 0);
    }
}
