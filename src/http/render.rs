//! The `/metrics` render cache: responses made cheap under many scrapers.
//!
//! With 1,000 targets a text scrape is about 3.4 MB and 8 ms of CPU. Three things keep that
//! from hurting the probes or limiting the scrapers:
//! - **Off the runtime.** Rendering runs on a blocking thread, never on the runtime's workers,
//!   which the probes' timers and sockets are waiting for.
//! - **Shared.** A rendering serves every scrape of the same format that arrives within
//!   [`FRESH`] of its start, and scrapes that arrive while one is being rendered wait for it
//!   rather than start their own: the rendering work is bounded by the formats and the clock,
//!   whatever the number of scrapers. A reload (successful or not) makes the next scrape render
//!   anew, so the series of removed targets and the reload gauges never lag behind it.
//! - **Compressed once.** Scrapers that accept gzip (Prometheus does) get the rendering
//!   compressed, once per rendering, at gzip's fastest level: about a twentieth of the bytes.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use hyper::body::Bytes;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::metrics::{Exposition, Registry};

/// How long a rendering is served to further scrapes. Far below any scrape interval (the
/// shortest usual one is 5 s), so a Prometheus scraping on its own always gets a fresh one;
/// long enough that a crowd of scrapers costs a few renderings a second.
pub const FRESH: Duration = Duration::from_millis(500);

/// The latest rendering of each format, and of each [`Page`].
#[derive(Debug, Default)]
pub struct RenderCache {
    /// One per [`Exposition`]; the lock is held while rendering, so scrapes queue behind it.
    renderings: [Mutex<Option<Rendered>>; 3],
    /// One per [`Page`], shared the same way.
    pages: [Mutex<Option<Rendered>>; 3],
    /// Bumped by every reload: renderings of an older generation are stale.
    generation: AtomicU64,
}

#[derive(Debug)]
struct Rendered {
    /// When the rendering started: what it shows is at least this fresh.
    at: Instant,
    /// [`RenderCache::generation`] when it started.
    generation: u64,
    body: Bytes,
    /// Compressed on first demand.
    gzip: Option<Bytes>,
}

/// A body to send: the bytes, and whether they are gzip-compressed.
#[derive(Debug, Clone)]
pub struct Body {
    pub bytes: Bytes,
    pub gzip: bool,
}

/// The other views shared like `/metrics`: the status page and the JSON APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Status,
    Targets,
    Ranking,
}

impl RenderCache {
    /// `page`, rendered by `render` on the blocking pool unless a rendering younger than
    /// [`FRESH`] (and no older than the last reload) can be shared.
    pub async fn page(
        &self,
        page: Page,
        render: impl FnOnce() -> Vec<u8> + Send + 'static,
    ) -> Bytes {
        let mut slot = self.pages[page as usize].lock().await;
        let generation = self.generation.load(Ordering::Acquire);
        match slot.as_ref() {
            Some(r) if r.generation == generation && r.at.elapsed() < FRESH => r.body.clone(),
            _ => {
                let at = Instant::now();
                let body = Bytes::from(blocking(render).await);
                *slot = Some(Rendered {
                    at,
                    generation,
                    body: body.clone(),
                    gzip: None,
                });
                body
            }
        }
    }

    /// Marks a reload (applied or refused): the next scrape renders anew.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The metrics in `format`, gzip-compressed if `gzip`.
    pub async fn get(&self, registry: &Arc<Registry>, format: Exposition, gzip: bool) -> Body {
        let mut slot = self.renderings[index(format)].lock().await;
        let generation = self.generation.load(Ordering::Acquire);
        let fresh = slot
            .as_ref()
            .is_some_and(|r| r.generation == generation && r.at.elapsed() < FRESH);
        if !fresh {
            let at = Instant::now();
            let registry = registry.clone();
            let body = blocking(move || registry.encode(format)).await;
            *slot = Some(Rendered {
                at,
                generation,
                body: Bytes::from(body),
                gzip: None,
            });
        }
        let rendered = slot.as_mut().expect("rendered above");
        if !gzip {
            return Body {
                bytes: rendered.body.clone(),
                gzip: false,
            };
        }
        if rendered.gzip.is_none() {
            let plain = rendered.body.clone();
            rendered.gzip = Some(Bytes::from(blocking(move || compress(&plain)).await));
        }
        Body {
            bytes: rendered.gzip.clone().expect("compressed above"),
            gzip: true,
        }
    }
}

fn index(format: Exposition) -> usize {
    match format {
        Exposition::Text => 0,
        Exposition::OpenMetrics => 1,
        Exposition::Protobuf => 2,
    }
}

/// Runs `work` on the blocking pool. A panic there (a bug in an encoder) panics here too, as
/// it would have on the worker.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

fn compress(plain: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(plain.len() / 8), Compression::fast());
    encoder.write_all(plain).expect("a Vec grows as needed");
    encoder.finish().expect("a Vec grows as needed")
}

