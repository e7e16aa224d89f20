//! The STAMP session-reflector (`[reflector]`, RFC 8762): a thread of its own answering test
//! packets on one UDP socket, restarted when a reload changes its section, and its counters
//! (`regionprobe_reflector_*`) by sender region. The loop itself is in [`serve`].

mod counts;
mod serve;

use counts::{Counts, Family, Outcome};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::config::ReflectorConfig;
use crate::metrics::Registry;
use crate::probe::stamp::socket;

/// The `sender_region` of senders outside every allow-list entry with a region.
const UNKNOWN_REGION: &str = "unknown";

/// The running reflector, if configured, and the counters of every sender region it has
/// had (kept across reloads so that counters never go back).
#[derive(Debug, Default)]
pub struct Reflectors {
    running: Option<Running>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    regions: Mutex<BTreeMap<String, Arc<Counts>>>,
    /// Configured, and whether its socket is bound.
    state: Mutex<Option<(bool, String)>>,
}

#[derive(Debug)]
struct Running {
    config: ReflectorConfig,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Reflectors {
    /// Registers the `regionprobe_reflector_*` families.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(ReflectorCollector {
            shared: self.shared.clone(),
        });
    }

    /// Starts, restarts or stops the reflector to match `config`. A socket that cannot be
    /// bound is logged and exported (`regionprobe_reflector_up 0`); the rest runs on.
    pub fn apply(&mut self, config: Option<&ReflectorConfig>) {
        if self.running.as_ref().map(|r| &r.config) == config
            && self
                .shared
                .state
                .lock()
                .expect("state lock")
                .as_ref()
                .is_none_or(|(up, _)| *up)
        {
            return;
        }
        // The old socket closes before the new one binds (the same port, most often).
        self.running = None;
        let Some(config) = config else {
            *self.shared.state.lock().expect("state lock") = None;
            return;
        };
        let counts = {
            let mut regions = self.shared.regions.lock().expect("regions lock");
            let mut of = |region: &str| regions.entry(region.to_owned()).or_default().clone();
            let unknown = of(UNKNOWN_REGION);
            let counts: Vec<_> = config
                .allow
                .iter()
                .map(|entry| of(entry.region.as_deref().unwrap_or(UNKNOWN_REGION)))
                .collect();
            (counts, unknown)
        };
        let mut bound = config.listen.to_string();
        let started = socket::open(config.listen).and_then(|socket| {
            if let Some(addr) = socket.local_addr()?.as_socket() {
                bound = addr.to_string();
            }
            serve::Reflector::new(socket, config.clone(), counts.0, counts.1)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = match started {
            Ok(reflector) => {
                let flag = stop.clone();
                tracing::info!(listen = %config.listen, authenticated = config.key.is_some(), "STAMP reflector listening");
                std::thread::Builder::new()
                    .name("stamp-reflector".into())
                    .spawn(move || reflector.run(&flag))
                    .map_err(
                        |err| tracing::error!(error = %err, "cannot start the STAMP reflector"),
                    )
                    .ok()
            }
            Err(err) => {
                tracing::error!(listen = %config.listen, error = %err, "STAMP reflector cannot bind its socket; not reflecting");
                None
            }
        };
        *self.shared.state.lock().expect("state lock") = Some((thread.is_some(), bound));
        self.running = Some(Running {
            config: config.clone(),
            stop,
            thread,
        });
    }
}

#[derive(Debug)]
struct ReflectorCollector {
    shared: Arc<Shared>,
}

impl Collector for ReflectorCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Declared even without `[reflector]` (as every family is), with no series then.
        let state = self.shared.state.lock().expect("state lock").clone();
        let mut family = encoder.encode_descriptor(
            "regionprobe_reflector_up",
            "1 while the STAMP reflector answers on its socket (listen: the address bound), 0 when its socket could not be bound.",
            None,
            MetricType::Gauge,
        )?;
        if let Some((up, listen)) = state {
            ConstGauge::new(i64::from(up))
                .encode(family.encode_family(&[("listen", listen.as_str())])?)?;
        }
        let regions = self.shared.regions.lock().expect("regions lock");
        let families = [
            (
                Family::Reflected,
                "regionprobe_reflector_reflected_packets",
                "STAMP test packets answered by the reflector, by sender region (from [[reflector.allow]]).",
            ),
            (
                Family::Refused,
                "regionprobe_reflector_refused_packets",
                "STAMP test packets the reflector did not answer because of who sent them: not_allowed (outside [[reflector.allow]]), rate_limited, capacity (too many senders or sessions).",
            ),
            (
                Family::Dropped,
                "regionprobe_reflector_dropped_packets",
                "Datagrams the reflector did not answer because of what they were: truncated, oversized, bad_hmac, replayed (authenticated mode), send_error.",
            ),
        ];
        for (kind, name, help) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (region, counts) in regions.iter() {
                for outcome in Outcome::ALL {
                    let (of, reason) = outcome.label();
                    if of != kind {
                        continue;
                    }
                    let count = ConstCounter::new(counts.get(outcome));
                    if reason.is_empty() {
                        count
                            .encode(family.encode_family(&[("sender_region", region.as_str())])?)?;
                    } else {
                        count.encode(family.encode_family(&[
                            ("sender_region", region.as_str()),
                            ("reason", reason),
                        ])?)?;
                    }
                }
            }
        }
        Ok(())
    }
}
