//! The STAMP keys: a `probe = "stamp"` target's, and the `[reflector]` section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::fields::{Invalid, host_port, label_value, required_host};
use super::model::{
    AllowedSenders, IpVersion, ProbeConfig, ReflectorConfig, StampConfig, StampKey,
};
use super::raw::{RawReflector, RawTarget};

/// The port IANA assigned to STAMP (and OWAMP/TWAMP before it).
pub const STAMP_PORT: u16 = 862;
const DEFAULT_REFLECTOR_LISTEN: &str = "0.0.0.0:862";
/// More packets per interval are a load test, not a measurement.
const MAX_TRAIN: u32 = 1000;
const DEFAULT_RATE_LIMIT: u32 = 100;

/// `probe = "stamp"`. The wait and the clock claim are filled in by the caller, which knows
/// the target's timeout and `[exporter]`.
pub(super) fn target(
    key: &dyn Fn(&str) -> String,
    raw: RawTarget,
    ip_version: IpVersion,
) -> Result<ProbeConfig, Invalid> {
    let address = required_host(
        &key("address"),
        raw.address,
        "a stamp target needs the reflector's address such as \"10.1.0.5:862\"",
    )?;
    // A bare host or IPv4 address means the STAMP port.
    let with_port = if address.contains(':') {
        address
    } else {
        format!("{address}:{STAMP_PORT}")
    };
    let (host, port) = host_port(&key("address"), &with_port)?;
    let train = raw.train.unwrap_or(1);
    if !(1..=MAX_TRAIN).contains(&train) {
        return Err((
            key("train"),
            format!("{train} is out of range; expected 1 to {MAX_TRAIN} packets per interval"),
        ));
    }
    let key_file = match raw.key_file {
        Some(path) => Some(read_key(&key("key_file"), &path)?),
        None => None,
    };
    Ok(ProbeConfig::Stamp(StampConfig {
        host,
        port,
        ip_version,
        train,
        wait: Duration::ZERO,
        key: key_file,
        clock_sync_error: None,
    }))
}

/// `[reflector]`.
pub(super) fn reflector(
    raw: RawReflector,
    clock_sync_error: Option<Duration>,
) -> Result<ReflectorConfig, Invalid> {
    let text = raw.listen.as_deref().unwrap_or(DEFAULT_REFLECTOR_LISTEN);
    let listen: SocketAddr = text.parse().map_err(|_| {
        (
            "reflector.listen".to_owned(),
            format!("\"{text}\" is not a UDP address; expected ip:port such as \"0.0.0.0:862\""),
        )
    })?;
    let key = match raw.key_file {
        Some(path) => Some(read_key("reflector.key_file", &path)?),
        None => None,
    };
    let rate_limit = raw.rate_limit.unwrap_or(DEFAULT_RATE_LIMIT);
    if rate_limit == 0 {
        return Err((
            "reflector.rate_limit".into(),
            "must be at least 1 packet per second per sender".into(),
        ));
    }
    let entries = raw.allow.unwrap_or_default();
    if entries.is_empty() {
        return Err((
            "reflector.allow".into(),
            "missing; list the sender networks to answer, e.g. [[reflector.allow]] network = \"10.0.0.0/8\" region = \"eu-west\"".into(),
        ));
    }
    let mut allow = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let key = |field: &str| format!("reflector.allow[{i}].{field}");
        let text = entry.network.ok_or_else(|| {
            (
                key("network"),
                "missing; expected a network such as \"10.0.0.0/8\"".into(),
            )
        })?;
        let network = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                (
                    key("network"),
                    format!("\"{text}\" is not a network; expected e.g. \"10.0.0.0/8\" or \"2001:db8::/32\""),
                )
            })?;
        let region = match entry.region {
            Some(region) => Some(label_value(&key("region"), Some(region), "")?),
            None => None,
        };
        allow.push(AllowedSenders {
            network: network.trunc(),
            region,
        });
    }
    Ok(ReflectorConfig {
        listen,
        key,
        allow,
        rate_limit,
        clock_sync_error,
    })
}

/// Reads a key file at load, so that a bad file fails the (re)load. Messages name the file,
/// never its content.
fn read_key(key: &str, path: &str) -> Result<StampKey, Invalid> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| (key.to_owned(), format!("cannot read \"{path}\": {err}")))?;
    let bytes =
        parse_key(&text).map_err(|problem| (key.to_owned(), format!("\"{path}\": {problem}")))?;
    Ok(StampKey::new(PathBuf::from(path), bytes))
}

/// A key file: the key in hexadecimal (as stamp-suite's `--hmac-key-file`), at least 16
/// bytes. The error never quotes the file's content.
fn parse_key(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("expected the key in hexadecimal (an even number of 0-9a-f digits)".into());
    }
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digits"))
        .collect();
    if bytes.len() < 16 {
        return Err(format!(
            "the key is {} bytes; expected at least 16 (32 hex digits)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_hex_of_at_least_16_bytes() {
        assert_eq!(parse_key(&"ab".repeat(16)).unwrap(), vec![0xab; 16]);
        assert!(parse_key("abcd").unwrap_err().contains("2 bytes"));
        assert!(parse_key("not hex at all!!").is_err());
    }
}
