//! Validation of the probe-specific keys of a `[[target]]`: which keys belong to which probe
//! kind, their defaults, and what each value must look like.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RecordType};
use hyper::header::{HeaderName, HeaderValue};
use rustls_pki_types::ServerName;

use super::fields::{Invalid, check_host, host_port, required_host};
use super::model::{
    CaFile, DbConfig, DnsConfig, DnsTransport, HttpAuth, HttpConfig, HttpVersion, IcmpConfig,
    IpVersion, Pattern, ProbeConfig, ProbeKind, Replication, Secret, TcpConfig, TlsConfig,
};
use super::raw::{RawStatus, RawTarget};

const DEFAULT_PAYLOAD_SIZE: u16 = 56;
/// Below this the token that ties a reply to its request does not fit.
const MIN_PAYLOAD_SIZE: u16 = 16;
/// Largest echo payload that fits an IPv4 datagram.
const MAX_PAYLOAD_SIZE: u16 = 65_507 - 8;
const DEFAULT_MAX_REDIRECTS: u8 = 10;
const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;

const TLS_KEYS: [&str; 3] = ["tls_ca_file", "tls_server_name", "tls_skip_verify"];

/// Every probe-specific key: whether this target sets it, and the probe kinds it belongs
/// to. The one table of which key goes with which kind.
fn probe_keys(raw: &RawTarget) -> [(&'static str, bool, &'static [ProbeKind]); 44] {
    use ProbeKind::{Dns, Http, Icmp, Mysql, Postgres, Redis, Stamp, Tcp};
    const TLS: &[ProbeKind] = &[Tcp, Http, Postgres, Mysql, Redis];
    const DB: &[ProbeKind] = &[Postgres, Mysql, Redis];
    // The kinds whose endpoint is a host name (a DNS probe's server is an IP address).
    const NAMED: &[ProbeKind] = &[Icmp, Tcp, Http];
    [
        ("addresses", raw.addresses.is_some(), NAMED),
        ("address_label", raw.address_label.is_some(), NAMED),
        ("max_addresses", raw.max_addresses.is_some(), NAMED),
        ("host", raw.host.is_some(), &[Icmp]),
        ("payload_size", raw.payload_size.is_some(), &[Icmp]),
        (
            "address",
            raw.address.is_some(),
            &[Tcp, Stamp, Postgres, Mysql, Redis],
        ),
        ("tls", raw.tls.is_some(), &[Tcp]),
        ("url", raw.url.is_some(), &[Http]),
        ("method", raw.method.is_some(), &[Http]),
        ("headers", raw.headers.is_some(), &[Http]),
        ("body", raw.body.is_some(), &[Http]),
        ("valid_status", raw.valid_status.is_some(), &[Http]),
        ("body_regex", raw.body_regex.is_some(), &[Http]),
        (
            "body_regex_invert",
            raw.body_regex_invert.is_some(),
            &[Http],
        ),
        ("follow_redirects", raw.follow_redirects.is_some(), &[Http]),
        ("max_redirects", raw.max_redirects.is_some(), &[Http]),
        ("max_body_bytes", raw.max_body_bytes.is_some(), &[Http]),
        ("http_version", raw.http_version.is_some(), &[Http]),
        (
            "keepalive",
            raw.keepalive.is_some(),
            &[Http, Postgres, Mysql, Redis],
        ),
        ("basic_auth", raw.basic_auth.is_some(), &[Http]),
        ("bearer_token", raw.bearer_token.is_some(), &[Http]),
        (
            "bearer_token_file",
            raw.bearer_token_file.is_some(),
            &[Http],
        ),
        ("bearer_token_env", raw.bearer_token_env.is_some(), &[Http]),
        ("tls_ca_file", raw.tls_ca_file.is_some(), TLS),
        ("tls_server_name", raw.tls_server_name.is_some(), TLS),
        (
            "tls_skip_verify",
            raw.tls_skip_verify.is_some(),
            &[Tcp, Http],
        ),
        ("server", raw.server.is_some(), &[Dns]),
        ("query", raw.query.is_some(), &[Dns, Postgres, Mysql, Redis]),
        ("record_type", raw.record_type.is_some(), &[Dns]),
        ("transport", raw.transport.is_some(), &[Dns]),
        ("recursion_desired", raw.recursion_desired.is_some(), &[Dns]),
        ("valid_rcodes", raw.valid_rcodes.is_some(), &[Dns]),
        ("min_answers", raw.min_answers.is_some(), &[Dns]),
        ("answer_regex", raw.answer_regex.is_some(), &[Dns]),
        ("train", raw.train.is_some(), &[Stamp]),
        ("key_file", raw.key_file.is_some(), &[Stamp]),
        ("user", raw.user.is_some(), DB),
        ("password_file", raw.password_file.is_some(), DB),
        ("password_env", raw.password_env.is_some(), DB),
        ("database", raw.database.is_some(), DB),
        ("write", raw.write.is_some(), DB),
        ("heartbeat_table", raw.heartbeat_table.is_some(), DB),
        ("sslmode", raw.sslmode.is_some(), DB),
        ("replication", raw.replication.is_some(), DB),
    ]
}

