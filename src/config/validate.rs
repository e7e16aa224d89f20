//! Raw structs to a typed [`Config`]: defaults applied, every value checked, every error keyed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::fields::{Invalid, label_value};
use super::model::{
    AddressLabel, Addresses, Config, DEFAULT_BUCKETS, Exporter, IpVersion, ProbeConfig, ProbeKind,
    ResolverParams, Target, TargetDefaults as Defaults, TargetFile, TargetSource, TargetSrv,
};
use super::probes;
use super::raw::{RawFile, RawTarget};
use super::shard::Shard;
use crate::ranking::Params as RankingParams;

const DEFAULT_REGION: &str = "local";
const DEFAULT_LISTEN: &str = "127.0.0.1:9537";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// A faster schedule is a load test, not monitoring.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The default ceiling of `exporter.max_probes_per_second`: twice the 10,000 targets at 1 Hz
/// that one sidecar runs within 64 MiB and 0.15 cores (docs/benchmarks.md); beyond it ticks
/// start to be skipped on two cores.
pub const DEFAULT_MAX_PROBES_PER_SECOND: u64 = 20_000;

pub(super) fn validate(raw: RawFile) -> Result<Config, Invalid> {
    // An empty or truncated file would otherwise load "successfully", stop every target and
    // reset the region: running without targets must be asked for. Checked after the other
    // keys, so a file with a mistake reports the mistake.
    let empty = raw.exporter.region.is_none()
        && raw.targets.is_empty()
        && raw.exporter.allow_empty != Some(true);
    let region = label_value("exporter.region", raw.exporter.region, DEFAULT_REGION)?;
    let listen = listen_address(raw.exporter.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
    let clock_sync_error = match raw.exporter.clock_sync_error {
        Some(text) => Some(positive_duration("exporter.clock_sync_error", &text)?),
        None => None,
    };
    let shard = match raw.exporter.shard.as_deref() {
        Some(text) => {
            Some(Shard::parse(text).map_err(|problem| ("exporter.shard".into(), problem))?)
        }
        None => None,
    };
    let max_probes_per_second = match raw.exporter.max_probes_per_second {
        Some(0) => {
            return Err((
                "exporter.max_probes_per_second".into(),
                "0 would refuse every target; expected a positive number of probes per second"
                    .into(),
            ));
        }
        Some(max) => max,
        None => DEFAULT_MAX_PROBES_PER_SECOND,
    };

    let interval = match raw.defaults.interval {
        Some(text) => interval("defaults.interval", &text)?,
        None => DEFAULT_INTERVAL,
    };
    let timeout = match raw.defaults.timeout {
        Some(text) => {
            let timeout = positive_duration("defaults.timeout", &text)?;
            if timeout > interval {
                return Err(too_long("defaults.timeout", timeout, interval));
            }
            timeout
        }
        // The built-in timeout shrinks to a shorter interval, as an inherited one does: only a
        // timeout the file sets can be too long.
        None => DEFAULT_TIMEOUT.min(interval),
    };
    let buckets = match raw.defaults.buckets {
        Some(buckets) => check_buckets("defaults.buckets", buckets)?.into(),
        None => DEFAULT_BUCKETS.into(),
    };
    let builtin = RankingParams::default();
    let ranking = RankingParams {
        window: match raw.ranking.window {
            Some(text) => positive_duration("ranking.window", &text)?,
            None => builtin.window,
        },
        quantile: match raw.ranking.quantile {
            Some(q) if q > 0.0 && q < 1.0 => q,
            Some(q) => {
                return Err((
                    "ranking.quantile".into(),
                    format!(
                        "{q} is not a quantile; expected a number between 0 and 1 such as 0.95"
                    ),
                ));
            }
            None => builtin.quantile,
        },
        loss_penalty: match raw.ranking.loss_penalty {
            Some(text) => duration("ranking.loss_penalty", &text)?,
            None => builtin.loss_penalty,
        },
        hysteresis: match raw.ranking.hysteresis {
            Some(h) if (0.0..1.0).contains(&h) => h,
            Some(h) => {
                return Err((
                    "ranking.hysteresis".into(),
                    format!(
                        "{h} is not a fraction; expected a number from 0 (switch at once) to below 1, such as 0.1 for 10%"
                    ),
                ));
            }
            None => builtin.hysteresis,
        },
        hold: match raw.ranking.hold {
            Some(text) => duration("ranking.hold", &text)?,
            None => builtin.hold,
        },
        down_after: match raw.ranking.down_after {
            Some(n) => check_down_after("ranking.down_after", n)?,
            None => builtin.down_after,
        },
        max_replication_lag: match raw.ranking.max_replication_lag {
            Some(text) => Some(positive_duration("ranking.max_replication_lag", &text)?),
            None => builtin.max_replication_lag,
        },
    };

    let web = super::web::validate(raw.web)?;
    let reflector = match raw.reflector {
        Some(section) => Some(super::stamp::reflector(section, clock_sync_error)?),
        None => None,
    };
    let resolver = resolver(raw.resolver)?;
    let defaults = Defaults {
        interval,
        timeout,
        buckets,
        down_after: ranking.down_after,
        clock_sync_error,
    };

    let mut targets = Vec::with_capacity(raw.targets.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, raw_target) in raw.targets.into_iter().enumerate() {
        let target = target(index, raw_target, &defaults)?;
        if let Some(first) = seen.insert(target.name.clone(), index) {
            return Err((
                format!("target[{index}].name"),
                format!(
                    "duplicate target name \"{}\"; it is already used by target[{first}]",
                    target.name
                ),
            ));
        }
        targets.push(std::sync::Arc::new(target));
    }

    let mut target_files: Vec<TargetFile> = Vec::with_capacity(raw.target_files.len());
    for (index, file) in raw.target_files.into_iter().enumerate() {
        let key = |field: &str| format!("target_file[{index}].{field}");
        let path = match file.path {
            Some(path) if !path.trim().is_empty() => std::path::PathBuf::from(path),
            _ => return Err((key("path"), "missing; the file of targets to read".into())),
        };
        if let Some(first) = target_files.iter().position(|f| f.path == path) {
            return Err((
                key("path"),
                format!(
                    "\"{}\" is already read by target_file[{first}]",
                    path.display()
                ),
            ));
        }
        let probe = match file.probe.as_deref() {
            None => None,
            Some(name) => Some(
                ProbeKind::ALL
                    .into_iter()
                    .find(|kind| kind.as_str() == name)
                    .ok_or_else(|| {
                        (
                            key("probe"),
                            format!(
                                "unknown probe kind \"{name}\"; expected one of: icmp, tcp, http, dns"
                            ),
                        )
                    })?,
            ),
        };
        let region = match file.region {
            Some(region) => Some(label_value(&key("region"), Some(region), "")?),
            None => None,
        };
        target_files.push(TargetFile {
            path,
            probe,
            region,
            defaults: defaults.clone(),
        });
    }

    let mut target_srvs: Vec<TargetSrv> = Vec::with_capacity(raw.target_srvs.len());
    for (index, srv) in raw.target_srvs.into_iter().enumerate() {
        let key = |field: &str| format!("target_srv[{index}].{field}");
        let name = match srv.name {
            Some(name)
                if hickory_resolver::proto::rr::Name::from_ascii(&name).is_ok()
                    && !name.is_empty() =>
            {
                name
            }
            Some(name) => return Err((key("name"), format!("\"{name}\" is not a DNS name"))),
            None => {
                return Err((
                    key("name"),
                    "missing; the SRV name, e.g. \"_https._tcp.api.example.com\"".into(),
                ));
            }
        };
        let region = match srv.region {
            Some(region) => label_value(&key("region"), Some(region), "")?,
            None => return Err((key("region"), "missing; the region of its targets".into())),
        };
        let probe = match srv.probe.as_deref() {
            Some("icmp") => ProbeKind::Icmp,
            Some("tcp") => ProbeKind::Tcp,
            Some("http") => ProbeKind::Http,
            Some(other) => {
                return Err((
                    key("probe"),
                    format!("\"{other}\" cannot probe an SRV target; expected icmp, tcp or http"),
                ));
            }
            None => return Err((key("probe"), "missing; expected icmp, tcp or http".into())),
        };
        let path = srv.path.unwrap_or_else(|| "/".to_owned());
        if probe != ProbeKind::Http && path != "/" {
            return Err((key("path"), "only applies with probe = \"http\"".into()));
        }
        if !path.starts_with('/') {
            return Err((key("path"), format!("\"{path}\" must start with /")));
        }
        let scheme = if name.starts_with("_http.") {
            "http"
        } else {
            "https"
        };
        target_srvs.push(TargetSrv {
            name,
            region,
            probe,
            scheme,
            path,
            defaults: defaults.clone(),
        });
    }

    if empty && target_files.is_empty() && target_srvs.is_empty() {
        return Err((
            "exporter.region".into(),
            "missing, and no [[target]] either: the file looks empty or truncated; set exporter.allow_empty = true to run without targets".into(),
        ));
    }

    Ok(Config {
        exporter: Exporter {
            region,
            listen,
            clock_sync_error,
            shard,
            max_probes_per_second,
            configured_targets: targets.len(),
        },
        ranking,
        web,
        reflector,
        resolver,
        targets,
        target_files,
        target_srvs,
    })
}

/// `[resolver]`: the TTL bounds and how long the last good addresses are kept.
fn resolver(raw: super::raw::RawResolver) -> Result<ResolverParams, Invalid> {
    let builtin = ResolverParams::default();
    let params = ResolverParams {
        min_ttl: match raw.min_ttl {
            Some(text) => positive_duration("resolver.min_ttl", &text)?,
            None => builtin.min_ttl,
        },
        max_ttl: match raw.max_ttl {
            Some(text) => positive_duration("resolver.max_ttl", &text)?,
            None => builtin.max_ttl,
        },
        keep_last_good: match raw.keep_last_good {
            Some(text) => duration("resolver.keep_last_good", &text)?,
            None => builtin.keep_last_good,
        },
    };
    if params.min_ttl > params.max_ttl {
        return Err((
            "resolver.min_ttl".into(),
            format!(
                "{} is longer than resolver.max_ttl {}",
                humantime::format_duration(params.min_ttl),
                humantime::format_duration(params.max_ttl)
            ),
        ));
    }
    Ok(params)
}

/// The most addresses one `addresses = "all"` target may probe: it bounds `address_index`.
const MAX_ADDRESSES: u32 = 64;

/// `addresses`, `address_label` and `max_addresses` of one target (the kind was checked).
fn addresses(key: &dyn Fn(&str) -> String, raw: &RawTarget) -> Result<Addresses, Invalid> {
    let all = match raw.addresses.as_deref() {
        None | Some("first") => false,
        Some("all") => true,
        Some(other) => {
            return Err((
                key("addresses"),
                format!("unknown value \"{other}\"; expected \"first\" or \"all\""),
            ));
        }
    };
    let label = match raw.address_label.as_deref() {
        None | Some("index") => AddressLabel::Index,
        Some("address") => AddressLabel::Address,
        Some(other) => {
            return Err((
                key("address_label"),
                format!("unknown value \"{other}\"; expected \"index\" or \"address\""),
            ));
        }
    };
    let max = match raw.max_addresses {
        None => 16,
        Some(n) if (1..=MAX_ADDRESSES).contains(&n) => n as usize,
        Some(n) => {
            return Err((
                key("max_addresses"),
                format!("{n} is out of range; expected 1 to {MAX_ADDRESSES}"),
            ));
        }
    };
    if !all {
        if let Some(field) = [
            ("address_label", raw.address_label.is_some()),
            ("max_addresses", raw.max_addresses.is_some()),
        ]
        .into_iter()
        .find_map(|(field, set)| set.then_some(field))
        {
            return Err((key(field), "only applies with addresses = \"all\"".into()));
        }
        return Ok(Addresses::First);
    }
    Ok(Addresses::All { label, max })
}

/// Between 1 and 100 probes: more would take minutes to notice a dead target.
fn check_down_after(key: &str, n: u32) -> Result<usize, Invalid> {
    if (1..=100).contains(&n) {
        Ok(n as usize)
    } else {
        Err((
            key.to_owned(),
            format!("{n} is out of range; expected 1 to 100 failed probes in a row"),
        ))
    }
}

pub(super) fn target(
    index: usize,
    mut raw: RawTarget,
    defaults: &Defaults,
) -> Result<Target, Invalid> {
    let key = |field: &str| format!("target[{index}].{field}");

    let name = match raw.name.take() {
        Some(name) => label_value(&key("name"), Some(name), "")?,
        None => {
            return Err((
                key("name"),
                "missing; every target needs a unique name".into(),
            ));
        }
    };
    let region = match raw.region.take() {
        Some(region) => label_value(&key("region"), Some(region), "")?,
        None => {
            return Err((
                key("region"),
                "missing; name the region this target lives in".into(),
            ));
        }
    };
    let kind = match raw.probe.take().as_deref() {
        Some(name) => ProbeKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| {
                (
                    key("probe"),
                    format!("unknown probe kind \"{name}\"; expected one of: icmp, tcp, http, dns, stamp, postgres, mysql, redis"),
                )
            })?,
        None => {
            return Err((
                key("probe"),
                "missing; expected one of: icmp, tcp, http, dns, stamp, postgres, mysql, redis".into(),
            ));
        }
    };

    let interval = match raw.interval.take() {
        Some(text) => interval(&key("interval"), &text)?,
        None => defaults.interval,
    };
    let timeout = match raw.timeout.take() {
        Some(text) => {
            let timeout = positive_duration(&key("timeout"), &text)?;
            if timeout > interval {
                return Err(too_long(&key("timeout"), timeout, interval));
            }
            timeout
        }
        // An inherited timeout shrinks to a shorter interval rather than failing the target.
        None => defaults.timeout.min(interval),
    };
    let buckets = match raw.buckets.take() {
        Some(buckets) => check_buckets(&key("buckets"), buckets)?.into(),
        None => defaults.buckets.clone(),
    };
    let down_after = match raw.down_after.take() {
        Some(n) => check_down_after(&key("down_after"), n)?,
        None => defaults.down_after,
    };
    let ip_version = match raw.ip_version {
        None => IpVersion::Any,
        Some(4) => IpVersion::V4,
        Some(6) => IpVersion::V6,
        Some(other) => {
            return Err((
                key("ip_version"),
                format!("{other} is not an IP version; expected 4 or 6"),
            ));
        }
    };

    probes::check_keys(index, kind, &raw)?;
    let addresses = addresses(&key, &raw)?;
    let mut probe = probes::probe(index, kind, raw, ip_version)?;
    if let ProbeConfig::Stamp(stamp) = &mut probe {
        stamp.wait = timeout;
        stamp.clock_sync_error = defaults.clock_sync_error;
    }

    Ok(Target {
        name,
        region,
        interval,
        timeout,
        buckets,
        down_after,
        addresses,
        probe,
        source: TargetSource::Inline,
    })
}

