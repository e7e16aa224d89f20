//! `[web]`: TLS, client certificates and basic auth on the exporter's own endpoint, with the
//! keys of the Prometheus exporter toolkit's web configuration. Files are read and the TLS
//! server configuration is built here, so a bad certificate fails the load (and a reload
//! rotates certificates).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::fields::Invalid;
use super::raw::RawWeb;

/// How to make a bcrypt hash, for the error that finds a password where a hash belongs.
const HOW_TO_HASH: &str = "store a bcrypt hash, never the password: htpasswd -nBC 10 \"\" | tr -d ':\\n' prints one (or python3 -c 'import bcrypt,getpass; print(bcrypt.hashpw(getpass.getpass().encode(), bcrypt.gensalt(10)).decode())')";

/// `[web]`, validated. The default serves plain HTTP to everyone.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Web {
    pub tls: Option<WebTls>,
    /// User name to bcrypt hash; empty: no basic auth.
    pub basic_auth_users: BTreeMap<String, PasswordHash>,
    /// `/-/healthy` and `/-/ready` answer without credentials (for orchestrator probes).
    pub health_without_auth: bool,
}

/// A bcrypt hash from `basic_auth_users`. Its `Debug` hides it: a hash is still a target for
/// offline guessing.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(pub String);

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// Which client certificates the TLS server asks for (`tls_client_auth_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No `tls_client_ca_file`: no client certificates.
    None,
    /// `RequireAndVerifyClientCert`: no connection without a certificate from the client CA.
    RequireAndVerify,
    /// `VerifyClientCertIfGiven`: a certificate is optional, but checked when sent.
    VerifyIfGiven,
}

/// TLS on the exporter's endpoint: the files, and the rustls configuration built from them.
#[derive(Clone)]
pub struct WebTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub server: Arc<rustls::ServerConfig>,
    /// The certificates read, for comparing two configurations (the key follows its certificate).
    certs: Vec<CertificateDer<'static>>,
}

impl PartialEq for WebTls {
    fn eq(&self, other: &Self) -> bool {
        self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && self.client_ca_file == other.client_ca_file
            && self.client_auth == other.client_auth
            && self.certs == other.certs
    }
}

impl fmt::Debug for WebTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("client_ca_file", &self.client_ca_file)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

pub(super) fn validate(raw: RawWeb) -> Result<Web, Invalid> {
    let tls = tls(&raw)?;
    let mut basic_auth_users = BTreeMap::new();
    if let Some(users) = raw.basic_auth_users {
        if users.is_empty() {
            return Err((
                "web.basic_auth_users".into(),
                "lists no user; remove the key to turn basic auth off".into(),
            ));
        }
        for (user, hash) in users {
            let key = format!("web.basic_auth_users.{user}");
            if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
                return Err((
                    key,
                    "is not a usable user name; it must be non-empty, without ':' or control characters".into(),
                ));
            }
            // The value is never echoed: when it is not a hash, it is probably a password.
            bcrypt_hash(&hash).map_err(|problem| (key, problem))?;
            basic_auth_users.insert(user, PasswordHash(hash));
        }
    }
    let health_without_auth = raw.health_without_auth.unwrap_or(false);
    if health_without_auth && basic_auth_users.is_empty() {
        return Err((
            "web.health_without_auth".into(),
            "needs basic_auth_users; without them every path is open already".into(),
        ));
    }
    Ok(Web {
        tls,
        basic_auth_users,
        health_without_auth,
    })
}