/// A key of another probe kind is a mistake worth reporting, not ignoring.
pub(super) fn check_keys(index: usize, kind: ProbeKind, raw: &RawTarget) -> Result<(), Invalid> {
    match probe_keys(raw)
        .into_iter()
        .find(|(_, set, kinds)| *set && !kinds.contains(&kind))
    {
        Some((foreign, _, _)) => Err((
            format!("target[{index}].{foreign}"),
            format!("not valid for probe \"{}\"", kind.as_str()),
        )),
        None => Ok(()),
    }
}

/// The probe configuration of target `index`, whose kind and IP version are already known.
pub(super) fn probe(
    index: usize,
    kind: ProbeKind,
    raw: RawTarget,
    ip_version: IpVersion,
) -> Result<ProbeConfig, Invalid> {
    let key = |field: &str| format!("target[{index}].{field}");
    check_keys(index, kind, &raw)?;
    match kind {
        ProbeKind::Icmp => icmp(&key, raw, ip_version),
        ProbeKind::Tcp => tcp(&key, raw, ip_version),
        ProbeKind::Http => http(&key, raw, ip_version),
        ProbeKind::Dns => dns(&key, raw),
        ProbeKind::Stamp => super::stamp::target(&key, raw, ip_version),
        ProbeKind::Postgres | ProbeKind::Mysql | ProbeKind::Redis => {
            database(&key, kind, raw, ip_version)
        }
    }
}

/// A heartbeat table or key prefix: a plain identifier, so it can be put in SQL as is.
fn identifier(key: &str, text: &str) -> Result<String, Invalid> {
    let mut chars = text.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && text.len() <= 63;
    if ok {
        Ok(text.to_owned())
    } else {
        Err((
            key.to_owned(),
            format!("\"{text}\" is not a plain identifier (letters, digits, _; at most 63)"),
        ))
    }
}

fn database(
    key: &dyn Fn(&str) -> String,
    kind: ProbeKind,
    mut raw: RawTarget,
    ip_version: IpVersion,
) -> Result<ProbeConfig, Invalid> {
    let default_port = match kind {
        ProbeKind::Postgres => 5432,
        ProbeKind::Mysql => 3306,
        _ => 6379,
    };
    let address = required_host(
        &key("address"),
        raw.address.clone(),
        &format!(
            "a {} target needs an address such as \"db.example.com:{default_port}\"",
            kind.as_str()
        ),
    )?;
    let (host, port) = if address.contains(':') {
        host_port(&key("address"), &address)?
    } else {
        check_host(&key("address"), &address)?;
        (address.clone(), default_port)
    };
    let password = secret(
        key,
        "password",
        None,
        raw.password_file.take(),
        raw.password_env.take(),
    )?;
    if kind == ProbeKind::Redis
        && let Some(db) = &raw.database
        && db.parse::<u16>().is_err()
    {
        return Err((
            key("database"),
            format!("\"{db}\" is not a Redis database number"),
        ));
    }
    if kind != ProbeKind::Redis && raw.user.is_none() {
        return Err((
            key("user"),
            format!("a {} target needs a user", kind.as_str()),
        ));
    }
    let query = match raw.query.take() {
        Some(query) if query.trim().is_empty() => {
            return Err((key("query"), "empty; leave it out for the default".into()));
        }
        Some(query) => query,
        None if kind == ProbeKind::Redis => "PING".to_owned(),
        None => "SELECT 1".to_owned(),
    };
    let heartbeat_table = match raw.heartbeat_table.as_deref() {
        Some(text) => identifier(&key("heartbeat_table"), text)?,
        None => "regionprobe_heartbeat".to_owned(),
    };
    let tls = match raw.sslmode.as_deref() {
        None | Some("disable") => {
            without_tls(key, &raw, "needs sslmode = \"require\" or \"verify-full\"")?;
            None
        }
        Some("require") => Some(TlsConfig {
            skip_verify: true,
            ..tls(key, &raw)?
        }),
        Some("verify-full") => Some(tls(key, &raw)?),
        Some(other) => {
            return Err((
                key("sslmode"),
                format!("unknown sslmode \"{other}\"; expected disable, require or verify-full"),
            ));
        }
    };
    let replication = match raw.replication.as_deref() {
        None | Some("none") => None,
        Some("replica") => Some(Replication::Replica),
        Some("primary") => Some(Replication::Primary),
        Some("heartbeat") => Some(Replication::Heartbeat),
        Some(other) => {
            return Err((
                key("replication"),
                format!(
                    "unknown replication mode \"{other}\"; expected none, replica, primary or heartbeat"
                ),
            ));
        }
    };
    if replication == Some(Replication::Primary) && kind == ProbeKind::Mysql {
        return Err((
            key("replication"),
            "\"primary\" is for postgres and redis; probe the MySQL replica with \"replica\""
                .into(),
        ));
    }
    Ok(ProbeConfig::Db(Box::new(DbConfig {
        kind,
        host,
        port,
        ip_version,
        user: raw.user,
        password,
        database: raw.database,
        query,
        write: raw.write.unwrap_or(false),
        heartbeat_table,
        keepalive: raw.keepalive.unwrap_or(false),
        tls,
        replication,
    })))
}

