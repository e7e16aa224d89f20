//! Configuration: `exporter.toml` (or the bundled copy) plus `REGIONPROBE_...` environment
//! overrides, loaded with the `config` crate into raw serde structs and validated into [`Config`].
//!
//! Every error names the file, the key path and what was expected, e.g.
//! `exporter.toml: key `target[2].timeout`: timeout 2s is longer than the interval 1s`.

mod fields;
mod file_sd;
mod model;
mod probes;
mod raw;
mod shard;
mod stamp;
mod validate;
mod web;

pub use file_sd::{read_target_file, srv_targets};
pub use model::*;
pub use probes::rcode_name;
pub use shard::{Shard, owner as shard_owner};
pub use validate::DEFAULT_MAX_PROBES_PER_SECOND;
pub use validate::parse_listen;
pub use web::{ClientAuth, PasswordHash, Web, WebTls};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The `exporter.toml` shipped in the repository, compiled in so a bare `regionprobe` runs.
pub const BUNDLED: &str = include_str!("../../exporter.toml");

/// Environment variables with this prefix override file keys: `REGIONPROBE_EXPORTER__REGION=eu`
/// sets `exporter.region` (`__` separates the path segments; variables without it are ignored).
pub const ENV_PREFIX: &str = "REGIONPROBE";

/// Where the configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// The `exporter.toml` compiled into the binary.
    Bundled,
    /// A file given with `--config`.
    File(PathBuf),
}

impl ConfigSource {
    /// The name used in error messages and logs.
    pub fn name(&self) -> String {
        match self {
            ConfigSource::Bundled => "<bundled exporter.toml>".to_owned(),
            ConfigSource::File(path) => path.display().to_string(),
        }
    }

    /// Reads and validates the configuration, applying the process environment's overrides.
    pub fn load(&self) -> Result<Config, ConfigError> {
        self.load_with_env(None)
    }

    /// Like [`ConfigSource::load`], with the environment given explicitly (`None`: the process's).
    pub fn load_with_env(
        &self,
        env: Option<HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let file = self.name();
        finish(&file, parse_unfinished(&file, &self.read()?, env)?, None)
    }

    /// The configuration text.
    fn read(&self) -> Result<String, ConfigError> {
        let file = self.name();
        Ok(match self {
            ConfigSource::Bundled => BUNDLED.to_owned(),
            ConfigSource::File(path) => {
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    file: file.clone(),
                    source,
                })?
            }
        })
    }
}

/// What flags set over every (re)loaded configuration: `--web.listen-address` and
/// `--web.config.file`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replaces `exporter.listen`.
    pub listen: Option<SocketAddr>,
    /// The exporter toolkit's web configuration (YAML), read at every (re)load in place of
    /// `[web]` (which must then be empty).
    pub web_config_file: Option<PathBuf>,
    /// `--shard K/N`: replaces `exporter.shard`.
    pub shard: Option<Shard>,
}

impl Overrides {
    /// Loads `source` and applies the overrides; a bad web configuration file fails the load
    /// (a reload keeps the running configuration, as for any bad file).
    pub fn load(&self, source: &ConfigSource) -> Result<Config, ConfigError> {
        let file = source.name();
        let unfinished = parse_unfinished(&file, &source.read()?, None)?;
        let mut config = finish(&file, unfinished, self.shard)?;
        if let Some(listen) = self.listen {
            config.exporter.listen = listen;
        }
        if let Some(path) = &self.web_config_file {
            if config.web != Web::default() {
                return Err(ConfigError::Invalid {
                    file: source.name(),
                    key: "web".to_owned(),
                    problem: format!(
                        "is set and so is --web.config.file {}; use one of them",
                        path.display()
                    ),
                });
            }
            config.web = web_config_file(path)?;
        }
        Ok(config)
    }
}

