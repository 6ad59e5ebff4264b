//! Plain HTTP endpoints and the WebSocket handshake.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::auth::Refusal;
use crate::node::{Identity, Node};
use crate::protocol::{self, MessageId, Request as ClientRequest, encode, is_valid_name};
use crate::router::Dest;

pub type Body = Full<Bytes>;

/// Routes one request.
pub async fn handle(req: Request<Incoming>, node: Arc<Node>) -> Response<Body> {
    let path = req.uri().path();
    match (req.method(), path) {
        (_, "/ws" | "/chat_home") => upgrade(req, node).await,
        (&Method::GET, "/" | "/index.html") => crate::web::index(),
        (&Method::GET, "/ping") => text(StatusCode::OK, "pong"),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => readyz(&node),
        (&Method::GET, "/api/online") => match node.presence.online_count().await {
            Ok(n) => json(StatusCode::OK, serde_json::json!({ "count": n })),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string()),
        },
        (&Method::POST, "/api/publish") => publish(req, node).await,
        (&Method::GET, p) if group_of(p).is_some() => members(&node, group_of(p).unwrap_or_default()).await,
        (_, "/ping" | "/healthz" | "/readyz" | "/api/online" | "/api/publish") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such path"),
    }
}

/// `group` from `/api/groups/{group}/members`.
fn group_of(path: &str) -> Option<&str> {
    path.strip_prefix("/api/groups/")?.strip_suffix("/members")
}

fn readyz(node: &Node) -> Response<Body> {
    if node.is_draining() {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !node.presence.is_healthy() {
        text(StatusCode::SERVICE_UNAVAILABLE, "presence store unavailable")
    } else if node.broker.as_ref().is_some_and(|b| !b.is_healthy()) {
        text(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable")
    } else {
        text(StatusCode::OK, "ready")
    }
}

async fn members(node: &Node, group: &str) -> Response<Body> {
    if !is_valid_name(group) {
        return error(StatusCode::BAD_REQUEST, "bad_request", "group must be 1-128 of A-Z a-z 0-9 _ . : @ -");
    }
    match node.presence.members(group).await {
        Ok(users) => json(StatusCode::OK, serde_json::json!({ "group": group, "users": users })),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string()),
    }
}

/// `POST /api/publish`: a `once` or `group` frame plus `"from"`, sent on behalf of `from`.
async fn publish(req: Request<Incoming>, node: Arc<Node>) -> Response<Body> {
    let Some(key) = node.config.api_key.as_deref() else {
        return error(StatusCode::FORBIDDEN, "forbidden", "POST /api/publish is disabled: CHAT_API_KEY is not set");
    };
    if bearer(req.headers()) != Some(key) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong API key");
    }
    let limit = node.config.max_message_bytes;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "bad_request", "body too large or unreadable"),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "body must be UTF-8 JSON");
    };
    #[derive(Deserialize)]
    struct From<'a> {
        #[serde(borrow)]
        from: Option<std::borrow::Cow<'a, str>>,
    }
    let frame = match protocol::parse(text) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.message),
    };
    let from = match serde_json::from_str::<From<'_>>(text) {
        Ok(From { from: Some(f) }) if is_valid_name(&f) => f,
        _ => return error(StatusCode::BAD_REQUEST, "bad_request", "`from` must be a valid user id"),
    };
    let (dest, kind, content) = match &frame.request {
        ClientRequest::Once { to, content } => (Dest::User(to), encode::MessageKind::Once, *content),
        ClientRequest::Group { to, content } => (Dest::Group(to), encode::MessageKind::Group, *content),
        _ => return error(StatusCode::BAD_REQUEST, "bad_request", "type must be once or group"),
    };
    let to = match dest {
        Dest::User(t) | Dest::Group(t) => t,
    };
    let mid = MessageId { incarnation: node.incarnation, conn: 0, seq: node.next_conn_id() };
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let msg = encode::message(kind, &from, to, content, &mid, ts);
    match node.router.publish(dest, &msg).await {
        Ok(status) => json(StatusCode::OK, serde_json::json!({ "status": status.as_str(), "mid": mid.to_string() })),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string()),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

/// RFC 6455 §4.2 server handshake. On success the connection is handed to a session task
/// once hyper releases the socket.
async fn upgrade(mut req: Request<Incoming>, node: Arc<Node>) -> Response<Body> {
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
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string()),
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

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"error":"<code>","message":"..."}` with `status`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, serde_json::json!({ "error": code, "message": message }))
}
