//! HTTP: routing of plain requests, and the answers' shapes.
//!
//! | file | concern |
//! |---|---|
//! | `upgrade` | the WebSocket handshake (RFC 6455 checks, origin, token, admission) |
//! | `api` | `/api/*`: the API key, online count, nodes, group members, publish |
//! | `page` | the web chat page at `GET /`, embedded in the binary |

mod api;
pub mod page;
mod upgrade;

/// The pure RFC 6455 handshake checks (unit-tested, fuzzed: `fuzz/`).
pub use upgrade::{BadHandshake, check as check_handshake};

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::backend::chain;
use crate::node::Node;

pub type Body = Full<Bytes>;

/// The address a request came from (the TCP peer), set by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Routes one request.
pub async fn handle(req: Request<Incoming>, node: Arc<Node>) -> Response<Body> {
    let path = req.uri().path();
    if path == "/api" || path.starts_with("/api/") {
        // Before routing, so a caller without the key learns nothing, not even which paths exist.
        if let Some(refused) = api::gate(&req, &node) {
            return refused;
        }
    }
    match (req.method(), path) {
        (_, "/ws" | "/chat_home") => upgrade::upgrade(req, node).await,
        (&Method::GET, "/" | "/index.html") => page::index(),
        (&Method::GET, "/ping") => text(StatusCode::OK, "pong"),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => readyz(&node),
        (&Method::GET, "/metrics") => metrics(&node),
        (&Method::GET, "/api/online") => api::online(&node).await,
        (&Method::GET, "/api/nodes") => api::nodes(&node).await,
        (&Method::POST, "/api/publish") => api::publish(req, node).await,
        (&Method::GET, p) if api::group_of(p).is_some() => {
            api::members(&node, api::group_of(p).unwrap_or_default()).await
        }
        (_, "/ping" | "/healthz" | "/readyz" | "/metrics" | "/api/online" | "/api/nodes" | "/api/publish") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such path"),
    }
}

fn metrics(node: &Node) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(node.metrics.render())));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    r
}

fn readyz(node: &Node) -> Response<Body> {
    if node.is_draining() {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !node.presence.is_healthy() {
        text(StatusCode::SERVICE_UNAVAILABLE, "presence store unavailable")
    } else if !node.broker.is_healthy() {
        text(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable")
    } else {
        text(StatusCode::OK, "ready")
    }
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

pub(crate) fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"error":"<code>","message":"..."}` with `status`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, serde_json::json!({ "error": code, "message": message }))
}

/// `503 unavailable` for a backend failure; the cause goes to the debug log, not the client.
pub fn unavailable(e: &crate::backend::BackendError) -> Response<Body> {
    tracing::debug!(error = %chain(e), "answering 503");
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string())
}
