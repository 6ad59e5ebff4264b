//! Plain HTTP endpoints and handshake refusals.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chatgate::backend::memory::{MemoryBroker, MemoryPresence};
use chatgate::backend::{BackendError, BoxFuture, Located, Maintenance, Presence, Target};
use chatgate::{Backends, Config};
use common::*;
use serde_json::json;

#[tokio::test]
async fn ping_health_ready() {
    let gw = Gateway::start().await;
    let r = gw.http("GET", "/ping", &[], "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "pong"));
    assert_eq!(gw.http("GET", "/healthz", &[], "").await.status, 200);
    assert_eq!(gw.http("GET", "/readyz", &[], "").await.status, 200);
    let r = gw.http("GET", "/nope", &[], "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
    assert_eq!(gw.http("POST", "/ping", &[], "").await.status, 405);
}

#[tokio::test]
async fn members_endpoint_validates_the_name() {
    let gw = Gateway::start().await;
    let r = gw.http("GET", "/api/groups/a%20b/members", &[], "").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");
    let r = gw.http("GET", "/api/groups/empty/members", &[], "").await;
    assert_eq!(r.json(), json!({"group":"empty","users":[]}));
    // Prefix and suffix overlap: no group at all.
    let r = gw.http("GET", "/api/groups/members", &[], "").await;
    assert_eq!(r.status, 404);
    let r = gw.http("GET", "/api/groups//members", &[], "").await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn plain_get_on_ws_path_is_refused() {
    let gw = Gateway::start().await;
    let r = gw.http("GET", "/ws", &[], "").await;
    assert_eq!(r.status, 426);
    let r = gw
        .http("GET", "/ws", &[("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "8")], "")
        .await;
    assert_eq!(r.status, 426);
}

#[tokio::test]
async fn connection_limit_answers_503() {
    let gw = Gateway::start_with(|c| c.max_connections = 2).await;
    let _a = gw.client().await;
    let _b = gw.client().await;
    let err = tokio_tungstenite::connect_async(gw.url()).await.expect_err("third connection refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other}"),
    }
}

#[tokio::test]
async fn without_an_api_key_publish_is_absent_and_the_read_endpoints_open() {
    let gw = Gateway::start().await;
    for method in ["POST", "GET"] {
        let r = gw.http(method, "/api/publish", &[], r#"{"type":"once","to":"1","from":"x","content":1}"#).await;
        assert_eq!(r.status, 404, "{method}: disabled without CHAT_API_KEY");
        assert_eq!(r.json()["error"], "not_found");
    }
    for path in ["/api/online", "/api/nodes", "/api/groups/g/members"] {
        assert_eq!(gw.http("GET", path, &[], "").await.status, 200, "{path}");
    }
}

#[tokio::test]
async fn with_an_api_key_every_api_path_needs_it_and_nothing_else_does() {
    let gw = Gateway::start_with(|c| c.api_key = Some("s3cret".into())).await;
    let paths = ["/api/online", "/api/nodes", "/api/groups/g/members", "/api/publish", "/api/nope", "/api"];
    for path in paths {
        for auth in [&[][..], &[("Authorization", "Bearer wrong")], &[("Authorization", "Basic s3cret")]] {
            let r = gw.http("GET", path, auth, "").await;
            assert_eq!(r.status, 401, "{path} {auth:?}");
            assert_eq!(r.json()["error"], "unauthorized");
            assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
        }
    }
    let key = [("Authorization", "Bearer s3cret")];
    for (path, status) in [
        ("/api/online", 200),
        ("/api/nodes", 200),
        ("/api/groups/g/members", 200),
        ("/api/publish", 405),
        ("/api/nope", 404),
    ] {
        assert_eq!(gw.http("GET", path, &key, "").await.status, status, "{path} with the key");
    }
    assert_eq!(gw.http("GET", "/api/online", &[("Authorization", "bearer s3cret")], "").await.status, 200);
    for path in ["/ping", "/healthz", "/readyz", "/metrics", "/"] {
        assert_eq!(gw.http("GET", path, &[], "").await.status, 200, "{path} needs no key");
    }
    assert_eq!(gw.client().await.welcome["type"], "welcome", "WebSockets need no API key");
}

#[tokio::test]
async fn publish_api_needs_the_key() {
    let gw = Gateway::start_with(|c| c.api_key = Some("s3cret".into())).await;
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    b.join("news").await;
    let body = format!(r#"{{"type":"once","to":"{}","from":"system","content":{{"n":1}}}}"#, a.user);
    let r = gw.http("POST", "/api/publish", &[], &body).await;
    assert_eq!(r.status, 401, "no key");
    let r = gw.http("POST", "/api/publish", &[("Authorization", "Bearer wrong")], &body).await;
    assert_eq!(r.status, 401, "wrong key");
    let auth = [("Authorization", "Bearer s3cret")];
    let r = gw.http("POST", "/api/publish", &auth, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "sent");
    let m = a.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["from"].as_str(), m["content"].clone()),
        (Some("once"), Some("system"), json!({"n":1}))
    );
    assert_eq!(m["mid"], r.json()["mid"]);

    let r = gw.http("POST", "/api/publish", &auth, r#"{"type":"group","to":"news","from":"bot","content":"hi"}"#).await;
    assert_eq!(r.json()["status"], "sent");
    let m = b.recv_type("group").await;
    assert_eq!((m["from"].as_str(), m["to"].as_str()), (Some("bot"), Some("news")));

    let r = gw.http("POST", "/api/publish", &auth, r#"{"type":"once","to":"777","from":"bot","content":1}"#).await;
    assert_eq!(r.json()["status"], "offline");
    for bad in [
        r#"{"type":"once","to":"1","content":1}"#,
        r#"{"type":"once","to":"1","from":"a b","content":1}"#,
        r#"{"type":"join","group":"g","from":"x"}"#,
        "nope",
    ] {
        let r = gw.http("POST", "/api/publish", &auth, bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["error"], "bad_request");
    }
}

/// Memory presence that can be switched off, to see `unavailable` end to end.
struct Flaky {
    inner: MemoryPresence,
    down: Arc<AtomicBool>,
}

impl Flaky {
    fn gate<'a, T: Send + 'a>(
        &'a self,
        f: BoxFuture<'a, Result<T, BackendError>>,
    ) -> BoxFuture<'a, Result<T, BackendError>> {
        if self.down.load(Ordering::Relaxed) {
            Box::pin(std::future::ready(Err(BackendError::presence("test outage"))))
        } else {
            f
        }
    }
}

impl Presence for Flaky {
    fn allocate_id(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        self.gate(self.inner.allocate_id())
    }
    fn release_id(&self, id: u64) -> BoxFuture<'_, Result<(), BackendError>> {
        self.inner.release_id(id)
    }
    fn connect<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        self.gate(self.inner.connect(user))
    }
    fn disconnect<'a>(
        &'a self,
        user: &'a str,
        groups: &'a [Box<str>],
    ) -> BoxFuture<'a, Result<Vec<Box<str>>, BackendError>> {
        self.inner.disconnect(user, groups)
    }
    fn join<'a>(&'a self, user: &'a str, group: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.gate(self.inner.join(user, group))
    }
    fn leave<'a>(&'a self, user: &'a str, group: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.gate(self.inner.leave(user, group))
    }
    fn online_count(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        self.gate(self.inner.online_count())
    }
    fn members<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Result<Vec<String>, BackendError>> {
        self.gate(self.inner.members(group))
    }
    fn locate<'a>(&'a self, targets: &'a [Target]) -> BoxFuture<'a, Result<Located, BackendError>> {
        self.gate(self.inner.locate(targets))
    }
    fn is_healthy(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }
    fn release_node(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.inner.release_node()
    }
    fn upkeep_period(&self) -> Option<std::time::Duration> {
        self.inner.upkeep_period()
    }
    fn maintain(&self) -> BoxFuture<'_, Result<Maintenance, BackendError>> {
        self.inner.maintain()
    }
}

