//! The exporter's own endpoint, guarded as `[web]` says: the TLS handshake (with client
//! certificates when a client CA is set) and basic auth against bcrypt hashes. A reload swaps
//! the whole guard: new connections get the new certificate, every request the new users.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZero;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use base64::Engine as _;
use hyper::header::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsAcceptor;

use super::refusals::{Level, Reason, Refusals};
use crate::config::{ClientAuth, PasswordHash, Web};

/// Longest a client may take to finish the TLS handshake (as the header read timeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a verified password is taken on trust: a scrape every 15 s then costs one bcrypt
/// a minute instead of one per scrape.
const CACHE_TTL: Duration = Duration::from_secs(60);

/// Most entries of each of the small maps the guard keeps (verified and refused passwords,
/// peers with recent failures): a flood of distinct guesses cannot grow them further.
const MAP_ENTRIES: usize = 4096;

/// How many password checks may wait for a bcrypt slot, per slot; beyond that, requests are
/// refused with 503 at once instead of queueing for seconds.
const WAITING_PER_SLOT: usize = 4;

/// Paths `health_without_auth` opens.
const HEALTH_PATHS: [&str; 2] = ["/-/healthy", "/-/ready"];

/// The realm of the `WWW-Authenticate` challenge.
pub const CHALLENGE: &str = "Basic realm=\"regionprobe\"";

/// What Go's servers answer to plain HTTP on a TLS port, so curl users see the mistake.
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The guard in force. Cheap to consult: one read lock and an `Arc` clone.
#[derive(Debug)]
pub struct Guard {
    active: RwLock<Arc<Active>>,
    /// Bounds the bcrypt work at once, so a flood of wrong passwords cannot take every core.
    verifying: Arc<Semaphore>,
    /// Checks waiting for `verifying`; at most `WAITING_PER_SLOT` per slot.
    waiting: AtomicUsize,
    max_waiting: usize,
    refusals: Refusals,
}

#[derive(Debug)]
struct Active {
    web: Web,
    auth: Option<Arc<Auth>>,
}

