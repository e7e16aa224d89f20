//! The file as written: serde structs that mirror `exporter.toml` key for key.
//!
//! Everything is optional here so that a missing key is reported by validation with its full
//! path, and `deny_unknown_fields` makes a misspelt key an error instead of a silent default.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub exporter: RawExporter,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub ranking: RawRanking,
    #[serde(default, rename = "target")]
    pub targets: Vec<RawTarget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExporter {
    pub region: Option<String>,
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub buckets: Option<Vec<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRanking {
    pub window: Option<String>,
    pub quantile: Option<f64>,
    pub loss_penalty: Option<String>,
}

/// One `[[target]]`. The keys of every probe kind live side by side; validation rejects a key
/// that does not belong to the target's `probe`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub name: Option<String>,
    pub region: Option<String>,
    pub probe: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub buckets: Option<Vec<f64>>,
    pub ip_version: Option<u8>,
    // icmp
    pub host: Option<String>,
    pub payload_size: Option<u16>,
    // tcp
    pub address: Option<String>,
}
