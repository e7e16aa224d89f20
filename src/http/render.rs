//! The `/metrics` render cache: responses made cheap under many scrapers, in little memory.
//!
//! With 10,000 targets a text scrape is about 32 MB. Four things keep that from hurting the
//! probes, the scrapers or the process's memory:
//! - **Off the runtime.** Rendering runs on a blocking thread, never on the runtime's workers,
//!   which the probes' timers and sockets are waiting for.
//! - **Compressed as it is written.** The encoder writes into a 64 KiB buffer that is gzipped
//!   (fastest level) whenever it fills: the text is never whole in memory, and what a
//!   rendering keeps is its compressed body alone (about a twentieth of the text).
//! - **Shared.** A rendering serves every scrape of the same format that arrives within
//!   [`FRESH`] of its start, and scrapes that arrive while one is being rendered wait for it
//!   rather than start their own: the rendering work is bounded by the formats and the clock,
//!   whatever the number of scrapers. A reload (successful or not) makes the next scrape render
//!   anew, so the series of removed targets and the reload gauges never lag behind it.
//! - **Streamed.** Scrapers that accept gzip (Prometheus does) get the compressed bytes as
//!   they are; the others get them inflated 64 KiB at a time as the connection takes them
//!   ([`Inflate`]), so a slow reader holds one chunk, not a copy of the text.

