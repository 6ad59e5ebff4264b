//! Tokens and origins at the handshake; several connections of one user.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SECRET: &str = "test-secret";

fn token(sub: &str, exp_in: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    encode(&Header::default(), &json!({"sub": sub, "exp": now + exp_in}), &EncodingKey::from_secret(SECRET.as_bytes()))
        .unwrap()
}

async fn jwt_gateway() -> Gateway {
    Gateway::start_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.allowed_origins = Some(vec!["https://chat.example".into()]);
    })
    .await
}

#[tokio::test]
async fn token_sub_is_the_user_and_all_connections_get_messages() {
    let gw = jwt_gateway().await;
    let mut alice_tab1 = Client::connect(&format!("{}?token={}", gw.url(), token("alice", 60))).await;
    assert_eq!(alice_tab1.user, "alice");
    // Second connection of the same user, with the token in a header.
    let mut req = gw.url().into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", HeaderValue::from_str(&format!("Bearer {}", token("alice", 60))).unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut alice_tab2 = Client { ws, user: String::new(), welcome: json!(null) };
    assert_eq!(alice_tab2.recv().await["user"], "alice");
    let mut bob = Client::connect(&format!("{}?token={}", gw.url(), token("bob", 60))).await;

    assert_eq!(bob.request(json!({"type":"online"}), "o").await["count"], 2, "two users, three connections");
    let ack = bob.request(json!({"type":"once","to":"alice","content":"hi"}), "m").await;
    assert_eq!(ack["status"], "sent");
    for tab in [&mut alice_tab1, &mut alice_tab2] {
        let m = tab.recv_type("once").await;
        assert_eq!((m["from"].as_str(), m["content"].as_str()), (Some("bob"), Some("hi")));
    }

    // Group: the sender's other connection gets the message, the sending one does not.
    alice_tab1.join("g").await;
    assert_eq!(alice_tab1.recv_type("presence").await["event"], "join");
    alice_tab2.join("g").await; // second connection of alice: no new presence event
    bob.join("g").await;
    assert_eq!(alice_tab1.recv_type("presence").await["user"], "bob", "only bob's join is an event");
    alice_tab1.request(json!({"type":"group","to":"g","content":1}), "g1").await;
    assert_eq!(alice_tab2.recv_type("group").await["from"], "alice");
    assert_eq!(bob.recv_type("group").await["from"], "alice");
    let m = bob.request(json!({"type":"members","group":"g"}), "mm").await;
    assert_eq!(m["users"], json!(["bob", "alice"]));

    // Alice leaves the group only when her last connection does.
    alice_tab1.close().await;
    bob.request(json!({"type":"group","to":"g","content":2}), "g2").await;
    assert_eq!(alice_tab2.recv_type("group").await["content"], 2);
    alice_tab2.close().await;
    let ev = bob.recv_type("presence").await;
    assert_eq!(ev, json!({"type":"presence","group":"g","user":"alice","event":"leave"}));
    assert_eq!(bob.request(json!({"type":"online"}), "o2").await["count"], 1);
}

#[tokio::test]
async fn missing_invalid_or_expired_tokens_get_401() {
    let gw = jwt_gateway().await;
    for query in ["".to_owned(), "?token=nonsense".into(), format!("?token={}", token("alice", -5))] {
        let r = gw.http("GET", &format!("/ws{query}"), &ws_headers(), "").await;
        assert_eq!(r.status, 401, "{query}");
        assert_eq!(r.json()["error"], "unauthorized");
        assert!(r.json()["message"].as_str().is_some());
    }
}

#[tokio::test]
async fn refused_origin_gets_403() {
    let gw = jwt_gateway().await;
    let mut h = ws_headers();
    h.push(("Origin", "https://evil.example"));
    let r = gw.http("GET", &format!("/ws?token={}", token("a", 60)), &h, "").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    let mut req = format!("{}?token={}", gw.url(), token("a", 60)).into_client_request().unwrap();
    req.headers_mut().insert("Origin", HeaderValue::from_static("https://chat.example"));
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut c = Client { ws, user: String::new(), welcome: json!(null) };
    assert_eq!(c.recv().await["user"], "a");
}

fn ws_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]
}