#[tokio::test]
async fn presence_outage_answers_unavailable_and_readyz_503() {
    let down = Arc::new(AtomicBool::new(false));
    let config = Config::for_tests();
    let presence = Flaky { inner: MemoryPresence::standalone(config.node_id.clone()), down: down.clone() };
    let gw = Gateway::start_node(
        config,
        Backends {
            presence: Arc::new(presence),
            broker: Arc::new(MemoryBroker::solo()),
            incarnation: 1,
            metrics: Arc::default(),
        },
    )
    .await;
    let mut a = gw.client().await;
    a.join("g").await;
    down.store(true, Ordering::Relaxed);
    assert_eq!(gw.http("GET", "/readyz", &[], "").await.status, 503);
    assert_eq!(gw.http("GET", "/api/online", &[], "").await.status, 503);
    for (frame, id) in [
        (json!({"type":"join","group":"h"}), "j"),
        (json!({"type":"leave","group":"g"}), "l"),
        (json!({"type":"online"}), "o"),
        (json!({"type":"members","group":"g"}), "m"),
    ] {
        let r = a.request(frame, id).await;
        assert_eq!(r["type"], "error", "{r}");
        assert_eq!(r["code"], "unavailable", "{r}");
    }
    // New connections are refused before the upgrade (the node is not ready).
    match tokio_tungstenite::connect_async(gw.url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    down.store(false, Ordering::Relaxed);
    assert_eq!(gw.http("GET", "/readyz", &[], "").await.status, 200);
    // Still a member of g: the failed leave changed nothing.
    let r = a.request(json!({"type":"group","to":"g","content":1}), "still").await;
    assert_eq!(r["status"], "sent");
}

#[tokio::test]
async fn web_page_is_served_self_contained() {
    let gw = Gateway::start().await;
    for path in ["/", "/index.html"] {
        let r = gw.http("GET", path, &[], "").await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(r.header("cache-control").is_some(), "{path} says how to cache it");
        assert!(r.body.starts_with("<!doctype html>"), "{}", &r.body[..r.body.len().min(80)]);
        // Behind a path prefix or a TLS proxy the page must find the socket on its own origin.
        assert!(r.body.contains("new URL('ws', location.href)"), "the WebSocket URL is relative to the page");
        // Offline, and no mixed content behind TLS: nothing is fetched from anywhere else.
        for absolute in ["ws://", "wss://", "http://", "https://", "//cdn"] {
            assert!(!r.body.contains(absolute), "{path} references {absolute}");
        }
        for tag in ["<script src", "<link rel=\"stylesheet\"", "@import"] {
            assert!(!r.body.contains(tag), "{path} loads an external resource: {tag}");
        }
    }
}

#[tokio::test]
async fn api_nodes_lists_this_node() {
    let gw = Gateway::start_with(|c| c.node_id = "solo-1".into()).await;
    let _a = gw.client().await;
    let _b = gw.client().await;
    let r = gw.http("GET", "/api/nodes", &[], "").await;
    assert_eq!(r.status, 200);
    let nodes = r.json()["nodes"].clone();
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");
    let n = &nodes[0];
    assert_eq!(
        (n["node"].as_str(), n["connections"].as_u64(), n["users"].as_u64()),
        (Some("solo-1"), Some(2), Some(2))
    );
    let started = n["started"].as_u64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(started <= now && started > now - 3_600_000, "ms since the epoch: {started}");
}

/// Reads what the server sends until it ends the connection (EOF or reset), bounded by WAIT.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server ended the connection");
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test]
async fn a_request_head_over_the_bound_gets_431() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::start_with(|c| c.max_request_head_bytes = 8192).await;
    // Just under the bound: served.
    let r = gw.http("GET", "/ping", &[("X-Pad", &"a".repeat(7000))], "").await;
    assert_eq!(r.status, 200);
    // Over it: 431, and the connection ends.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!("GET /ping HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    // The server may answer and close before it has read everything: a failed write is fine.
    let _ = s.write_all(head.as_bytes()).await;
    let answer = read_until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert_eq!(gw.http("GET", "/ping", &[], "").await.status, 200, "still serving");
}