/// Whether an `Accept-Encoding` header accepts gzip: `gzip` (or `x-gzip`, or `*`) listed
/// without `q=0`. An explicit `gzip;q=0` wins over `*`.
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let Some(header) = accept_encoding else {
        return false;
    };
    let mut star = false;
    for item in header.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default().to_ascii_lowercase();
        let refused = parts.any(|param| {
            param.split_once('=').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("q")
                    && value.trim().parse::<f64>().is_ok_and(|q| q <= 0.0)
            })
        });
        match coding.as_str() {
            "gzip" | "x-gzip" => return !refused,
            "*" => star = !refused,
            _ => {}
        }
    }
    star
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use prometheus_client::metrics::gauge::Gauge;

    use super::*;

    /// A registry with one gauge the test sets, and the process families.
    fn registry() -> (Arc<Registry>, Gauge) {
        let mut registry = Registry::default();
        let gauge = Gauge::default();
        registry.register(
            "regionprobe_config_last_reload_successful",
            "1 if the last configuration (re)load succeeded",
            gauge.clone(),
        );
        registry.register_process();
        (Arc::new(registry), gauge)
    }

    #[test]
    fn gzip_is_accepted_as_http_says() {
        for (header, gzip) in [
            (None, false),
            (Some("gzip"), true),
            (Some("deflate, gzip;q=0.5"), true),
            (Some("GZIP"), true),
            (Some("x-gzip"), true),
            (Some("gzip;q=0"), false),
            (Some("gzip; q=0.0, *"), false),
            (Some("*"), true),
            (Some("*;q=0"), false),
            (Some("identity"), false),
            (Some("br, deflate"), false),
        ] {
            assert_eq!(accepts_gzip(header), gzip, "{header:?}");
        }
    }

    #[tokio::test]
    async fn renderings_are_shared_while_fresh_and_renewed_by_a_reload() {
        let (metrics, gauge) = registry();
        let scrapes = RenderCache::default();
        let first = scrapes.get(&metrics, Exposition::Text, false).await;
        let text = String::from_utf8(first.bytes.to_vec()).unwrap();
        assert!(text.contains("regionprobe_config_last_reload_successful 0"));
        // A change within FRESH is not seen: the same bytes are served.
        gauge.set(1);
        let again = scrapes.get(&metrics, Exposition::Text, false).await;
        assert_eq!(again.bytes.as_ptr(), first.bytes.as_ptr(), "shared");
        // A reload is seen at once.
        scrapes.invalidate();
        let after = scrapes.get(&metrics, Exposition::Text, false).await;
        let text = String::from_utf8(after.bytes.to_vec()).unwrap();
        assert!(text.contains("regionprobe_config_last_reload_successful 1"));
        // Each format has its own rendering.
        let open = scrapes.get(&metrics, Exposition::OpenMetrics, false).await;
        assert!(open.bytes.ends_with(b"# EOF\n"));
    }

    #[tokio::test]
    async fn pages_are_shared_while_fresh_and_renewed_by_a_reload() {
        let scrapes = RenderCache::default();
        let renders = Arc::new(AtomicU64::new(0));
        let render = |renders: &Arc<AtomicU64>| {
            let renders = renders.clone();
            move || format!("page {}", renders.fetch_add(1, Ordering::SeqCst)).into_bytes()
        };
        let first = scrapes.page(Page::Status, render(&renders)).await;
        let again = scrapes.page(Page::Status, render(&renders)).await;
        assert_eq!(again.as_ptr(), first.as_ptr(), "shared");
        let other = scrapes.page(Page::Targets, render(&renders)).await;
        assert_eq!(&other[..], b"page 1", "each page its own");
        scrapes.invalidate();
        let after = scrapes.page(Page::Status, render(&renders)).await;
        assert_eq!(&after[..], b"page 2");
    }

    #[tokio::test(start_paused = true)]
    async fn renderings_expire() {
        let (metrics, _) = registry();
        let scrapes = RenderCache::default();
        let first = scrapes.get(&metrics, Exposition::Text, false).await;
        tokio::time::advance(FRESH).await;
        let second = scrapes.get(&metrics, Exposition::Text, false).await;
        assert_ne!(first.bytes.as_ptr(), second.bytes.as_ptr(), "rendered anew");
    }

    #[tokio::test]
    async fn gzip_bodies_decompress_to_the_rendering() {
        let (metrics, _) = registry();
        let scrapes = RenderCache::default();
        let plain = scrapes.get(&metrics, Exposition::Text, false).await;
        let gzip = scrapes.get(&metrics, Exposition::Text, true).await;
        assert!(gzip.gzip && !plain.gzip);
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&gzip.bytes[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, plain.bytes.to_vec());
        let again = scrapes.get(&metrics, Exposition::Text, true).await;
        assert_eq!(again.bytes.as_ptr(), gzip.bytes.as_ptr(), "compressed once");
    }
}
