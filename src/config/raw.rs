//! The file as written: serde structs that mirror `exporter.toml` key for key.
//!
//! Everything is optional here so that a missing key is reported by validation with its full
//! path, and `deny_unknown_fields` makes a misspelt key an error instead of a silent default.

use std::collections::BTreeMap;

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
    #[serde(default)]
    pub web: RawWeb,
    pub reflector: Option<RawReflector>,
    #[serde(default)]
    pub resolver: RawResolver,
    #[serde(default, rename = "target")]
    pub targets: Vec<RawTarget>,
    #[serde(default, rename = "target_file")]
    pub target_files: Vec<RawTargetFile>,
    #[serde(default, rename = "target_srv")]
    pub target_srvs: Vec<RawTargetSrv>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTargetSrv {
    pub name: Option<String>,
    pub region: Option<String>,
    pub probe: Option<String>,
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTargetFile {
    pub path: Option<String>,
    pub probe: Option<String>,
    pub region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExporter {
    pub region: Option<String>,
    pub listen: Option<String>,
    pub allow_empty: Option<bool>,
    pub clock_sync_error: Option<String>,
    pub shard: Option<String>,
    pub max_probes_per_second: Option<u64>,
}

/// `[reflector]`: the STAMP session-reflector.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReflector {
    pub listen: Option<String>,
    pub key_file: Option<String>,
    pub rate_limit: Option<u32>,
    pub allow: Option<Vec<RawAllow>>,
}

/// One `[[reflector.allow]]`: a sender network and, optionally, its region.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAllow {
    pub network: Option<String>,
    pub region: Option<String>,
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
    pub hysteresis: Option<f64>,
    pub hold: Option<String>,
    pub down_after: Option<u32>,
    pub max_replication_lag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResolver {
    pub min_ttl: Option<String>,
    pub max_ttl: Option<String>,
    pub keep_last_good: Option<String>,
}

/// `[web]`: the exporter toolkit's web configuration keys.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeb {
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub tls_client_ca_file: Option<String>,
    pub tls_client_auth_type: Option<String>,
    pub basic_auth_users: Option<BTreeMap<String, String>>,
    pub health_without_auth: Option<bool>,
}

/// Without the values of `basic_auth_users`: a mistaken one may be a password.
impl std::fmt::Debug for RawWeb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawWeb")
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_client_ca_file", &self.tls_client_ca_file)
            .field("tls_client_auth_type", &self.tls_client_auth_type)
            .field(
                "basic_auth_users",
                &self
                    .basic_auth_users
                    .as_ref()
                    .map(|users| users.keys().collect::<Vec<_>>()),
            )
            .field("health_without_auth", &self.health_without_auth)
            .finish()
    }
}

/// One `[[target]]`. The keys of every probe kind live side by side; validation rejects a key
/// that does not belong to the target's `probe` (the table is `probes::probe_keys`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub name: Option<String>,
    pub region: Option<String>,
    pub probe: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub buckets: Option<Vec<f64>>,
    pub down_after: Option<u32>,
    pub ip_version: Option<u8>,
    // icmp, tcp, http: a host name's addresses
    pub addresses: Option<String>,
    pub address_label: Option<String>,
    pub max_addresses: Option<u32>,
    // icmp
    pub host: Option<String>,
    pub payload_size: Option<u16>,
    // tcp
    pub address: Option<String>,
    pub tls: Option<bool>,
    // http
    pub url: Option<String>,
    pub method: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub body: Option<String>,
    pub valid_status: Option<Vec<RawStatus>>,
    pub body_regex: Option<String>,
    pub body_regex_invert: Option<bool>,
    pub follow_redirects: Option<bool>,
    pub max_redirects: Option<u8>,
    pub max_body_bytes: Option<u64>,
    pub http_version: Option<String>,
    pub keepalive: Option<bool>,
    pub basic_auth: Option<RawBasicAuth>,
    pub bearer_token: Option<String>,
    pub bearer_token_file: Option<String>,
    pub bearer_token_env: Option<String>,
    // tls, for http and for tcp with tls = true
    pub tls_ca_file: Option<String>,
    pub tls_server_name: Option<String>,
    pub tls_skip_verify: Option<bool>,
    // dns
    pub server: Option<String>,
    pub query: Option<String>,
    pub record_type: Option<String>,
    pub transport: Option<String>,
    pub recursion_desired: Option<bool>,
    pub valid_rcodes: Option<Vec<String>>,
    pub min_answers: Option<u32>,
    pub answer_regex: Option<String>,
    // stamp (and `address`)
    pub train: Option<u32>,
    pub key_file: Option<String>,
    // postgres, mysql, redis (with address, query, keepalive, tls_*)
    pub user: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    pub database: Option<String>,
    pub write: Option<bool>,
    pub heartbeat_table: Option<String>,
    pub sslmode: Option<String>,
    pub replication: Option<String>,
}

/// `basic_auth = { username = "...", password_file = "..." }` of an HTTP target: the password
/// from exactly one of `password`, `password_file` or `password_env`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBasicAuth {
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
}

/// An entry of `valid_status`: a code (`200`) or a class (`"2xx"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawStatus {
    Code(u16),
    Text(String),
}