/// A connection after the guard let it in.
#[derive(Debug)]
pub enum Accepted {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A request that may not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthorized {
    /// No valid credentials: answer 401 with [`CHALLENGE`].
    Refused,
    /// Too many password checks waiting: answer 503, the client may retry.
    Overloaded,
}

impl Guard {
    pub fn new(web: &Web) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, NonZero::get);
        Guard {
            active: RwLock::new(Arc::new(Active::new(web, None))),
            verifying: Arc::new(Semaphore::new(cores)),
            waiting: AtomicUsize::new(0),
            max_waiting: cores * WAITING_PER_SLOT,
            refusals: Refusals::default(),
        }
    }

    /// The refusal counter and log, shared with the routes.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    fn current(&self) -> Arc<Active> {
        self.active.read().expect("web guard lock").clone()
    }

    /// Applies a reloaded `[web]`. Unchanged users keep their verified-password cache.
    pub fn apply(&self, web: &Web) {
        let running = self.current();
        if running.web == *web {
            return;
        }
        let next = Active::new(web, running.auth.clone());
        tracing::info!(web = %describe(web), "web endpoint settings reloaded");
        *self.active.write().expect("web guard lock") = Arc::new(next);
    }

    /// Runs the TLS handshake when TLS is on. `None`: the connection is done with (a failed
    /// handshake, or plain HTTP on the TLS port, which gets a 400 saying so).
    pub async fn accept(&self, stream: TcpStream, peer: SocketAddr) -> Option<Accepted> {
        let Some(acceptor) = self
            .current()
            .web
            .tls
            .as_ref()
            .map(|tls| TlsAcceptor::from(tls.server.clone()))
        else {
            return Some(Accepted::Plain(stream));
        };
        let handshake = async {
            let mut first = [0u8; 1];
            if stream.peek(&mut first).await? == 0 {
                return Ok(None);
            }
            // A TLS ClientHello starts with record type 22; an HTTP request with a method name.
            if first[0].is_ascii_uppercase() {
                refuse_plain_http(stream).await;
                self.refusals.refuse(
                    Reason::plain_http_on_tls,
                    Level::Debug,
                    peer,
                    (None, None),
                    "plain HTTP request on the TLS port; answered 400",
                );
                return Ok(None);
            }
            acceptor.accept(stream).await.map(Some)
        };
        match timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => stream.map(|s| Accepted::Tls(Box::new(s))),
            Ok(Err(err)) => {
                let certificate = err
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|err| {
                        matches!(
                            err,
                            rustls::Error::NoCertificatesPresented
                                | rustls::Error::InvalidCertificate(_)
                        )
                    });
                let error = super::refusals::truncate(&err.to_string());
                if certificate {
                    self.refusals.refuse(
                        Reason::client_certificate,
                        Level::Warn,
                        peer,
                        (None, None),
                        &format!("client certificate rejected: {error}"),
                    );
                } else {
                    self.refusals.refuse(
                        Reason::tls_handshake,
                        Level::Debug,
                        peer,
                        (None, None),
                        &format!("TLS handshake failed: {error}"),
                    );
                }
                None
            }
            Err(_) => {
                self.refusals.refuse(
                    Reason::tls_handshake,
                    Level::Debug,
                    peer,
                    (None, None),
                    &format!("TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}"),
                );
                None
            }
        }
    }

    /// Checks the request's credentials when basic auth is on. Refusals are logged with the
    /// peer, the path and the user name, never the password.
    pub async fn authorize(
        &self,
        path: &str,
        authorization: Option<&HeaderValue>,
        peer: SocketAddr,
    ) -> Result<(), Unauthorized> {
        let active = self.current();
        let Some(auth) = active.auth.clone() else {
            return Ok(());
        };
        if active.web.health_without_auth && HEALTH_PATHS.contains(&path) {
            return Ok(());
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            let detail = match authorization {
                None => "no credentials",
                Some(_) => "not basic auth",
            };
            self.refusals.refuse(
                Reason::unauthorized,
                Level::Warn,
                peer,
                (Some(path), None),
                detail,
            );
            return Err(Unauthorized::Refused);
        };
        let queue = Queue {
            permits: &self.verifying,
            waiting: &self.waiting,
            max_waiting: self.max_waiting,
        };
        let verdict = auth.verify(&user, password, peer.ip(), queue).await;
        let detail = match verdict {
            Verdict::Valid => return Ok(()),
            Verdict::Shed => {
                self.refusals.refuse(
                    Reason::auth_overloaded,
                    Level::Warn,
                    peer,
                    (Some(path), Some(&user)),
                    "too many password checks waiting; answered 503",
                );
                return Err(Unauthorized::Overloaded);
            }
            Verdict::UnknownUser => "unknown user",
            Verdict::WrongPassword => "wrong password",
        };
        self.refusals.refuse(
            Reason::unauthorized,
            Level::Warn,
            peer,
            (Some(path), Some(&user)),
            detail,
        );
        Err(Unauthorized::Refused)
    }
}

impl Active {
    /// `keep`: the running auth, kept if the users did not change.
    fn new(web: &Web, keep: Option<Arc<Auth>>) -> Self {
        let auth = if web.basic_auth_users.is_empty() {
            None
        } else {
            match keep {
                Some(auth) if auth.users == web.basic_auth_users => Some(auth),
                _ => Some(Arc::new(Auth::new(web))),
            }
        };
        Active {
            web: web.clone(),
            auth,
        }
    }
}