/// The exporter toolkit's web configuration file (`--web.config.file`, YAML), read into the
/// same settings and checked as `[web]` is. Errors name the file's own keys
/// (`tls_server_config.cert_file`). Toolkit keys regionprobe does not implement are refused
/// by name rather than ignored: a file that asks for them gets no weaker endpoint than it
/// says.
pub(super) fn from_toolkit(doc: &yaml_rust2::Yaml) -> Result<Web, Invalid> {
    use yaml_rust2::Yaml;
    let text = |value: &Yaml, key: &str| -> Result<String, Invalid> {
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| (key.to_owned(), "must be a string".to_owned()))
    };
    let mut raw = RawWeb::default();
    let top = match doc {
        Yaml::Hash(top) => top,
        Yaml::Null | Yaml::BadValue => return validate(raw).map_err(toolkit_key),
        _ => return Err((String::new(), "must be a mapping of keys".to_owned())),
    };
    for (key, value) in top {
        let key = key.as_str().unwrap_or_default();
        match key {
            "tls_server_config" => {
                let Yaml::Hash(tls) = value else {
                    return Err((key.to_owned(), "must be a mapping".to_owned()));
                };
                for (field, value) in tls {
                    let field = field.as_str().unwrap_or_default();
                    let path = format!("tls_server_config.{field}");
                    match field {
                        "cert_file" => raw.tls_cert_file = Some(text(value, &path)?),
                        "key_file" => raw.tls_key_file = Some(text(value, &path)?),
                        "client_ca_file" => raw.tls_client_ca_file = Some(text(value, &path)?),
                        "client_auth_type" => {
                            raw.tls_client_auth_type = Some(text(value, &path)?);
                        }
                        // What rustls does anyway: TLS 1.2 and 1.3.
                        "min_version" if value.as_str() == Some("TLS12") => {}
                        "min_version" => {
                            return Err((
                                path,
                                "only \"TLS12\" is supported (TLS 1.2 and 1.3 are served)"
                                    .to_owned(),
                            ));
                        }
                        other => {
                            return Err((
                                path,
                                format!(
                                    "`{other}` is not supported; supported: cert_file, key_file, client_ca_file, client_auth_type, min_version"
                                ),
                            ));
                        }
                    }
                }
            }
            "basic_auth_users" => {
                let Yaml::Hash(users) = value else {
                    return Err((
                        key.to_owned(),
                        "must be a mapping of user: bcrypt hash".to_owned(),
                    ));
                };
                let mut map = BTreeMap::new();
                for (user, hash) in users {
                    let user = user.as_str().unwrap_or_default().to_owned();
                    // Never echoed: a value that is no string may still be a password.
                    let hash = hash.as_str().map(str::to_owned).ok_or_else(|| {
                        (
                            format!("basic_auth_users.{user}"),
                            "must be a string (a bcrypt hash)".to_owned(),
                        )
                    })?;
                    map.insert(user, hash);
                }
                raw.basic_auth_users = Some(map);
            }
            other => {
                return Err((
                    other.to_owned(),
                    "is not supported; supported: tls_server_config, basic_auth_users".to_owned(),
                ));
            }
        }
    }
    validate(raw).map_err(toolkit_key)
}

/// A `[web]` key path as the toolkit file spells it.
fn toolkit_key((key, problem): Invalid) -> Invalid {
    let key = match key.strip_prefix("web.") {
        Some("tls_cert_file") => "tls_server_config.cert_file".to_owned(),
        Some("tls_key_file") => "tls_server_config.key_file".to_owned(),
        Some("tls_client_ca_file") => "tls_server_config.client_ca_file".to_owned(),
        Some("tls_client_auth_type") => "tls_server_config.client_auth_type".to_owned(),
        Some(other) => other.to_owned(),
        None => key,
    };
    (key, problem)
}

fn bcrypt_hash(text: &str) -> Result<(), String> {
    if !text.starts_with("$2") {
        return Err(format!("is not a bcrypt hash; {HOW_TO_HASH}"));
    }
    let parts: bcrypt::HashParts = text.parse().map_err(|err| match err {
        bcrypt::BcryptError::InvalidHash(reason) => {
            format!("is not a valid bcrypt hash ({reason}); {HOW_TO_HASH}")
        }
        other => format!("is not a valid bcrypt hash ({other}); {HOW_TO_HASH}"),
    })?;
    let cost = parts.get_cost();
    if !(4..=31).contains(&cost) {
        return Err(format!(
            "bcrypt cost {cost} is out of range; expected 4 to 31 (10 is usual)"
        ));
    }
    Ok(())
}

