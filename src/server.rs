//! The HTTP server: `/metrics`, the landing page, health, readiness and `POST /-/reload`.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::targets::Diff;

/// How long in-flight requests may take to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A reload request: the control loop answers on the enclosed channel.
pub type ReloadRequest = oneshot::Sender<Result<Diff, String>>;

/// What the handlers read.
#[derive(Debug)]
pub struct State {
    pub metrics: Arc<Metrics>,
    pub config: Arc<RwLock<Arc<Config>>>,
    pub reload: mpsc::Sender<ReloadRequest>,
}

/// Serves until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
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
        let state = state.clone();
        let service = hyper::service::service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(route(request, &state).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
            }
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

async fn route(request: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    match (request.uri().path(), &method) {
        ("/metrics", &Method::GET | &Method::HEAD) => {
            let openmetrics = request
                .headers()
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|accept| accept.contains("application/openmetrics-text"));
            let body = state.metrics.render(openmetrics);
            let content_type = if openmetrics {
                OPENMETRICS
            } else {
                PROMETHEUS_TEXT
            };
            respond(StatusCode::OK, content_type, body)
        }
        ("/", &Method::GET | &Method::HEAD) => {
            let config = state.config.read().expect("config lock").clone();
            respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                landing_page(&config, &state.metrics),
            )
        }
        ("/-/healthy", &Method::GET | &Method::HEAD) => {
            text(StatusCode::OK, "regionprobe is Healthy.\n")
        }
        ("/-/ready", &Method::GET | &Method::HEAD) => {
            text(StatusCode::OK, "regionprobe is Ready.\n")
        }
        ("/-/reload", &Method::POST | &Method::PUT) => reload(state).await,
        ("/metrics" | "/" | "/-/healthy" | "/-/ready", _) => method_not_allowed("GET, HEAD"),
        ("/-/reload", _) => method_not_allowed("POST, PUT"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; see / for the endpoints\n",
        ),
    }
}

async fn reload(state: &State) -> Response<Full<Bytes>> {
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

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body.to_owned())
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// A plain page that links the endpoints and lists the targets with their last state.
fn landing_page(config: &Config, metrics: &Metrics) -> String {
    let mut rows = String::new();
    let series = metrics.targets.read().expect("targets lock");
    for target in &config.targets {
        let state = match series.get(&target.name).map(|m| m.last_up()) {
            Some(Some(true)) => "up",
            Some(Some(false)) => "down",
            _ => "pending",
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{state}\">{state}</td></tr>",
            escape(&target.name),
            escape(&target.region),
            target.probe.kind().as_str(),
        );
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>regionprobe</title>\
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}\
.up{{color:#070}}.down{{color:#b00}}</style></head><body>\
<h1>regionprobe</h1><p>Region <b>{region}</b>, version {version}.</p>\
<ul><li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/-/healthy\">/-/healthy</a></li>\
<li><a href=\"/-/ready\">/-/ready</a></li><li>POST /-/reload</li></ul>\
<table><tr><th>target</th><th>region</th><th>probe</th><th>state</th></tr>{rows}</table>\
</body></html>\n",
        region = escape(&config.exporter.region),
        version = env!("CARGO_PKG_VERSION"),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
