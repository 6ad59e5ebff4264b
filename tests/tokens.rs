//! What a token allows once connected: the `groups` claim, `refresh`, and expiry (4001).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::jwt::{self, SECRET, now};
use common::*;
use serde_json::{Value, json};

/// Token mode with no leeway, so expiry tests wait only for `exp` itself.
async fn gateway() -> Gateway {
    Gateway::start_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.jwt_leeway = Duration::ZERO;
    })
    .await
}

fn token(sub: &str, exp_in: i64, groups: Option<Value>) -> String {
    let mut claims = json!({"sub": sub, "exp": now() + exp_in});
    if let Some(g) = groups {
        claims["groups"] = g;
    }
    jwt::hs256(&claims)
}

async fn connect(gw: &Gateway, token: &str) -> Client {
    Client::connect(&format!("{}?token={token}", gw.url())).await
}

async fn error_code(c: &mut Client, frame: Value, id: &str) -> String {
    let r = c.request(frame, id).await;
    assert_eq!(r["type"], "error", "{r}");
    r["code"].as_str().unwrap().to_owned()
}

async fn still_open(c: &mut Client, id: &str) {
    assert_eq!(c.request(json!({"type":"ping"}), id).await["type"], "pong");
}

#[tokio::test]
async fn groups_claim_allows_exact_names_and_prefixes_and_nothing_else() {
    let gw = gateway().await;
    let mut a = connect(&gw, &token("alice", 600, Some(json!(["room1", "team.*"])))).await;
    a.join("room1").await;
    a.join("team.red").await;
    a.join("team.").await;
    for group in ["room2", "room10", "team", "teamx", "x.team.red"] {
        assert_eq!(error_code(&mut a, json!({"type":"join","group":group}), group).await, "forbidden", "{group}");
    }
    still_open(&mut a, "p1").await;
    // A group message to a group outside the claim is forbidden; inside it but not joined,
    // not_member, as before.
    let send = |to: &str| json!({"type":"group","to":to,"content":1});
    assert_eq!(error_code(&mut a, send("room2"), "g1").await, "forbidden");
    assert_eq!(error_code(&mut a, send("team.blue"), "g2").await, "not_member");
    assert_eq!(a.request(send("room1"), "g3").await["status"], "sent");
    // Leaving and listing members are not subject to the claim.
    assert_eq!(a.request(json!({"type":"leave","group":"room2"}), "l1").await["type"], "left");
    assert_eq!(a.request(json!({"type":"members","group":"room2"}), "m1").await["type"], "members");
    still_open(&mut a, "p2").await;

    // No claim: every group. An empty list: none.
    let mut b = connect(&gw, &token("bob", 600, None)).await;
    b.join("anything").await;
    let mut c = connect(&gw, &token("carol", 600, Some(json!([])))).await;
    assert_eq!(error_code(&mut c, json!({"type":"join","group":"room1"}), "j").await, "forbidden");
    let metrics = gw.http("GET", "/metrics", &[], "").await.body;
    assert!(metrics.contains("chatgate_errors_total{code=\"forbidden\"}"), "counted by code");
}

#[tokio::test]
async fn refresh_replaces_groups_leaving_those_no_longer_allowed() {
    let gw = gateway().await;
    let mut a = connect(&gw, &token("alice", 600, Some(json!(["room1", "room2"])))).await;
    let mut watcher = connect(&gw, &token("watcher", 600, None)).await;
    for g in ["room1", "room2"] {
        watcher.join(g).await;
        a.join(g).await;
        assert_eq!(watcher.presence_of("alice").await["event"], "join");
    }

    let new_exp = now() + 900;
    let fresh = jwt::hs256(&json!({"sub":"alice","exp":new_exp,"groups":["room2","room3"]}));
    let r = a.request(json!({"type":"refresh","token":fresh}), "r1").await;
    assert_eq!(r, json!({"type":"refreshed","exp":new_exp,"id":"r1"}));
    let ev = watcher.presence_of("alice").await;
    assert_eq!(ev, json!({"type":"presence","group":"room1","user":"alice","event":"leave"}));
    let m = watcher.request(json!({"type":"members","group":"room1"}), "m1").await;
    assert_eq!(m["users"], json!(["watcher"]));
    let m = watcher.request(json!({"type":"members","group":"room2"}), "m2").await;
    assert_eq!(m["users"], json!(["alice", "watcher"]), "still in the group it keeps");

    // The new claim applies from now on.
    let send = |to: &str| json!({"type":"group","to":to,"content":"x"});
    assert_eq!(error_code(&mut a, send("room1"), "g1").await, "forbidden");
    assert_eq!(error_code(&mut a, json!({"type":"join","group":"room1"}), "j1").await, "forbidden");
    a.join("room3").await;
    assert_eq!(a.request(send("room2"), "g2").await["status"], "sent");
    assert_eq!(watcher.recv_type("group").await["to"], "room2");
    // A refresh without a `groups` claim allows every group again.
    let open = jwt::hs256(&json!({"sub":"alice","exp":new_exp}));
    assert_eq!(a.request(json!({"type":"refresh","token":open}), "r2").await["type"], "refreshed");
    a.join("room1").await;
}

