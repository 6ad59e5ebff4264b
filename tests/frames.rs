//! What a client's WebSocket framing gets, case by case (RFC 6455 §5): fragmented messages
//! are reassembled; anything the RFC calls a protocol error closes 1002; after each case a
//! fresh client is still served. (Close payloads: `tests/closing.rs`; unmasked frames and
//! invalid UTF-8: `tests/protocol.rs`; the full matrix: Autobahn|Testsuite, docs/AUTOBAHN.md.)

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use chatgate::protocol::ws::{OP_BINARY as BINARY, OP_PING as PING, OP_TEXT as TEXT};
use common::*;
use serde_json::{Value, json};

/// Client-side framing the server never writes: continuation frames and the FIN bit.
const CONTINUATION: u8 = 0x0;
const FIN: u8 = 0x80;

/// A raw client past its `welcome`.
async fn raw(gw: &Gateway) -> RawClient {
    let mut c = RawClient::connect(gw.addr, "/ws").await;
    let welcome = c.read_frame().await.unwrap();
    assert_eq!(welcome.opcode, TEXT);
    c
}

/// The next text frame as JSON (the server's heartbeat pings skipped).
async fn next_json(c: &mut RawClient) -> Value {
    loop {
        let f = c.read_frame().await.expect("a frame");
        if f.opcode == PING {
            continue;
        }
        assert_eq!(f.opcode, TEXT, "{f:?}");
        return serde_json::from_slice(&f.payload).unwrap();
    }
}

async fn still_serving(gw: &Gateway) {
    let mut c = gw.client().await;
    c.request(json!({"type":"ping"}), "alive").await;
}

#[tokio::test]
async fn a_fragmented_message_is_reassembled_with_a_ping_between_fragments() {
    let gw = Gateway::start().await;
    let mut c = raw(&gw).await;
    c.send_raw(TEXT, br#"{"type":"pi"#).await;
    c.send_raw(FIN | PING, b"mid").await;
    c.send_raw(CONTINUATION, br#"ng","id":"#).await;
    c.send_raw(FIN | CONTINUATION, br#""frag"}"#).await;
    let pong = loop {
        let f = c.read_frame().await.unwrap();
        if f.opcode != PING {
            break f;
        }
    };
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xA, &b"mid"[..]), "the control frame is answered at once");
    assert_eq!(next_json(&mut c).await, json!({"type":"pong","id":"frag"}));
}

#[tokio::test]
async fn a_binary_message_is_a_bad_request_and_the_connection_stays() {
    let gw = Gateway::start().await;
    let mut c = raw(&gw).await;
    c.send_raw(FIN | BINARY, b"\x00\x01").await;
    assert_eq!(next_json(&mut c).await["code"], "bad_request");
    c.send_frame(TEXT, br#"{"type":"ping","id":"p"}"#).await;
    assert_eq!(next_json(&mut c).await, json!({"type":"pong","id":"p"}));
}

/// Frames a case sends: (first byte, payload) each.
type Frames = &'static [(u8, &'static [u8])];

/// Each of these is a protocol error (RFC 6455 §5.2, §5.4, §5.5): close 1002.
#[tokio::test]
async fn protocol_errors_close_1002() {
    let gw = Gateway::start().await;
    let cases: [(&str, Frames); 9] = [
        ("a continuation with no message started", &[(FIN | CONTINUATION, b"x")]),
        ("a new text frame inside a fragmented message", &[(TEXT, b"{"), (FIN | TEXT, b"{}")]),
        ("RSV1 without a negotiated extension", &[(FIN | 0x40 | TEXT, br#"{"type":"ping"}"#)]),
        ("RSV2", &[(FIN | 0x20 | TEXT, br#"{"type":"ping"}"#)]),
        ("RSV3", &[(FIN | 0x10 | TEXT, br#"{"type":"ping"}"#)]),
        ("reserved data opcode 0x3", &[(FIN | 0x3, b"")]),
        ("reserved control opcode 0xB", &[(FIN | 0xB, b"")]),
        ("a fragmented ping", &[(PING, b"a"), (FIN | CONTINUATION, b"b")]),
        ("a ping with 126 bytes of payload", &[(FIN | PING, &[b'x'; 126])]),
    ];
    for (what, frames) in cases {
        let mut c = raw(&gw).await;
        for (first, payload) in frames {
            c.send_raw(*first, payload).await;
        }
        assert_eq!(c.close_code().await, 1002, "{what}");
        still_serving(&gw).await;
    }
}
