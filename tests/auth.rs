//! Tokens and origins at the handshake: algorithms, claims, refusals; several connections of
//! one user.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::jwt::{self, SECRET, keys, now};
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn token(sub: &str, exp_in: i64) -> String {
    jwt::hs256(&json!({"sub": sub, "exp": now() + exp_in}))
}

async fn jwt_gateway() -> Gateway {
    Gateway::start_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.allowed_origins = Some(vec!["https://chat.example".into()]);
    })
    .await
}

/// Expects HTTP 401 with the contract's body for `token`, then a fresh valid client still gets
/// in.
async fn refused(gw: &Gateway, case: &str, token: &str, good: &str) {
    let r = gw.http("GET", &format!("/ws?token={token}"), &ws_headers(), "").await;
    assert_eq!(r.status, 401, "{case}: {}", r.body);
    assert_eq!(r.json()["error"], "unauthorized", "{case}");
    assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}");
    let c = Client::connect(&format!("{}?token={good}", gw.url())).await;
    assert_eq!(c.welcome["type"], "welcome", "{case}: the gateway still serves");
}

async fn accepted(gw: &Gateway, case: &str, token: &str) -> Client {
    let c = Client::connect(&format!("{}?token={token}", gw.url())).await;
    assert_eq!(c.welcome["type"], "welcome", "{case}");
    c
}

#[tokio::test]
async fn secret_and_public_key_together_with_issuer_audience_and_leeway() {
    // HS256 and RS256 side by side: a token's `alg` picks the key.
    let gw = Gateway::start_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.jwt_public_key_file = Some(keys().rsa_public());
        c.jwt_issuer = Some("auth.example".into());
        c.jwt_audience = Some("chat".into());
        c.jwt_leeway = std::time::Duration::from_secs(5);
    })
    .await;
    let t = now();
    let claims = |extra: Value| jwt::claims_at(t, extra);
    let good = jwt::hs256(&claims(json!({})));
    assert_eq!(accepted(&gw, "HS256", &good).await.user, "alice");
    assert_eq!(accepted(&gw, "RS256", &jwt::rsa(Algorithm::RS256, &claims(json!({"sub":"bob"})))).await.user, "bob");
    accepted(&gw, "exp passed, within the leeway", &jwt::hs256(&claims(json!({"exp":t - 2})))).await;
    accepted(&gw, "nbf ahead, within the leeway", &jwt::hs256(&claims(json!({"nbf":t + 2})))).await;
    accepted(&gw, "nbf passed", &jwt::hs256(&claims(json!({"nbf":t - 60})))).await;
    accepted(&gw, "aud list holding ours", &jwt::hs256(&claims(json!({"aud":["other","chat"]})))).await;

    let rs = jwt::rsa(Algorithm::RS256, &claims(json!({})));
    let mallory = jwt::rsa(Algorithm::RS256, &claims(json!({"sub":"mallory"})));
    for (case, token) in [
        ("alg none", jwt::unsigned(&good)),
        ("alg none, RS256 claims", jwt::unsigned(&rs)),
        ("ES256: no EC key configured", jwt::es256(&claims(json!({})))),
        ("RS384: not an accepted algorithm", jwt::rsa(Algorithm::RS384, &claims(json!({})))),
        ("HS512: not an accepted algorithm", jwt::hmac(Algorithm::HS512, SECRET.as_bytes(), &claims(json!({})))),
        ("HS256 with the wrong secret", jwt::hmac(Algorithm::HS256, b"guess", &claims(json!({})))),
        (
            "HS256 keyed with the public key",
            jwt::hmac(Algorithm::HS256, keys().rsa_public_pem.as_bytes(), &claims(json!({}))),
        ),
        ("tampered RS256 signature", jwt::tampered_signature(&rs)),
        ("tampered HS256 signature", jwt::tampered_signature(&good)),
        ("claims swapped under a valid signature", jwt::swapped_claims(&rs, &mallory)),
        ("expired beyond the leeway", jwt::hs256(&claims(json!({"exp":t - 30})))),
        ("not yet valid beyond the leeway", jwt::hs256(&claims(json!({"nbf":t + 60})))),
        ("wrong iss", jwt::hs256(&claims(json!({"iss":"evil.example"})))),
        ("no iss", jwt::hs256(&claims(json!({"iss":null})))),
        ("wrong aud", jwt::hs256(&claims(json!({"aud":"other"})))),
        ("no aud", jwt::hs256(&claims(json!({"aud":null})))),
        ("no sub", jwt::hs256(&claims(json!({"sub":null})))),
        ("sub not a user id", jwt::hs256(&claims(json!({"sub":"has space"})))),
        ("sub too long", jwt::hs256(&claims(json!({"sub":"x".repeat(129)})))),
        ("sub not a string", jwt::hs256(&claims(json!({"sub":17})))),
        ("no exp", jwt::hs256(&claims(json!({"exp":null})))),
        ("groups not a list", jwt::hs256(&claims(json!({"groups":"room1"})))),
        ("groups entry malformed", jwt::hs256(&claims(json!({"groups":["a*b"]})))),
        ("not a JWT", "nonsense".to_owned()),
        ("two parts", "a.b".to_owned()),
    ] {
        refused(&gw, case, &token, &good).await;
    }
}

#[tokio::test]
async fn a_public_key_alone_verifies_only_its_own_algorithm() {
    let rsa_gw = Gateway::start_with(|c| c.jwt_public_key_file = Some(keys().rsa_public())).await;
    let ec_gw = Gateway::start_with(|c| c.jwt_public_key_file = Some(keys().ec_public())).await;
    let claims = json!({"sub":"carol","exp":now() + 60});
    let rs = jwt::rsa(Algorithm::RS256, &claims);
    let es = jwt::es256(&claims);
    assert_eq!(accepted(&rsa_gw, "RS256", &rs).await.user, "carol");
    assert_eq!(accepted(&ec_gw, "ES256", &es).await.user, "carol");
    // The classic confusion: HS256 "signed" with the public key, which the attacker knows.
    let confused = |pem: &str| jwt::hmac(Algorithm::HS256, pem.as_bytes(), &claims);
    for (case, token) in [
        ("HS256 keyed with the RSA public key", confused(&keys().rsa_public_pem)),
        ("HS256 with a secret nobody configured", jwt::hs256(&claims)),
        ("ES256 at an RSA key", es.clone()),
        ("alg none", jwt::unsigned(&rs)),
    ] {
        refused(&rsa_gw, case, &token, &rs).await;
    }
    for (case, token) in [
        ("HS256 keyed with the EC public key", confused(&keys().ec_public_pem)),
        ("RS256 at an EC key", rs.clone()),
        ("tampered ES256 signature", jwt::tampered_signature(&es)),
        ("alg none", jwt::unsigned(&es)),
    ] {
        refused(&ec_gw, case, &token, &es).await;
    }
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
    // Expired beyond the default leeway (5 s).
    for query in ["".to_owned(), "?token=nonsense".into(), format!("?token={}", token("alice", -30))] {
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
