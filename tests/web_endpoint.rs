//! The exporter's own endpoint behind `[web]`: TLS, client certificates, bcrypt basic auth,
//! an open health path, reloads that swap users, and secrets of probed targets that never
//! leave the config. Against the real binary, with a rustls client and the real Prometheus
//! (Debian `prometheus`) as the scrapers.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::{Exporter, TempDir, http_full, wait_for};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use regionprobe_testkit::services::{self, Prometheus};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const PASSWORD: &str = "correct horse battery staple";
const TARGET_PASSWORD: &str = "url-pass-7781";
const TARGET_TOKEN: &str = "tok-4412-secret";

/// A CA, the exporter's certificate (localhost, 127.0.0.1) and a client certificate, as PEM
/// files in `dir`.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    /// A client certificate from a CA the exporter does not trust.
    stranger_cert: String,
    stranger_key: String,
}

fn ca() -> (CertificateParams, KeyPair, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

fn leaf(
    ca: &(CertificateParams, KeyPair, String),
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params
        .signed_by(&key, &Issuer::from_params(&ca.0, &ca.1))
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn write(dir: &TempDir) -> Self {
        let trusted = ca();
        let stranger = ca();
        let (server_cert, server_key) = leaf(
            &trusted,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            &trusted,
            &["prometheus"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (stranger_cert, stranger_key) =
            leaf(&stranger, &["mallory"], ExtendedKeyUsagePurpose::ClientAuth);
        let path = |name: &str, pem: &str| dir.write(name, pem).display().to_string();
        Pki {
            ca: path("ca.pem", &trusted.2),
            server_cert: path("server.pem", &server_cert),
            server_key: path("server.key", &server_key),
            client_cert: path("client.pem", &client_cert),
            client_key: path("client.key", &client_key),
            stranger_cert: path("stranger.pem", &stranger_cert),
            stranger_key: path("stranger.key", &stranger_key),
        }
    }
}

fn hash(password: &str) -> String {
    // Cost 4: the test's speed, not its strength, matters here.
    bcrypt::hash(password, 4).unwrap()
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// An HTTP target whose URL and headers carry secrets, probing the exporter's own health path.
fn secret_target(health: &str) -> String {
    format!(
        "\n[[target]]\nname = \"self\"\nregion = \"local\"\nprobe = \"http\"\ninterval = \"200ms\"\n\
         url = \"http://probe:{TARGET_PASSWORD}@{health}/-/healthy\"\n\
         headers = {{ X-Api-Key = \"Bearer {TARGET_TOKEN}\" }}\n"
    )
}

/// One HTTP/1.0 request over TLS, trusting `ca`, with the client certificate `client` if any.
/// `Err` is what the TLS layer or the socket said.
fn tls_get(
    addr: SocketAddr,
    ca: &str,
    client: Option<(&str, &str)>,
    path: &str,
    authorization: Option<&str>,
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n");
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    if let Err(err) = stream.read_to_end(&mut raw) {
        // A peer that closes without close_notify after a complete answer is fine here.
        if raw.is_empty() || err.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(err.to_string());
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    Ok((status, body.to_owned()))
}

/// Basic auth over plain HTTP: every path but the health checks asks for credentials, only the
/// right password passes, refusals are logged with the user and never the password, a reload
/// swaps the users, and the probed target's secrets appear nowhere the exporter writes.
#[test]
fn basic_auth_guards_every_path_but_health() {
    let health = common::http_server(Duration::ZERO);
    let head = format!(
        "[exporter]\nregion = \"local\"\nlisten = \"127.0.0.1:0\"\n\n\
         [web]\nhealth_without_auth = true\n[web.basic_auth_users]\nprom = \"{}\"\n",
        hash(PASSWORD)
    );
    let exporter = Exporter::start(&format!("{head}{}", secret_target(&health.to_string())));
    let addr = exporter.addr;
    let good = basic("prom", PASSWORD);
    let wrong = basic("prom", "not-the-password-9931");

    for path in ["/metrics", "/", "/api/v1/targets", "/api/v1/ranking"] {
        let (status, headers, _) = http_full(addr, "GET", path, &[]);
        assert_eq!(status, 401, "{path} without credentials");
        assert_eq!(
            headers.get("www-authenticate").map(String::as_str),
            Some("Basic realm=\"regionprobe\""),
            "{path}"
        );
        let (status, _, _) = http_full(addr, "GET", path, &[("Authorization", &wrong)]);
        assert_eq!(status, 401, "{path} with a wrong password");
        let (status, _, _) = http_full(
            addr,
            "GET",
            path,
            &[("Authorization", &basic("root", PASSWORD))],
        );
        assert_eq!(status, 401, "{path} with an unknown user");
        let (status, _, _) = http_full(addr, "GET", path, &[("Authorization", &good)]);
        assert_eq!(status, 200, "{path} with the right password");
    }
    let (status, _, _) = http_full(addr, "POST", "/-/reload", &[]);
    assert_eq!(status, 401, "reload without credentials");
    for path in ["/-/healthy", "/-/ready"] {
        assert_eq!(
            http_full(addr, "GET", path, &[]).0,
            200,
            "{path} stays open"
        );
    }

    // The probed target's secrets: in none of the views, in no log line.
    let scrape = wait_for(
        Duration::from_secs(10),
        "samples of the HTTP target",
        || {
            let (_, _, body) = http_full(addr, "GET", "/metrics", &[("Authorization", &good)]);
            body.lines()
                .any(|l| {
                    l.starts_with("regionprobe_probe_duration_seconds_count{")
                        && l.contains("target=\"self\"")
                        && !l.ends_with(" 0")
                })
                .then_some(body)
        },
    );
    let views = [
        scrape,
        http_full(addr, "GET", "/api/v1/targets", &[("Authorization", &good)]).2,
        http_full(addr, "GET", "/", &[("Authorization", &good)]).2,
    ];
    for secret in [
        TARGET_PASSWORD,
        TARGET_TOKEN,
        PASSWORD,
        "not-the-password-9931",
    ] {
        for view in &views {
            assert!(!view.contains(secret), "{secret} shown: {view}");
        }
    }

    // A reload with another user: the old one is out, the new one in, at once.
    let new_password = "second password 2207";
    let head = format!(
        "[exporter]\nregion = \"local\"\nlisten = \"127.0.0.1:0\"\n\n\
         [web]\n[web.basic_auth_users]\nscraper = \"{}\"\n",
        hash(new_password)
    );
    std::fs::write(
        &exporter.config_path,
        format!("{head}{}", secret_target(&health.to_string())),
    )
    .unwrap();
    let reload = http_full(addr, "POST", "/-/reload", &[("Authorization", &good)]);
    assert_eq!(reload.0, 200, "{}", reload.2);
    assert_eq!(
        http_full(addr, "GET", "/metrics", &[("Authorization", &good)]).0,
        401
    );
    let fresh = basic("scraper", new_password);
    assert_eq!(
        http_full(addr, "GET", "/metrics", &[("Authorization", &fresh)]).0,
        200
    );
    // health_without_auth went with the reload.
    assert_eq!(http_full(addr, "GET", "/-/healthy", &[]).0, 401);

    let log = exporter.log_text();
    for secret in [
        TARGET_PASSWORD,
        TARGET_TOKEN,
        PASSWORD,
        new_password,
        "not-the-password-9931",
    ] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
    assert!(
        log.lines().any(|l| l.contains("unauthorized request")
            && l.contains("wrong password")
            && l.contains("\"prom\"")),
        "refusals are logged with the user:\n{log}"
    );
}

/// TLS with required client certificates and basic auth: the rustls client and the real
/// Prometheus get in only with the trusted client certificate and the password; plain HTTP
/// on the TLS port is told so.
#[test]
fn tls_client_certificates_and_basic_auth_for_prometheus() {
    let prometheus_bin = services::which("prometheus");
    if common::skip_unless(
        prometheus_bin.is_some(),
        "prometheus not installed (apt-get install prometheus)",
    ) {
        return;
    }
    let prometheus_bin = prometheus_bin.unwrap();
    let dir = TempDir::new("web-tls");
    let pki = Pki::write(&dir);
    let config = format!(
        "[exporter]\nregion = \"local\"\nlisten = \"127.0.0.1:0\"\n\n\
         [web]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_client_ca_file = \"{}\"\n\
         [web.basic_auth_users]\nprom = \"{}\"\n\n\
         [[target]]\nname = \"loop\"\nregion = \"local\"\nprobe = \"tcp\"\naddress = \"{}\"\n",
        pki.server_cert,
        pki.server_key,
        pki.ca,
        hash(PASSWORD),
        common::http_server(Duration::ZERO),
    );
    let exporter = Exporter::start(&config);
    let addr = exporter.addr;
    let listening = format!("listening on https://{addr}");
    wait_for(
        Duration::from_secs(5),
        "the https:// address in the log",
        || exporter.log_text().contains(&listening).then_some(()),
    );
    let good = basic("prom", PASSWORD);
    let client = Some((pki.client_cert.as_str(), pki.client_key.as_str()));

    let (status, body) = tls_get(addr, &pki.ca, client, "/metrics", Some(&good)).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("regionprobe_build_info"), "{body}");
    let (status, _) = tls_get(addr, &pki.ca, client, "/metrics", None).unwrap();
    assert_eq!(status, 401, "TLS does not replace the password");
    // Without a client certificate, or with one from another CA: no HTTP at all.
    let refused = tls_get(addr, &pki.ca, None, "/-/healthy", Some(&good));
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let stranger = Some((pki.stranger_cert.as_str(), pki.stranger_key.as_str()));
    let refused = tls_get(addr, &pki.ca, stranger, "/-/healthy", Some(&good));
    assert!(
        refused.is_err(),
        "untrusted client certificate: {refused:?}"
    );
    // Plain HTTP on the TLS port gets a readable answer.
    let (status, _, body) = http_full(addr, "GET", "/metrics", &[]);
    assert_eq!(status, 400);
    assert!(body.contains("HTTP request to an HTTPS server"), "{body}");

    // The real Prometheus, three ways: all right, wrong password, no client certificate.
    let job = |name: &str, password: &str, certificate: bool| {
        let certificate = if certificate {
            format!(
                "      cert_file: {}\n      key_file: {}\n",
                pki.client_cert, pki.client_key
            )
        } else {
            String::new()
        };
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {}\n      server_name: localhost\n{certificate}\
             \x20   basic_auth:\n      username: prom\n      password: \"{password}\"\n\
             \x20   static_configs:\n      - targets: ['{addr}']\n",
            pki.ca
        )
    };
    let prometheus_config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n{}{}{}",
        job("good", PASSWORD, true),
        job("wrongpass", "guess-1234", true),
        job("nocert", PASSWORD, false),
    );
    let config_path = dir.write("prometheus.yml", &prometheus_config);
    let prometheus = Prometheus::start(&prometheus_bin, &config_path, &dir.0.join("data"));
    let up = |job: &str| -> Option<f64> {
        let series = prometheus.query(&format!("up{{job=\"{job}\"}}")).ok()?;
        series.first()?["value"][1].as_str()?.parse().ok()
    };
    wait_for(Duration::from_secs(30), "three scrapes", || {
        (up("good").is_some() && up("wrongpass").is_some() && up("nocert").is_some()).then_some(())
    });
    assert_eq!(up("good"), Some(1.0));
    assert_eq!(up("wrongpass"), Some(0.0));
    assert_eq!(up("nocert"), Some(0.0));
    let samples = wait_for(
        Duration::from_secs(15),
        "the TCP target in Prometheus",
        || {
            let series = prometheus
                .query("regionprobe_probe_duration_seconds_count{target=\"loop\"}")
                .ok()?;
            (!series.is_empty()).then_some(series)
        },
    );
    assert_eq!(samples[0]["metric"]["job"], "good");
    let log = exporter.log_text();
    assert!(!log.contains("guess-1234"), "{log}");
    assert!(
        log.contains("client certificate rejected"),
        "rejected certificates are logged:\n{log}"
    );
}

/// `regionprobe healthcheck` follows `[web]`: HTTPS with the exporter's certificate, no
/// credentials (so basic auth needs `health_without_auth`).
#[test]
fn healthcheck_speaks_tls_to_its_exporter() {
    let dir = TempDir::new("web-health");
    let pki = Pki::write(&dir);
    let with = |open: bool| {
        format!(
            "[exporter]\nregion = \"local\"\nlisten = \"127.0.0.1:0\"\n\n\
             [web]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nhealth_without_auth = {open}\n\
             [web.basic_auth_users]\nprom = \"{}\"\n",
            pki.server_cert,
            pki.server_key,
            hash(PASSWORD),
        )
    };
    for open in [true, false] {
        let exporter = Exporter::start(&with(open));
        let url = format!("https://127.0.0.1:{}/-/healthy", exporter.addr.port());
        let out = std::process::Command::new(common::BIN)
            .args(["healthcheck", "--url", &url])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if open {
            assert!(out.status.success(), "{text}");
            assert!(text.contains("HTTP 200"), "{text}");
        } else {
            assert!(!out.status.success(), "{text}");
            assert!(text.contains("health_without_auth"), "{text}");
        }
    }
}

/// `--web.config.file` (issue 12): an exporter-toolkit `web-config.yml` works unchanged (TLS
/// with client certificates, bcrypt basic auth), errors name the YAML file and its own keys
/// and never a password, and the file and `[web]` cannot both be set.
#[test]
fn an_exporter_toolkit_web_config_file_works_unchanged() {
    let dir = TempDir::new("web-toolkit");
    let pki = Pki::write(&dir);
    let web = dir.write(
        "web-config.yml",
        &format!(
            "# As the Prometheus exporter toolkit documents it.\n\
             tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n\
             basic_auth_users:\n  prom: '{}'\n",
            pki.server_cert,
            pki.server_key,
            pki.ca,
            hash(PASSWORD)
        ),
    );
    let web = web.display().to_string();
    let config = dir.write(
        "exporter.toml",
        "[exporter]\nregion = \"local\"\nlisten = \"127.0.0.1:0\"\n",
    );
    let env = format!("REGIONPROBE_WEB_CONFIG_FILE={web}");
    let exporter = Exporter::start_with(&["env", &env], &config);
    let addr = exporter.addr;
    let client = Some((pki.client_cert.as_str(), pki.client_key.as_str()));
    let good = basic("prom", PASSWORD);
    let (status, body) = tls_get(addr, &pki.ca, client, "/metrics", Some(&good)).unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = tls_get(addr, &pki.ca, client, "/metrics", None).unwrap();
    assert_eq!(status, 401, "basic auth from the file");
    assert!(tls_get(addr, &pki.ca, None, "/-/healthy", Some(&good)).is_err());

    let check = |web_file: &str, toml: &std::path::Path| {
        let out = std::process::Command::new(common::BIN)
            .args(["check-config", "--config"])
            .arg(toml)
            .args(["--web.config.file", web_file])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(check(&web, &config).0);
    // A key of the toolkit this exporter does not implement: refused by name.
    let http2 = dir.write("http2.yml", "http_server_config:\n  http2: false\n");
    let (ok, err) = check(&http2.display().to_string(), &config);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!(
            "{}: key `http_server_config`: is not supported; supported: tls_server_config, basic_auth_users",
            http2.display()
        )
    );
    // A password where a hash belongs: named by its key, never echoed.
    let plain = dir.write("plain.yml", "basic_auth_users:\n  prom: hunter2-plain\n");
    let (ok, err) = check(&plain.display().to_string(), &config);
    assert!(!ok);
    assert!(
        err.contains("key `basic_auth_users.prom`: is not a bcrypt hash"),
        "{err}"
    );
    assert!(!err.contains("hunter2-plain"), "{err}");
    // A YAML syntax error: its position only.
    let broken = dir.write("broken.yml", "basic_auth_users:\n  prom: 'hunter2-open\n");
    let (ok, err) = check(&broken.display().to_string(), &config);
    assert!(!ok);
    assert!(err.contains("not valid YAML"), "{err}");
    assert!(!err.contains("hunter2-open"), "{err}");
    // Both the file and [web]: one of them.
    let both = dir.write(
        "both.toml",
        &format!(
            "[exporter]\nregion = \"local\"\n[web.basic_auth_users]\nprom = \"{}\"\n",
            hash(PASSWORD)
        ),
    );
    let (ok, err) = check(&web, &both);
    assert!(!ok);
    assert!(
        err.contains("key `web`: is set and so is --web.config.file"),
        "{err}"
    );
}
