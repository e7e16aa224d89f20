//! `probe = "tcp"`: latency is the time to complete the TCP handshake with `host:port`: the
//! kernel's own round trip of the handshake (`TCP_INFO`'s `tcpi_rtt`) when it has one, else
//! the connect time measured around `connect` (why: docs/design.md, "TCP: the kernel's
//! handshake round trip").

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

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

    pub fn host_mut(&mut self) -> &mut Host {
        &mut self.host
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
        let measured = started.elapsed();
        let kernel = stream
            .local_addr()
            .and_then(|local| handshake_info(local, addr));
        let connect = connect_latency(measured, kernel.as_ref().ok());
        if let Err(err) = &kernel {
            tracing::trace!(%addr, error = %err, "no TCP_INFO for the handshake; the measured connect time is used");
        }
        let Some(tls) = &self.tls else {
            // Close at once: the peer sees a normal FIN.
            return Ok(Outcome::latency(connect));
        };
        let handshake = tls.handshake(stream, self.host.name()).await?;
        Ok(Outcome {
            // The TLS handshake as measured, after the connect as exported.
            latency: connect + started.elapsed().saturating_sub(measured),
            cert_expiry: handshake.cert_expiry,
            ..Outcome::default()
        })
    }
}

/// What the kernel knows of a connection's handshake (`struct tcp_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HandshakeInfo {
    /// `tcpi_rtt`: the smoothed round trip; after the handshake, its only sample: SYN sent to
    /// SYN-ACK received, both taken by the kernel. Zero when it has no sample.
    rtt: Duration,
    /// `tcpi_total_retrans`: segments retransmitted (a SYN sent again counts).
    retransmitted: u32,
}

/// The TCP latency: the kernel's round trip of the handshake when it is a clean one, else the
/// connect time measured around `connect`.
///
/// The kernel times the handshake from the SYN's transmission to the SYN-ACK's arrival, so the
/// probing task's wake-up delay (and the syscall's) stay out of it, as they do for ICMP. It
/// is not the client's experience when a SYN was lost (the kernel then times the last
/// attempt, or nothing): a retransmission keeps the measured time, which contains the
/// retransmission timeout as every client of that moment saw it. A kernel figure of zero (no
/// sample) or above the measured one (impossible: the kernel's interval lies within ours) is
/// not trusted either.
fn connect_latency(measured: Duration, kernel: Option<&HandshakeInfo>) -> Duration {
    match kernel {
        Some(info) if info.retransmitted == 0 && !info.rtt.is_zero() && info.rtt <= measured => {
            info.rtt
        }
        _ => measured,
    }
}

