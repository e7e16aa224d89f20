//! `probe = "tcp"`: latency is the time to complete the TCP handshake with `host:port`.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::outcome::{Failure, Outcome, Reason, connect_failure};
use super::resolve::{Host, Resolver};
use super::tls::TlsClient;
use crate::config::TcpConfig;

/// The reasons a TCP probe fails with.
pub const REASONS: &[Reason] = &[
    Reason::Timeout,
    Reason::Refused,
    Reason::Unreachable,
    Reason::Resolve,
    Reason::Tls,
    Reason::Error,
    Reason::Local,
];

/// `host:port`, IPv6 literals in brackets, and whether TLS is spoken.
pub fn endpoint(config: &TcpConfig) -> String {
    let host = if config.host.contains(':') {
        format!("[{}]", config.host)
    } else {
        config.host.clone()
    };
    let tls = if config.tls.is_some() { " (tls)" } else { "" };
    format!("{host}:{}{tls}", config.port)
}

#[derive(Debug)]
pub struct Tcp {
    host: Host,
    port: u16,
    resolver: Resolver,
    tls: Option<TlsClient>,
}

impl Tcp {
    pub fn new(config: &TcpConfig, resolver: &Resolver) -> Self {
        Tcp {
            host: Host::new(&config.host, config.ip_version),
            port: config.port,
            resolver: resolver.clone(),
            tls: config.tls.as_ref().map(|tls| TlsClient::new(tls, &[])),
        }
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub async fn run(&mut self) -> Result<Outcome, Failure> {
        let addr = self
            .host
            .address(&self.resolver)
            .await
            .map_err(|detail| Failure::new(Reason::Resolve, detail))?;
        let addr = SocketAddr::new(addr, self.port);
        let started = Instant::now();
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| connect_failure(addr, &err))?;
        let Some(tls) = &self.tls else {
            // Close at once: the peer sees a normal FIN.
            return Ok(Outcome::latency(started.elapsed()));
        };
        let handshake = tls.handshake(stream, self.host.name()).await?;
        Ok(Outcome {
            latency: started.elapsed(),
            cert_expiry: handshake.cert_expiry,
            ..Outcome::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpVersion;

    fn probe(addr: SocketAddr) -> Tcp {
        let config = TcpConfig {
            host: addr.ip().to_string(),
            port: addr.port(),
            ip_version: IpVersion::Any,
            tls: None,
        };
        Tcp::new(&config, &Resolver::default())
    }

    #[tokio::test]
    async fn open_port_measures_the_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut tcp = probe(listener.local_addr().unwrap());
        let outcome = tcp.run().await.unwrap();
        assert!(outcome.latency > std::time::Duration::ZERO);
        assert!(outcome.latency < std::time::Duration::from_secs(1));
    }

    #[tokio::test]
    async fn closed_port_is_refused() {
        // Bind then drop to get a port nobody listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let failure = probe(addr).run().await.unwrap_err();
        assert_eq!(failure.reason, Reason::Refused, "{failure}");
        assert!(failure.detail.contains(&addr.to_string()));
    }

    #[tokio::test]
    async fn tls_on_tcp_times_and_verifies_the_handshake() {
        use crate::config::{CaFile, TlsConfig};
        use regionprobe_testkit::peers::{Pki, http_server, tls_server};
        let pki = Pki::new();
        let addr = http_server(Some(tls_server(pki.leaf(&["db.internal"], (2031, 1, 1))))).await;
        let tls = |ca: Option<CaFile>, server_name: Option<&str>| TcpConfig {
            host: addr.ip().to_string(),
            port: addr.port(),
            ip_version: IpVersion::Any,
            tls: Some(TlsConfig {
                server_name: server_name.map(str::to_owned),
                skip_verify: false,
                ca,
            }),
        };
        let ca = CaFile {
            path: "ca.pem".into(),
            certs: vec![
                rustls_pki_types::pem::PemObject::from_pem_slice(pki.ca_pem.as_bytes()).unwrap(),
            ],
        };
        let resolver = Resolver::default();

        let ok = Tcp::new(&tls(Some(ca.clone()), Some("db.internal")), &resolver)
            .run()
            .await
            .unwrap();
        assert!(ok.cert_expiry.is_some());
        let untrusted = Tcp::new(&tls(None, Some("db.internal")), &resolver)
            .run()
            .await
            .unwrap_err();
        assert_eq!(untrusted.reason, Reason::Tls, "{untrusted}");
        let wrong_name = Tcp::new(&tls(Some(ca), Some("other.internal")), &resolver)
            .run()
            .await
            .unwrap_err();
        assert_eq!(wrong_name.reason, Reason::Tls, "{wrong_name}");
    }

    #[tokio::test]
    async fn ipv6_loopback_works() {
        let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
            eprintln!("SKIP: no IPv6 loopback on this machine");
            return;
        };
        let outcome = probe(listener.local_addr().unwrap()).run().await;
        assert!(outcome.is_ok(), "{outcome:?}");
    }
}
