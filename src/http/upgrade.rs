//! The WebSocket handshake (RFC 6455 §4.2): checks, identity, admission, then the upgrade.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::{Body, error, unavailable};
use crate::auth::Refusal;
use crate::node::{Identity, Node};

/// RFC 6455 §4.2 server handshake. On success the connection is handed to a session task
/// once hyper releases the socket.
pub(super) async fn upgrade(mut req: Request<Incoming>, node: Arc<Node>) -> Response<Body> {
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "bad_request", "WebSocket upgrade needs GET");
    }
    let h = req.headers();
    let upgrade_ok =
        h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection_ok = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !upgrade_ok || !connection_ok {
        let mut r = error(StatusCode::UPGRADE_REQUIRED, "bad_request", "this path speaks WebSocket only");
        r.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        let mut r = error(StatusCode::UPGRADE_REQUIRED, "bad_request", "unsupported WebSocket version");
        r.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());

    // Origin and token first: a refused client costs no backend round trip.
    let user = match node.auth.check(req.headers(), req.uri().query()) {
        Ok(user) => user,
        Err(Refusal::Unauthorized(m)) => return error(StatusCode::UNAUTHORIZED, "unauthorized", &m),
        Err(Refusal::Forbidden(m)) => return error(StatusCode::FORBIDDEN, "forbidden", &m),
    };
    if node.is_draining() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "server is shutting down");
    }
    if !node.is_ready() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "a backend is unreachable");
    }
    let Some(slot) = node.admit() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "connection limit reached");
    };
    let identity = match user {
        Some(user) => Identity::User(user),
        None => match node.presence.allocate_id().await {
            Ok(id) => Identity::Anonymous(id),
            Err(e) => return unavailable(&e),
        },
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_node = node.clone();
    node.sessions.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => crate::session::run(session_node, upgraded, identity, slot).await,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                session_node.release_identity(&identity).await;
            }
        }
    });

    let mut res = Response::new(Body::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}
