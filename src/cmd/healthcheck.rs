//! `regionprobe healthcheck`: one blocking `GET /-/healthy` against a running exporter, for
//! container health checks (the image has no shell and no curl). Healthy means HTTP 200 within
//! [`TIMEOUT`]; anything else is an error that says what happened, on one line. With `[web]`
//! TLS on, it speaks TLS (accepting the exporter's certificate as it is: it checks liveness and
//! sends no secret); it sends no credentials, so basic auth needs `health_without_auth`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use rustls_pki_types::ServerName;

// tokio's Instant is std's outside a runtime; using it keeps the crate's one clock rule.
use tokio::time::Instant;

use crate::config::{ConfigError, ConfigSource, Overrides};

/// Longest the whole check may take: connect, request and status line.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The path asked when the address comes from the configuration or `--url` names none.
pub const PATH: &str = "/-/healthy";

/// Checks the exporter at `url`, or at the `exporter.listen` of `source` when `url` is `None`.
/// Returns the line to print on success.
/// `overrides` (`--web.listen-address`, `--web.config.file`) apply as when running.
pub fn check(
    source: &ConfigSource,
    url: Option<&str>,
    overrides: &Overrides,
) -> Result<String, HealthError> {
    let endpoint = match url {
        Some(url) => Endpoint::parse_url(url)?,
        None => {
            let config = overrides.load(source)?;
            Endpoint {
                tls: config.web.tls.is_some(),
                ..Endpoint::from_listen(config.exporter.listen)
            }
        }
    };
    endpoint.get(TIMEOUT)?;
    Ok(format!("{endpoint}: HTTP 200"))
}

/// Where the check connects and what it asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Tried in order until one accepts the connection.
    pub addrs: Vec<SocketAddr>,
    /// The `Host` header (and the URL in messages): `host:port`.
    pub authority: String,
    pub path: String,
    /// `https`: TLS, as the exporter's `[web]` serves it.
    pub tls: bool,
}

