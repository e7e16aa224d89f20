//! Checks shared by the sections of the file: the error shape and the host keys.

/// `(key path, problem)`; the caller adds the file name.
pub(super) type Invalid = (String, String);

pub(super) fn required_host(
    key: &str,
    value: Option<String>,
    missing: &str,
) -> Result<String, Invalid> {
    match value {
        Some(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
        Some(_) => Err((key.into(), "must not be empty".into())),
        None => Err((key.into(), format!("missing; {missing}"))),
    }
}

/// Splits `host:port` and `[v6]:port`.
pub(super) fn host_port(key: &str, text: &str) -> Result<(String, u16), Invalid> {
    let bad = || {
        (
            key.to_owned(),
            format!("\"{text}\" is not host:port; expected e.g. \"10.0.0.1:443\" or \"[::1]:443\""),
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_names_v4_and_bracketed_v6() {
        assert_eq!(
            host_port("k", "db.example:5432").unwrap(),
            ("db.example".into(), 5432)
        );
        assert_eq!(
            host_port("k", "10.0.0.1:80").unwrap(),
            ("10.0.0.1".into(), 80)
        );
        assert_eq!(host_port("k", "[::1]:443").unwrap(), ("::1".into(), 443));
        for bad in ["::1:443", "host", "host:0", "host:70000", ":80", "[::1:80"] {
            assert!(host_port("k", bad).is_err(), "{bad} should be rejected");
        }
    }
}
