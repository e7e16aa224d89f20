//! `probe = "http"`: one request over a connection driven by hand (hyper's connection API, not
//! a pooled client), so every phase is timed: resolve, connect, tls, processing (request sent
//! until the response head) and transfer (the body). Redirects are followed hop by hop and
//! their phases summed.

use std::net::SocketAddr;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper::header::{AUTHORIZATION, HOST, HeaderValue, LOCATION, USER_AGENT};
use hyper::{Request, Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::outcome::{Failure, Outcome, Phase, Phases, Reason, connect_failure};
use super::resolve::{Host, Resolver};
use super::tls::TlsClient;
use crate::config::{HttpAuth, HttpConfig, HttpVersion};

/// The reasons an HTTP probe fails with: all of them.
pub const REASONS: &[Reason] = &[
    Reason::Timeout,
    Reason::Refused,
    Reason::Unreachable,
    Reason::Resolve,
    Reason::Tls,
    Reason::HttpStatus,
    Reason::Validation,
    Reason::Error,
    Reason::Local,
];

/// Every phase is timed.
pub const PHASES: &[Phase] = &[
    Phase::Resolve,
    Phase::Connect,
    Phase::Tls,
    Phase::Processing,
    Phase::Transfer,
];

/// The method and the URL without its credentials.
pub fn endpoint(config: &HttpConfig) -> String {
    let url = &config.url;
    // Credentials in the URL stay out of every view.
    let authority = url.authority().map_or("", |a| a.as_str());
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let path = url.path_and_query().map_or("/", |pq| pq.as_str());
    format!(
        "{} {}://{host}{path}",
        config.method,
        url.scheme_str().unwrap_or("http")
    )
}

const USER_AGENT_VALUE: &str = concat!("regionprobe/", env!("CARGO_PKG_VERSION"));

#[derive(Debug)]
pub struct Http {
    config: HttpConfig,
    resolver: Resolver,
    /// The configured URL's host; redirect targets elsewhere are resolved per hop.
    host: Host,
    tls: TlsClient,
    /// `keepalive = true`: the connection kept from the last probe.
    kept: Option<Connection>,
    resolving: bool,
}

/// One open HTTP connection: the request sender and the task that drives the connection.
#[derive(Debug)]
struct Connection {
    sender: Sender,
    /// Ends with the connection's error, if any.
    driver: JoinHandle<hyper::Result<()>>,
    /// `scheme://authority` the connection belongs to.
    origin: String,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Connection {
    /// A failed request as a [`Failure`]. A request that finds the connection gone (the peer
    /// sent bytes that are no HTTP, or broke off HTTP/2) only learns "channel closed" or
    /// "canceled: connection closed"; the driver has the reason, and is ending by then. The
    /// grace only bounds the wait for it: the probe's timeout bounds everything anyway.
    async fn failure(&mut self, url: &str, err: hyper::Error) -> Failure {
        const GRACE: std::time::Duration = std::time::Duration::from_millis(100);
        let cause = if (err.is_closed() || err.is_canceled())
            && let Ok(Ok(Err(driver_err))) = tokio::time::timeout(GRACE, &mut self.driver).await
        {
            driver_err
        } else {
            err
        };
        Failure::new(Reason::Error, format!("{url}: {}", error_chain(&cause)))
    }
}

#[derive(Debug)]
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> hyper::Result<Response<hyper::body::Incoming>> {
        match self {
            Sender::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(sender) => sender.is_closed(),
            Sender::H2(sender) => sender.is_closed(),
        }
    }
}

impl Http {
    pub fn new(config: &HttpConfig, resolver: &Resolver) -> Self {
        let alpn: &[&[u8]] = match config.http_version {
            HttpVersion::Http1 => &[b"http/1.1"],
            HttpVersion::Http2 => &[b"h2"],
        };
        Http {
            host: Host::new(config.url.host().unwrap_or_default(), config.ip_version),
            resolver: resolver.clone(),
            tls: TlsClient::new(&config.tls, alpn),
            config: config.clone(),
            kept: None,
            resolving: false,
        }
    }

    /// `url` as messages show it: with the configured URL's credentials, the user and
    /// `xxxxx` for the password (as Prometheus shows its own URLs) on that origin.
    fn shown(&self, url: &Uri) -> String {
        match &self.config.auth {
            Some(HttpAuth::Basic {
                username,
                from_url: true,
                ..
            }) if origin(url) == origin(&self.config.url) => {
                let scheme = url.scheme_str().unwrap_or("http");
                url.to_string().replacen(
                    &format!("{scheme}://"),
                    &format!("{scheme}://{username}:xxxxx@"),
                    1,
                )
            }
            _ => url.to_string(),
        }
    }

    /// Whether the timeout cut a DNS lookup short.
    pub fn was_resolving(&self) -> bool {
        self.resolving
    }

    /// The configured URL's host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn host_mut(&mut self) -> &mut Host {
        &mut self.host
    }

    pub async fn run(&mut self) -> Result<Outcome, Failure> {
        let mut phases = Phases::default();
        let mut cert_expiry = None;
        let mut url = self.config.url.clone();
        let mut redirects = 0;
        loop {
            let mut connection = self.connect(&url, &mut phases, &mut cert_expiry).await?;
            let request = self.request(&url, &connection.sender)?;
            let sent = Instant::now();
            let response = match connection.sender.send(request).await {
                Ok(response) => response,
                Err(err) => return Err(connection.failure(&self.shown(&url), err).await),
            };
            phases.add(Phase::Processing, sent.elapsed());

            let status = response.status();
            if status.is_redirection() && redirects < u32::from(self.config.max_redirects) {
                url = redirect_target(&url, &self.shown(&url), &response)?;
                redirects += 1;
                // The unread body makes the connection unusable for another request.
                continue;
            }
            if !self.config.accepts_status(status.as_u16()) {
                return Err(Failure::new(
                    Reason::HttpStatus,
                    format!(
                        "{} answered {status}{}",
                        self.shown(&url),
                        after_redirects(redirects)
                    ),
                ));
            }

            let reading = Instant::now();
            let body = self.read_body(response.into_body()).await?;
            phases.add(Phase::Transfer, reading.elapsed());
            self.check_body(&url, &body)?;

            if self.config.keepalive && redirects == 0 {
                self.kept = Some(connection);
            }
            return Ok(Outcome {
                latency: phases.total(),
                phases: Some(phases),
                cert_expiry,
                redirects,
                stamp: None,
                replication: None,
            });
        }
    }

    /// The kept connection if it is still open and for this origin, else a new one. A new
    /// connection's resolve, connect and tls phases are added to `phases`.
    async fn connect(
        &mut self,
        url: &Uri,
        phases: &mut Phases,
        cert_expiry: &mut Option<std::time::SystemTime>,
    ) -> Result<Connection, Failure> {
        let origin = origin(url);
        if let Some(kept) = self.kept.take()
            && kept.origin == origin
            && !kept.sender.is_closed()
        {
            return Ok(kept);
        }
        let https = url.scheme_str() == Some("https");
        let host_name = url.host().unwrap_or_default().trim_matches(['[', ']']);
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });

        let resolving = Instant::now();
        self.resolving = true;
        let address = if url.host() == self.config.url.host() {
            self.host.address(&self.resolver).await
        } else {
            Host::new(host_name, self.config.ip_version)
                .address(&self.resolver)
                .await
        }
        .map_err(|detail| Failure::new(Reason::Resolve, detail))?;
        self.resolving = false;
        phases.add(Phase::Resolve, resolving.elapsed());

        let addr = SocketAddr::new(address, port);
        let connecting = Instant::now();
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| connect_failure(addr, &err))?;
        phases.add(Phase::Connect, connecting.elapsed());

        let version = self.config.http_version;
        let connection = if https {
            let handshaking = Instant::now();
            let handshake = self.tls.handshake(stream, host_name).await?;
            phases.add(Phase::Tls, handshaking.elapsed());
            *cert_expiry = match (*cert_expiry, handshake.cert_expiry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if version == HttpVersion::Http2 && handshake.alpn.as_deref() != Some(b"h2") {
                return Err(Failure::new(
                    Reason::Error,
                    format!(
                        "{}: the server did not agree to HTTP/2 (ALPN)",
                        self.shown(url)
                    ),
                ));
            }
            handshake_http(handshake.stream, version, origin).await
        } else {
            handshake_http(stream, version, origin).await
        };
        connection.map_err(|err| {
            let shown = self.shown(url);
            Failure::new(Reason::Error, format!("{shown}: {}", error_chain(&err)))
        })
    }

    fn request(&self, url: &Uri, sender: &Sender) -> Result<Request<Full<Bytes>>, Failure> {
        let mut builder = Request::builder().method(self.config.method.clone());
        builder = match sender {
            // HTTP/1.1 sends the path and a Host header; HTTP/2 the whole URL.
            Sender::H1(_) => builder.uri(url.path_and_query().map_or("/", |pq| pq.as_str())),
            Sender::H2(_) => builder.uri(url.clone()),
        };
        let headers = builder.headers_mut().expect("a fresh builder has headers");
        // The configured headers and credentials go to the configured origin only: a redirect
        // elsewhere gets neither (as curl and browsers drop Authorization and Cookie).
        if origin(url) == origin(&self.config.url) {
            for (name, value) in &self.config.headers {
                headers.append(name, value.clone());
            }
            if let Some(value) = self.authorization(url)? {
                headers.insert(AUTHORIZATION, value);
            }
        }
        if matches!(sender, Sender::H1(_))
            && !headers.contains_key(HOST)
            && let Some(authority) = url.authority()
        {
            let host = authority
                .as_str()
                .rsplit_once('@')
                .map_or(authority.as_str(), |(_, host)| host);
            if let Ok(value) = HeaderValue::from_str(host) {
                headers.insert(HOST, value);
            }
        }
        if !headers.contains_key(USER_AGENT) {
            headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        }
        builder
            .body(Full::new(Bytes::from(self.config.body.clone())))
            .map_err(|err| {
                Failure::new(
                    Reason::Error,
                    format!("{}: cannot build the request: {err}", self.shown(url)),
                )
            })
    }

    /// The `Authorization` header of the target's credentials, marked sensitive (never
    /// indexed by HTTP/2, never shown by `Debug`). A secret file is read now, so a rotated
    /// one takes effect at the next probe; one that cannot be read fails the probe as `local`
    /// (our side cannot probe: not the destination's loss).
    fn authorization(&self, url: &Uri) -> Result<Option<HeaderValue>, Failure> {
        let Some(auth) = &self.config.auth else {
            return Ok(None);
        };
        let unreadable = |problem: String| {
            Failure::new(
                Reason::Local,
                format!("{}: credentials: {problem}", self.shown(url)),
            )
        };
        let text = match auth {
            HttpAuth::Basic {
                username, password, ..
            } => {
                let password = password.read().map_err(unreadable)?;
                let pair = format!("{username}:{password}");
                format!("Basic {}", BASE64_STANDARD.encode(pair))
            }
            HttpAuth::Bearer(token) => format!("Bearer {}", token.read().map_err(unreadable)?),
        };
        let mut value = HeaderValue::from_str(&text).map_err(|_| {
            unreadable("the secret has characters a header cannot carry".to_owned())
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// Reads the body up to `max_body_bytes`; keeps it only when a regex needs it. Generic so
    /// that tests can stream any frames through it.
    async fn read_body<B>(&self, mut body: B) -> Result<Vec<u8>, Failure>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::error::Error,
    {
        let keep = self.config.body_regex.is_some();
        let max = self.config.max_body_bytes;
        let mut kept = Vec::new();
        let mut total: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| {
                Failure::new(
                    Reason::Error,
                    format!("reading the body: {}", error_chain(&err)),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                total += data.len() as u64;
                if total > max {
                    return Err(Failure::new(
                        Reason::Validation,
                        format!("the body is larger than max_body_bytes ({max} bytes)"),
                    ));
                }
                if keep {
                    kept.extend_from_slice(&data);
                }
            }
        }
        Ok(kept)
    }

    fn check_body(&self, url: &Uri, body: &[u8]) -> Result<(), Failure> {
        let Some(pattern) = &self.config.body_regex else {
            return Ok(());
        };
        let matched = pattern.0.is_match(&String::from_utf8_lossy(body));
        match (matched, self.config.body_regex_invert) {
            (true, false) | (false, true) => Ok(()),
            (false, false) => Err(Failure::new(
                Reason::Validation,
                format!(
                    "the body of {} does not match /{}/",
                    self.shown(url),
                    pattern.0.as_str()
                ),
            )),
            (true, true) => Err(Failure::new(
                Reason::Validation,
                format!(
                    "the body of {} matches /{}/ (body_regex_invert)",
                    self.shown(url),
                    pattern.0.as_str()
                ),
            )),
        }
    }
}

/// Speaks HTTP/1.1 or HTTP/2 over an established stream.
async fn handshake_http<I>(io: I, version: HttpVersion, origin: String) -> hyper::Result<Connection>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let io = TokioIo::new(io);
    let (sender, driver) = match version {
        HttpVersion::Http1 => {
            let (sender, connection) = http1::handshake(io).await?;
            (Sender::H1(sender), tokio::spawn(connection))
        }
        HttpVersion::Http2 => {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
            (Sender::H2(sender), tokio::spawn(connection))
        }
    };
    Ok(Connection {
        sender,
        driver,
        origin,
    })
}

fn origin(url: &Uri) -> String {
    format!(
        "{}://{}",
        url.scheme_str().unwrap_or("http"),
        url.authority().map_or("", |a| a.as_str())
    )
}

fn after_redirects(redirects: u32) -> String {
    match redirects {
        0 => String::new(),
        1 => " after 1 redirect".to_owned(),
        n => format!(" after {n} redirects"),
    }
}

/// Where a redirect points, resolved against the URL that answered it (`shown` as messages
/// show it). Credentials in a `Location` are ignored, and never shown.
fn redirect_target(
    url: &Uri,
    shown: &str,
    response: &Response<hyper::body::Incoming>,
) -> Result<Uri, Failure> {
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| {
            Failure::new(
                Reason::Validation,
                format!("{shown} answered {} without a Location", response.status()),
            )
        })?;
    join(url, location).ok_or_else(|| {
        Failure::new(
            Reason::Validation,
            format!(
                "{shown} redirects to an unusable Location \"{}\"",
                without_userinfo(location)
            ),
        )
    })
}

