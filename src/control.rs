//! The one owner of everything that changes while the exporter runs: the targets (reloads)
//! and the ranking (ticks), applied one at a time, so no two changes race.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{Config, ConfigSource, Overrides};
use crate::http::{Guard, ReloadRequest, RenderCache};
use crate::metrics::Registry;
use crate::ranking::{self, Ranker, SharedSnapshot};
use crate::targets::{self, LiveTargets, SrvTargets, Supervisor, TargetFiles};

/// The reload gauges.
#[derive(Debug)]
pub struct ReloadMetrics {
    successful: Gauge,
    timestamp: Gauge<f64, AtomicU64>,
}

impl ReloadMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let successful = Gauge::default();
        registry.register(
            "regionprobe_config_last_reload_successful",
            "1 if the last configuration (re)load succeeded, 0 if it failed and the previous configuration is still running",
            successful.clone(),
        );
        let timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "regionprobe_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration (re)load",
            timestamp.clone(),
        );
        ReloadMetrics {
            successful,
            timestamp,
        }
    }

    /// Records a (re)load, applied or refused; either way the next scrape renders anew.
    pub fn mark(&self, ok: bool, renderings: &RenderCache) {
        self.successful.set(i64::from(ok));
        if ok {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            self.timestamp.set(now.as_secs_f64());
        }
        renderings.invalidate();
    }
}

/// How often freed memory is handed back to the system, and how soon after a reload (by
/// then the removed targets' tasks have ended and no rendering holds them).
const TRIM_EVERY: Duration = Duration::from_secs(60);
const TRIM_AFTER_RELOAD: Duration = Duration::from_secs(2);

/// Hands the memory glibc's allocator holds free back to the system (`malloc_trim(0)`).
///
/// glibc returns freed memory on its own only from the top of each arena: after a reload from
/// 10,000 targets to 100, the survivors' allocations sit among megabytes of free chunks that
/// stay resident for ever (the issue measured 977 MB kept after a shrink to 9 targets).
/// `malloc_trim` releases every free page of every arena, wherever it is. It walks the
/// arenas under their locks: milliseconds, once a minute and once after each reload. Chosen
/// over another allocator (jemalloc, mimalloc; reasoned, not measured): those return memory
/// in 64 KiB-4 MiB pages or extents, which a few survivors among freed targets keep
/// resident, where glibc's trim works on 4 KiB pages (docs/scale.md, "Memory that comes
/// back").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointer and touches only the allocator's own free lists,
    // under the allocator's locks; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Elsewhere (musl, other systems) the allocator has no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

/// Fixes glibc's mmap threshold at its default, 128 KiB: every block that large (the
/// `/metrics` rendering's compressed body and its buffers, the tables of large maps) gets a
/// mapping of its own, unmapped when it is freed. glibc otherwise raises the threshold each
/// time such a block is freed (up to 32 MiB), after which blocks of the rendering's size come
/// from the heap and their pages stay resident between renderings. Call it first thing, before
/// any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune_allocator() {
    // SAFETY: mallopt takes no pointer and only sets one of the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Elsewhere the allocator's own defaults stand.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

/// The control loop's state.
#[derive(Debug)]
pub struct Control {
    pub source: ConfigSource,
    /// `--web.listen-address` and `--web.config.file`, over every reload.
    pub overrides: Overrides,
    pub supervisor: Supervisor,
    pub reloads: ReloadMetrics,
    pub renderings: Arc<RenderCache>,
    pub current: Arc<RwLock<Arc<Config>>>,
    pub live: LiveTargets,
    pub ranker: Ranker,
    pub snapshot: SharedSnapshot,
    pub web: Arc<Guard>,
    pub reflectors: crate::reflector::Reflectors,
    /// `[[target_file]]`s, polled at every ranking tick.
    pub files: TargetFiles,
    /// `[[target_srv]]`s, looked up by tasks of their own, taken at every ranking tick.
    pub srv: SrvTargets,
    /// The configuration as loaded, before the target files' targets join it.
    pub base: Arc<Config>,
}

impl Control {
    /// Ranks every [`ranking::PERIOD`]; applies reloads from HTTP requests and SIGHUP, one at
    /// a time, between rankings. HTTP requests that arrive during a reload get its result
    /// rather than a reload each, so a client cannot keep the loop reloading.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        mut hangup: tokio::signal::unix::Signal,
    ) -> std::convert::Infallible {
        let mut ticks = tokio::time::interval(ranking::PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trim_at = Instant::now() + TRIM_EVERY;
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let files = self.files.poll(&self.base);
                    let inline = self.base.targets.iter().map(|t| t.name.as_str());
                    let srv = self.srv.poll(inline.chain(self.files.names()));
                    if files || srv {
                        let mut config = self.files.merged(&self.base);
                        self.srv.extend(&mut config);
                        let diff = self.supervisor.apply(&config);
                        tracing::info!(%diff, "discovered targets applied");
                        *self.current.write().expect("config lock") = Arc::new(config);
                        self.renderings.invalidate();
                    }
                    let now = Instant::now();
                    let snapshot = self
                        .ranker
                        .rank(targets::tally(&self.live, self.ranker.quantile(), now), now);
                    *self.snapshot.write().expect("snapshot lock") = Arc::new(snapshot);
                    if now >= trim_at {
                        release_free_memory();
                        trim_at = now + TRIM_EVERY;
                    }
                }
                Some(reply) = requests.recv() => {
                    trim_at = trim_at.min(Instant::now() + TRIM_AFTER_RELOAD);
                    // Requests that arrived while this one ran join it: one reload, one
                    // answer for all of them.
                    let result = self.reload();
                    while let Ok(joined) = requests.try_recv() {
                        let _ = joined.send(result.clone());
                    }
                    let _ = reply.send(result);
                }
                Some(()) = hangup.recv() => {
                    trim_at = trim_at.min(Instant::now() + TRIM_AFTER_RELOAD);
                    let _ = self.reload();
                }
            }
        }
    }

    fn reload(&mut self) -> Result<targets::Diff, String> {
        // The resolver's configuration is re-read on every reload request, applied or not:
        // it is not part of the file.
        self.supervisor.reload_resolver();
        match self.overrides.load(&self.source) {
            Ok(mut config) => {
                self.supervisor.share(&mut config);
                let running = self.current.read().expect("config lock").clone();
                if config.exporter.listen != running.exporter.listen {
                    tracing::warn!(
                        running = %running.exporter.listen,
                        configured = %config.exporter.listen,
                        "exporter.listen changed; the new address takes effect after a restart"
                    );
                }
                self.files.configure(&config.target_files);
                self.files.poll(&config);
                // SRV names are looked up afresh; their last good targets stay meanwhile.
                self.srv
                    .configure(&config.target_srvs, self.supervisor.resolver());
                self.base = Arc::new(config.clone());
                let mut config = self.files.merged(&config);
                self.srv.extend(&mut config);
                let diff = self.supervisor.apply(&config);
                self.web.apply(&config.web);
                self.reflectors.apply(config.reflector.as_ref());
                self.ranker
                    .reconfigure(&config.exporter.region, &config.ranking);
                tracing::info!(%diff, "configuration reloaded");
                tracing::info!("{}", targets::Capacity::of(&config));
                *self.current.write().expect("config lock") = Arc::new(config);
                self.reloads.mark(true, &self.renderings);
                Ok(diff)
            }
            Err(err) => {
                tracing::error!(error = %err, "reload failed; keeping the running configuration");
                self.reloads.mark(false, &self.renderings);
                Err(err.to_string())
            }
        }
    }
}
