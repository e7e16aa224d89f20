//! Checks shared by the sections of the file: the error shape, the host keys, and keeping
//! secrets out of error messages.

use std::net::{IpAddr, Ipv6Addr};

/// `(key path, problem)`; the caller adds the file name.
pub(super) type Invalid = (String, String);

/// Label values must be bounded and readable: names, not free text.
pub(super) fn label_value(
    key: &str,
    value: Option<String>,
    default: &str,
) -> Result<String, Invalid> {
    let value = value.unwrap_or_else(|| default.to_owned());
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'));
    if !ok {
        return Err((
            key.into(),
            format!(
                "\"{value}\" is not a valid name; expected 1 to 128 characters of letters, digits and - _ . : /"
            ),
        ));
    }
    Ok(value)
}

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

/// A host: an IP address or a DNS name. Rejects what can only fail at run time: a would-be
/// IPv4 literal out of range (`10.0.0.300`), a broken IPv6 literal, and names with characters
/// or label lengths DNS does not allow.
pub(super) fn check_host(key: &str, host: &str) -> Result<(), Invalid> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if host.contains(':') {
        return Err((
            key.into(),
            format!("\"{host}\" is not a valid IPv6 address"),
        ));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let labels: Vec<&str> = name.split('.').collect();
    let numeric = |label: &&str| !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit());
    // A name whose labels are all numbers, or whose last one is, can only be an IPv4 literal
    // (top-level domains are never numeric).
    if labels.iter().all(numeric) || labels.last().is_some_and(numeric) {
        return Err((
            key.into(),
            format!(
                "\"{host}\" is not a valid IPv4 address; expected four numbers from 0 to 255 such as \"10.0.0.1\""
            ),
        ));
    }
    let label_ok = |label: &&str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.len() > 253 || !labels.iter().all(label_ok) {
        return Err((
            key.into(),
            format!(
                "\"{host}\" is not a host name; expected an IP address or a DNS name such as \"db.example.com\" (labels of 1 to 63 letters, digits, hyphens or underscores)"
            ),
        ));
    }
    Ok(())
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
    if text.starts_with('[') && host.parse::<Ipv6Addr>().is_err() {
        return Err((
            key.to_owned(),
            format!("\"{host}\" is not a valid IPv6 address"),
        ));
    }
    check_host(key, host)?;
    Ok((host.to_owned(), port))
}

// ---- secrets in messages ---------------------------------------------------------------------

/// Keys whose values are secrets: HTTP header values (`Authorization`, API keys),
/// `[web] basic_auth_users` entries, and anything named like a password or token.
pub(super) fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains(".headers.")
        || key.ends_with(".headers")
        || key.starts_with("web.basic_auth_users")
        || [
            "password",
            "passwd",
            "token",
            "secret",
            "credential",
            "api_key",
            "apikey",
        ]
        .iter()
        .any(|word| key.contains(word))
}

/// A problem made safe to log: URL passwords masked, on one line. (The checks never quote a
/// secret key's value; serde's messages about one go through [`serde_problem`].)
pub(super) fn problem(problem: &str) -> String {
    one_line(&mask_url_passwords(problem))
}

/// serde's message about `key` (`invalid type: string "hunter2", expected ...`), without the
/// value when the key holds a secret.
pub(super) fn serde_problem(key: &str, problem: &str) -> String {
    if is_secret_key(key) {
        // The key's own last segment (a header or user name) is in the key already.
        let name = key.rsplit('.').next().unwrap_or(key);
        strip_values(problem, name)
    } else {
        problem.to_owned()
    }
}