fn icmp(
    key: &dyn Fn(&str) -> String,
    raw: RawTarget,
    ip_version: IpVersion,
) -> Result<ProbeConfig, Invalid> {
    let host = required_host(&key("host"), raw.host, "an icmp target needs a host")?;
    check_host(&key("host"), &host)?;
    let payload_size = raw.payload_size.unwrap_or(DEFAULT_PAYLOAD_SIZE);
    if !(MIN_PAYLOAD_SIZE..=MAX_PAYLOAD_SIZE).contains(&payload_size) {
        return Err((
            key("payload_size"),
            format!(
                "{payload_size} bytes is out of range; expected {MIN_PAYLOAD_SIZE} to {MAX_PAYLOAD_SIZE}"
            ),
        ));
    }
    Ok(ProbeConfig::Icmp(IcmpConfig {
        host,
        payload_size,
        ip_version,
    }))
}

fn tcp(
    key: &dyn Fn(&str) -> String,
    raw: RawTarget,
    ip_version: IpVersion,
) -> Result<ProbeConfig, Invalid> {
    let address = required_host(
        &key("address"),
        raw.address.clone(),
        "a tcp target needs an address such as \"db.example.com:5432\"",
    )?;
    let (host, port) = host_port(&key("address"), &address)?;
    let tls = if raw.tls.unwrap_or(false) {
        Some(tls(key, &raw)?)
    } else {
        without_tls(key, &raw, "needs tls = true")?;
        None
    };
    Ok(ProbeConfig::Tcp(TcpConfig {
        host,
        port,
        ip_version,
        tls,
    }))
}

