//! What bounds the endpoint whatever its clients do: a cap on connections (with the longest-idle
//! one evicted to make room), the file descriptors left to the probes, and the timeouts of a
//! connection that stops making progress (idle between requests, or a response nobody reads).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The share of the file-descriptor limit HTTP connections may take: the rest is the probes'.
pub const FD_SHARE_DIVISOR: u64 = 4;

/// How the endpoint bounds its clients. `Default` is what the binary runs with unless flags
/// say otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Most HTTP connections open at once (`--web.max-connections`); the effective cap is also
    /// at most a quarter of the file-descriptor limit. At the cap, a new connection evicts the
    /// connection idle the longest (no request in flight), or is answered 503 and closed.
    pub max_connections: usize,
    /// `POST /-/reload` answers (`--web.enable-lifecycle`); off, it answers 403. SIGHUP always
    /// reloads.
    pub lifecycle: bool,
    /// Longest a client may take to send a request's head (and to finish a TLS handshake).
    pub header_read_timeout: Duration,
    /// Longest a response may wait for the client to read any of it.
    pub write_timeout: Duration,
    /// Longest a connection may stay open with no request in flight and no bytes moving.
    pub idle_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: 512,
            lifecycle: true,
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as Go's runtime does at start; returns
/// the soft limit in force afterwards (`None` if it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the open-files soft limit");
                return Some(hard);
            }
            Err(err) => {
                tracing::warn!(soft, hard, error = %err, "cannot raise the open-files soft limit")
            }
        }
    }
    Some(soft)
}

/// The connection cap in force: `max_connections`, and at most a quarter of `fd_limit`.
pub fn connection_cap(max_connections: usize, fd_limit: Option<u64>) -> usize {
    let by_fds = fd_limit.map_or(usize::MAX, |limit| {
        usize::try_from(limit / FD_SHARE_DIVISOR).unwrap_or(usize::MAX)
    });
    max_connections.min(by_fds).max(1)
}

/// The open connections, for the cap and eviction.
#[derive(Debug)]
pub struct Connections {
    cap: usize,
    base: Instant,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
}

/// One connection's activity, updated by its [`Watched`] stream and its requests.
#[derive(Debug)]
pub struct Connection {
    base: Instant,
    /// Milliseconds since `base` of the last byte read or written.
    last_progress: AtomicU64,
    /// Milliseconds since `base` + 1 when a write started waiting for the client; 0: none.
    write_blocked_since: AtomicU64,
    in_flight: AtomicUsize,
    evict: Notify,
}

/// Why a connection was closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Evicted,
    WriteTimeout,
    Idle,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Evicted => "evicted to make room for a new connection",
            Closed::WriteTimeout => "write timeout: the client reads nothing",
            Closed::Idle => "idle timeout",
        }
    }
}

/// A connection's place under the cap; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    connections: Arc<Connections>,
    pub connection: Arc<Connection>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections
            .open
            .lock()
            .expect("connections lock")
            .remove(&self.id);
    }
}

impl Connections {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Connections {
            cap,
            base: Instant::now(),
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        })
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.lock().expect("connections lock").len()
    }

    /// A place for a new connection: a free one, or the one of the connection idle the longest,
    /// which is told to close. `None`: every connection has a request in flight.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.open.lock().expect("connections lock");
        if open.len() >= self.cap {
            let (&id, _) = open
                .iter()
                .filter(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, c)| c.last_progress.load(Ordering::Acquire))?;
            if let Some(evicted) = open.remove(&id) {
                evicted.evict.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            base: self.base,
            last_progress: AtomicU64::new(millis(self.base)),
            write_blocked_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        open.insert(id, connection.clone());
        Some(Slot {
            id,
            connections: self.clone(),
            connection,
        })
    }
}

fn millis(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Connection {
    fn progress(&self) {
        self.last_progress
            .store(millis(self.base), Ordering::Release);
    }

    /// Marks a request in flight until the returned guard drops: the connection is not idle.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Completes when the connection must close: evicted, a write blocked for longer than
    /// `write_timeout`, or idle for longer than `idle_timeout`.
    pub async fn watch(&self, options: &Options) -> Closed {
        let period = options
            .write_timeout
            .min(options.idle_timeout)
            .div_f64(4.0)
            .min(Duration::from_secs(1));
        let write = u64::try_from(options.write_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle = u64::try_from(options.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::select! {
                () = self.evict.notified() => return Closed::Evicted,
                () = tokio::time::sleep(period) => {}
            }
            let now = millis(self.base);
            let blocked = self.write_blocked_since.load(Ordering::Acquire);
            if blocked != 0 && now.saturating_sub(blocked - 1) > write {
                return Closed::WriteTimeout;
            }
            let last = self.last_progress.load(Ordering::Acquire);
            if self.in_flight.load(Ordering::Acquire) == 0 && now.saturating_sub(last) > idle {
                return Closed::Idle;
            }
        }
    }
}

/// A request in flight on a [`Connection`].
#[derive(Debug)]
pub struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.progress();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that reports its progress to its [`Connection`].
#[derive(Debug)]
pub struct Watched<S> {
    pub inner: S,
    pub connection: Arc<Connection>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.connection.progress();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Watched<S> {
    fn wrote(&self, polled: &Poll<std::io::Result<usize>>) {
        let connection = &self.connection;
        match polled {
            Poll::Pending => {
                let now = millis(connection.base) + 1;
                let _ = connection.write_blocked_since.compare_exchange(
                    0,
                    now,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            Poll::Ready(result) => {
                connection.write_blocked_since.store(0, Ordering::Release);
                if result.as_ref().is_ok_and(|&n| n > 0) {
                    connection.progress();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_three_quarters_of_the_fds_to_the_probes() {
        assert_eq!(connection_cap(512, Some(1024)), 256);
        assert_eq!(connection_cap(512, Some(1 << 20)), 512);
        assert_eq!(connection_cap(512, None), 512);
        assert_eq!(connection_cap(0, Some(8)), 1);
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_is_evicted_never_a_busy_one() {
        let connections = Connections::new(2);
        let first = connections.admit().unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = connections.admit().unwrap();
        let third = connections.admit().expect("the first, idle, is evicted");
        assert_eq!(connections.open(), 2);
        let options = Options::default();
        assert_eq!(first.connection.watch(&options).await, Closed::Evicted);
        drop(first);
        assert_eq!(connections.open(), 2, "an evicted slot is already free");
        let _busy = (second.connection.request(), third.connection.request());
        assert!(connections.admit().is_none(), "requests in flight stay");
    }
}