/// `exporter.listen`'s syntax, for `--web.listen-address`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    listen_address(text).map_err(|(_, problem)| problem)
}

fn listen_address(text: &str) -> Result<SocketAddr, Invalid> {
    // ":9537" means every interface, as in the Go exporters.
    let full;
    let text_to_parse = if text.starts_with(':') {
        full = format!("0.0.0.0{text}");
        &full
    } else {
        text
    };
    text_to_parse.parse().map_err(|_| {
        (
            "exporter.listen".to_owned(),
            format!(
                "\"{text}\" is not a listen address; expected ip:port such as \"127.0.0.1:9537\", \"[::]:9537\" or \":9537\""
            ),
        )
    })
}

fn duration(key: &str, text: &str) -> Result<Duration, Invalid> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        (
            key.into(),
            format!(
                "\"{text}\" is not a duration ({err}); expected e.g. \"250ms\", \"1s\" or \"1m\""
            ),
        )
    })
}

fn positive_duration(key: &str, text: &str) -> Result<Duration, Invalid> {
    let value = duration(key, text)?;
    if value.is_zero() {
        return Err((key.into(), "must be longer than zero".into()));
    }
    Ok(value)
}

fn interval(key: &str, text: &str) -> Result<Duration, Invalid> {
    let value = duration(key, text)?;
    if value < MIN_INTERVAL {
        return Err((
            key.into(),
            format!(
                "{} is too short; expected at least {}",
                humantime::format_duration(value),
                humantime::format_duration(MIN_INTERVAL)
            ),
        ));
    }
    Ok(value)
}