/// In one line for the log: what `[web]` turns on.
pub fn describe(web: &Web) -> String {
    let mut parts = Vec::new();
    match &web.tls {
        None => parts.push("plain HTTP".to_owned()),
        Some(tls) => {
            parts.push(format!("TLS ({})", tls.cert_file.display()));
            match tls.client_auth {
                ClientAuth::None => {}
                ClientAuth::RequireAndVerify => parts.push("client certificates required".into()),
                ClientAuth::VerifyIfGiven => {
                    parts.push("client certificates verified if given".into())
                }
            }
        }
    }
    match web.basic_auth_users.len() {
        0 => parts.push("no basic auth".into()),
        1 => parts.push("basic auth (1 user)".into()),
        n => parts.push(format!("basic auth ({n} users)")),
    }
    if web.health_without_auth {
        parts.push("health open".into());
    }
    parts.join(", ")
}

/// Answers the 400 and lets the client read it: the request bytes it sent are drained first,
/// as closing on unread data would reset the connection and lose the answer.
async fn refuse_plain_http(mut stream: TcpStream) {
    let _ = timeout(Duration::from_secs(1), async {
        stream.write_all(PLAIN_HTTP_ON_TLS).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        let mut left = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left -= n.min(left),
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// `Basic base64(user:password)` -> (user, password).
fn basic_credentials(header: &HeaderValue) -> Option<(String, String)> {
    let text = header.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Valid,
    UnknownUser,
    WrongPassword,
    /// Not checked: too many checks waiting.
    Shed,
}

/// The bcrypt slots and the bound on the checks waiting for one.
#[derive(Debug, Clone, Copy)]
struct Queue<'a> {
    permits: &'a Semaphore,
    waiting: &'a AtomicUsize,
    max_waiting: usize,
}

impl Queue<'_> {
    /// A slot: at once if one is free; else, unless `suspect`, after waiting in line if fewer
    /// than `max_waiting` wait. `None`: shed. Suspect checks never wait, so a slot freed goes
    /// to a check that waits first: failures are shed before everything else.
    async fn slot(&self, suspect: bool) -> Option<tokio::sync::SemaphorePermit<'_>> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Some(permit);
        }
        if suspect {
            return None;
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let permit = self.permits.acquire().await.ok();
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        permit
    }
}

/// The users and the passwords verified recently.
struct Auth {
    users: std::collections::BTreeMap<String, PasswordHash>,
    /// Per process: cached digests are worthless elsewhere and cannot be precomputed.
    salt: [u8; 32],
    /// User -> digest of the password that verified, and when; at most one per configured
    /// user.
    verified: Mutex<HashMap<String, (Digest, Instant)>>,
    /// Digests of (user, password) pairs that failed, and when: the same wrong password sent
    /// again (a scraper with a stale secret, a flood) is refused without a bcrypt.
    refused: Mutex<HashMap<Digest, Instant>>,
    /// Peers whose credentials failed recently: their next checks are suspect.
    failing_peers: Mutex<HashMap<IpAddr, Instant>>,
    /// A hash to check unknown users against, so they take as long as known ones.
    decoy: OnceLock<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

type Digest = Vec<u8>;

impl Auth {
    fn new(web: &Web) -> Self {
        Auth {
            users: web.basic_auth_users.clone(),
            salt: rand::random(),
            verified: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            failing_peers: Mutex::new(HashMap::new()),
            decoy: OnceLock::new(),
        }
    }

    /// SHA-256 over the salt, the user, the password and the stored hash.
    fn digest(&self, user: &str, password: &str) -> Digest {
        let hash = self.users.get(user).map_or("", |h| h.0.as_str());
        let mut data = Vec::with_capacity(64 + user.len() + password.len() + hash.len());
        data.extend_from_slice(&self.salt);
        for part in [user, password, hash] {
            data.extend_from_slice(&(part.len() as u64).to_be_bytes());
            data.extend_from_slice(part.as_bytes());
        }
        let sha256 = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
            .tls13()
            .expect("a TLS 1.3 suite")
            .common
            .hash_provider;
        sha256.hash(&data).as_ref().to_vec()
    }

