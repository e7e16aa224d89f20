//! TLS for the probers: rustls with the ring provider, the bundled web PKI roots (or a target's
//! own CA file), and the earliest expiry of the chain the server served.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::outcome::{Failure, Reason};
use crate::config::TlsConfig;

/// A target's TLS client, built once when the target starts.
#[derive(Clone, Debug)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

/// What a handshake leaves for the prober.
#[derive(Debug)]
pub struct Handshake {
    pub stream: TlsStream<TcpStream>,
    /// Earliest `notAfter` in the served chain.
    pub cert_expiry: Option<SystemTime>,
    /// The ALPN protocol the server chose.
    pub alpn: Option<Vec<u8>>,
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The web PKI roots compiled in from webpki-roots: a scratch image needs no CA bundle.
fn web_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            Arc::new(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        })
        .clone()
}

impl TlsClient {
    /// `alpn`: protocols to offer, most preferred first (empty: no ALPN).
    pub fn new(config: &TlsConfig, alpn: &[&[u8]]) -> Self {
        let mut client = if config.skip_verify {
            accept_any()
        } else {
            let builder = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions");
            let roots = match &config.ca {
                Some(ca) => {
                    let mut store = RootCertStore::empty();
                    // Validation already parsed the file; a certificate rustls rejects here is
                    // simply not trusted, and the handshake says so.
                    store.add_parsable_certificates(ca.certs.iter().cloned());
                    Arc::new(store)
                }
                None => web_roots(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsClient {
            config: Arc::new(client),
            server_name: config
                .server_name
                .as_ref()
                .and_then(|name| ServerName::try_from(name.clone()).ok()),
        }
    }

    /// Runs the handshake over `stream`. `host` is the name (or IP) the target was configured
    /// with; `tls_server_name` overrides it.
    pub async fn handshake(&self, stream: TcpStream, host: &str) -> Result<Handshake, Failure> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_owned()).map_err(|_| {
                Failure::new(
                    Reason::Tls,
                    format!("\"{host}\" is not a valid TLS server name"),
                )
            })?,
        };
        let stream = TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
            .map_err(|err| {
                Failure::new(Reason::Tls, format!("TLS handshake with {host}: {err}"))
            })?;
        let connection = stream.get_ref().1;
        let cert_expiry = connection.peer_certificates().and_then(earliest_expiry);
        let alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
        Ok(Handshake {
            stream,
            cert_expiry,
            alpn,
        })
    }
}

/// A TLS client that accepts any server certificate (handshake signatures are still checked):
/// for `regionprobe healthcheck`, which asks its own exporter, usually over loopback where the
/// certificate's names do not apply, and sends no secret.
pub fn any_server_client() -> Arc<rustls::ClientConfig> {
    let mut config = accept_any();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The one client configuration that skips certificate verification: `tls_skip_verify`
/// targets and [`any_server_client`].
fn accept_any() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth()
}

/// The earliest `notAfter` among the certificates, skipping any that do not parse.
pub fn earliest_expiry(chain: &[CertificateDer<'_>]) -> Option<SystemTime> {
    chain
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .min()
        .map(|secs| match u64::try_from(secs) {
            Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
            Err(_) => UNIX_EPOCH,
        })
}

/// `tls_skip_verify`: any certificate is accepted, but the handshake signatures are still
/// checked, so the probe measures a real handshake with whoever holds the key.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