fn too_long(key: &str, timeout: Duration, interval: Duration) -> Invalid {
    (
        key.into(),
        format!(
            "timeout {} is longer than the interval {}; a probe must finish before the next one starts",
            humantime::format_duration(timeout),
            humantime::format_duration(interval)
        ),
    )
}

fn check_buckets(key: &str, buckets: Vec<f64>) -> Result<Vec<f64>, Invalid> {
    if buckets.is_empty() {
        return Err((key.into(), "must list at least one bucket bound".into()));
    }
    if let Some(bad) = buckets.iter().find(|b| !b.is_finite() || **b <= 0.0) {
        return Err((
            key.into(),
            format!("{bad} is not a bucket bound; expected positive seconds (+Inf is implicit)"),
        ));
    }
    if buckets.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err((key.into(), "bounds must be strictly increasing".into()));
    }
    Ok(buckets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_accepts_port_only_form() {
        assert_eq!(
            listen_address(":9537").unwrap(),
            "0.0.0.0:9537".parse().unwrap()
        );
        assert_eq!(listen_address("[::]:1").unwrap(), "[::]:1".parse().unwrap());
        assert!(listen_address("localhost:9537").is_err());
    }

    #[test]
    fn inherited_timeout_shrinks_to_a_short_interval() {
        let raw = RawTarget {
            name: Some("t".into()),
            region: Some("r".into()),
            probe: Some("tcp".into()),
            interval: Some("200ms".into()),
            address: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        let defaults = Defaults {
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            buckets: DEFAULT_BUCKETS.into(),
            down_after: 3,
            clock_sync_error: None,
        };
        let target = target(0, raw, &defaults).unwrap();
        assert_eq!(target.timeout, Duration::from_millis(200));
    }

    #[test]
    fn the_built_in_timeout_shrinks_to_a_short_default_interval() {
        // Found by prop_config_structured_toml_is_loaded_or_rejected_by_key: this failed with
        // "key `defaults.timeout`: timeout 1s is longer than the interval 250ms".
        let exporter = || crate::config::raw::RawExporter {
            region: Some("r".into()),
            ..Default::default()
        };
        let raw = RawFile {
            exporter: exporter(),
            defaults: crate::config::raw::RawDefaults {
                interval: Some("250ms".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let config = validate(raw).unwrap();
        assert!(config.targets.is_empty());
        let raw = RawFile {
            exporter: exporter(),
            defaults: crate::config::raw::RawDefaults {
                interval: Some("250ms".into()),
                timeout: Some("1s".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(validate(raw).unwrap_err().0, "defaults.timeout");
    }

    #[test]
    fn an_empty_file_is_refused_unless_allowed() {
        let error = validate(RawFile::default()).unwrap_err();
        assert_eq!(error.0, "exporter.region");
        assert!(error.1.contains("allow_empty"), "{}", error.1);
        let allowed = RawFile {
            exporter: crate::config::raw::RawExporter {
                allow_empty: Some(true),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(validate(allowed).unwrap().targets.is_empty());
    }

    #[test]
    fn default_buckets_are_valid() {
        check_buckets("b", DEFAULT_BUCKETS.to_vec()).unwrap();
        assert!(DEFAULT_BUCKETS[0] <= 0.0001 && *DEFAULT_BUCKETS.last().unwrap() >= 10.0);
    }
}