/// `TCP_INFO` of the connection `local` → `peer`, read through `NETLINK_SOCK_DIAG` (what `ss
/// -ti` does): neither nix nor socket2 offers a `getsockopt(TCP_INFO)` without `unsafe`, and a
/// netlink request is plain bytes. One request, one answer, both synchronous in the kernel.
fn handshake_info(local: SocketAddr, peer: SocketAddr) -> io::Result<HandshakeInfo> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const INET_DIAG_INFO: u16 = 2;
    const NLMSG_HDRLEN: usize = 16;
    const INET_DIAG_MSG_LEN: usize = 72;
    // Offsets in `struct tcp_info` (linux/tcp.h), stable since 2.6.
    const TCPI_RTT: usize = 68;
    const TCPI_TOTAL_RETRANS: usize = 100;

    let family = match local.ip() {
        IpAddr::V4(_) => nix::libc::AF_INET as u8,
        IpAddr::V6(_) => nix::libc::AF_INET6 as u8,
    };
    let mut request = Vec::with_capacity(72);
    request.extend_from_slice(&72u32.to_ne_bytes()); // nlmsg_len
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // seq
    request.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel assigns ours
    // struct inet_diag_req_v2: family, protocol, extensions wanted, pad, states.
    request.extend_from_slice(&[family, 6, 1 << (INET_DIAG_INFO - 1), 0]);
    request.extend_from_slice(&u32::MAX.to_ne_bytes());
    // struct inet_diag_sockid: ports and addresses in network order, our end first.
    request.extend_from_slice(&local.port().to_be_bytes());
    request.extend_from_slice(&peer.port().to_be_bytes());
    for addr in [local.ip(), peer.ip()] {
        let mut bytes = [0u8; 16];
        match addr {
            IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => bytes.copy_from_slice(&v6.octets()),
        }
        request.extend_from_slice(&bytes);
    }
    request.extend_from_slice(&0u32.to_ne_bytes()); // interface: any
    request.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    debug_assert_eq!(request.len(), 72);

    let socket = Socket::new(
        Domain::from(nix::libc::AF_NETLINK),
        Type::DGRAM,
        Some(Protocol::from(nix::libc::NETLINK_SOCK_DIAG)),
    )?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    socket.send(&request)?;
    let mut answer = vec![0u8; 8192];
    let len = (&socket).read(&mut answer)?;
    let answer = &answer[..len];
    let field_u16 = |bytes: &[u8], at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let field_u32 = |bytes: &[u8], at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let truncated = || io::Error::other("sock_diag: truncated answer");
    let message_type = field_u16(answer, 4).ok_or_else(truncated)?;
    if message_type == NLMSG_ERROR {
        let errno = field_u32(answer, NLMSG_HDRLEN).ok_or_else(truncated)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    let message_len = (field_u32(answer, 0).ok_or_else(truncated)? as usize).min(answer.len());
    // The attributes after struct inet_diag_msg: length (header included), type, data, each
    // aligned to 4 bytes.
    let mut at = NLMSG_HDRLEN + INET_DIAG_MSG_LEN;
    while at + 4 <= message_len {
        let attr_len = usize::from(field_u16(answer, at).ok_or_else(truncated)?);
        let attr_type = field_u16(answer, at + 2).ok_or_else(truncated)?;
        if attr_len < 4 {
            break;
        }
        if attr_type == INET_DIAG_INFO {
            let info = answer
                .get(at + 4..(at + attr_len).min(message_len))
                .ok_or_else(truncated)?;
            return Ok(HandshakeInfo {
                rtt: Duration::from_micros(u64::from(
                    field_u32(info, TCPI_RTT).ok_or_else(truncated)?,
                )),
                retransmitted: field_u32(info, TCPI_TOTAL_RETRANS).ok_or_else(truncated)?,
            });
        }
        at += attr_len.next_multiple_of(4);
    }
    Err(io::Error::other("sock_diag: no TCP_INFO in the answer"))
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

    /// The behaviour that matters: a probe whose task runs late when the SYN-ACK arrives
    /// still reports the handshake's round trip. The runtime's only thread is held for 300 ms
    /// while a loopback handshake completes in the kernel: the measured connect time contains
    /// the 300 ms, the exported latency (the kernel's) does not.
    #[tokio::test(flavor = "current_thread")]
    async fn a_late_probing_task_does_not_lengthen_the_handshake() {
        for listen in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = tokio::net::TcpListener::bind(listen).await else {
                eprintln!("SKIP: cannot listen on {listen}");
                continue;
            };
            let mut tcp = probe(listener.local_addr().unwrap());
            let probe = tokio::spawn(async move { tcp.run().await });
            // One poll of the probe: resolve (a literal) and connect(2), whose SYN is answered
            // by the kernel on loopback at once.
            tokio::task::yield_now().await;
            std::thread::sleep(std::time::Duration::from_millis(300));
            let outcome = probe.await.unwrap().unwrap();
            assert!(
                outcome.latency < std::time::Duration::from_millis(100),
                "{listen}: {:?} contains the late wake-up",
                outcome.latency
            );
            assert!(outcome.latency > std::time::Duration::ZERO);
        }
    }

    #[test]
    fn the_kernel_round_trip_of_the_handshake_is_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let info = handshake_info(stream.local_addr().unwrap(), stream.peer_addr().unwrap())
            .expect("TCP_INFO through sock_diag");
        assert!(info.rtt > Duration::ZERO, "{info:?}");
        assert!(info.rtt < Duration::from_millis(100), "{info:?}");
        assert_eq!(info.retransmitted, 0);
        // No such connection: an error, not a made-up figure.
        let gone = handshake_info(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        assert!(gone.is_err(), "{gone:?}");
    }

    #[test]
    fn the_measured_connect_time_is_kept_when_the_kernel_cannot_be_trusted() {
        let ms = Duration::from_millis;
        let info = |rtt, retransmitted| HandshakeInfo { rtt, retransmitted };
        assert_eq!(connect_latency(ms(52), Some(&info(ms(50), 0))), ms(50));
        // No TCP_INFO (sock_diag unavailable): the measurement.
        assert_eq!(connect_latency(ms(52), None), ms(52));
        // A SYN retransmitted: the client waited the retransmission timeout.
        assert_eq!(connect_latency(ms(1052), Some(&info(ms(50), 1))), ms(1052));
        // No sample, or a figure outside our interval.
        assert_eq!(connect_latency(ms(52), Some(&info(ms(0), 0))), ms(52));
        assert_eq!(connect_latency(ms(52), Some(&info(ms(60), 0))), ms(52));
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