use std::io::{Read as _, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use hyper::body::{Bytes, Frame, SizeHint};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::metrics::{Exposition, Registry};

/// How long a rendering is served to further scrapes. Far below any scrape interval (the
/// shortest usual one is 5 s), so a Prometheus scraping on its own always gets a fresh one;
/// long enough that a crowd of scrapers costs a few renderings a second.
pub const FRESH: Duration = Duration::from_millis(500);

/// The size of the chunks text is compressed and sent in.
const CHUNK: usize = 64 * 1024;

/// The latest rendering of each format, and of each [`Page`].
#[derive(Debug, Default)]
pub struct RenderCache {
    /// One per [`Exposition`]; the lock is held while rendering, so scrapes queue behind it.
    renderings: [Mutex<Option<Rendered>>; 3],
    /// One per [`Page`], shared the same way.
    pages: [Mutex<Option<PageRendering>>; 3],
    /// Bumped by every reload: renderings of an older generation are stale.
    generation: AtomicU64,
}

#[derive(Debug)]
struct Rendered {
    /// When the rendering started: what it shows is at least this fresh.
    at: Instant,
    /// [`RenderCache::generation`] when it started.
    generation: u64,
    body: Compressed,
}

/// A page rendering (small: kept as it is).
#[derive(Debug)]
struct PageRendering {
    at: Instant,
    generation: u64,
    body: Bytes,
}

/// A gzip body and the length of what it inflates to.
#[derive(Clone, Debug)]
pub struct Compressed {
    pub gzip: Bytes,
    pub len: u64,
}

/// A body to send: the compressed bytes as they are, or inflated as they are sent.
#[derive(Debug, Clone)]
pub struct Body {
    pub compressed: Compressed,
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
                *slot = Some(PageRendering {
                    at,
                    generation,
                    body: body.clone(),
                });
                body
            }
        }
    }

    /// Marks a reload (applied or refused): the next scrape renders anew.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The metrics in `format`, to be sent gzip-compressed if `gzip`.
    pub async fn get(&self, registry: &Arc<Registry>, format: Exposition, gzip: bool) -> Body {
        let mut slot = self.renderings[index(format)].lock().await;
        let generation = self.generation.load(Ordering::Acquire);
        let fresh = slot
            .as_ref()
            .is_some_and(|r| r.generation == generation && r.at.elapsed() < FRESH);
        if !fresh {
            // The previous rendering goes first: never two compressed bodies at once.
            *slot = None;
            let at = Instant::now();
            let registry = registry.clone();
            let body = blocking(move || {
                let mut out = Compressor::default();
                registry.encode(format, &mut out);
                out.finish()
            })
            .await;
            *slot = Some(Rendered {
                at,
                generation,
                body,
            });
        }
        Body {
            compressed: slot.as_ref().expect("rendered above").body.clone(),
            gzip,
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

/// Gzips what the encoders write, [`CHUNK`] by [`CHUNK`].
#[derive(Debug)]
pub struct Compressor {
    pending: Vec<u8>,
    encoder: GzEncoder<Vec<u8>>,
    len: u64,
}

impl Default for Compressor {
    fn default() -> Self {
        Compressor {
            pending: Vec::with_capacity(CHUNK),
            encoder: GzEncoder::new(Vec::new(), Compression::fast()),
            len: 0,
        }
    }
}

impl Compressor {
    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.pending.len() + bytes.len() > CHUNK {
            self.flush();
        }
        if bytes.len() >= CHUNK {
            self.encoder
                .write_all(bytes)
                .expect("a Vec grows as needed");
        } else {
            self.pending.extend_from_slice(bytes);
        }
    }

    fn flush(&mut self) {
        self.encoder
            .write_all(&self.pending)
            .expect("a Vec grows as needed");
        self.pending.clear();
    }

    pub fn finish(mut self) -> Compressed {
        self.flush();
        let mut gzip = self.encoder.finish().expect("a Vec grows as needed");
        gzip.shrink_to_fit();
        Compressed {
            gzip: Bytes::from(gzip),
            len: self.len,
        }
    }
}

impl std::io::Write for Compressor {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        Compressor::write(self, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Write for Compressor {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.write(s.as_bytes());
        Ok(())
    }
}

/// A response body that inflates a shared gzip body [`CHUNK`] by [`CHUNK`] as the
/// connection asks for more: what a scraper without gzip gets.
pub struct Inflate {
    decoder: GzDecoder<std::io::Cursor<Bytes>>,
    remaining: u64,
}

impl std::fmt::Debug for Inflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflate")
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl Inflate {
    pub fn new(compressed: Compressed) -> Self {
        Inflate {
            decoder: GzDecoder::new(std::io::Cursor::new(compressed.gzip)),
            remaining: compressed.len,
        }
    }
}

impl hyper::body::Body for Inflate {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(self.remaining).map_or(CHUNK, |r| r.min(CHUNK));
        let mut chunk = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match self.decoder.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Poll::Ready(Some(Err(err))),
            }
        }
        if filled == 0 {
            // Shorter than its recorded length: a bug; end the body rather than spin.
            return Poll::Ready(Some(Err(std::io::Error::other(
                "the rendering inflated shorter than its length",
            ))));
        }
        chunk.truncate(filled);
        self.remaining -= filled as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
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

    /// The text a scraper without gzip receives: the body inflated frame by frame.
    async fn plain(body: &Body) -> Vec<u8> {
        use http_body_util::BodyExt as _;
        assert!(!body.gzip);
        let collected = Inflate::new(body.compressed.clone())
            .collect()
            .await
            .unwrap();
        collected.to_bytes().to_vec()
    }

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
        let text = String::from_utf8(plain(&first).await).unwrap();
        assert!(text.contains("regionprobe_config_last_reload_successful 0"));
        assert_eq!(first.compressed.len, text.len() as u64);
        // A change within FRESH is not seen: the same bytes are served.
        gauge.set(1);
        let again = scrapes.get(&metrics, Exposition::Text, false).await;
        assert_eq!(
            again.compressed.gzip.as_ptr(),
            first.compressed.gzip.as_ptr(),
            "shared"
        );
        // A reload is seen at once.
        scrapes.invalidate();
        let after = scrapes.get(&metrics, Exposition::Text, false).await;
        let text = String::from_utf8(plain(&after).await).unwrap();
        assert!(text.contains("regionprobe_config_last_reload_successful 1"));
        // Each format has its own rendering.
        let open = scrapes.get(&metrics, Exposition::OpenMetrics, false).await;
        assert!(plain(&open).await.ends_with(b"# EOF\n"));
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

    /// A rendering far larger than a chunk: compressed as written, sent in chunks, whole.
    #[tokio::test]
    async fn large_renderings_stream_in_chunks_and_inflate_whole() {
        use std::fmt::Write as _;
        let mut expected = String::new();
        let mut out = Compressor::default();
        for i in 0..100_000 {
            let line = format!("series_{i}{{label=\"{}\"}} {i}\n", i % 7);
            expected.push_str(&line);
            out.write_str(&line).unwrap();
        }
        let compressed = out.finish();
        assert_eq!(compressed.len, expected.len() as u64);
        assert!(compressed.gzip.len() * 5 < expected.len(), "compressed");
        let mut body = Inflate::new(compressed);
        let mut received = Vec::new();
        let mut frames = 0;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= CHUNK);
            received.extend_from_slice(&data);
            frames += 1;
        }
        assert!(frames > 10, "{frames} frames");
        assert_eq!(received, expected.as_bytes());
    }

    #[tokio::test(start_paused = true)]
    async fn renderings_expire() {
        let (metrics, _) = registry();
        let scrapes = RenderCache::default();
        let first = scrapes.get(&metrics, Exposition::Text, false).await;
        tokio::time::advance(FRESH).await;
        let second = scrapes.get(&metrics, Exposition::Text, false).await;
        assert_ne!(
            first.compressed.gzip.as_ptr(),
            second.compressed.gzip.as_ptr(),
            "rendered anew"
        );
    }

    #[tokio::test]
    async fn gzip_bodies_decompress_to_the_rendering() {
        let (metrics, _) = registry();
        let scrapes = RenderCache::default();
        let text = scrapes.get(&metrics, Exposition::Text, false).await;
        let gzip = scrapes.get(&metrics, Exposition::Text, true).await;
        assert!(gzip.gzip && !text.gzip);
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&gzip.compressed.gzip[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, plain(&text).await);
        let again = scrapes.get(&metrics, Exposition::Text, true).await;
        assert_eq!(
            again.compressed.gzip.as_ptr(),
            gzip.compressed.gzip.as_ptr(),
            "compressed once"
        );
    }
}
