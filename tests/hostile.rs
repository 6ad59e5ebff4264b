//! Hostile input through the real interface, one table: client frames, handshakes, plain
//! HTTP and tokens. Each case asserts the answer the contract names (docs/PROTOCOL.md) and
//! then that the gateway still serves a fresh client. No case may panic the process or
//! close a connection the contract says survives.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::jwt::{self, SECRET, keys, now};
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

/// What a case sends, and what it must get.
enum Case {
    /// A text frame on an open connection: an `error` with this code, the connection open.
    Frame(&'static str, String, &'static str),
    /// A text frame that ends the connection with this close code.
    Fatal(&'static str, String, u16),
    /// A raw frame (first byte, payload) that ends the connection with this close code.
    Raw(&'static str, u8, Vec<u8>, u16),
    /// An HTTP request (method, path, extra headers, body): this status.
    Http(&'static str, &'static str, String, Vec<(&'static str, String)>, String, u16),
    /// A WebSocket upgrade with this token (token-mode gateway): refused 401.
    Token(&'static str, String),
}

const WS: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

fn upgrade_with(changes: &[(&'static str, Option<&'static str>)]) -> Vec<(&'static str, String)> {
    let mut h: Vec<(&'static str, String)> =
        WS.iter().filter(|(k, _)| !changes.iter().any(|(c, _)| c == k)).map(|(k, v)| (*k, (*v).to_owned())).collect();
    h.extend(changes.iter().filter_map(|(k, v)| v.map(|v| (*k, v.to_owned()))));
    h
}

fn cases() -> Vec<Case> {
    use Case::*;
    let s = |t: &str| t.to_owned();
    let deep = format!(r#"{{"type":"once","to":"1","content":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
    let long_name = "n".repeat(129);
    let t = now();
    let claims = |extra: Value| jwt::claims_at(t, extra);
    let good = jwt::hs256(&claims(json!({})));
    vec![
        // Frames: bad_request and the connection stays (PROTOCOL.md, "Frames").
        Frame("not JSON", s("hello"), "bad_request"),
        Frame("truncated JSON", s(r#"{"type":"ping""#), "bad_request"),
        Frame("a JSON array", s("[1,2]"), "bad_request"),
        Frame("a JSON string", s(r#""ping""#), "bad_request"),
        Frame("no type", s(r#"{"id":"x"}"#), "bad_request"),
        Frame("unknown type", s(r#"{"type":"kick"}"#), "bad_request"),
        Frame("type not a string", s(r#"{"type":1}"#), "bad_request"),
        Frame("once without to", s(r#"{"type":"once","content":1}"#), "bad_request"),
        Frame("once without content", s(r#"{"type":"once","to":"1"}"#), "bad_request"),
        Frame("empty recipient", s(r#"{"type":"once","to":"","content":1}"#), "bad_request"),
        Frame("recipient with a space", s(r#"{"type":"once","to":"a b","content":1}"#), "bad_request"),
        Frame(
            "recipient of 129 characters",
            format!(r#"{{"type":"once","to":"{long_name}","content":1}}"#),
            "bad_request",
        ),
        Frame("recipient not a string", s(r#"{"type":"once","to":42,"content":1}"#), "bad_request"),
        Frame("group name with a slash", s(r#"{"type":"join","group":"../etc"}"#), "bad_request"),
        Frame("join without group", s(r#"{"type":"join"}"#), "bad_request"),
        Frame("leave with a number", s(r#"{"type":"leave","group":5}"#), "bad_request"),
        Frame("members of an empty name", s(r#"{"type":"members","group":""}"#), "bad_request"),
        Frame("numeric id", s(r#"{"type":"ping","id":5}"#), "bad_request"),
        Frame("type given twice", s(r#"{"type":"ping","type":"online"}"#), "bad_request"),
        Frame("content nested 200 deep", deep, "bad_request"),
        Frame("escaped control characters in a name", s(r#"{"type":"join","group":"a\u0000b"}"#), "bad_request"),
        Frame("group message without joining", s(r#"{"type":"group","to":"room","content":1}"#), "not_member"),
        Frame("refresh in anonymous mode", s(r#"{"type":"refresh","token":"x.y.z"}"#), "bad_request"),
        // Frames that end the connection (PROTOCOL.md, "Limits and closing").
        Fatal(
            "a frame over CHAT_MAX_MESSAGE_BYTES",
            format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70_000)),
            1009,
        ),
        Raw("invalid UTF-8 in a text frame", 0x81, vec![b'"', 0xff, 0xfe, b'"'], 1007),
        Raw("a continuation with nothing started", 0x80, b"x".to_vec(), 1002),
        Raw("RSV1 without an extension", 0xC1, br#"{"type":"ping"}"#.to_vec(), 1002),
        Raw("reserved opcode", 0x83, Vec::new(), 1002),
        Raw("close with a one-byte payload", 0x88, vec![3], 1002),
        Raw("close with code 999", 0x88, 999u16.to_be_bytes().to_vec(), 1002),
        // Handshakes (PROTOCOL.md, "HTTP" notes).
        Http("upgrade by POST", "POST", s("/ws"), upgrade_with(&[]), s(""), 405),
        Http("no Upgrade header", "GET", s("/ws"), upgrade_with(&[("Upgrade", None)]), s(""), 426),
        Http("Upgrade: h2c", "GET", s("/ws"), upgrade_with(&[("Upgrade", Some("h2c"))]), s(""), 426),
        Http("version 8", "GET", s("/ws"), upgrade_with(&[("Sec-WebSocket-Version", Some("8"))]), s(""), 426),
        Http("no key", "GET", s("/ws"), upgrade_with(&[("Sec-WebSocket-Key", None)]), s(""), 400),
        Http("a key of x", "GET", s("/ws"), upgrade_with(&[("Sec-WebSocket-Key", Some("x"))]), s(""), 400),
        Http(
            "a key of 32 bytes",
            "GET",
            s("/ws"),
            upgrade_with(&[("Sec-WebSocket-Key", Some("dGhlIHNhbXBsZSBub25jZSBhbmQgbW9yZQ=="))]),
            s(""),
            400,
        ),
        // Plain HTTP.
        Http("unknown path", "GET", s("/../../etc/passwd"), vec![], s(""), 404),
        Http("POST to /ping", "POST", s("/ping"), vec![], s(""), 405),
        Http("DELETE /metrics", "DELETE", s("/metrics"), vec![], s(""), 405),
        Http("members of an invalid group", "GET", s("/api/groups/a%20b/members"), vec![], s(""), 400),
        Http("members of a 129-character group", "GET", format!("/api/groups/{long_name}/members"), vec![], s(""), 400),
        Http("members of an empty group name", "GET", s("/api/groups//members"), vec![], s(""), 400),
        Http(
            "publish with no API key configured",
            "POST",
            s("/api/publish"),
            vec![("Authorization", s("Bearer guess"))],
            s(r#"{"type":"once","to":"1","content":1,"from":"x"}"#),
            404,
        ),
        Http("a 20 KB header", "GET", s("/ping"), vec![("X-Pad", "a".repeat(20_000))], s(""), 431),
        Http("Content-Length not a number", "POST", s("/api/online"), vec![("Content-Length", s("abc"))], s(""), 400),
        // Tokens (PROTOCOL.md v1.1, "Tokens and permissions"): 401 before the upgrade.
        Token("alg none", jwt::unsigned(&good)),
        Token("HS256 with a wrong secret", jwt::hmac(Algorithm::HS256, b"guess", &claims(json!({})))),
        Token(
            "HS256 keyed with the public key PEM",
            jwt::hmac(Algorithm::HS256, keys().rsa_public_pem.as_bytes(), &claims(json!({}))),
        ),
        Token("RS256 with no public key configured", jwt::rsa(Algorithm::RS256, &claims(json!({})))),
        Token("HS512", jwt::hmac(Algorithm::HS512, SECRET.as_bytes(), &claims(json!({})))),
        Token("tampered signature", jwt::tampered_signature(&good)),
        Token(
            "claims swapped under a valid signature",
            jwt::swapped_claims(&good, &jwt::hs256(&claims(json!({"sub":"mallory"})))),
        ),
        Token("expired", jwt::hs256(&claims(json!({"exp":t - 60})))),
        Token("not yet valid", jwt::hs256(&claims(json!({"nbf":t + 600})))),
        Token("no exp", jwt::hs256(&claims(json!({"exp":null})))),
        Token("no sub", jwt::hs256(&claims(json!({"sub":null})))),
        Token("sub with a space", jwt::hs256(&claims(json!({"sub":"a b"})))),
        Token("wrong issuer", jwt::hs256(&claims(json!({"iss":"evil.example"})))),
        Token("no issuer", jwt::hs256(&claims(json!({"iss":null})))),
        Token("wrong audience", jwt::hs256(&claims(json!({"aud":"other"})))),
        Token("groups not a list", jwt::hs256(&claims(json!({"groups":"room"})))),
        Token("not a JWT at all", "abc".to_owned()),
        Token("empty token", String::new()),
    ]
}

/// A raw client past its `welcome`.
async fn raw(gw: &Gateway) -> RawClient {
    let mut c = RawClient::connect(gw.addr, "/ws").await;
    c.read_frame().await.expect("welcome");
    c
}

#[tokio::test]
async fn hostile_input_gets_the_contracts_answer_and_the_gateway_survives() {
    let gw = Gateway::start().await;
    let tokens = Gateway::start_with(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.jwt_issuer = Some("auth.example".into());
        c.jwt_audience = Some("chat".into());
    })
    .await;
    let good = jwt::hs256(&json!({"sub":"alice","exp":now() + 600,"iss":"auth.example","aud":"chat"}));
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for case in cases {
        let what = match &case {
            Case::Frame(what, text, code) => {
                let mut c = gw.client().await;
                c.send_text(text).await;
                let reply = c.recv().await;
                assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some(*code)), "{what}");
                // The same connection is still served.
                c.request(json!({"type":"ping"}), "after").await;
                *what
            }
            Case::Fatal(what, text, code) => {
                let mut c = gw.client().await;
                c.send_text(text).await;
                assert_eq!(c.close_code().await, *code, "{what}");
                *what
            }
            Case::Raw(what, first, payload, code) => {
                let mut c = raw(&gw).await;
                c.send_raw(*first, payload).await;
                assert_eq!(c.close_code().await, *code, "{what}");
                *what
            }
            Case::Http(what, method, path, headers, body, status) => {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let r = raw_http(gw.addr, method, path, &headers, body).await;
                assert!(r.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {}", r.lines().next().unwrap_or(""));
                *what
            }
            Case::Token(what, token) => {
                let r = tokens.http("GET", &format!("/ws?token={token}"), &WS, "").await;
                assert_eq!((r.status, r.json()["error"].as_str()), (401, Some("unauthorized")), "{what}: {}", r.body);
                let c = Client::connect(&format!("{}?token={good}", tokens.url())).await;
                assert_eq!(c.welcome["user"], "alice", "{what}: token clients are still served");
                *what
            }
        };
        let mut fresh = gw.client().await;
        assert_eq!(fresh.request(json!({"type":"ping"}), "fresh").await["type"], "pong", "after {what}");
    }
}

/// One request written as given (its own `Content-Length` if the case sets one), and the
/// response as text up to the server's close. Tolerates the server closing before it has
/// read everything (a 431 for a head it refused to read).
async fn raw_http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(req.as_bytes()).await;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the server answers and closes in time");
    String::from_utf8_lossy(&raw).into_owned()
}