    fn cached(&self, user: &str, digest: &Digest) -> bool {
        let verified = self.verified.lock().expect("auth cache lock");
        verified
            .get(user)
            .is_some_and(|(known, at)| at.elapsed() < CACHE_TTL && constant_time_eq(known, digest))
    }

    /// Whether `key` was recorded in `map` less than [`CACHE_TTL`] ago.
    fn recent<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, Instant>>, key: &K) -> bool {
        let map = map.lock().expect("auth cache lock");
        map.get(key).is_some_and(|at| at.elapsed() < CACHE_TTL)
    }

    /// Records `key` in `map`, keeping it under [`MAP_ENTRIES`]: expired entries go first,
    /// then everything.
    fn remember<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, Instant>>, key: K) {
        let mut map = map.lock().expect("auth cache lock");
        if map.len() >= MAP_ENTRIES {
            map.retain(|_, at| at.elapsed() < CACHE_TTL);
            if map.len() >= MAP_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, Instant::now());
    }

    async fn verify(
        self: &Arc<Self>,
        user: &str,
        password: String,
        peer: IpAddr,
        queue: Queue<'_>,
    ) -> Verdict {
        let digest = self.digest(user, &password);
        let known = self.users.contains_key(user);
        if known && self.cached(user, &digest) {
            return Verdict::Valid;
        }
        if Self::recent(&self.refused, &digest) {
            return if known {
                Verdict::WrongPassword
            } else {
                Verdict::UnknownUser
            };
        }
        let suspect = !known || Self::recent(&self.failing_peers, &peer);
        let Some(_permit) = queue.slot(suspect).await else {
            return Verdict::Shed;
        };
        let auth = self.clone();
        let name = user.to_owned();
        // bcrypt takes tens of milliseconds by design: off the runtime's threads.
        let verdict = tokio::task::spawn_blocking(move || match auth.users.get(&name) {
            Some(hash) => match bcrypt::verify(&password, &hash.0) {
                Ok(true) => Verdict::Valid,
                _ => Verdict::WrongPassword,
            },
            None => {
                let _ = bcrypt::verify(&password, auth.decoy());
                Verdict::UnknownUser
            }
        })
        .await
        .unwrap_or(Verdict::WrongPassword);
        if verdict == Verdict::Valid {
            self.verified
                .lock()
                .expect("auth cache lock")
                .insert(user.to_owned(), (digest, Instant::now()));
        } else {
            Self::remember(&self.refused, digest);
            Self::remember(&self.failing_peers, peer);
        }
        verdict
    }

    /// A hash of nothing anyone knows, at the cost of the configured hashes.
    fn decoy(&self) -> &str {
        self.decoy.get_or_init(|| {
            let cost = self
                .users
                .values()
                .find_map(|hash| hash.0.parse::<bcrypt::HashParts>().ok())
                .map_or(bcrypt::DEFAULT_COST, |parts| parts.get_cost());
            let secret: [u8; 16] = rand::random();
            bcrypt::hash(secret, cost).unwrap_or_default()
        })
    }
}

