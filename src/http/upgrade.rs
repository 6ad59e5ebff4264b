//! The WebSocket handshake (RFC 6455 §4.2): checks, identity, admission, then the upgrade.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::{Body, Peer, error, unavailable};
use crate::auth::Refusal;
use crate::metrics::Refused;
use crate::node::{Admission, Full, Handshake, Identity, Node};

/// Why a request is not a WebSocket handshake this server takes (RFC 6455 §4.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadHandshake {
    /// Not `GET`.
    Method,
    /// `Upgrade: websocket` or `Connection: upgrade` missing.
    NotUpgrade,
    /// `Sec-WebSocket-Version` other than 13.
    Version,
    /// `Sec-WebSocket-Key` missing, or not the base64 of 16 bytes (§4.2.1 item 5).
    BadKey,
}

impl BadHandshake {
    fn response(&self) -> Response<Body> {
        match self {
            BadHandshake::Method => error(StatusCode::METHOD_NOT_ALLOWED, "bad_request", "WebSocket upgrade needs GET"),
            BadHandshake::NotUpgrade => {
                let mut r = error(StatusCode::UPGRADE_REQUIRED, "bad_request", "this path speaks WebSocket only");
                r.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                r
            }
            BadHandshake::Version => {
                let mut r = error(StatusCode::UPGRADE_REQUIRED, "bad_request", "unsupported WebSocket version");
                r.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                r
            }
            BadHandshake::BadKey => {
                error(StatusCode::BAD_REQUEST, "bad_request", "Sec-WebSocket-Key must be the base64 of 16 bytes")
            }
        }
    }
}

/// The protocol checks of a handshake, pure (unit-tested and fuzzed): the
/// `Sec-WebSocket-Accept` value on success.
pub fn check(method: &Method, headers: &HeaderMap) -> Result<String, BadHandshake> {
    if method != Method::GET {
        return Err(BadHandshake::Method);
    }
    let upgrade_ok = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("websocket")));
    let connection_ok = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !upgrade_ok || !connection_ok {
        return Err(BadHandshake::NotUpgrade);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(BadHandshake::Version);
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).map(HeaderValue::as_bytes);
    match key {
        Some(key) if is_nonce(key) => Ok(derive_accept_key(key)),
        _ => Err(BadHandshake::BadKey),
    }
}

/// A `Sec-WebSocket-Key` is a base64-encoded 16-byte nonce: 22 base64 characters, then
/// `==`. The last character carries only 2 bits of data and is not checked further (the
/// accept value is derived from the key's text, so a lenient check costs nothing).
fn is_nonce(key: &[u8]) -> bool {
    let b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24 && key[..22].iter().all(b64) && &key[22..] == b"=="
}

/// A handshake that may go ahead.
struct Admitted {
    accept: String,
    identity: Identity,
    slot: Admission,
    /// Held until the session is set up (presence registered).
    handshake: Handshake,
}

/// Everything that can refuse a handshake, in order of cost: protocol checks, the cap on
/// handshakes under way (before any signature is verified), origin and token (no backend
/// round trip for a refused client), draining, readiness, the node and per-address caps,
/// and the anonymous id.
async fn admit(req: &Request<Incoming>, node: &Node) -> Result<Admitted, (Refused, Response<Body>)> {
    let accept = check(req.method(), req.headers()).map_err(|e| (Refused::BadRequest, e.response()))?;
    let unavailable_because = |why, msg| (why, error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg));
    let handshake = node
        .gate
        .handshake()
        .map_err(|_| unavailable_because(Refused::Handshakes, "too many handshakes in progress"))?;
    let grant = match node.auth.check(req.headers(), req.uri().query()) {
        Ok(user) => user,
        Err(Refusal::Unauthorized(m)) => {
            return Err((Refused::Unauthorized, error(StatusCode::UNAUTHORIZED, "unauthorized", &m)));
        }
        Err(Refusal::Forbidden(m)) => return Err((Refused::Forbidden, error(StatusCode::FORBIDDEN, "forbidden", &m))),
    };
    if node.is_draining() {
        return Err(unavailable_because(Refused::Draining, "server is shutting down"));
    }
    if !node.is_ready() {
        return Err(unavailable_because(Refused::Unavailable, "a backend is unreachable"));
    }
    let peer = req.extensions().get::<Peer>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.0.ip());
    let slot = node.gate.admit(node.gate.client_ip(peer, req.headers())).map_err(|full| match full {
        Full::PerIp => unavailable_because(Refused::PerIp, "too many connections from this address"),
        Full::Connections | Full::Handshakes => unavailable_because(Refused::Limit, "connection limit reached"),
    })?;
    let identity = match grant {
        Some(grant) => Identity::User(grant),
        None => match node.presence.allocate_id().await {
            Ok(id) => Identity::Anonymous(id),
            Err(e) => return Err((Refused::Unavailable, unavailable(&e))),
        },
    };
    Ok(Admitted { accept, identity, slot, handshake })
}

/// RFC 6455 §4.2 server handshake. On success the connection is handed to a session task
/// once hyper releases the socket.
pub(super) async fn upgrade(mut req: Request<Incoming>, node: Arc<Node>) -> Response<Body> {
    let Admitted { accept, identity, slot, handshake } = match admit(&req, &node).await {
        Ok(a) => a,
        Err((why, response)) => {
            node.metrics.refused(why);
            return response;
        }
    };
    node.metrics.accepted.inc();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_node = node.clone();
    node.sessions.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => crate::session::run(session_node, upgraded, identity, slot, handshake).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const GOOD: [(&str, &str); 4] = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn the_rfc_example_is_accepted() {
        // RFC 6455 §1.3.
        assert_eq!(check(&Method::GET, &headers(&GOOD)), Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned()));
    }

    #[test]
    fn each_check_names_what_is_wrong() {
        assert_eq!(check(&Method::POST, &headers(&GOOD)), Err(BadHandshake::Method));
        let with = |name: &str, value: Option<&str>| {
            let mut pairs: Vec<(&str, &str)> = GOOD.iter().copied().filter(|(k, _)| *k != name).collect();
            if let Some(v) = value {
                pairs.push((name, v));
            }
            check(&Method::GET, &headers(&pairs))
        };
        assert_eq!(with("upgrade", None), Err(BadHandshake::NotUpgrade));
        assert_eq!(with("upgrade", Some("h2c")), Err(BadHandshake::NotUpgrade));
        assert_eq!(with("connection", Some("keep-alive")), Err(BadHandshake::NotUpgrade));
        assert_eq!(with("sec-websocket-version", Some("8")), Err(BadHandshake::Version));
        assert_eq!(with("sec-websocket-version", None), Err(BadHandshake::Version));
        for key in [
            None,
            Some("x"),
            Some(""),
            Some("dGhlIHNhbXBsZSBub25jZQ"),
            Some("dGhlIHNhbXBsZSBub25jZQ="),
            Some("dGhlIHNhbXBsZSBub25jZQ==="),
            Some("dGhlIHNhbXBsZSBub25j*Q=="),
            Some("dGhlIHNhbXBsZSBub25jZQ=x"),
            Some("dGhlIHNhbXBsZSBub25jZSBhbmQgbW9yZQ=="),
        ] {
            assert_eq!(with("sec-websocket-key", key), Err(BadHandshake::BadKey), "{key:?}");
        }
        assert!(with("sec-websocket-key", Some("AAAAAAAAAAAAAAAAAAAAAA==")).is_ok());
        assert!(with("sec-websocket-key", Some("+/+/+/+/+/+/+/+/+/+/+w==")).is_ok());
    }
}
