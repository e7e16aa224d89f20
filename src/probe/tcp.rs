//! `probe = "tcp"`: latency is the time to complete the TCP handshake with `host:port`.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Failure, Outcome, Reason, Shared, connect_failure};
use crate::config::TcpConfig;
use crate::resolve::{Host, Resolver};
use crate::tls::TlsClient;

#[derive(Debug)]
pub struct Tcp {
    host: Host,
    port: u16,
    resolver: Resolver,
    tls: Option<TlsClient>,
}

impl Tcp {
    pub fn new(config: &TcpConfig, shared: &Shared) -> Self {
        Tcp {
            host: Host::new(&config.host, config.ip_version),
            port: config.port,
            resolver: shared.resolver.clone(),
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
        Tcp::new(&config, &Shared::default())
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
    async fn a_silent_dns_server_is_reason_resolve_not_timeout() {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        // A name server that receives queries and never answers.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let mut name_server = NameServerConfig::udp(addr.ip());
        name_server.connections[0].port = addr.port();
        let shared = Shared {
            resolver: crate::resolve::Resolver::with_config(ResolverConfig::from_name_servers(
                vec![name_server],
            )),
            ..Shared::default()
        };
        let config = TcpConfig {
            host: "db.regionprobe.test.".into(),
            port: 5432,
            ip_version: IpVersion::Any,
            tls: None,
        };
        let mut probe = super::super::Probe::Tcp(Tcp::new(&config, &shared));
        let timeout = std::time::Duration::from_millis(200);
        assert!(tokio::time::timeout(timeout, probe.run()).await.is_err());
        let failure = probe.timed_out(timeout);
        assert_eq!(failure.reason, Reason::Resolve, "{failure}");

        // Once the name resolves from cache or literal, a timeout is a timeout again.
        let mut literal = super::super::Probe::Tcp(Tcp::new(
            &TcpConfig {
                host: "127.0.0.1".into(),
                port: 1,
                ip_version: IpVersion::Any,
                tls: None,
            },
            &shared,
        ));
        let _ = literal.run().await;
        assert_eq!(literal.timed_out(timeout).reason, Reason::Timeout);
        drop(silent);
    }

    #[tokio::test]
    async fn tls_on_tcp_times_and_verifies_the_handshake() {
        use crate::config::{CaFile, TlsConfig};
        use crate::testing::{Pki, http_server, tls_server};
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
        let shared = Shared::default();

        let ok = Tcp::new(&tls(Some(ca.clone()), Some("db.internal")), &shared)
            .run()
            .await
            .unwrap();
        assert!(ok.cert_expiry.is_some());
        let untrusted = Tcp::new(&tls(None, Some("db.internal")), &shared)
            .run()
            .await
            .unwrap_err();
        assert_eq!(untrusted.reason, Reason::Tls, "{untrusted}");
        let wrong_name = Tcp::new(&tls(Some(ca), Some("other.internal")), &shared)
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