/// Reads `--web.config.file`: the exporter toolkit's YAML, checked as `[web]` is.
fn web_config_file(path: &Path) -> Result<Web, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    // The position only: yaml-rust2's message may quote the text, which may hold a secret.
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).map_err(|err| ConfigError::Syntax {
        file: file.clone(),
        message: format!(
            "line {}, column {}: not valid YAML",
            err.marker().line(),
            err.marker().col() + 1
        ),
    })?;
    let doc = docs.into_iter().next().unwrap_or(yaml_rust2::Yaml::Null);
    web::from_toolkit(&doc)
        .map_err(|(key, problem)| ConfigError::Invalid { file, key, problem }.redacted())
}

/// Parses and validates configuration text; `file` is only used in messages.
///
/// No error repeats a secret: syntax errors give a position and the key, never the line
/// itself; values of secret-bearing keys are left out of messages and URL passwords are
/// masked. Every message is one line.
pub fn parse(
    file: &str,
    text: &str,
    env: Option<HashMap<String, String>>,
) -> Result<Config, ConfigError> {
    finish(file, parse_unfinished(file, text, env)?, None)
}

/// [`parse`] before sharding and the capacity ceiling.
fn parse_unfinished(
    file: &str,
    text: &str,
    env: Option<HashMap<String, String>>,
) -> Result<Config, ConfigError> {
    parse_unredacted(file, text, env).map_err(ConfigError::redacted)
}

/// Keeps this replica's share of the targets (`shard`, else `exporter.shard`) and refuses a
/// share that needs more probes per second than `exporter.max_probes_per_second`.
fn finish(file: &str, mut config: Config, shard: Option<Shard>) -> Result<Config, ConfigError> {
    if shard.is_some() {
        config.exporter.shard = shard;
    }
    config.exporter.configured_targets = config.targets.len();
    if let Some(shard) = config.exporter.shard {
        config.targets.retain(|target| shard.owns(&target.name));
    }
    let rate = config.probes_per_second();
    let max = config.exporter.max_probes_per_second;
    if rate > max as f64 {
        let replicas = config.exporter.shard.map_or(1, |s| s.count);
        let needed = ((rate * f64::from(replicas)) / max as f64).ceil() as u64;
        let share = match config.exporter.shard {
            Some(shard) => format!(
                "shard {shard} probes {} of the {} targets",
                config.targets.len(),
                config.exporter.configured_targets
            ),
            None => format!("the {} targets", config.targets.len()),
        };
        return Err(ConfigError::Invalid {
            file: file.to_owned(),
            key: "exporter.max_probes_per_second".to_owned(),
            problem: format!(
                "{share} need {rate:.0} probes/s, more than the ceiling of {max}; raise the targets' \
                 intervals (`interval` in [defaults] or per target), or shard them over {needed} or more \
                 replicas (--shard K/{needed} or exporter.shard = \"K/{needed}\" on each), or raise \
                 exporter.max_probes_per_second if this machine has the room (docs/scale.md)"
            ),
        });
    }
    Ok(config)
}

fn parse_unredacted(
    file: &str,
    text: &str,
    env: Option<HashMap<String, String>>,
) -> Result<Config, ConfigError> {
    fields::check_syntax(text).map_err(|message| ConfigError::Syntax {
        file: file.to_owned(),
        message,
    })?;
    // Only `REGIONPROBE_<SECTION>__<KEY>` variables are overrides; other REGIONPROBE_*
    // variables (a CI switch, an image's version tag) are not configuration. Sorted, so that
    // of several bad overrides the same one is always reported.
    let mut overrides: Vec<(String, String)> = env
        .map(|vars| vars.into_iter().collect::<Vec<_>>())
        .unwrap_or_else(|| std::env::vars().collect())
        .into_iter()
        .filter(|(name, _)| {
            name.strip_prefix(ENV_PREFIX)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|path| path.contains("__"))
        })
        .collect();
    overrides.sort();
    // An error in a key an override sets blames the variable, not the file.
    let blame = |key: String, problem: String| match overrides
        .iter()
        .map(|(name, _)| name)
        .find(|name| override_covers(name, &key))
    {
        Some(variable) => ConfigError::Override {
            variable: variable.clone(),
            file: file.to_owned(),
            key,
            problem,
        },
        None => ConfigError::Invalid {
            file: file.to_owned(),
            key,
            problem,
        },
    };
    let config_overrides: config::Map<String, String> = overrides.iter().cloned().collect();
    let environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(Some(config_overrides));
    let layered = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(environment)
        .build()
        .map_err(|err| ConfigError::Syntax {
            file: file.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })?;
    let value: config::Value = layered
        .try_deserialize()
        .map_err(|err| ConfigError::Syntax {
            file: file.to_owned(),
            message: err.to_string(),
        })?;
    let raw: raw::RawFile = serde_path_to_error::deserialize(value).map_err(|err| {
        let key = err.path().to_string();
        let problem = explain_unknown_key(&strip_key_suffix(&err.inner().to_string()));
        let problem = fields::serde_problem(&key, &problem);
        blame(key, problem)
    })?;
    validate::validate(raw).map_err(|(key, problem)| blame(key, problem))
}

