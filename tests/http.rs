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