fn http(
    key: &dyn Fn(&str) -> String,
    mut raw: RawTarget,
    ip_version: IpVersion,
) -> Result<ProbeConfig, Invalid> {
    let text = required_host(
        &key("url"),
        raw.url.clone(),
        "an http target needs a url such as \"https://api.example.com/healthz\"",
    )?;
    let url: hyper::Uri = text
        .parse()
        .ok()
        .filter(|url: &hyper::Uri| {
            matches!(url.scheme_str(), Some("http" | "https"))
                && url.host().is_some_and(|h| !h.is_empty())
        })
        .ok_or_else(|| {
            (
                key("url"),
                format!(
                    "\"{text}\" is not an http(s) URL; expected e.g. \"https://api.example.com/healthz\""
                ),
            )
        })?;
    if let Some(host) = url.host() {
        let host = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host);
        check_host(&key("url"), host)?;
    }
    let (url, url_credentials) = without_credentials(url);
    let tls = if url.scheme_str() == Some("https") {
        tls(key, &raw)?
    } else {
        without_tls(key, &raw, "needs an https url")?;
        TlsConfig::default()
    };

    let method = match raw.method.as_deref() {
        None => hyper::Method::GET,
        Some(text) => hyper::Method::from_bytes(text.to_ascii_uppercase().as_bytes())
            .map_err(|_| (key("method"), format!("\"{text}\" is not an HTTP method")))?,
    };
    let mut headers = Vec::new();
    for (name, value) in raw.headers.take().unwrap_or_default() {
        let field = key(&format!("headers.{name}"));
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| (field.clone(), format!("\"{name}\" is not a header name")))?;
        let value = HeaderValue::from_str(&value).map_err(|_| {
            (
                field,
                "the value has characters a header cannot carry".into(),
            )
        })?;
        // Any configured header may carry a secret: never shown by `Debug`.
        let mut value = value;
        value.set_sensitive(true);
        headers.push((header, value));
    }
    let auth = auth(key, &mut raw, url_credentials, &headers)?;
    let valid_status = match raw.valid_status {
        None => vec![(200, 299)],
        Some(list) if list.is_empty() => {
            return Err((
                key("valid_status"),
                "must list at least one code or class".into(),
            ));
        }
        Some(list) => {
            list.iter()
                .enumerate()
                .map(|(i, entry)| {
                    status_range(entry).ok_or_else(|| {
                let shown = match entry {
                    RawStatus::Code(code) => code.to_string(),
                    RawStatus::Text(text) => format!("\"{text}\""),
                };
                (
                    key(&format!("valid_status[{i}]")),
                    format!("{shown} is not a status code or class; expected e.g. 200 or \"2xx\""),
                )
            })
                })
                .collect::<Result<_, _>>()?
        }
    };
    let body_regex = pattern(&key("body_regex"), raw.body_regex)?;
    let body_regex_invert = raw.body_regex_invert.unwrap_or(false);
    if body_regex_invert && body_regex.is_none() {
        return Err((key("body_regex_invert"), "needs a body_regex".into()));
    }
    let max_redirects = match (raw.follow_redirects.unwrap_or(true), raw.max_redirects) {
        (true, max) => max.unwrap_or(DEFAULT_MAX_REDIRECTS),
        (false, None) => 0,
        (false, Some(_)) => {
            return Err((
                key("max_redirects"),
                "redirects are not followed (follow_redirects = false)".into(),
            ));
        }
    };
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        return Err((key("max_body_bytes"), "must be at least 1".into()));
    }
    let http_version = match raw.http_version.as_deref() {
        None | Some("1.1") => HttpVersion::Http1,
        Some("2") => HttpVersion::Http2,
        Some(other) => {
            return Err((
                key("http_version"),
                format!("\"{other}\" is not supported; expected \"1.1\" or \"2\""),
            ));
        }
    };
    Ok(ProbeConfig::Http(Box::new(HttpConfig {
        url,
        method,
        headers,
        body: raw.body.unwrap_or_default(),
        valid_status,
        body_regex,
        body_regex_invert,
        max_redirects,
        max_body_bytes,
        http_version,
        keepalive: raw.keepalive.unwrap_or(false),
        tls,
        ip_version,
        auth,
    })))
}