/// Equal length and bytes, in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(users: &[(&str, &str)]) -> Web {
        Web {
            basic_auth_users: users
                .iter()
                .map(|(u, p)| (u.to_string(), PasswordHash(bcrypt::hash(p, 4).unwrap())))
                .collect(),
            ..Web::default()
        }
    }

    fn basic(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn credentials_parse_from_the_header() {
        assert_eq!(
            basic_credentials(&basic("alice", "pa:ss")),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("basic YTpi")),
            Some(("a".into(), "b".into()))
        );
        for bad in ["Bearer abc", "Basic !!!", "Basic YWJj", "Basic"] {
            assert_eq!(
                basic_credentials(&HeaderValue::from_static(bad)),
                None,
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn only_the_right_password_passes_and_health_can_stay_open() {
        let guard = Guard::new(&web(&[("alice", "secret")]));
        let ok = basic("alice", "secret");
        assert_eq!(guard.authorize("/metrics", Some(&ok), peer()).await, Ok(()));
        for bad in [basic("alice", "wrong"), basic("bob", "secret")] {
            assert_eq!(
                guard.authorize("/metrics", Some(&bad), peer()).await,
                Err(Unauthorized::Refused)
            );
        }
        assert_eq!(
            guard.authorize("/-/healthy", None, peer()).await,
            Err(Unauthorized::Refused)
        );

        let mut open = web(&[("alice", "secret")]);
        open.health_without_auth = true;
        guard.apply(&open);
        for path in HEALTH_PATHS {
            assert_eq!(guard.authorize(path, None, peer()).await, Ok(()));
        }
        assert_eq!(
            guard.authorize("/metrics", None, peer()).await,
            Err(Unauthorized::Refused)
        );
        assert_eq!(
            Guard::new(&Web::default())
                .authorize("/metrics", None, peer())
                .await,
            Ok(())
        );
    }

    fn queue<'a>(permits: &'a Semaphore, waiting: &'a AtomicUsize, max: usize) -> Queue<'a> {
        Queue {
            permits,
            waiting,
            max_waiting: max,
        }
    }

    #[tokio::test]
    async fn successes_are_cached_per_password_and_reloads_keep_or_drop_the_cache() {
        let guard = Guard::new(&web(&[("alice", "secret")]));
        let auth = guard.current().auth.clone().unwrap();
        let permits = Semaphore::new(1);
        let waiting = AtomicUsize::new(0);
        let ip = peer().ip();
        assert_eq!(
            auth.verify("alice", "wrong".into(), ip, queue(&permits, &waiting, 4))
                .await,
            Verdict::WrongPassword
        );
        assert!(
            auth.verified.lock().unwrap().is_empty(),
            "failures are not cached as successes"
        );
        assert_eq!(
            auth.verify("alice", "secret".into(), ip, queue(&permits, &waiting, 4))
                .await,
            Verdict::Valid
        );
        assert!(auth.cached("alice", &auth.digest("alice", "secret")));
        assert!(!auth.cached("alice", &auth.digest("alice", "secre")));
        // With no permit to be had, only the caches can answer; anything else is shed.
        let closed = Semaphore::new(0);
        closed.close();
        let full = queue(&closed, &waiting, 0);
        assert_eq!(
            auth.verify("alice", "secret".into(), ip, full).await,
            Verdict::Valid
        );
        assert_eq!(
            auth.verify("alice", "wrong".into(), ip, full).await,
            Verdict::WrongPassword,
            "a password that failed fails again without a bcrypt"
        );
        assert_eq!(
            auth.verify("alice", "other".into(), ip, full).await,
            Verdict::Shed
        );

        let mut same = guard.current().web.clone();
        same.health_without_auth = true;
        guard.apply(&same);
        assert!(Arc::ptr_eq(&auth, guard.current().auth.as_ref().unwrap()));
        guard.apply(&web(&[("alice", "secret")]));
        assert!(
            !Arc::ptr_eq(&auth, guard.current().auth.as_ref().unwrap()),
            "new hashes, new cache"
        );
    }

    #[test]
    fn digests_differ_by_user_and_password_and_compare_in_constant_time() {
        let auth = Auth::new(&web(&[("a", "x")]));
        let d = auth.digest("a", "x");
        assert_ne!(d, auth.digest("a", "y"));
        assert_ne!(d, auth.digest("b", "x"));
        assert_ne!(d, Auth::new(&web(&[("a", "x")])).digest("a", "x"), "salted");
        assert!(constant_time_eq(&d, &d.clone()));
        assert!(!constant_time_eq(&d, &d[1..]));
    }

    #[test]
    fn descriptions_name_what_is_on() {
        assert_eq!(describe(&Web::default()), "plain HTTP, no basic auth");
        let mut w = web(&[("a", "x"), ("b", "y")]);
        w.health_without_auth = true;
        assert_eq!(
            describe(&w),
            "plain HTTP, basic auth (2 users), health open"
        );
    }
}
