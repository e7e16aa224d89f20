//! The HTTP server: `/metrics`, the status page, the JSON APIs, health, readiness and
//! `POST /-/reload`, behind the [`guard`] that `[web]` configures. The views are [`api`] (JSON)
//! and [`status_page`] (HTML); [`render`] caches `/metrics` renderings.

pub(crate) mod api;
mod guard;
mod limits;
mod refusals;
mod render;
mod status_page;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    ACCEPT, ACCEPT_ENCODING, ALLOW, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue,
    RETRY_AFTER, VARY, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub use guard::{Guard, describe as describe_guard};
pub use limits::{Options, raise_fd_limit};
pub use render::RenderCache;

use crate::config::Config;
use crate::metrics::{Exposition, Registry};
use crate::ranking::SharedSnapshot;
use crate::targets::{Diff, LiveTargets};
use guard::{Accepted, Unauthorized};
use limits::{Connections, Watched};
use refusals::{Level, Reason};
use render::Page;

/// How long in-flight requests may take to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A reload request: the control loop answers on the enclosed channel.
pub type ReloadRequest = oneshot::Sender<Result<Diff, String>>;

/// What the handlers read.
#[derive(Debug)]
pub struct State {
    pub metrics: Arc<Registry>,
    pub config: Arc<RwLock<Arc<Config>>>,
    pub live: LiveTargets,
    pub ranking: SharedSnapshot,
    pub reload: mpsc::Sender<ReloadRequest>,
    /// TLS and basic auth, as `[web]` says.
    pub web: Arc<Guard>,
    /// `/metrics` renderings, shared among scrapers.
    pub renderings: Arc<RenderCache>,
    /// Connection limits and timeouts, `POST /-/reload` on or off.
    pub options: Options,
}

impl State {
    fn ranking_view(&self) -> api::RankingView {
        let snapshot = self.ranking.read().expect("snapshot lock").clone();
        let config = self.config.read().expect("config lock").clone();
        api::ranking(&snapshot, &config)
    }
}