/// The URL without its `user:password@`, and those credentials, percent-decoded. Requests go
/// to the URL without them (the credentials become basic auth), and every message shows it.
fn without_credentials(url: hyper::Uri) -> (hyper::Uri, Option<(String, String)>) {
    let Some((userinfo, host)) = url.authority().and_then(|a| a.as_str().rsplit_once('@')) else {
        return (url, None);
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let credentials = (percent_decode(user), percent_decode(password));
    let host = host.parse().ok();
    let mut parts = url.into_parts();
    parts.authority = host;
    let url = hyper::Uri::from_parts(parts).expect("the same URL with a shorter authority");
    (url, Some(credentials))
}

/// `%XX` escapes to bytes (RFC 3986 userinfo); anything malformed stays as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The target's credentials: from the URL, `basic_auth` or a bearer token, at most one of
/// them, and not beside an `Authorization` header.
fn auth(
    key: &dyn Fn(&str) -> String,
    raw: &mut RawTarget,
    url_credentials: Option<(String, String)>,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<Option<HttpAuth>, Invalid> {
    let bearer = secret(
        key,
        "bearer_token",
        raw.bearer_token.take(),
        raw.bearer_token_file.take(),
        raw.bearer_token_env.take(),
    )?;
    let basic = match raw.basic_auth.take() {
        None => None,
        Some(basic) => {
            let username = basic
                .username
                .filter(|name| !name.is_empty())
                .ok_or_else(|| (key("basic_auth.username"), "missing".to_owned()))?;
            if username.contains(':') {
                return Err((
                    key("basic_auth.username"),
                    "must not contain ':' (basic auth separates user and password with it)"
                        .to_owned(),
                ));
            }
            let password = secret(
                &|field| key(&format!("basic_auth.{field}")),
                "password",
                basic.password,
                basic.password_file,
                basic.password_env,
            )?
            .unwrap_or(Secret::Value(String::new()));
            Some((username, password))
        }
    };
    let from_url = url_credentials.map(|(username, password)| HttpAuth::Basic {
        username,
        password: Secret::Value(password),
        from_url: true,
    });
    let configured = [
        from_url.map(|auth| ("url", auth)),
        basic.map(|(username, password)| {
            (
                "basic_auth",
                HttpAuth::Basic {
                    username,
                    password,
                    from_url: false,
                },
            )
        }),
        bearer.map(|token| ("bearer_token", HttpAuth::Bearer(token))),
    ];
    let mut given = configured.into_iter().flatten();
    let first = given.next();
    if let (Some((first, _)), Some((second, _))) = (&first, given.next()) {
        return Err((
            key(second),
            format!("credentials are already given by `{first}`; set them once"),
        ));
    }
    if let Some((source, _)) = &first
        && headers
            .iter()
            .any(|(name, _)| name == hyper::header::AUTHORIZATION)
    {
        return Err((
            key("headers.Authorization"),
            format!("credentials are already given by `{source}`; set them once"),
        ));
    }
    Ok(first.map(|(_, auth)| auth))
}

/// A secret given as `<name>`, `<name>_file` or `<name>_env`: at most one of them. A file must
/// be readable now (it is read again at every probe); a variable must be set now.
fn secret(
    key: &dyn Fn(&str) -> String,
    name: &str,
    value: Option<String>,
    file: Option<String>,
    env: Option<String>,
) -> Result<Option<Secret>, Invalid> {
    let given: Vec<&str> = [
        value.as_ref().map(|_| ""),
        file.as_ref().map(|_| "_file"),
        env.as_ref().map(|_| "_env"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        return Err((
            key(&format!("{name}{}", given[1])),
            format!(
                "`{name}{}` is already set; give the secret one way",
                given[0]
            ),
        ));
    }
    if let Some(value) = value {
        return Ok(Some(Secret::Value(value)));
    }
    if let Some(path) = file {
        let secret = Secret::File(PathBuf::from(&path));
        secret
            .read()
            .map_err(|problem| (key(&format!("{name}_file")), problem))?;
        return Ok(Some(secret));
    }
    if let Some(variable) = env {
        return match std::env::var(&variable) {
            Ok(value) => Ok(Some(Secret::Value(value))),
            Err(_) => Err((
                key(&format!("{name}_env")),
                format!("the environment variable {variable} is not set (or not UTF-8)"),
            )),
        };
    }
    Ok(None)
}

fn status_range(entry: &RawStatus) -> Option<(u16, u16)> {
    let code_range = |code: u16| (100..=599).contains(&code).then_some((code, code));
    match entry {
        RawStatus::Code(code) => code_range(*code),
        RawStatus::Text(text) => match text.to_ascii_lowercase().as_bytes() {
            [class @ b'1'..=b'5', b'x', b'x'] => {
                let base = u16::from(class - b'0') * 100;
                Some((base, base + 99))
            }
            _ => text.parse().ok().and_then(code_range),
        },
    }
}

fn dns(key: &dyn Fn(&str) -> String, raw: RawTarget) -> Result<ProbeConfig, Invalid> {
    let text = required_host(
        &key("query"),
        raw.query,
        "a dns target needs a query (the name to look up)",
    )?;
    // from_utf8 turns internationalised names into their xn-- form.
    let mut query = Name::from_utf8(&text)
        .ok()
        .filter(|name| !name.is_root() || text == ".")
        .ok_or_else(|| {
            (
                key("query"),
                format!(
                    "\"{text}\" is not a domain name; expected e.g. \"www.example.com\" (labels of 1 to 63 letters, digits, hyphens or underscores)"
                ),
            )
        })?;
    // The probe asks exactly this name: no search domains.
    query.set_fqdn(true);
    let record_type = match raw.record_type.as_deref() {
        None => RecordType::A,
        Some(text) => match text.to_ascii_uppercase().parse() {
            // Zone transfers and EDNS pseudo-records are not something one query can ask.
            Ok(kind @ (RecordType::AXFR | RecordType::IXFR | RecordType::OPT)) => {
                return Err((
                    key("record_type"),
                    format!(
                        "{kind} cannot be asked in a single query; expected e.g. A, AAAA, CNAME, MX, TXT, SRV, NS, SOA, PTR"
                    ),
                ));
            }
            Ok(kind) if !matches!(kind, RecordType::Unknown(_)) => kind,
            _ => {
                return Err((
                    key("record_type"),
                    format!(
                        "\"{text}\" is not a record type; expected e.g. A, AAAA, CNAME, MX, TXT, SRV, NS, SOA, PTR"
                    ),
                ));
            }
        },
    };
    let server = match raw.server.as_deref() {
        Some(text) => dns_server(text).ok_or_else(|| {
            (
                key("server"),
                format!(
                    "\"{text}\" is not a name server address; expected an IP with an optional port, e.g. \"10.0.0.2\", \"10.0.0.2:5353\" or \"[2001:db8::53]:53\""
                ),
            )
        })?,
        None => system_name_server().map_err(|problem| (key("server"), problem))?,
    };
    let transport = match raw.transport.as_deref() {
        None | Some("udp") => DnsTransport::Udp,
        Some("tcp") => DnsTransport::Tcp,
        Some(other) => {
            return Err((
                key("transport"),
                format!("\"{other}\" is not a DNS transport; expected \"udp\" or \"tcp\""),
            ));
        }
    };
    let valid_rcodes = match raw.valid_rcodes {
        None => vec![ResponseCode::NoError],
        Some(list) if list.is_empty() => {
            return Err((key("valid_rcodes"), "must list at least one rcode".into()));
        }
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, name)| {
                rcode(name).ok_or_else(|| {
                    (
                        key(&format!("valid_rcodes[{i}]")),
                        format!("\"{name}\" is not a response code; expected e.g. NOERROR, NXDOMAIN, SERVFAIL, REFUSED"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(ProbeConfig::Dns(Box::new(DnsConfig {
        server,
        query,
        record_type,
        transport,
        recursion_desired: raw.recursion_desired.unwrap_or(true),
        valid_rcodes,
        min_answers: raw.min_answers.unwrap_or(0),
        answer_regex: pattern(&key("answer_regex"), raw.answer_regex)?,
    })))
}

/// `ip`, `ip:port`, `[v6]:port`; port 53 by default. A name is refused: a DNS probe that needs
/// DNS to find its server would measure the wrong thing.
fn dns_server(text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    text.parse()
        .ok()
        .filter(|addr: &SocketAddr| addr.port() != 0)
}

/// The first `nameserver` of /etc/resolv.conf.
fn system_name_server() -> Result<SocketAddr, String> {
    let (config, _) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|err| format!("missing, and /etc/resolv.conf gives no default: {err}"))?;
    config
        .name_servers()
        .first()
        .map(|ns| SocketAddr::new(ns.ip, 53))
        .ok_or_else(|| "missing, and /etc/resolv.conf lists no nameserver".into())
}

/// The rcode mnemonics `valid_rcodes` accepts, indexed by code (RFC 1035, RFC 2136): the one
/// table for reading them in the configuration and writing them in failure details.
const RCODE_NAMES: [&str; 11] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE",
];

fn rcode(name: &str) -> Option<ResponseCode> {
    let upper = name.to_ascii_uppercase();
    RCODE_NAMES
        .iter()
        .position(|known| *known == upper)
        .map(|code| ResponseCode::from_low(code as u8))
}

/// An rcode as `valid_rcodes` spells it (NXDOMAIN, not hickory's "Non-Existent Domain"); a
/// code without a mnemonic as its number and hickory's name.
pub fn rcode_name(rcode: ResponseCode) -> String {
    let code = u16::from(rcode);
    match RCODE_NAMES.get(usize::from(code)) {
        Some(name) => (*name).to_owned(),
        None => format!("{code} ({rcode})"),
    }
}

fn pattern(key: &str, text: Option<String>) -> Result<Option<Pattern>, Invalid> {
    text.map(|text| {
        regex::Regex::new(&text).map(Pattern).map_err(|err| {
            // The regex crate's message spans lines with a caret; one line reads better here.
            let message = err
                .to_string()
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .trim_start_matches("error: ")
                .to_owned();
            (
                key.to_owned(),
                format!("\"{text}\" is not a valid regular expression: {message}"),
            )
        })
    })
    .transpose()
}

fn tls(key: &dyn Fn(&str) -> String, raw: &RawTarget) -> Result<TlsConfig, Invalid> {
    let server_name = match raw.tls_server_name.as_deref() {
        None => None,
        Some(name) => {
            ServerName::try_from(name.to_owned()).map_err(|_| {
                (
                    key("tls_server_name"),
                    format!("\"{name}\" is not a DNS name or IP address"),
                )
            })?;
            Some(name.to_owned())
        }
    };
    let ca = match raw.tls_ca_file.as_deref() {
        None => None,
        Some(path) => Some(ca_file(&key("tls_ca_file"), path)?),
    };
    Ok(TlsConfig {
        server_name,
        skip_verify: raw.tls_skip_verify.unwrap_or(false),
        ca,
    })
}

fn without_tls(
    key: &dyn Fn(&str) -> String,
    raw: &RawTarget,
    problem: &str,
) -> Result<(), Invalid> {
    match probe_keys(raw)
        .into_iter()
        .find(|(field, set, _)| *set && TLS_KEYS.contains(field))
    {
        Some((field, _, _)) => Err((key(field), problem.into())),
        None => Ok(()),
    }
}

fn ca_file(key: &str, path: &str) -> Result<CaFile, Invalid> {
    let certs = super::web::certificates(key, path)?;
    Ok(CaFile {
        path: PathBuf::from(path),
        certs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_and_classes() {
        assert_eq!(status_range(&RawStatus::Code(204)), Some((204, 204)));
        assert_eq!(
            status_range(&RawStatus::Text("2xx".into())),
            Some((200, 299))
        );
        assert_eq!(
            status_range(&RawStatus::Text("5XX".into())),
            Some((500, 599))
        );
        assert_eq!(
            status_range(&RawStatus::Text("301".into())),
            Some((301, 301))
        );
        for bad in ["6xx", "2x", "abc", "99", "2xxx"] {
            assert_eq!(status_range(&RawStatus::Text(bad.into())), None, "{bad}");
        }
        assert_eq!(status_range(&RawStatus::Code(600)), None);
    }

    #[test]
    fn rcodes_by_name() {
        assert_eq!(rcode("noerror"), Some(ResponseCode::NoError));
        assert_eq!(rcode("NXDOMAIN"), Some(ResponseCode::NXDomain));
        assert_eq!(rcode("REFUSED"), Some(ResponseCode::Refused));
        assert_eq!(rcode("OK"), None);
        for name in RCODE_NAMES {
            assert_eq!(rcode_name(rcode(name).unwrap()), name);
        }
        assert_eq!(
            rcode_name(ResponseCode::BADCOOKIE),
            "23 (Bad server cookie)"
        );
    }

    #[test]
    fn dns_servers_are_ip_addresses_with_an_optional_port() {
        assert_eq!(dns_server("10.0.0.2"), Some("10.0.0.2:53".parse().unwrap()));
        assert_eq!(
            dns_server("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(dns_server("::1"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(dns_server("127.0.0.1:0"), None, "port 0 is no port");
        assert_eq!(
            dns_server("[::1]:5353"),
            Some("[::1]:5353".parse().unwrap())
        );
        assert_eq!(dns_server("ns1.example.com"), None);
    }

    fn dns_target(raw: RawTarget) -> Result<DnsConfig, Invalid> {
        match probe(0, ProbeKind::Dns, raw, IpVersion::Any)? {
            ProbeConfig::Dns(config) => Ok(*config),
            other => panic!("not a dns config: {other:?}"),
        }
    }

    fn dns_raw(query: &str) -> RawTarget {
        RawTarget {
            server: Some("10.0.0.2".into()),
            query: Some(query.into()),
            ..RawTarget::default()
        }
    }

    #[test]
    fn dns_defaults_ask_one_a_query_over_udp_and_accept_noerror() {
        let config = dns_target(dns_raw("www.example.com")).unwrap();
        assert_eq!(
            config,
            DnsConfig {
                server: "10.0.0.2:53".parse().unwrap(),
                query: Name::from_ascii("www.example.com.").unwrap(),
                record_type: RecordType::A,
                transport: DnsTransport::Udp,
                recursion_desired: true,
                valid_rcodes: vec![ResponseCode::NoError],
                min_answers: 0,
                answer_regex: None,
            }
        );
        // Exactly this name is asked: never a search domain appended.
        assert!(config.query.is_fqdn());
        assert_eq!(config.query.to_ascii(), "www.example.com.");
        let dotted = dns_target(dns_raw("www.example.com.")).unwrap();
        assert_eq!(dotted.query, config.query);
    }

    #[test]
    fn dns_keys_are_parsed_case_insensitively_where_dns_is() {
        let config = dns_target(RawTarget {
            record_type: Some("aaaa".into()),
            transport: Some("tcp".into()),
            recursion_desired: Some(false),
            valid_rcodes: Some(vec!["nxdomain".into(), "NoError".into()]),
            min_answers: Some(2),
            answer_regex: Some("^www".into()),
            ..dns_raw("www.example.com")
        })
        .unwrap();
        assert_eq!(config.record_type, RecordType::AAAA);
        assert_eq!(config.transport, DnsTransport::Tcp);
        assert!(!config.recursion_desired);
        assert_eq!(
            config.valid_rcodes,
            [ResponseCode::NXDomain, ResponseCode::NoError]
        );
        assert_eq!(config.min_answers, 2);
        assert_eq!(config.answer_regex.unwrap().0.as_str(), "^www");
        for (text, expected) in [
            ("mx", RecordType::MX),
            ("TXT", RecordType::TXT),
            ("Srv", RecordType::SRV),
            ("ns", RecordType::NS),
            ("SOA", RecordType::SOA),
            ("ptr", RecordType::PTR),
            ("CNAME", RecordType::CNAME),
            ("caa", RecordType::CAA),
        ] {
            let config = dns_target(RawTarget {
                record_type: Some(text.into()),
                ..dns_raw("example.com")
            })
            .unwrap();
            assert_eq!(config.record_type, expected, "{text}");
        }
    }

    #[test]
    fn dns_rejections_name_the_key() {
        let cases = [
            (
                RawTarget {
                    record_type: Some("AAA".into()),
                    ..dns_raw("example.com")
                },
                "target[0].record_type",
            ),
            (
                RawTarget {
                    server: Some("ns1.example.com:53".into()),
                    ..dns_raw("example.com")
                },
                "target[0].server",
            ),
            (
                RawTarget {
                    transport: Some("doh".into()),
                    ..dns_raw("example.com")
                },
                "target[0].transport",
            ),
            (
                RawTarget {
                    valid_rcodes: Some(vec!["NOERROR".into(), "OK".into()]),
                    ..dns_raw("example.com")
                },
                "target[0].valid_rcodes[1]",
            ),
            (
                RawTarget {
                    valid_rcodes: Some(Vec::new()),
                    ..dns_raw("example.com")
                },
                "target[0].valid_rcodes",
            ),
            (
                RawTarget {
                    answer_regex: Some("(".into()),
                    ..dns_raw("example.com")
                },
                "target[0].answer_regex",
            ),
            (dns_raw(" "), "target[0].query"),
            (dns_raw("exa mple.com"), "target[0].query"),
            (
                RawTarget {
                    query: None,
                    ..dns_raw("")
                },
                "target[0].query",
            ),
            (
                RawTarget {
                    url: Some("http://example.com/".into()),
                    ..dns_raw("example.com")
                },
                "target[0].url",
            ),
        ];
        for (raw, key) in cases {
            let shown = format!("{raw:?}");
            let (found, problem) = dns_target(raw).expect_err(&shown);
            assert_eq!(found, key, "{shown}: {problem}");
        }
    }

    #[test]
    fn a_dns_target_without_server_asks_the_first_system_name_server() {
        let raw = RawTarget {
            server: None,
            ..dns_raw("example.com")
        };
        match dns_target(raw) {
            Ok(config) => assert_eq!(config.server.port(), 53),
            Err((key, problem)) => {
                assert_eq!(key, "target[0].server");
                assert!(
                    problem.starts_with("missing, and /etc/resolv.conf"),
                    "{problem}"
                );
            }
        }
    }
}
