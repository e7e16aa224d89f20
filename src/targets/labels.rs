//! The labels of a target's series: `source_region`, `target_region`, `target`, `probe` and,
//! for one address of an `addresses = "all"` target, `address_index` (or `address`); plus the
//! borrowed label sets that add one more (`reason`, `phase`, ...) at encoding time.
//!
//! Here, beside the series, rather than in `crate::metrics`: the label set reads its values
//! from the target's configuration, and `metrics` must not depend on `config` (which reaches
//! `metrics` back through the ranking).

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

use crate::config::Target;

/// The labels every per-target series carries; the series of one address of an
/// `addresses = "all"` target add `address_index` (or `address`).
///
/// The values are not copied: the source region is the one string every target shares, and
/// `target_region` and `target` are read from the target's own configuration (10,000 targets
/// held 30,000 small strings, ~1 MB, when each label was a `String` of its own).
#[derive(Clone, Debug)]
pub struct TargetLabels {
    pub source_region: Arc<str>,
    /// `target_region` is its `region`, `target` its `name`.
    pub config: Arc<Target>,
    pub probe: &'static str,
    pub address: Option<(&'static str, String)>,
}

impl TargetLabels {
    pub fn target_region(&self) -> &str {
        &self.config.region
    }

    pub fn target(&self) -> &str {
        &self.config.name
    }

    /// The labels as both text formats write them, without braces, values escaped (what the
    /// per-target text encoder copies into every line).
    pub fn escaped(&self) -> Box<str> {
        let mut out = String::new();
        let mut pairs = vec![
            ("source_region", &*self.source_region),
            ("target_region", self.target_region()),
            ("target", self.target()),
            ("probe", self.probe),
        ];
        if let Some((name, value)) = &self.address {
            pairs.push((name, value.as_str()));
        }
        for (i, (name, value)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(name);
            out.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.into()
    }
}

impl EncodeLabelSet for TargetLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        [
            ("source_region", &*self.source_region),
            ("target_region", self.target_region()),
            ("target", self.target()),
            ("probe", self.probe),
        ]
        .encode(encoder)?;
        match &self.address {
            Some((name, value)) => [(*name, value.as_str())].encode(encoder),
            None => Ok(()),
        }
    }
}

/// A target's labels plus one more (`reason`, `phase`), borrowed so a scrape clones no strings.
pub struct WithExtra<'a>(pub &'a TargetLabels, pub &'static str, pub &'static str);

impl EncodeLabelSet for WithExtra<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)?;
        [(self.1, self.2)].encode(encoder)
    }
}

/// A target's labels plus borrowed pairs (`replica`, `stage`): label values a server reports,
/// bounded by its replicas.
pub struct WithPairs<'a>(pub &'a TargetLabels, pub &'a [(&'static str, &'a str)]);

impl EncodeLabelSet for WithPairs<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)?;
        for pair in self.1 {
            [*pair].encode(encoder)?;
        }
        Ok(())
    }
}