#[tokio::test]
async fn a_client_that_sends_its_head_too_slowly_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::start_with(|c| c.header_read_timeout = std::time::Duration::from_millis(200)).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // Half a request line, then nothing: the server must not wait forever.
    s.write_all(b"GET /ping HT").await.unwrap();
    let answer = read_until_closed(&mut s).await;
    assert!(!answer.contains("pong"), "{answer:?}");
    // An idle keep-alive connection ends the same way once its request is answered.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("pong"), "{answer:?}");
    assert_eq!(gw.http("GET", "/ping", &[], "").await.status, 200, "still serving");
}

#[tokio::test]
async fn a_handshake_with_a_malformed_key_gets_400() {
    let gw = Gateway::start().await;
    let upgrade = |key: &'static str| {
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", key),
        ]
    };
    for key in ["x", "dGhlIHNhbXBsZSBub25jZQ", "not base64 at all!!!!!==", "dGhlIHNhbXBsZSBub25jZSBhbmQgbW9yZQ=="] {
        let r = gw.http("GET", "/ws", &upgrade(key), "").await;
        assert_eq!(r.status, 400, "{key}");
        assert_eq!(r.json()["error"], "bad_request");
    }
    let mut c = gw.client().await;
    c.request(json!({"type":"ping"}), "p").await;
}