/// Drops every quoted value (`"..."`, `` `...` ``, `'...'`) from a message, e.g. serde's
/// `invalid type: integer `42`, expected a string`, except `keep`.
fn strip_values(message: &str, keep: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        if matches!(c, '"' | '`' | '\'') {
            let mut escaped = false;
            let mut value = String::new();
            for inner in chars.by_ref() {
                match inner {
                    '\\' if !escaped => escaped = true,
                    _ if inner == c && !escaped => break,
                    _ => escaped = false,
                }
                value.push(inner);
            }
            if value == keep {
                out.push(c);
                out.push_str(&value);
                out.push(c);
                continue;
            }
            // "invalid type: string , expected" reads better without the gap.
            while out.ends_with(' ') && chars.peek().is_some_and(|next| matches!(next, ',' | ';')) {
                out.pop();
            }
            if out.ends_with(' ') && chars.peek() == Some(&' ') {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out.trim_end().to_owned()
}

/// `scheme://user:password@host` becomes `scheme://user:xxxxx@host` (as Prometheus shows its
/// own URLs), wherever it appears in `text`; `user:password@host` without a scheme too.
pub(super) fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Each `@` ends a possible userinfo: mask from its first `:` (after any `scheme://`)
    // within the same word.
    while let Some(at) = rest.find('@') {
        let (before, after) = rest.split_at(at);
        // The userinfo starts after `scheme://`, else after the start of the word; a
        // password may hold any character but `@` (a `/` too, when mistyped unencoded).
        // After the separator, whatever its width (U+2028 is whitespace of three bytes).
        let word_start = before
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace() || matches!(c, '"' | '`' | '\'' | '(' | '<'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let word_start = before[word_start..]
            .rfind("://")
            .map_or(word_start, |i| word_start + i + 3);
        let word = &before[word_start..];
        match word.find(':') {
            Some(colon) if !word[colon + 1..].is_empty() => {
                out.push_str(&before[..word_start + colon + 1]);
                out.push_str("xxxxx");
            }
            _ => out.push_str(before),
        }
        out.push('@');
        rest = &after[1..];
    }
    out.push_str(rest);
    out
}

/// One log line per error: line breaks become "; ".
pub(super) fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks the TOML syntax before the `config` crate reads the text, whose errors quote the
/// offending line (a mistyped secret included). The message gives the line, the column and
/// the key being written there, never the text.
pub(super) fn check_syntax(text: &str) -> Result<(), String> {
    let Err(err) = toml::from_str::<toml::Table>(text) else {
        return Ok(());
    };
    let message = one_line(err.message());
    let Some(span) = err.span() else {
        return Err(message);
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    match key_at_line(text, line) {
        Some(key) => Err(format!(
            "line {line}, column {column}: key `{key}`: {message}"
        )),
        None => Err(format!("line {line}, column {column}: {message}")),
    }
}

/// The key path being set on `line` (1-based), from the table headers above it and the bare
/// key at the start of the line: `target[2].headers`. None on a header line or a continuation.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut section = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = Default::default();
    let bare = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    for (number, current) in text.lines().enumerate() {
        let trimmed = current.trim();
        let header = |open: &str, close: &str| {
            trimmed
                .strip_prefix(open)
                .and_then(|rest| rest.split_once(close))
                .map(|(name, _)| name.trim().to_owned())
                .filter(|name| bare(name))
        };
        if number + 1 == line {
            let (name, _) = trimmed.split_once('=')?;
            let name = name.trim();
            if !bare(name) || trimmed.starts_with('[') {
                return None;
            }
            return Some(if section.is_empty() {
                name.to_owned()
            } else {
                format!("{section}.{name}")
            });
        }
        if let Some(name) = header("[[", "]]") {
            let count = arrays.entry(name.clone()).or_insert(0);
            section = format!("{name}[{count}]");
            *count += 1;
        } else if let Some(name) = header("[", "]") {
            section = name;
        }
    }
    None
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

    #[test]
    fn hosts_that_can_only_fail_at_run_time_are_rejected() {
        for good in [
            "10.0.0.1",
            "::1",
            "db.example.com",
            "localhost",
            "a_b.example.",
            "x1",
        ] {
            assert!(check_host("k", good).is_ok(), "{good}");
        }
        for bad in [
            "10.0.0.300",
            "1.2.3",
            "300",
            "10.0.0.1.",
            "host.300",
            "fe80::zz",
            "a b",
            "a..b",
            "-a.example",
            &"a".repeat(64),
        ] {
            assert!(check_host("k", bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(
            check_host("k", "10.0.0.300").unwrap_err().1,
            "\"10.0.0.300\" is not a valid IPv4 address; expected four numbers from 0 to 255 such as \"10.0.0.1\""
        );
    }

    #[test]
    fn url_passwords_are_masked_and_secret_values_left_out() {
        assert_eq!(
            mask_url_passwords("\"ftp://user:pa55@files.example/\" is not an http(s) URL"),
            "\"ftp://user:xxxxx@files.example/\" is not an http(s) URL"
        );
        assert_eq!(
            mask_url_passwords("user:pw@host and a@b"),
            "user:xxxxx@host and a@b"
        );
        assert_eq!(mask_url_passwords("no userinfo"), "no userinfo");
        // Found by prop_http_valid_status_accepts_exactly_its_classes_and_codes: a separator
        // wider than a byte (U+2028) before an `@` panicked on a char boundary.
        assert_eq!(
            mask_url_passwords("ꟕ\u{2028}?8#@x \u{2028}user:pw@host"),
            "ꟕ\u{2028}?8#@x \u{2028}user:xxxxx@host"
        );
        assert_eq!(
            mask_url_passwords("\"http://u:pa/ss:w@h/p\" and https://h/a@b"),
            "\"http://u:xxxxx@h/p\" and https://h/a@b"
        );
        assert_eq!(
            serde_problem(
                "target[0].headers.Authorization",
                "invalid type: integer `12345`, expected a string"
            ),
            "invalid type: integer, expected a string"
        );
        assert_eq!(
            serde_problem(
                "web.basic_auth_users.prom",
                "invalid type: string \"hunter2\", expected a map"
            ),
            "invalid type: string, expected a map"
        );
        assert_eq!(one_line("a\n  b\n\n"), "a; b");
    }
}
