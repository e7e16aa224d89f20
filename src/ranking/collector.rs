//! The ranking's families, encoded from the latest snapshot at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::task::SharedSnapshot;
use crate::metrics::Registry;

/// Registers the region score, rank and failover families, read from `snapshot`.
pub fn register(registry: &mut Registry, snapshot: SharedSnapshot) {
    registry.register_collector(RankingCollector { snapshot });
}

/// The region ranking and the failover choice, from the latest snapshot.
#[derive(Debug)]
struct RankingCollector {
    snapshot: SharedSnapshot,
}

impl Collector for RankingCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.snapshot.read().expect("snapshot lock").clone();
        let source = snapshot.source_region.as_str();
        let regions = &snapshot.ranking.regions;
        let labels = |region: &str| {
            [
                ("source_region", source.to_owned()),
                ("target_region", region.to_owned()),
            ]
        };

        let mut family = encoder.encode_descriptor(
            "regionprobe_region_score_seconds",
            "Ranking score of each target region over the window: latency quantile plus loss ratio times the loss penalty; +Inf when nothing answered.",
            None,
            MetricType::Gauge,
        )?;
        for region in regions {
            ConstGauge::new(region.score).encode(family.encode_family(&labels(&region.region))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_region_rank",
            "Rank of each target region by score; 1 is the best.",
            None,
            MetricType::Gauge,
        )?;
        for region in regions {
            ConstGauge::new(region.rank as i64)
                .encode(family.encode_family(&labels(&region.region))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_failover_best",
            "1 for the chosen failover region (the best other region, held by hysteresis), 0 for the other candidates.",
            None,
            MetricType::Gauge,
        )?;
        for region in regions.iter().filter(|r| r.region != source) {
            let chosen = snapshot.best.as_deref() == Some(region.region.as_str());
            ConstGauge::new(i64::from(chosen))
                .encode(family.encode_family(&labels(&region.region))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_region_up",
            "1 while a target of the region answers, 0 once every target is down (its last down_after probes failed); absent until known.",
            None,
            MetricType::Gauge,
        )?;
        for region in regions {
            if let Some(up) = region.up {
                ConstGauge::new(i64::from(up))
                    .encode(family.encode_family(&labels(&region.region))?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_region_replication_lag_seconds",
            "The worst replication lag the region's database targets report (+Inf: replication broken); absent for regions without such targets.",
            None,
            MetricType::Gauge,
        )?;
        for region in regions {
            if let Some(lag) = region.replication_lag {
                ConstGauge::new(lag).encode(family.encode_family(&labels(&region.region))?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_region_eligible",
            "1 (reason=\"none\") if the region may be the failover candidate; 0 with reason=\"replication_lag\" when its replica lags more than [ranking] max_replication_lag, or reason=\"unreachable\" when nothing answered.",
            None,
            MetricType::Gauge,
        )?;
        for region in regions.iter().filter(|r| r.region != source) {
            let reason = match (region.ineligible, region.score.is_finite()) {
                (_, false) => "unreachable",
                (Some(why), true) => why.as_str(),
                (None, true) => "none",
            };
            let mut with_reason = labels(&region.region).to_vec();
            with_reason.push(("reason", reason.to_owned()));
            ConstGauge::new(i64::from(region.eligible()))
                .encode(family.encode_family(&with_reason)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "regionprobe_region_degraded",
            "1 while the region is up but some of its targets, or some addresses of an addresses = \"all\" target, are down; absent until the region's state is known.",
            None,
            MetricType::Gauge,
        )?;
        for region in regions {
            if region.up.is_some() {
                ConstGauge::new(i64::from(region.degraded))
                    .encode(family.encode_family(&labels(&region.region))?)?;
            }
        }

        let own = [("source_region", source)];
        let mut family = encoder.encode_descriptor(
            "regionprobe_source_impaired",
            "1 while this sidecar cannot probe properly: probes fail on its side (reason=\"local\"), or every other region is down at once.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(snapshot.ranking.impaired.is_some()))
            .encode(family.encode_family(&own)?)?;

        let mut family = encoder.encode_descriptor(
            "regionprobe_failover_ready",
            "1 if there is a healthy place to go now: a failover candidate that is up, eligible (replica within max_replication_lag) and has been the candidate for at least the hold.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(snapshot.ready)).encode(family.encode_family(&own)?)?;

        let mut family = encoder.encode_descriptor(
            "regionprobe_failover_last_change_timestamp_seconds",
            "Unix time the failover choice last changed (the first choice included).",
            None,
            MetricType::Gauge,
        )?;
        if let Some(since) = snapshot.best_since {
            let secs = since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            ConstGauge::new(secs).encode(family.encode_family(&[("source_region", source)])?)?;
        }
        Ok(())
    }
}
