//! `/api/*`: the API key rule, the cluster's online count, nodes and group members, and
//! publishing on behalf of a user.

use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;

use super::{Body, error, json, unavailable};
use crate::delivery::Target;
use crate::node::Node;
use crate::protocol::{self, MessageId, Request as ClientRequest, encode, is_valid_name};

/// `GET /api/nodes`: the cluster's live nodes.
pub(super) async fn nodes(node: &Node) -> Response<Body> {
    match crate::node::cluster_nodes(node).await {
        Ok(nodes) => json(StatusCode::OK, serde_json::json!({ "nodes": nodes })),
        Err(e) => unavailable(&e),
    }
}

pub(super) async fn online(node: &Node) -> Response<Body> {
    match node.presence.online_count().await {
        Ok(n) => json(StatusCode::OK, serde_json::json!({ "count": n })),
        Err(e) => unavailable(&e),
    }
}

/// `group` from `/api/groups/{group}/members`.
pub(super) fn group_of(path: &str) -> Option<&str> {
    path.strip_prefix("/api/groups/")?.strip_suffix("/members")
}

pub(super) async fn members(node: &Node, group: &str) -> Response<Body> {
    if !is_valid_name(group) {
        return error(StatusCode::BAD_REQUEST, "bad_request", "group must be 1-128 of A-Z a-z 0-9 _ . : @ -");
    }
    match node.presence.members(group).await {
        Ok(users) => json(StatusCode::OK, serde_json::json!({ "group": group, "users": users })),
        Err(e) => unavailable(&e),
    }
}

/// The API key rule for every `/api/*` request: with `CHAT_API_KEY` set, `Authorization:
/// Bearer <key>` or 401; without it, `/api/publish` does not exist (404) and the read
/// endpoints are open. `Some` is the refusal.
pub(super) fn gate(req: &Request<Incoming>, node: &Node) -> Option<Response<Body>> {
    match node.config.api_key.as_deref() {
        Some(key) if key_matches(crate::auth::bearer(req.headers()), key) => None,
        Some(_) => {
            let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong API key");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(r)
        }
        None if req.uri().path() == "/api/publish" => {
            Some(error(StatusCode::NOT_FOUND, "not_found", "POST /api/publish is disabled: CHAT_API_KEY is not set"))
        }
        None => None,
    }
}

/// Compares in time that does not depend on where the two differ (only on their lengths,
/// which are not secret), so the key cannot be guessed byte by byte from response times.
fn key_matches(given: Option<&str>, key: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(key.as_bytes())))
}

/// `POST /api/publish`: a `once` or `group` frame plus `"from"`, sent on behalf of `from`.
/// Reached only with the API key ([`gate`]).
pub(super) async fn publish(req: Request<Incoming>, node: Arc<Node>) -> Response<Body> {
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
    let (to, kind, content) = match &frame.request {
        ClientRequest::Once { to, content } => (Target::User(&**to), encode::MessageKind::Once, *content),
        ClientRequest::Group { to, content } => (Target::Group(&**to), encode::MessageKind::Group, *content),
        _ => return error(StatusCode::BAD_REQUEST, "bad_request", "type must be once or group"),
    };
    let mid = MessageId { incarnation: node.incarnation, conn: 0, seq: node.next_conn_id() };
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let msg = encode::message(kind, &from, to.name(), content, &mid, ts);
    match node.router.publish(to, &msg).await {
        Ok(status) => json(StatusCode::OK, serde_json::json!({ "status": status.as_str(), "mid": mid.to_string() })),
        Err(e) => unavailable(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::key_matches;

    #[test]
    fn key_comparison() {
        assert!(key_matches(Some("s3cret"), "s3cret"));
        for wrong in [None, Some(""), Some("s3cre"), Some("s3cret!"), Some("S3cret"), Some("x3cret")] {
            assert!(!key_matches(wrong, "s3cret"), "{wrong:?}");
        }
    }
}