impl Endpoint {
    /// The exporter's own listen address, with a wildcard address mapped to loopback: `::`
    /// tries `::1`, then `127.0.0.1` (a dual-stack socket in a container without IPv6).
    pub fn from_listen(listen: SocketAddr) -> Self {
        let port = listen.port();
        let addrs = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => vec![(Ipv4Addr::LOCALHOST, port).into()],
            IpAddr::V6(ip) if ip.is_unspecified() => vec![
                (Ipv6Addr::LOCALHOST, port).into(),
                (Ipv4Addr::LOCALHOST, port).into(),
            ],
            _ => vec![listen],
        };
        Endpoint {
            authority: addrs[0].to_string(),
            addrs,
            path: PATH.to_owned(),
            tls: false,
        }
    }

    /// `http(s)://host:port[/path]`; without a path, [`PATH`]. Host names other than
    /// `localhost` go through the system resolver, which a static binary in an empty image
    /// may not have: use IP addresses there.
    pub fn parse_url(url: &str) -> Result<Self, HealthError> {
        let invalid = |problem: &str| HealthError::Url {
            url: url.to_owned(),
            problem: problem.to_owned(),
        };
        let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(invalid("expected http(s)://host:port/path")),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, PATH),
        };
        let (host, port) = split_host_port(authority).ok_or_else(|| invalid("bad host or port"))?;
        let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
            vec![(ip, port).into()]
        } else if host.eq_ignore_ascii_case("localhost") {
            vec![(Ipv4Addr::LOCALHOST, port).into()]
        } else {
            (host, port)
                .to_socket_addrs()
                .map_err(|err| invalid(&format!("cannot resolve {host}: {err}")))?
                .collect()
        };
        if addrs.is_empty() {
            return Err(invalid(&format!("{host} has no address")));
        }
        Ok(Endpoint {
            addrs,
            authority: authority.to_owned(),
            path: path.to_owned(),
            tls,
        })
    }

    /// One `GET`; `Ok` only for status 200 within `timeout`.
    pub fn get(&self, timeout: Duration) -> Result<(), HealthError> {
        let deadline = Instant::now() + timeout;
        let fail = |problem: Problem| HealthError::Unhealthy {
            url: self.to_string(),
            problem,
        };
        let remaining = || {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(fail(Problem::Timeout(timeout)))
            } else {
                Ok(left)
            }
        };
        let mut stream = None;
        let mut refusals = Vec::new();
        for addr in &self.addrs {
            match TcpStream::connect_timeout(addr, remaining()?) {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(err) => refusals.push(format!("{addr}: {err}")),
            }
        }
        let socket = stream.ok_or_else(|| fail(Problem::Connect(refusals.join("; "))))?;
        let io_error = |err: io::Error| match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => fail(Problem::Timeout(timeout)),
            _ if err
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
            {
                fail(Problem::Tls(err.to_string()))
            }
            _ => fail(Problem::Io(err.to_string())),
        };
        // Timeouts are options of the socket, which the TLS stream shares with `socket`.
        let mut stream: Box<dyn ReadWrite> = if self.tls {
            let host = split_host_port(&self.authority).map_or("localhost", |(host, _)| host);
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| fail(Problem::Tls(format!("{host:?} is not a TLS server name"))))?;
            let connection =
                rustls::ClientConnection::new(crate::probe::tls::any_server_client(), name)
                    .map_err(|err| fail(Problem::Tls(err.to_string())))?;
            let socket = socket.try_clone().map_err(io_error)?;
            Box::new(rustls::StreamOwned::new(connection, socket))
        } else {
            Box::new(socket.try_clone().map_err(io_error)?)
        };
        socket
            .set_write_timeout(Some(remaining()?))
            .map_err(io_error)?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: regionprobe-healthcheck\r\nConnection: close\r\n\r\n",
            self.path, self.authority
        );
        stream.write_all(request.as_bytes()).map_err(io_error)?;
        // The status line is all we need; it fits in far less than this.
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            socket
                .set_read_timeout(Some(remaining()?))
                .map_err(io_error)?;
            match stream.read(&mut buf).map_err(io_error)? {
                0 => break,
                n => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head);
        let line = head.lines().next().unwrap_or_default();
        match parse_status(line) {
            Some(200) => Ok(()),
            Some(status) => Err(fail(Problem::Status(line.trim().to_owned(), status))),
            None if line.is_empty() => Err(fail(Problem::Io(
                "connection closed without a response".to_owned(),
            ))),
            None => Err(fail(Problem::Malformed(line.to_owned()))),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.path)
    }
}

/// A plain or a TLS stream.
trait ReadWrite: Read + Write {}

impl<T: Read + Write> ReadWrite for T {}

/// `host:port` or `[v6]:port` (the port is required).
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (host, port) = rest.split_once("]:")?;
            (host, port)
        }
        None => authority.rsplit_once(':')?,
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// `HTTP/1.x NNN ...` -> NNN.
fn parse_status(line: &str) -> Option<u16> {
    let mut words = line.split_whitespace();
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    words.next()?.parse().ok()
}

/// Why the exporter is not healthy, or why the check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid --url {url:?}: {problem}")]
    Url { url: String, problem: String },
    #[error("{url}: {problem}")]
    Unhealthy { url: String, problem: Problem },
}

