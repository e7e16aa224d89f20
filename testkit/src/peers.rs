//! Test peers of the probers: an HTTP server (plain or TLS, HTTP/1.1 and HTTP/2) whose routes
//! control status, delays, body size and redirects ([`http_server`]), and a throwaway PKI
//! ([`Pki`], [`ServerCert`], [`tls_server`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::LOCATION;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

/// A certificate authority and leaf certificates it signs, all generated per test.
#[derive(Debug)]
pub struct Pki {
    ca_params: CertificateParams,
    ca_key: KeyPair,
    pub ca_pem: String,
}

/// A server certificate chain and its key.
#[derive(Debug)]
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A fresh certificate authority.
    pub fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        Pki {
            ca_params,
            ca_key,
            ca_pem,
        }
    }

    /// A leaf for `names` (DNS names or IP addresses) valid until `not_after` (year, month, day).
    pub fn leaf(&self, names: &[&str], not_after: (i32, u8, u8)) -> ServerCert {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        ServerCert {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

impl Pki {
    /// A leaf for `names` as PEM files' contents `(certificate, key)`, for servers that read
    /// files (Redis, PostgreSQL).
    pub fn leaf_pem(&self, names: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A TLS server configuration with a fresh self-signed certificate for `name` (no ALPN): for
/// peers that only need a handshake to complete.
pub fn self_signed_server(name: &str) -> Arc<rustls::ServerConfig> {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key.into())
            .unwrap(),
    )
}

/// A TLS server configuration offering HTTP/2 and HTTP/1.1.
pub fn tls_server(cert: ServerCert) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Serves the test routes on 127.0.0.1:0 until the returned task is dropped... or the test
/// ends. Routes:
/// - `/status/{code}`: that status;
/// - `/slow-head/{ms}`: waits before the response head;
/// - `/slow-body/{ms}`: sends the head, waits, then the body;
/// - `/bytes/{n}`: a body of n bytes;
/// - `/text`: `regionprobe says hello`;
/// - `/redirect/{n}`: 302 to `/redirect/{n-1}`, `/redirect/0` is 200;
/// - `/loop`: 302 to itself; `/no-location`: 302 without Location;
/// - `/version`: the HTTP version the request used;
/// - `/headers`: the request's headers, one `name: value` line each, sorted;
/// - `/redirect-to?{location}`: 302 to the query, verbatim.
pub async fn http_server(tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(route);
                let builder = auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(config) => {
                        let Ok(stream) =
                            tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                        else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    addr
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed()
}

fn with_status(status: u16, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

fn redirect(to: Option<String>) -> Response<Body> {
    let mut response = with_status(302, full("moved"));
    if let Some(to) = to {
        response.headers_mut().insert(LOCATION, to.parse().unwrap());
    }
    response
}

async fn route(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (head, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let number = || arg.parse::<u64>().unwrap_or(0);
    let response = match head {
        "status" => with_status(number() as u16, full("status")),
        "slow-head" => {
            tokio::time::sleep(Duration::from_millis(number())).await;
            with_status(200, full("ok"))
        }
        "slow-body" => {
            let delay = Duration::from_millis(number());
            let chunks = futures_util::stream::unfold(0, move |step| async move {
                match step {
                    0 => Some((Ok(Frame::data(Bytes::from_static(b"first "))), 1)),
                    1 => {
                        tokio::time::sleep(delay).await;
                        Some((Ok(Frame::data(Bytes::from_static(b"second"))), 2))
                    }
                    _ => None,
                }
            });
            with_status(200, StreamBody::new(chunks).boxed())
        }
        "bytes" => with_status(200, full(vec![b'x'; number() as usize])),
        "text" => with_status(200, full("regionprobe says hello")),
        "redirect" => match number() {
            0 => with_status(200, full("done")),
            n => redirect(Some(format!("/redirect/{}", n - 1))),
        },
        "loop" => redirect(Some("/loop".into())),
        "no-location" => redirect(None),
        "version" => with_status(200, full(format!("{:?}", request.version()))),
        // The request's headers, one `name: value` line each (names lowercase), sorted.
        "headers" => {
            let mut lines: Vec<String> = request
                .headers()
                .iter()
                .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
                .collect();
            lines.sort();
            with_status(200, full(lines.join("\n") + "\n"))
        }
        // A redirect to the query, verbatim: `/redirect-to?http://other:80/headers`.
        "redirect-to" => redirect(request.uri().query().map(str::to_owned)),
        _ => with_status(404, full("not found")),
    };
    Ok(response)
}