fn tls(raw: &RawWeb) -> Result<Option<WebTls>, Invalid> {
    let (cert_file, key_file) = match (&raw.tls_cert_file, &raw.tls_key_file) {
        (None, None) => {
            let stray = [
                ("tls_client_ca_file", raw.tls_client_ca_file.is_some()),
                ("tls_client_auth_type", raw.tls_client_auth_type.is_some()),
            ];
            if let Some((field, _)) = stray.iter().find(|(_, set)| *set) {
                return Err((
                    format!("web.{field}"),
                    "needs tls_cert_file and tls_key_file (TLS on)".into(),
                ));
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err((
                "web.tls_key_file".into(),
                "missing; tls_cert_file needs the private key of its certificate".into(),
            ));
        }
        (None, Some(_)) => {
            return Err((
                "web.tls_cert_file".into(),
                "missing; tls_key_file needs the certificate it belongs to".into(),
            ));
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    let certs = certificates("web.tls_cert_file", cert_file)?;
    let bytes = read("web.tls_key_file", key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| {
        let problem = match err {
            rustls_pki_types::pem::Error::NoItemsFound => {
                format!(
                    "\"{key_file}\" holds no PEM private key (encrypted keys are not supported)"
                )
            }
            other => format!("\"{key_file}\" is not a valid PEM private key: {other}"),
        };
        ("web.tls_key_file".to_owned(), problem)
    })?;

    let client_auth = match (&raw.tls_client_ca_file, raw.tls_client_auth_type.as_deref()) {
        (None, None) => ClientAuth::None,
        (None, Some(_)) => {
            return Err((
                "web.tls_client_auth_type".into(),
                "needs tls_client_ca_file, the CA that signs the client certificates".into(),
            ));
        }
        (Some(_), None | Some("RequireAndVerifyClientCert")) => ClientAuth::RequireAndVerify,
        (Some(_), Some("VerifyClientCertIfGiven")) => ClientAuth::VerifyIfGiven,
        (Some(_), Some(other)) => {
            return Err((
                "web.tls_client_auth_type".into(),
                format!(
                    "\"{other}\" is not supported; expected \"RequireAndVerifyClientCert\" (the default with tls_client_ca_file) or \"VerifyClientCertIfGiven\""
                ),
            ));
        }
    };
    let client_ca = match &raw.tls_client_ca_file {
        Some(path) => certificates("web.tls_client_ca_file", path)?,
        None => Vec::new(),
    };
    let server = server_config(certs.clone(), key, &client_ca, client_auth).map_err(
        |(what, err)| match what {
            Part::Key => (
                "web.tls_key_file".to_owned(),
                format!("\"{key_file}\" does not fit the certificate in \"{cert_file}\": {err}"),
            ),
            Part::ClientCa => (
                "web.tls_client_ca_file".to_owned(),
                format!(
                    "\"{}\" is not a usable CA: {err}",
                    raw.tls_client_ca_file.as_deref().unwrap_or_default()
                ),
            ),
        },
    )?;
    Ok(Some(WebTls {
        cert_file: PathBuf::from(cert_file),
        key_file: PathBuf::from(key_file),
        client_ca_file: raw.tls_client_ca_file.as_ref().map(PathBuf::from),
        client_auth,
        server,
        certs: certs.into_iter().chain(client_ca).collect(),
    }))
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, Invalid> {
    std::fs::read(path).map_err(|err| (key.to_owned(), format!("cannot read \"{path}\": {err}")))
}

/// The PEM certificates in the file at `path`; at least one. Errors are about `key`.
pub(super) fn certificates(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, Invalid> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            (
                key.to_owned(),
                format!("\"{path}\" is not valid PEM: {err}"),
            )
        })?;
    if certs.is_empty() {
        return Err((
            key.to_owned(),
            format!("\"{path}\" holds no PEM certificate"),
        ));
    }
    Ok(certs)
}

/// Which file a TLS configuration error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Key,
    ClientCa,
}

/// The rustls server for `[web]`: HTTP/1.1 over TLS 1.2 or 1.3, client certificates verified
/// against `client_ca` unless `client_auth` is [`ClientAuth::None`].
fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: &[CertificateDer<'static>],
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, (Part, String)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::RequireAndVerify | ClientAuth::VerifyIfGiven => {
            let mut roots = RootCertStore::empty();
            for cert in client_ca {
                roots
                    .add(cert.clone())
                    .map_err(|err| (Part::ClientCa, err.to_string()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match client_auth {
                ClientAuth::VerifyIfGiven => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|err| (Part::ClientCa, err.to_string()))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| (Part::Key, err.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_checked_and_never_echoed() {
        let good = bcrypt::hash("pw", 4).unwrap();
        bcrypt_hash(&good).unwrap();
        bcrypt_hash(&good.replacen("$2b$", "$2y$", 1)).unwrap();
        let plain = bcrypt_hash("hunter2").unwrap_err();
        assert!(
            plain.starts_with("is not a bcrypt hash; store a bcrypt hash"),
            "{plain}"
        );
        assert!(!plain.contains("hunter2"));
        let short = bcrypt_hash("$2y$10$tooshort").unwrap_err();
        assert!(short.contains("expected 60 ASCII bytes"), "{short}");
        let cost = bcrypt_hash(&good.replacen("$04$", "$03$", 1)).unwrap_err();
        assert!(cost.starts_with("bcrypt cost 3 is out of range"), "{cost}");
    }

    #[test]
    fn password_hashes_stay_out_of_debug() {
        let hash = PasswordHash("$2y$04$secret".into());
        assert_eq!(format!("{hash:?}"), "PasswordHash(<redacted>)");
    }
}