#[tokio::test]
async fn a_refused_refresh_is_forbidden_and_changes_nothing() {
    let gw = gateway().await;
    let mut a = connect(&gw, &token("alice", 600, Some(json!(["room1"])))).await;
    a.join("room1").await;
    let t = now();
    for (case, token) in [
        ("another user", jwt::hs256(&json!({"sub":"bob","exp":t + 600}))),
        ("expired", jwt::hs256(&json!({"sub":"alice","exp":t - 60}))),
        ("wrong secret", jwt::hmac(jsonwebtoken::Algorithm::HS256, b"guess", &json!({"sub":"alice","exp":t + 600}))),
        ("alg none", jwt::unsigned(&jwt::hs256(&json!({"sub":"alice","exp":t + 600})))),
        ("not a JWT", "nonsense".to_owned()),
    ] {
        let r = a.request(json!({"type":"refresh","token":token}), case).await;
        assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("error"), Some("forbidden")), "{case}: {r}");
    }
    let r = a.request(json!({"type":"refresh"}), "no-token").await;
    assert_eq!(r["code"], "bad_request");
    // Still alice, still in room1 under the old claim.
    still_open(&mut a, "p").await;
    assert_eq!(a.request(json!({"type":"group","to":"room1","content":1}), "g").await["status"], "sent");
    assert_eq!(error_code(&mut a, json!({"type":"join","group":"room2"}), "j").await, "forbidden");
}

#[tokio::test]
async fn refresh_in_anonymous_mode_is_a_bad_request() {
    let gw = Gateway::start().await;
    let mut c = gw.client().await;
    let r = c.request(json!({"type":"refresh","token":token("1", 600, None)}), "r").await;
    assert_eq!(r["code"], "bad_request", "{r}");
    c.join("any").await;
}

#[tokio::test]
async fn an_expired_token_closes_the_connection_4001_and_leaves_its_groups() {
    let gw = gateway().await;
    let mut watcher = connect(&gw, &token("watcher", 600, None)).await;
    watcher.join("room").await;
    // `exp` is whole seconds: this one is 2 to 3 s away (time enough to join first, even
    // on a loaded machine).
    let mut short = connect(&gw, &token("short", 3, None)).await;
    short.join("room").await;
    assert_eq!(watcher.presence_of("short").await["event"], "join");
    let (frame, _) = short.until_close().await;
    let frame = frame.expect("a close frame");
    assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4001, "token expired"));
    assert_eq!(watcher.presence_of("short").await["event"], "leave");
    assert_eq!(gw.node.metrics.disconnects_with(4001), 1);
    still_open(&mut watcher, "p").await;
}

#[tokio::test]
async fn a_refresh_before_exp_keeps_the_connection() {
    let gw = gateway().await;
    let t = now();
    // Same user; `kept`'s token expires a second before `control`'s, and it refreshes.
    let mut kept = connect(&gw, &jwt::hs256(&json!({"sub":"alice","exp":t + 3}))).await;
    let mut control = connect(&gw, &jwt::hs256(&json!({"sub":"alice","exp":t + 4}))).await;
    let fresh = jwt::hs256(&json!({"sub":"alice","exp":t + 600}));
    assert_eq!(kept.request(json!({"type":"refresh","token":fresh}), "r").await["exp"], t + 600);
    assert_eq!(control.close_code().await, 4001);
    // `kept`'s old deadline passed a second before `control`'s: it is still served.
    still_open(&mut kept, "p").await;
    assert_eq!(gw.node.expiry.len(), 1, "one deadline left: the refreshed one");
}