/// What went wrong with the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    Connect(String),
    Timeout(Duration),
    Io(String),
    Status(String, u16),
    Malformed(String),
    Tls(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Connect(detail) => write!(f, "cannot connect ({detail})"),
            Problem::Timeout(timeout) => write!(f, "no answer within {timeout:?}"),
            Problem::Io(detail) => write!(f, "{detail}"),
            Problem::Status(line, 401) => write!(
                f,
                "answered {line:?}, expected 200; the exporter asks for basic auth: set health_without_auth = true in [web] to open /-/healthy"
            ),
            Problem::Status(line, _) => write!(f, "answered {line:?}, expected 200"),
            Problem::Tls(detail) => write!(f, "TLS: {detail}"),
            Problem::Malformed(line) => write!(f, "not an HTTP response: {line:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// A one-connection server that reads the request and answers `response` (or nothing).
    fn serve_once(response: Option<&'static str>) -> (SocketAddr, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            match response {
                Some(response) => conn.write_all(response.as_bytes()).unwrap(),
                // Hold the connection open past the client's timeout.
                None => thread::sleep(Duration::from_millis(600)),
            }
            String::from_utf8(request).unwrap()
        });
        (addr, handle)
    }

    fn endpoint(addr: SocketAddr) -> Endpoint {
        Endpoint::parse_url(&format!("http://{addr}")).unwrap()
    }

    #[test]
    fn wildcard_listen_addresses_map_to_loopback() {
        let e = Endpoint::from_listen("0.0.0.0:9537".parse().unwrap());
        assert_eq!(e.addrs, vec!["127.0.0.1:9537".parse().unwrap()]);
        assert_eq!(e.to_string(), "http://127.0.0.1:9537/-/healthy");
        let e = Endpoint::from_listen("[::]:9537".parse().unwrap());
        let want: Vec<SocketAddr> = vec![
            "[::1]:9537".parse().unwrap(),
            "127.0.0.1:9537".parse().unwrap(),
        ];
        assert_eq!(e.addrs, want);
        let e = Endpoint::from_listen("10.1.2.3:80".parse().unwrap());
        assert_eq!(e.addrs, vec!["10.1.2.3:80".parse().unwrap()]);
    }

    #[test]
    fn urls_parse_with_default_path() {
        let e = Endpoint::parse_url("http://127.0.0.1:9537").unwrap();
        assert_eq!(e.to_string(), "http://127.0.0.1:9537/-/healthy");
        let e = Endpoint::parse_url("http://[::1]:80/-/ready").unwrap();
        assert_eq!(e.addrs, vec!["[::1]:80".parse().unwrap()]);
        assert_eq!(e.path, "/-/ready");
        let e = Endpoint::parse_url("http://localhost:9537/").unwrap();
        assert_eq!(e.addrs, vec!["127.0.0.1:9537".parse().unwrap()]);
        let e = Endpoint::parse_url("https://127.0.0.1:9537").unwrap();
        assert!(e.tls);
        assert_eq!(e.to_string(), "https://127.0.0.1:9537/-/healthy");
        for bad in [
            "ftp://127.0.0.1:9537",
            "127.0.0.1:9537",
            "http://127.0.0.1",
            "http://:9537",
            "http://[::1]/",
            "http://127.0.0.1:http",
        ] {
            let err = Endpoint::parse_url(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid --url"), "{bad}: {err}");
        }
    }

    #[test]
    fn status_200_is_healthy_and_the_request_is_a_plain_get() {
        let (addr, server) = serve_once(Some("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nOK\n"));
        endpoint(addr).get(TIMEOUT).unwrap();
        let request = server.join().unwrap();
        assert!(
            request.starts_with(&format!("GET /-/healthy HTTP/1.1\r\nHost: {addr}\r\n")),
            "{request}"
        );
    }

    #[test]
    fn other_statuses_and_garbage_are_unhealthy() {
        let (addr, _server) = serve_once(Some("HTTP/1.1 503 Service Unavailable\r\n\r\n"));
        let err = endpoint(addr).get(TIMEOUT).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "http://{addr}/-/healthy: answered \"HTTP/1.1 503 Service Unavailable\", expected 200"
            )
        );
        let (addr, _server) = serve_once(Some("SSH-2.0-OpenSSH\r\n"));
        let err = endpoint(addr).get(TIMEOUT).unwrap_err().to_string();
        assert!(
            err.ends_with("not an HTTP response: \"SSH-2.0-OpenSSH\""),
            "{err}"
        );
        let (addr, _server) = serve_once(Some(""));
        let err = endpoint(addr).get(TIMEOUT).unwrap_err().to_string();
        assert!(
            err.ends_with("connection closed without a response"),
            "{err}"
        );
    }

    #[test]
    fn a_silent_server_times_out() {
        let (addr, _server) = serve_once(None);
        let err = endpoint(addr)
            .get(Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("no answer within 200ms"), "{err}");
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = endpoint(addr).get(TIMEOUT).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "http://{addr}/-/healthy: cannot connect ({addr}: "
            )),
            "{err}"
        );
    }
}
