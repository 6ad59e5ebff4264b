//! Closing by RFC 6455 §5.5.1/§7: the server answers a client's close and then closes TCP
//! itself; a client that stops reading cannot hold a closing connection, its kernel buffers
//! or its connection slot for longer than the close linger.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::*;
use serde_json::json;

const OP_CLOSE: u8 = 0x8;

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// The client's close is echoed, then the server ends TCP (EOF for the client).
async fn closed_by_client(gw: &Gateway, payload: &[u8]) -> Option<u16> {
    let mut c = RawClient::connect(gw.addr, "/ws").await;
    assert_eq!(c.read_frame().await.unwrap().opcode, 0x1, "welcome");
    c.send_frame(OP_CLOSE, payload).await;
    let f = loop {
        let f = c.read_frame().await.expect("a close frame back");
        // A heartbeat ping may come first.
        if f.opcode != 0x9 {
            break f;
        }
    };
    assert_eq!(f.opcode, OP_CLOSE);
    assert!(c.read_frame().await.is_none(), "then the server closes the TCP connection");
    (f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]))
}

#[tokio::test]
async fn a_clients_close_is_answered_with_its_code_then_tcp_ends() {
    let gw = Gateway::start().await;
    for code in [1000, 1001, 3000, 4999] {
        assert_eq!(closed_by_client(&gw, &close_payload(code, "bye")).await, Some(code), "{code}");
    }
    assert_eq!(closed_by_client(&gw, &[]).await, None, "an empty close gets an empty close");
    // The clean close is what tungstenite's client sees too.
    let mut c = gw.client().await;
    use futures_util::{SinkExt, StreamExt};
    c.ws.send(tokio_tungstenite::tungstenite::Message::Close(None)).await.unwrap();
    let mut saw_close = false;
    while let Some(msg) = c.ws.next().await {
        match msg {
            Ok(tokio_tungstenite::tungstenite::Message::Close(_)) => saw_close = true,
            Ok(_) => {}
            Err(e) => panic!("not a clean close: {e}"),
        }
    }
    assert!(saw_close);
}

#[tokio::test]
async fn invalid_close_codes_get_1002() {
    let gw = Gateway::start().await;
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        assert_eq!(closed_by_client(&gw, &close_payload(code, "")).await, Some(1002), "close code {code}");
    }
    // A one-byte close payload cannot hold a code: a protocol error.
    let mut c = RawClient::connect(gw.addr, "/ws").await;
    c.read_frame().await.unwrap();
    c.send_frame(OP_CLOSE, &[0x03]).await;
    assert_eq!(c.close_code().await, 1002);
    assert_eq!(gw.client().await.request(json!({"type":"ping"}), "p").await["type"], "pong", "still serving");
}

#[tokio::test]
async fn a_close_reason_that_is_not_utf8_fails_the_connection() {
    let gw = Gateway::start().await;
    let mut c = RawClient::connect(gw.addr, "/ws").await;
    c.read_frame().await.unwrap();
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(&[0xff, 0xfe]);
    c.send_frame(OP_CLOSE, &payload).await;
    let code = c.close_code().await;
    assert!(code == 1007 || code == 1002, "invalid UTF-8 in a close reason: {code}");
}

/// A client that stops reading keeps its TCP window shut; the heartbeat closes it (4000),
/// and the close cannot be delivered. The socket is reset within the linger, the slot freed.
#[tokio::test]
async fn a_client_that_stops_reading_is_reset_and_its_slot_freed() {
    let gw = Gateway::start_with(|c| {
        c.heartbeat = std::time::Duration::from_millis(300);
        c.max_connections = 2;
        c.kernel_unsent_bytes = 16 << 10;
        (c.rate_limit, c.rate_burst) = (1_000_000, 1_000_000);
    })
    .await;
    // A small receive buffer: its window shuts after a few KiB, whatever the kernel's tuning.
    let mut stuck = RawClient::connect_with_receive_buffer(gw.addr, "/ws", 4096).await;
    stuck.send_frame(0x1, br#"{"type":"join","group":"big","id":"j"}"#).await;
    let mut sender = gw.client().await;
    sender.join("big").await;
    eventually("both in the group", || async {
        gw.http("GET", "/api/groups/big/members", &[], "").await.json()["users"].as_array().unwrap().len() == 2
    })
    .await;
    // Fill the stuck client's socket: large messages, until its window is shut and the
    // kernel holds what it may (the outbox stays under its bound: 1 MiB by default).
    // 20 × 16 KiB: less than half the outbox bound (1 MiB), so the client is not a slow
    // consumer; the heartbeat's close is what cannot be delivered.
    let payload = "z".repeat(16 << 10);
    for _ in 0..20 {
        sender.send(json!({"type":"group","to":"big","content":payload})).await;
        // The sender keeps talking, so only the stuck client goes silent.
        assert_eq!(sender.recv_type("ack").await["status"], "sent");
    }
    // Heartbeat: 4000 is queued; it can never be written. The writer resets the socket.
    // (The sender pings meanwhile, so the heartbeat has no reason to close it.)
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.node.connection_count() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the stuck connection still holds its slot");
        assert_eq!(sender.request(json!({"type":"ping"}), "alive").await["type"], "pong");
    }
    let third = gw.client().await;
    assert!(!third.user.is_empty(), "the freed slot takes a new client");
    assert!(gw.node.metrics.disconnects_with(4000) >= 1, "it was the heartbeat's close");
    // The server reset the socket rather than leave its data in the kernel.
    use tokio::io::AsyncReadExt;
    let mut sink = vec![0u8; 1 << 16];
    let err = loop {
        match tokio::time::timeout(WAIT, stuck.stream.read(&mut sink)).await.expect("no reset") {
            Ok(0) => panic!("an orderly FIN: the data would still have been sent"),
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

/// With `CHAT_KERNEL_UNSENT_BYTES` the kernel cannot absorb megabytes of small frames for a
/// client that stops reading: its outbox overflows and it is closed as a slow consumer
/// (before the heartbeat, which is far away here).
#[tokio::test]
async fn small_frames_to_a_non_reader_end_in_1013() {
    let gw = Gateway::start_with(|c| {
        c.outbox_frames = 256;
        c.kernel_unsent_bytes = 16 << 10;
        (c.rate_limit, c.rate_burst) = (1_000_000, 1_000_000);
    })
    .await;
    let mut stuck = RawClient::connect(gw.addr, "/ws").await;
    stuck.send_frame(0x1, br#"{"type":"join","group":"g","id":"j"}"#).await;
    let mut sender = gw.client().await;
    sender.join("g").await;
    eventually("both in the group", || async {
        gw.http("GET", "/api/groups/g/members", &[], "").await.json()["users"].as_array().unwrap().len() == 2
    })
    .await;
    let small = "x".repeat(100);
    let mut sent = 0;
    while gw.node.metrics.slow_consumers.get() == 0 {
        sender.send(json!({"type":"group","to":"g","content":small})).await;
        sender.recv_type("ack").await;
        sent += 1;
        assert!(sent < 100_000, "never closed as a slow consumer");
    }
    assert!(sent * 100 < 4 << 20, "closed after {sent} frames: the kernel held less than its default would");
    drop(stuck);
}