/// Serves until `shutdown` completes, then lets in-flight requests finish. At most
/// `connections` are open at once (see [`Options`]); `fd_limit` is the open-files limit, of
/// which HTTP takes at most a quarter.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    fd_limit: Option<u64>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let cap = limits::connection_cap(state.options.max_connections, fd_limit);
    let connections = Connections::new(cap);
    tracing::debug!(cap, ?fd_limit, "HTTP connection cap");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = connections.admit() else {
            // Every connection has a request in flight: say so and close, without a task.
            let _ = stream.try_write(CONNECTION_LIMIT);
            state.web.refusals().refuse(
                Reason::connection_limit,
                Level::Warn,
                peer,
                (None, None),
                "every connection under the cap has a request in flight",
            );
            continue;
        };
        let state = state.clone();
        let watcher = graceful.watcher();
        // The TLS handshake runs in the connection's task: a slow client delays only itself.
        tokio::spawn(async move {
            let connection = slot.connection.clone();
            let options = state.options.clone();
            let serve = async {
                match state.web.accept(stream, peer).await {
                    None => Ok(()),
                    Some(Accepted::Plain(stream)) => {
                        let stream = Watched {
                            inner: stream,
                            connection: connection.clone(),
                        };
                        serve_http(stream, peer, connection.clone(), state.clone(), watcher).await
                    }
                    Some(Accepted::Tls(stream)) => {
                        let stream = Watched {
                            inner: stream,
                            connection: connection.clone(),
                        };
                        serve_http(stream, peer, connection.clone(), state.clone(), watcher).await
                    }
                }
            };
            tokio::select! {
                served = serve => if let Err(err) = served {
                    tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
                },
                closed = connection.watch(&options) => {
                    tracing::debug!(%peer, "HTTP connection closed: {}", closed.as_str());
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections did not finish within {DRAIN_TIMEOUT:?}");
    }
    Ok(())
}

/// The answer to a connection over the cap.
const CONNECTION_LIMIT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 23\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections.\r\n";

/// HTTP/1.1 on one accepted (and, with TLS, handshaken) connection.
async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    connection: Arc<limits::Connection>,
    state: Arc<State>,
    watcher: hyper_util::server::graceful::Watcher,
) -> hyper::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_read_timeout = state.options.header_read_timeout;
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        let in_flight = connection.request();
        async move {
            let response = guarded(request, peer, &state).await;
            drop(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        // Request heads up to 64 KiB (hyper's default lets a connection grow to ~400 KiB).
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    watcher.watch(connection).await
}

/// Every response body: whole, or a `/metrics` rendering inflated as it is sent.
type ResponseBody = Either<Full<Bytes>, render::Inflate>;

/// Basic auth first (when `[web]` sets users), then the routes.
async fn guarded(
    request: Request<Incoming>,
    peer: SocketAddr,
    state: &Arc<State>,
) -> Response<ResponseBody> {
    let authorization = request.headers().get(AUTHORIZATION);
    match state
        .web
        .authorize(request.uri().path(), authorization, peer)
        .await
    {
        Ok(()) => {}
        Err(Unauthorized::Refused) => {
            let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(guard::CHALLENGE));
            return response;
        }
        Err(Unauthorized::Overloaded) => {
            let mut response = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many password checks at once; retry\n",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    }
    let response = route(&request, state).await;
    let refused = match response.status() {
        StatusCode::NOT_FOUND => Some(Reason::not_found),
        StatusCode::METHOD_NOT_ALLOWED => Some(Reason::method_not_allowed),
        StatusCode::FORBIDDEN => Some(Reason::lifecycle_disabled),
        _ => None,
    };
    if let Some(reason) = refused {
        let detail = request.method().as_str().to_owned();
        let detail = refusals::truncate(&detail);
        state.web.refusals().refuse(
            reason,
            Level::Debug,
            peer,
            (Some(request.uri().path()), None),
            &detail,
        );
    }
    response
}

async fn route(request: &Request<Incoming>, state: &Arc<State>) -> Response<ResponseBody> {
    let method = request.method().clone();
    match (request.uri().path(), &method) {
        ("/metrics", &Method::GET | &Method::HEAD) => {
            let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
            let format = Exposition::negotiate(header(ACCEPT));
            let gzip = render::accepts_gzip(header(ACCEPT_ENCODING));
            let body = state.renderings.get(&state.metrics, format, gzip).await;
            let mut response = if body.gzip {
                respond(StatusCode::OK, format.content_type(), body.compressed.gzip)
            } else {
                let mut response =
                    Response::new(Either::Right(render::Inflate::new(body.compressed)));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(format.content_type()),
                );
                response
            };
            let headers = response.headers_mut();
            headers.insert(VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
            if body.gzip {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            response
        }
        ("/", &Method::GET | &Method::HEAD) => {
            let view = state.clone();
            let page = state
                .renderings
                .page(Page::Status, move || {
                    status_page::render(
                        &view.ranking_view(),
                        &api::targets(&view.live),
                        &status_page::samples(&view.live),
                    )
                    .into_bytes()
                })
                .await;
            respond(StatusCode::OK, "text/html; charset=utf-8", page)
        }
        ("/api/v1/ranking", &Method::GET | &Method::HEAD) => {
            let view = state.clone();
            let body = state
                .renderings
                .page(Page::Ranking, move || json_body(&view.ranking_view()))
                .await;
            respond(StatusCode::OK, "application/json", body)
        }
        ("/api/v1/targets", &Method::GET | &Method::HEAD) => {
            let view = state.clone();
            let body = state
                .renderings
                .page(Page::Targets, move || json_body(&api::targets(&view.live)))
                .await;
            respond(StatusCode::OK, "application/json", body)
        }
        ("/-/healthy", &Method::GET | &Method::HEAD) => {
            text(StatusCode::OK, "regionprobe is Healthy.\n")
        }
        ("/-/ready", &Method::GET | &Method::HEAD) => {
            text(StatusCode::OK, "regionprobe is Ready.\n")
        }
        ("/-/reload", &Method::POST | &Method::PUT) if !state.options.lifecycle => text(
            StatusCode::FORBIDDEN,
            "Lifecycle API is not enabled (--web.enable-lifecycle=false); send SIGHUP to reload.\n",
        ),
        ("/-/reload", &Method::POST | &Method::PUT) => reload(state).await,
        (
            "/metrics" | "/" | "/-/healthy" | "/-/ready" | "/api/v1/ranking" | "/api/v1/targets",
            _,
        ) => method_not_allowed("GET, HEAD"),
        ("/-/reload", _) => method_not_allowed("POST, PUT"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; see / for the endpoints\n",
        ),
    }
}

async fn reload(state: &State) -> Response<ResponseBody> {
    let (tx, rx) = oneshot::channel();
    if state.reload.send(tx).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match rx.await {
        Ok(Ok(diff)) => text(StatusCode::OK, &format!("configuration reloaded: {diff}\n")),
        Ok(Err(error)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("reload failed, the running configuration is unchanged: {error}\n"),
        ),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Left(Full::new(body.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: &str) -> Response<ResponseBody> {
    respond(status, "text/plain; charset=utf-8", body.to_owned())
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// Pretty JSON and a newline. The views are plain structs: encoding them cannot fail.
fn json_body(value: &impl serde::Serialize) -> Vec<u8> {
    let mut body = serde_json::to_vec_pretty(value).expect("encoding a JSON view");
    body.push(b'\n');
    body
}