/// RFC 3986 reference resolution, for the forms servers send: absolute, scheme-relative,
/// absolute-path and relative-path references.
fn join(base: &Uri, location: &str) -> Option<Uri> {
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    let joined = if location.contains("://") {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{scheme}://{authority}{dir}{location}")
    };
    let uri: Uri = without_userinfo(&joined).parse().ok()?;
    // `//:80` parses, with an empty host: nothing the next hop could connect to.
    (matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|h| !h.is_empty()))
    .then_some(uri)
}

/// A URL without the `user:password@` of its authority: a redirect's credentials are never
/// used (curl and browsers drop them too) and never shown.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// An error and its causes on one line: hyper's top-level messages are terse.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::config::{ProbeConfig, parse};
    use regionprobe_testkit::peers::{Pki, http_server, tls_server};

    /// An HTTP prober for `url` with extra target keys, through the real config parser.
    fn http(url: &str, extra: &str) -> Http {
        // ip_version 4: hickory answers ::1 first for localhost, and the test servers listen
        // on 127.0.0.1.
        let text = format!(
            "[[target]]\nname = \"t\"\nregion = \"r\"\nprobe = \"http\"\nurl = \"{url}\"\nip_version = 4\n{extra}"
        );
        let config = parse("test.toml", &text, Some(Default::default())).unwrap();
        match &config.targets[0].probe {
            ProbeConfig::Http(http) => Http::new(http, &Resolver::default()),
            other => panic!("{other:?}"),
        }
    }

    fn ca_file(pem: &str) -> String {
        let path = std::env::temp_dir().join(format!(
            "regionprobe-ca-{}-{}.pem",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    }

    async fn run(probe: &mut Http) -> Result<Outcome, Failure> {
        tokio::time::timeout(Duration::from_secs(5), probe.run())
            .await
            .expect("probe hung")
    }

    #[tokio::test]
    async fn a_delay_before_the_head_is_processing_and_a_delay_in_the_body_is_transfer() {
        let addr = http_server(None).await;
        let head = run(&mut http(&format!("http://{addr}/slow-head/200"), ""))
            .await
            .unwrap();
        let phases = head.phases.unwrap();
        assert!(
            phases.get(Phase::Processing) >= Duration::from_millis(200),
            "{phases:?}"
        );
        assert!(
            phases.get(Phase::Transfer) < Duration::from_millis(100),
            "{phases:?}"
        );
        assert!(phases.get(Phase::Connect) > Duration::ZERO);
        assert_eq!(phases.get(Phase::Tls), Duration::ZERO);
        assert_eq!(head.latency, phases.total());

        let body = run(&mut http(&format!("http://{addr}/slow-body/200"), ""))
            .await
            .unwrap();
        let phases = body.phases.unwrap();
        assert!(
            phases.get(Phase::Transfer) >= Duration::from_millis(200),
            "{phases:?}"
        );
        assert!(
            phases.get(Phase::Processing) < Duration::from_millis(100),
            "{phases:?}"
        );
    }

    #[tokio::test]
    async fn status_codes_are_checked_against_valid_status() {
        let addr = http_server(None).await;
        let failure = run(&mut http(&format!("http://{addr}/status/503"), ""))
            .await
            .unwrap_err();
        assert_eq!(failure.reason, Reason::HttpStatus);
        assert!(failure.detail.contains("503"), "{failure}");
        let ok = run(&mut http(
            &format!("http://{addr}/status/503"),
            "valid_status = [\"5xx\"]",
        ))
        .await;
        assert!(ok.is_ok(), "{ok:?}");
        let listed = run(&mut http(
            &format!("http://{addr}/status/204"),
            "valid_status = [200, 204]",
        ))
        .await;
        assert!(listed.is_ok(), "{listed:?}");
    }

    #[tokio::test]
    async fn redirects_are_followed_counted_and_bounded() {
        let addr = http_server(None).await;
        let outcome = run(&mut http(&format!("http://{addr}/redirect/3"), ""))
            .await
            .unwrap();
        assert_eq!(outcome.redirects, 3);
        let phases = outcome.phases.unwrap();
        assert!(
            phases.get(Phase::Connect) > Duration::ZERO,
            "connect time of four hops is summed"
        );

        let not_followed = run(&mut http(
            &format!("http://{addr}/redirect/1"),
            "follow_redirects = false",
        ))
        .await;
        assert_eq!(not_followed.unwrap_err().reason, Reason::HttpStatus);

        let limited = run(&mut http(
            &format!("http://{addr}/redirect/3"),
            "max_redirects = 2",
        ))
        .await
        .unwrap_err();
        assert_eq!(limited.reason, Reason::HttpStatus);
        assert!(limited.detail.contains("after 2 redirects"), "{limited}");

        let looped = run(&mut http(&format!("http://{addr}/loop"), ""))
            .await
            .unwrap_err();
        assert_eq!(looped.reason, Reason::HttpStatus);
        assert!(looped.detail.contains("after 10 redirects"), "{looped}");

        let nowhere = run(&mut http(&format!("http://{addr}/no-location"), ""))
            .await
            .unwrap_err();
        assert_eq!(nowhere.reason, Reason::Validation, "{nowhere}");
    }

    #[tokio::test]
    async fn the_body_is_bounded_and_matched() {
        let addr = http_server(None).await;
        let at_limit = run(&mut http(
            &format!("http://{addr}/bytes/1000"),
            "max_body_bytes = 1000",
        ))
        .await;
        assert!(at_limit.is_ok(), "{at_limit:?}");
        let over = run(&mut http(
            &format!("http://{addr}/bytes/1001"),
            "max_body_bytes = 1000",
        ))
        .await
        .unwrap_err();
        assert_eq!(over.reason, Reason::Validation);
        assert!(over.detail.contains("max_body_bytes"), "{over}");

        let url = format!("http://{addr}/text");
        assert!(
            run(&mut http(&url, "body_regex = \"says h[e]llo\""))
                .await
                .is_ok()
        );
        let mismatch = run(&mut http(&url, "body_regex = \"goodbye\""))
            .await
            .unwrap_err();
        assert_eq!(mismatch.reason, Reason::Validation);
        let inverted = run(&mut http(
            &url,
            "body_regex = \"hello\"\nbody_regex_invert = true",
        ))
        .await;
        assert_eq!(inverted.unwrap_err().reason, Reason::Validation);
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let failure = run(&mut http(&format!("http://{addr}/"), ""))
            .await
            .unwrap_err();
        assert_eq!(failure.reason, Reason::Refused, "{failure}");
    }

    /// A peer that speaks first, and not HTTP, then holds the connection for a second.
    async fn garbage_peer() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(b"SSH-2.0-not-http\r\n\r\n").await;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    drop(stream);
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_peer_that_speaks_garbage_is_an_error_that_says_so() {
        let addr = garbage_peer().await;
        let url: Uri = format!("http://{addr}/").parse().unwrap();
        let mut probe = http(&url.to_string(), "");
        for _ in 0..20 {
            let failure = run(&mut probe).await.unwrap_err();
            assert_eq!(failure.reason, Reason::Error, "{failure}");
            // Depending on the race: a response that is no HTTP, or bytes while idle.
            assert!(
                ["invalid HTTP", "unexpected message"]
                    .iter()
                    .any(|words| failure.detail.contains(words)),
                "{failure}"
            );
        }

        // The race the exporter's threads often lose: the connection is gone before the
        // request is sent, and the request itself only learns "channel closed".
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut connection = handshake_http(stream, HttpVersion::Http1, origin(&url))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !connection.driver.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the driver ends on the garbage");
        let request = probe.request(&url, &connection.sender).unwrap();
        let err = connection.sender.send(request).await.unwrap_err();
        assert!(err.is_closed(), "{err}");
        let failure = connection.failure(&url.to_string(), err).await;
        assert_eq!(failure.reason, Reason::Error);
        assert!(failure.detail.contains("unexpected message"), "{failure}");
    }

    /// Threads as in the exporter: the connection's driver runs beside the probe.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_to_http2_names_the_bad_frame() {
        let addr = garbage_peer().await;
        let mut probe = http(&format!("http://{addr}/"), "http_version = \"2\"");
        for _ in 0..20 {
            // The request is often canceled with just "connection closed": the driver knows
            // which frame was bad.
            let failure = run(&mut probe).await.unwrap_err();
            assert_eq!(failure.reason, Reason::Error, "{failure}");
            assert!(failure.detail.contains("http2 error"), "{failure}");
        }
    }

    #[tokio::test]
    async fn tls_is_verified_timed_and_its_expiry_reported() {
        let pki = Pki::new();
        let addr = http_server(Some(tls_server(pki.leaf(&["localhost"], (2035, 6, 1))))).await;
        let url = format!("https://localhost:{}/text", addr.port());

        let unknown_ca = run(&mut http(&url, "")).await.unwrap_err();
        assert_eq!(unknown_ca.reason, Reason::Tls);
        assert!(unknown_ca.detail.contains("UnknownIssuer"), "{unknown_ca}");

        let ca = ca_file(&pki.ca_pem);
        let trusted = run(&mut http(&url, &format!("tls_ca_file = \"{ca}\"")))
            .await
            .unwrap();
        assert!(trusted.phases.unwrap().get(Phase::Tls) > Duration::ZERO);
        let expiry = trusted
            .cert_expiry
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(expiry, 2_064_268_800, "2035-06-01T00:00:00Z");

        // The certificate names localhost, not 127.0.0.1.
        let by_ip = format!("https://127.0.0.1:{}/text", addr.port());
        let wrong_name = run(&mut http(&by_ip, &format!("tls_ca_file = \"{ca}\"")))
            .await
            .unwrap_err();
        assert_eq!(wrong_name.reason, Reason::Tls);
        assert!(
            wrong_name.detail.contains("not valid for name"),
            "{wrong_name}"
        );
        let named = format!("tls_ca_file = \"{ca}\"\ntls_server_name = \"localhost\"");
        assert!(run(&mut http(&by_ip, &named)).await.is_ok());

        let skipped = run(&mut http(&url, "tls_skip_verify = true"))
            .await
            .unwrap();
        assert!(
            skipped.cert_expiry.is_some(),
            "the expiry is reported without verification too"
        );
        std::fs::remove_file(ca).unwrap();
    }

    #[tokio::test]
    async fn an_expired_certificate_fails_as_tls() {
        let pki = Pki::new();
        let addr = http_server(Some(tls_server(pki.leaf(&["localhost"], (2021, 1, 1))))).await;
        let ca = ca_file(&pki.ca_pem);
        let url = format!("https://localhost:{}/", addr.port());
        let failure = run(&mut http(&url, &format!("tls_ca_file = \"{ca}\"")))
            .await
            .unwrap_err();
        assert_eq!(failure.reason, Reason::Tls);
        assert!(failure.detail.contains("certificate expired"), "{failure}");
        std::fs::remove_file(ca).unwrap();
    }

    #[tokio::test]
    async fn http2_is_negotiated_with_alpn_or_spoken_with_prior_knowledge() {
        let pki = Pki::new();
        let tls_addr = http_server(Some(tls_server(pki.leaf(&["localhost"], (2035, 6, 1))))).await;
        let ca = ca_file(&pki.ca_pem);
        let mut h2 = http(
            &format!("https://localhost:{}/version", tls_addr.port()),
            &format!("http_version = \"2\"\ntls_ca_file = \"{ca}\"\nbody_regex = \"HTTP/2\""),
        );
        assert!(run(&mut h2).await.is_ok());
        let mut h1 = http(
            &format!("https://localhost:{}/version", tls_addr.port()),
            &format!("tls_ca_file = \"{ca}\"\nbody_regex = \"HTTP/1.1\""),
        );
        assert!(run(&mut h1).await.is_ok());

        let plain = http_server(None).await;
        let mut h2c = http(
            &format!("http://{plain}/version"),
            "http_version = \"2\"\nbody_regex = \"HTTP/2\"",
        );
        assert!(run(&mut h2c).await.is_ok());
        std::fs::remove_file(ca).unwrap();
    }

    #[tokio::test]
    async fn keepalive_measures_the_request_alone_after_the_first_probe() {
        let addr = http_server(None).await;
        let mut probe = http(&format!("http://{addr}/text"), "keepalive = true");
        let first = run(&mut probe).await.unwrap().phases.unwrap();
        assert!(first.get(Phase::Connect) > Duration::ZERO);
        let second = run(&mut probe).await.unwrap().phases.unwrap();
        assert_eq!(
            second.get(Phase::Connect),
            Duration::ZERO,
            "the connection was reused"
        );
        assert!(second.get(Phase::Processing) > Duration::ZERO);

        let mut fresh = http(&format!("http://{addr}/text"), "");
        run(&mut fresh).await.unwrap();
        let again = run(&mut fresh).await.unwrap().phases.unwrap();
        assert!(
            again.get(Phase::Connect) > Duration::ZERO,
            "a new connection per probe by default"
        );
    }

    #[test]
    fn locations_resolve_against_the_answering_url() {
        let base: Uri = "https://api.example.com:8443/v1/health?x=1"
            .parse()
            .unwrap();
        let join = |loc| join(&base, loc).map(|u| u.to_string());
        assert_eq!(join("http://other/x").as_deref(), Some("http://other/x"));
        assert_eq!(
            join("//cdn.example.com/a").as_deref(),
            Some("https://cdn.example.com/a")
        );
        assert_eq!(
            join("/login").as_deref(),
            Some("https://api.example.com:8443/login")
        );
        assert_eq!(
            join("ready").as_deref(),
            Some("https://api.example.com:8443/v1/ready")
        );
        assert_eq!(join("ftp://x/y"), None);
        // Found by prop_http_redirect_locations_resolve_to_http_urls_or_nothing: a Location
        // without a host was followed to "http://:80/".
        for hostless in ["//:80", "http://:8080/x", "https:///x", "//"] {
            assert_eq!(join(hostless), None, "{hostless}");
        }
    }

    #[test]
    fn redirect_counts_read_naturally() {
        assert_eq!(after_redirects(0), "");
        assert_eq!(after_redirects(1), " after 1 redirect");
        assert_eq!(after_redirects(3), " after 3 redirects");
    }

    /// Whether a probe of `/headers` on `url` succeeds with `regex` (a `body_regex`) and
    /// `extra` keys: the headers the server received, seen through the real prober.
    async fn received(url: &str, regex: &str, extra: &str) -> Result<Outcome, Failure> {
        let keys = format!("body_regex = '{regex}'\n{extra}");
        run(&mut http(url, &keys)).await
    }

    #[tokio::test]
    async fn url_credentials_become_basic_auth_and_stay_out_of_host_and_messages() {
        let addr = http_server(None).await;
        let url = format!("http://probe:p%40ss@{addr}/headers");
        // "probe:p@ss" in base64.
        let auth = received(&url, "(?m)^authorization: Basic cHJvYmU6cEBzcw==$", "").await;
        assert!(auth.is_ok(), "{auth:?}");
        let host = received(&url, &format!("(?m)^host: {addr}$"), "").await;
        assert!(host.is_ok(), "{host:?}");

        let failed = run(&mut http(
            &format!("http://probe:p%40ss@{addr}/status/500"),
            "",
        ))
        .await
        .unwrap_err();
        assert_eq!(
            failed.detail,
            format!("http://probe:xxxxx@{addr}/status/500 answered 500 Internal Server Error")
        );
        let refused = run(&mut http("http://probe:hunter2@127.0.0.1:1/", ""))
            .await
            .unwrap_err();
        assert!(!refused.detail.contains("hunter2"), "{refused}");
    }

    #[tokio::test]
    async fn a_redirect_elsewhere_carries_no_credentials_and_no_configured_header() {
        let (first, other) = (http_server(None).await, http_server(None).await);
        let secrets = "headers = { X-Api-Key = \"k3y\", Cookie = \"session=c00kie\" }";
        let leaked = "(?im)^(authorization|cookie|x-api-key|proxy-authorization):";

        // Same origin: everything configured is sent again.
        let url = format!("http://probe:pw@{first}/redirect-to?/headers");
        let kept = received(&url, "(?m)^x-api-key: k3y$", secrets).await;
        assert!(kept.is_ok(), "{kept:?}");
        let kept = received(&url, "(?m)^authorization: Basic ", secrets).await;
        assert!(kept.is_ok(), "{kept:?}");

        // Another origin (another port): nothing.
        let url = format!("http://probe:pw@{first}/redirect-to?http://{other}/headers");
        let dropped = received(
            &url,
            leaked,
            &format!("{secrets}\nbody_regex_invert = true"),
        )
        .await;
        assert!(dropped.is_ok(), "{dropped:?}");
        let bearer = format!("http://{first}/redirect-to?http://{other}/headers");
        let dropped = received(
            &bearer,
            leaked,
            "bearer_token = \"t0ken\"\nbody_regex_invert = true",
        )
        .await;
        assert!(dropped.is_ok(), "{dropped:?}");

        // Credentials in a Location are ignored: no Authorization, and not in Host.
        let url = format!("http://{first}/redirect-to?http://evil:pw@{other}/headers");
        let ignored = received(
            &url,
            "(?im)^authorization:|evil",
            "body_regex_invert = true",
        )
        .await;
        assert!(ignored.is_ok(), "{ignored:?}");
        let host = received(&url, &format!("(?m)^host: {other}$"), "").await;
        assert!(host.is_ok(), "{host:?}");
        // ... and never shown (the configured URL's query holds them only to drive the peer).
        let unusable = format!("http://{first}/redirect-to?http://evil:s3cret@:80/");
        let failure = run(&mut http(&unusable, "")).await.unwrap_err();
        assert_eq!(failure.reason, Reason::Validation);
        assert!(
            failure
                .detail
                .ends_with(" redirects to an unusable Location \"http://:80/\""),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn a_secret_file_is_read_at_every_probe_and_never_shown() {
        let addr = http_server(None).await;
        let path = std::env::temp_dir().join(format!(
            "regionprobe-token-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&path, "first-t0ken\n").unwrap();
        let mut probe = http(
            &format!("http://{addr}/headers"),
            &format!(
                "bearer_token_file = \"{}\"\nbody_regex = '(?m)^authorization: Bearer first-t0ken$'",
                path.display()
            ),
        );
        assert!(run(&mut probe).await.is_ok());
        // Rotated: the next probe sends the new token (and the regex no longer matches).
        std::fs::write(&path, "second-t0ken").unwrap();
        let rotated = run(&mut probe).await.unwrap_err();
        assert_eq!(rotated.reason, Reason::Validation, "{rotated}");
        // Gone: the probe fails as `local` (our side), naming the file, not a token.
        std::fs::remove_file(&path).unwrap();
        let gone = run(&mut probe).await.unwrap_err();
        assert_eq!(gone.reason, Reason::Local, "{gone}");
        assert!(gone.detail.contains(&path.display().to_string()), "{gone}");
        assert!(!gone.detail.contains("t0ken"), "{gone}");
    }

    #[test]
    fn userinfo_is_cut_from_shown_urls() {
        assert_eq!(without_userinfo("http://u:p@h:1/a@b"), "http://h:1/a@b");
        assert_eq!(without_userinfo("https://h/x?u=a@b"), "https://h/x?u=a@b");
        assert_eq!(without_userinfo("/relative@x"), "/relative@x");
    }
}