/// A WebSocket upgrade that claims to be forwarded for `xff` (or not); the HTTP status of
/// a refusal, or the open socket.
async fn connect_as(
    gw: &Gateway,
    xff: Option<&str>,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = gw.url().into_client_request().unwrap();
    if let Some(v) = xff {
        req.headers_mut().insert("X-Forwarded-For", v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(other) => panic!("expected a WebSocket or an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn connections_per_address_are_capped_and_freed() {
    let gw = Gateway::start_with(|c| c.max_connections_per_ip = 2).await;
    let a = connect_as(&gw, None).await.unwrap();
    // Not from a trusted proxy: the header is ignored, it is still 127.0.0.1.
    let _b = connect_as(&gw, Some("198.51.100.7")).await.unwrap();
    assert_eq!(connect_as(&gw, None).await.unwrap_err(), 503);
    assert_eq!(gw.node.metrics.refused_with("per_ip"), 1);
    drop(a);
    eventually("the slot is given back", || async { connect_as(&gw, None).await.is_ok() }).await;
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client() {
    let gw = Gateway::start_with(|c| {
        c.max_connections_per_ip = 1;
        c.trusted_proxies = Some(vec!["127.0.0.0/8".parse().unwrap()]);
    })
    .await;
    let _a = connect_as(&gw, Some("198.51.100.7")).await.unwrap();
    let _b = connect_as(&gw, Some("198.51.100.8")).await.unwrap();
    // A client cannot get past the cap by prepending addresses: the proxy's entry counts.
    assert_eq!(connect_as(&gw, Some("203.0.113.1, 198.51.100.7")).await.unwrap_err(), 503);
    let _c = connect_as(&gw, None).await.unwrap();
    assert_eq!(connect_as(&gw, None).await.unwrap_err(), 503, "the proxy itself, once");
}

#[tokio::test]
async fn handshakes_in_progress_are_capped() {
    let gw = Gateway::start_with(|c| c.max_handshakes = 1).await;
    // One handshake under way (taken as a slow one would hold it).
    let held = gw.node.gate.handshake().unwrap();
    assert_eq!(gw.node.gate.handshakes(), 1);
    assert_eq!(connect_as(&gw, None).await.unwrap_err(), 503);
    assert_eq!(gw.node.metrics.refused_with("handshakes"), 1);
    drop(held);
    let mut c = gw.client().await;
    c.request(json!({"type":"ping"}), "p").await;
    assert_eq!(gw.node.gate.handshakes(), 0, "a finished handshake gives its place back");
}