/// Whether the variable `REGIONPROBE_A__B` sets the key `key` (`a.b`, or a key inside it).
fn override_covers(variable: &str, key: &str) -> bool {
    let Some(path) = variable
        .strip_prefix(ENV_PREFIX)
        .and_then(|rest| rest.strip_prefix('_'))
    else {
        return false;
    };
    let path = path.to_ascii_lowercase().replace("__", ".");
    let key = key.to_ascii_lowercase();
    key == path || key.starts_with(&format!("{path}.")) || path.starts_with(&format!("{key}."))
}

/// The `config` crate appends its own (sometimes mangled) " for key `...`" to serde messages;
/// we report the path from serde_path_to_error instead.
fn strip_key_suffix(message: &str) -> String {
    match message.rfind(" for key `") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// Turns serde's "unknown field `hots`, expected one of `name`, ... (34 names)" into
/// "unknown key; did you mean `host`?" when one name is close, or a short list otherwise.
fn explain_unknown_key(problem: &str) -> String {
    let Some((field, expected)) = problem
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
    else {
        return problem.to_owned();
    };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let closest = known
        .iter()
        .map(|name| (edit_distance(field, name), *name))
        .min();
    match closest {
        Some((distance, name)) if distance <= (field.len() / 3).max(2) => {
            format!("unknown key; did you mean `{name}`?")
        }
        _ if known.len() <= 8 => format!("unknown key; expected one of: {}", known.join(", ")),
        _ => "unknown key; see the configuration reference in README.md".to_owned(),
    }
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// A configuration that could not be used. The running configuration stays in place.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: key `{key}`: {problem}")]
    Invalid {
        file: String,
        key: String,
        problem: String,
    },
    /// A bad value set by a `REGIONPROBE_*` variable: the variable is named, not the file.
    #[error("{file}: {variable} (environment override): key `{key}`: {problem}")]
    Override {
        variable: String,
        file: String,
        key: String,
        problem: String,
    },
}

impl ConfigError {
    /// The same error, one line, without the value of a secret-bearing key and with URL
    /// passwords masked.
    fn redacted(self) -> Self {
        match self {
            ConfigError::Read { .. } => self,
            ConfigError::Syntax { file, message } => ConfigError::Syntax {
                file,
                message: fields::one_line(&fields::mask_url_passwords(&message)),
            },
            ConfigError::Invalid { file, key, problem } => ConfigError::Invalid {
                problem: fields::problem(&problem),
                file,
                key,
            },
            ConfigError::Override {
                variable,
                file,
                key,
                problem,
            } => ConfigError::Override {
                problem: fields::problem(&problem),
                variable,
                file,
                key,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_get_a_suggestion_or_a_short_list() {
        let many = "unknown field `hots`, expected one of `name`, `region`, `probe`, `interval`, `timeout`, `buckets`, `ip_version`, `host`, `payload_size`";
        assert_eq!(
            explain_unknown_key(many),
            "unknown key; did you mean `host`?"
        );
        let far = "unknown field `colour`, expected `region` or `listen`";
        assert_eq!(
            explain_unknown_key(far),
            "unknown key; expected one of: region, listen"
        );
        assert_eq!(
            explain_unknown_key("invalid type: string"),
            "invalid type: string"
        );
        assert_eq!(edit_distance("regoin", "region"), 2);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}
