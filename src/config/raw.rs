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
    pub hysteresis: Option<f64>,
    pub hold: Option<String>,
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
}

impl RawTarget {
    /// The probe-specific keys this target sets, for checking them against its probe kind.
    pub fn probe_keys(&self) -> Vec<&'static str> {
        let keys = [
            ("host", self.host.is_some()),
            ("payload_size", self.payload_size.is_some()),
            ("address", self.address.is_some()),
            ("tls", self.tls.is_some()),
            ("url", self.url.is_some()),
            ("method", self.method.is_some()),
            ("headers", self.headers.is_some()),
            ("body", self.body.is_some()),
            ("valid_status", self.valid_status.is_some()),
            ("body_regex", self.body_regex.is_some()),
            ("body_regex_invert", self.body_regex_invert.is_some()),
            ("follow_redirects", self.follow_redirects.is_some()),
            ("max_redirects", self.max_redirects.is_some()),
            ("max_body_bytes", self.max_body_bytes.is_some()),
            ("http_version", self.http_version.is_some()),
            ("keepalive", self.keepalive.is_some()),
            ("tls_ca_file", self.tls_ca_file.is_some()),
            ("tls_server_name", self.tls_server_name.is_some()),
            ("tls_skip_verify", self.tls_skip_verify.is_some()),
            ("server", self.server.is_some()),
            ("query", self.query.is_some()),
            ("record_type", self.record_type.is_some()),
            ("transport", self.transport.is_some()),
            ("recursion_desired", self.recursion_desired.is_some()),
            ("valid_rcodes", self.valid_rcodes.is_some()),
            ("min_answers", self.min_answers.is_some()),
            ("answer_regex", self.answer_regex.is_some()),
        ];
        keys.into_iter()
            .filter_map(|(key, set)| set.then_some(key))
            .collect()
    }
}

/// An entry of `valid_status`: a code (`200`) or a class (`"2xx"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawStatus {
    Code(u16),
    Text(String),
}
