//! The wire contract (docs/PROTOCOL.md), row by row, over real WebSocket connections to a
//! gateway on 127.0.0.1:0 with the embedded backends.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;

#[tokio::test]
async fn welcome_then_smallest_free_ids_reused() {
    let gw = Gateway::start_with(|c| c.node_id = "node-t".into()).await;
    let a = gw.client().await;
    assert_eq!(
        a.welcome,
        json!({"type":"welcome","user":"1","node":"node-t","heartbeat_ms":25000,"max_message_bytes":65536})
    );
    let b = gw.client().await;
    let c = gw.client().await;
    assert_eq!((b.user.as_str(), c.user.as_str()), ("2", "3"));
    b.close().await;
    // "2" is free again only once the gateway has seen the disconnect.
    eventually("id 2 freed", || async { gw.http("GET", "/api/online", &[], "").await.json()["count"] == 2 }).await;
    let d = gw.client().await;
    let e = gw.client().await;
    assert_eq!((d.user.as_str(), e.user.as_str()), ("2", "4"));
    drop((a, c, d, e));
    gw.shutdown().await;
}

#[tokio::test]
async fn chat_home_is_an_alias() {
    let gw = Gateway::start().await;
    let c = Client::connect(&format!("ws://{}/chat_home", gw.addr)).await;
    assert_eq!(c.user, "1");
}

#[tokio::test]
async fn once_is_delivered_with_server_stamps_and_acked() {
    let gw = Gateway::start().await;
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    let content = r#"{"text":"hi",  "n": 1.50e3, "deep":[{"x":null}]}"#;
    a.send_text(&format!(r#"{{"type":"once","to":"{}","content":{content},"id":"c1","from":"999"}}"#, b.user)).await;
    let ack = a.recv().await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["id"], "c1");
    assert_eq!(ack["status"], "sent");
    let raw = b.recv_text().await;
    assert!(raw.contains(&format!(r#""content":{content}"#)), "content forwarded byte-for-byte: {raw}");
    let msg: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(msg["type"], "once");
    assert_eq!(msg["from"], a.user, "from is stamped by the server");
    assert_eq!(msg["to"], b.user);
    assert_eq!(msg["mid"], ack["mid"]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let ts = msg["ts"].as_u64().expect("ts");
    assert!(ts <= now && now - ts < 60_000, "ts {ts} is milliseconds since the epoch");
}

#[tokio::test]
async fn once_to_nobody_is_offline() {
    let gw = Gateway::start().await;
    let mut a = gw.client().await;
    let ack = a.request(json!({"type":"once","to":"4242","content":1}), "x").await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["status"], "offline");
    assert!(ack["mid"].is_string());
    // Without an id the ack has none either.
    a.send(json!({"type":"once","to":"4242","content":1})).await;
    let ack = a.recv().await;
    assert_eq!(ack["status"], "offline");
    assert!(ack.get("id").is_none());
}

#[tokio::test]
async fn message_to_self_reaches_own_connection() {
    let gw = Gateway::start().await;
    let mut a = gw.client().await;
    let user = a.user.clone();
    a.send(json!({"type":"once","to":user,"content":"me","id":"s"})).await;
    let mut got = [a.recv().await, a.recv().await];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_owned());
    assert_eq!(got[0]["type"], "ack");
    assert_eq!(got[0]["status"], "sent");
    assert_eq!(got[1]["type"], "once");
}

#[tokio::test]
async fn group_messages_reach_members_but_not_the_sender_connection() {
    let gw = Gateway::start().await;
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    let mut c = gw.client().await;
    let mut outsider = gw.client().await;
    for x in [&mut a, &mut b, &mut c] {
        x.join("room1").await;
    }
    let ack = a.request(json!({"type":"group","to":"room1","content":{"t":"hello"}}), "g1").await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["status"], "sent");
    for x in [&mut b, &mut c] {
        let m = x.recv_type("group").await;
        assert_eq!(m["from"], a.user);
        assert_eq!(m["to"], "room1");
        assert_eq!(m["content"], json!({"t":"hello"}));
        assert_eq!(m["mid"], ack["mid"]);
    }
    // Nothing for the sender or the outsider: a ping round trip proves the queue is empty.
    for x in [&mut a, &mut outsider] {
        let r = x.request(json!({"type":"ping"}), "p").await;
        assert_eq!(r["type"], "pong");
    }
    let mut before_pong = Vec::new();
    a.send(json!({"type":"ping","id":"p2"})).await;
    loop {
        let v = a.recv().await;
        if v["id"] == "p2" {
            break;
        }
        before_pong.push(v);
    }
    assert!(before_pong.iter().all(|v| v["type"] != "group"), "no echo: {before_pong:?}");
}

#[tokio::test]
async fn group_message_without_joining_is_not_member() {
    let gw = Gateway::start().await;
    let mut a = gw.client().await;
    let r = a.request(json!({"type":"group","to":"room9","content":1}), "nm").await;
    assert_eq!(r, json!({"type":"error","id":"nm","code":"not_member","message":r["message"]}));
    a.join("room9").await;
    let r = a.request(json!({"type":"leave","group":"room9"}), "l").await;
    assert_eq!(r, json!({"type":"left","group":"room9","id":"l"}));
    let r = a.request(json!({"type":"group","to":"room9","content":1}), "nm2").await;
    assert_eq!(r["code"], "not_member");
    // The connection survives errors.
    assert_eq!(a.request(json!({"type":"ping"}), "alive").await["type"], "pong");
}

#[tokio::test]
async fn join_and_leave_replies_and_idempotence() {
    let gw = Gateway::start().await;
    let mut a = gw.client().await;
    let r = a.request(json!({"type":"join","group":"g"}), "c3").await;
    assert_eq!(r, json!({"type":"joined","group":"g","id":"c3"}));
    let r = a.request(json!({"type":"join","group":"g"}), "again").await;
    assert_eq!(r, json!({"type":"joined","group":"g","id":"again"}));
    let m = a.request(json!({"type":"members","group":"g"}), "m").await;
    assert_eq!(m["users"], json!([a.user]));
    let r = a.request(json!({"type":"leave","group":"g"}), "c4").await;
    assert_eq!(r, json!({"type":"left","group":"g","id":"c4"}));
    let r = a.request(json!({"type":"leave","group":"g"}), "c5").await;
    assert_eq!(r, json!({"type":"left","group":"g","id":"c5"}));
    let m = a.request(json!({"type":"members","group":"g"}), "m2").await;
    assert_eq!(m, json!({"type":"members","group":"g","users":[],"id":"m2"}));
}

#[tokio::test]
async fn presence_events_on_join_leave_and_disconnect() {
    let gw = Gateway::start().await;
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    a.join("lobby").await;
    let ev = a.recv_type("presence").await;
    assert_eq!(ev, json!({"type":"presence","group":"lobby","user":a.user,"event":"join"}));
    b.join("lobby").await;
    let ev = a.recv_type("presence").await;
    assert_eq!(ev, json!({"type":"presence","group":"lobby","user":b.user,"event":"join"}));
    let r = b.request(json!({"type":"leave","group":"lobby"}), "bye").await;
    assert_eq!(r["type"], "left");
    let ev = a.recv_type("presence").await;
    assert_eq!(ev, json!({"type":"presence","group":"lobby","user":b.user,"event":"leave"}));
    b.join("lobby").await;
    assert_eq!(a.recv_type("presence").await["event"], "join");
    let b_user = b.user.clone();
    b.close().await;
    let ev = a.recv_type("presence").await;
    assert_eq!(ev, json!({"type":"presence","group":"lobby","user":b_user,"event":"leave"}), "disconnect is a leave");
    // An abrupt disconnect (no close frame) is a leave too.
    let mut c = gw.client().await;
    c.join("lobby").await;
    assert_eq!(a.recv_type("presence").await["event"], "join");
    let c_user = c.user.clone();
    drop(c);
    let ev = a.recv_type("presence").await;
    assert_eq!(ev, json!({"type":"presence","group":"lobby","user":c_user,"event":"leave"}));
}

#[tokio::test]
async fn online_and_members() {
    let gw = Gateway::start().await;
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    let _c = gw.client().await;
    assert_eq!(a.request(json!({"type":"online"}), "c5").await, json!({"type":"online","count":3,"id":"c5"}));
    a.join("room1").await;
    b.join("room1").await;
    let m = a.request(json!({"type":"members","group":"room1"}), "c6").await;
    assert_eq!(m, json!({"type":"members","group":"room1","users":[a.user, b.user],"id":"c6"}));
    assert_eq!(gw.http("GET", "/api/online", &[], "").await.json(), json!({"count":3}));
    let r = gw.http("GET", "/api/groups/room1/members", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"group":"room1","users":["1","2"]}));
}

#[tokio::test]
async fn ping_pong() {
    let gw = Gateway::start().await;
    let mut a = gw.client().await;
    assert_eq!(a.request(json!({"type":"ping"}), "c7").await, json!({"type":"pong","id":"c7"}));
    a.send(json!({"type":"ping"})).await;
    assert_eq!(a.recv().await, json!({"type":"pong"}));
    // Ids are echoed exactly, escapes included.
    a.send_text(r#"{"type":"ping","id":"q\"\u00e9"}"#).await;
    assert_eq!(a.recv_text().await, r#"{"type":"pong","id":"q\"\u00e9"}"#);
}

#[tokio::test]
async fn bad_requests_get_errors_and_the_connection_survives() {
    let gw = Gateway::start().await;
    let mut a = gw.client().await;
    for (frame, id) in [
        ("not json", None),
        ("{\"type\":\"once\"", None),
        ("[1,2]", None),
        (r#"{"type":"nope","id":"u"}"#, Some("u")),
        (r#"{"type":"once","content":1,"id":"m"}"#, Some("m")),
        (r#"{"type":"once","to":"1","id":"c"}"#, Some("c")),
        (r#"{"type":"once","to":5,"content":1,"id":"t"}"#, Some("t")),
        (r#"{"type":"join","group":"has space","id":"n"}"#, Some("n")),
        (r#"{"type":"join","id":"g"}"#, Some("g")),
        (r#"{"type":"members","group":"","id":"e"}"#, Some("e")),
        (r#"{"id":"nt"}"#, Some("nt")),
    ] {
        a.send_text(frame).await;
        let e = a.recv().await;
        assert_eq!(e["type"], "error", "{frame}: {e}");
        assert_eq!(e["code"], "bad_request", "{frame}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        match id {
            Some(id) => assert_eq!(e["id"], id, "{frame}"),
            None => assert!(e.get("id").is_none(), "{frame}"),
        }
    }
    a.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![1, 2, 3])).await.unwrap();
    let e = a.recv().await;
    assert_eq!(e["code"], "bad_request", "binary frame");
    assert_eq!(a.request(json!({"type":"ping"}), "alive").await["type"], "pong");
}

#[tokio::test]
async fn thousand_messages_arrive_in_order() {
    let gw = Gateway::start_with(|c| {
        c.rate_limit = 100_000;
        c.rate_burst = 100_000;
    })
    .await;
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    let to = b.user.clone();
    let sender = tokio::spawn(async move {
        for i in 0..1000 {
            a.send(json!({"type":"once","to":to,"content":i})).await;
        }
        let mut acks = 0;
        while acks < 1000 {
            if a.recv().await["type"] == "ack" {
                acks += 1;
            }
        }
    });
    for i in 0..1000 {
        let m = b.recv_type("once").await;
        assert_eq!(m["content"], i, "message {i} in order");
    }
    sender.await.unwrap();
}

#[tokio::test]
async fn frame_over_the_limit_closes_1009() {
    let gw = Gateway::start_with(|c| c.max_message_bytes = 1024).await;
    let mut a = gw.client().await;
    assert_eq!(a.welcome["max_message_bytes"], 1024);
    let big = format!(r#"{{"type":"once","to":"1","content":"{}"}}"#, "x".repeat(2000));
    a.send_text(&big).await;
    assert_eq!(a.close_code().await, 1009);
    // A frame at the limit is fine.
    let mut b = gw.client().await;
    let fits = format!(r#"{{"type":"once","to":"9","content":"{}"}}"#, "x".repeat(1024 - 40));
    assert!(fits.len() <= 1024);
    b.send_text(&fits).await;
    assert_eq!(b.recv().await["type"], "ack");
}

#[tokio::test]
async fn rate_limit_errors_then_policy_close() {
    let gw = Gateway::start_with(|c| {
        c.rate_limit = 5;
        c.rate_burst = 5;
        c.rate_limit_close = std::time::Duration::from_millis(300);
    })
    .await;
    let mut a = gw.client().await;
    for i in 0..5 {
        a.send(json!({"type":"ping","id":i.to_string()})).await;
    }
    for _ in 0..5 {
        assert_eq!(a.recv().await["type"], "pong");
    }
    a.send(json!({"type":"ping","id":"over"})).await;
    assert_eq!(
        a.recv().await,
        json!({"type":"error","id":"over","code":"rate_limited","message":"rate limit exceeded"})
    );
    // Keep flooding: after the close window the gateway closes with 1008.
    let (mut sink, mut stream) = futures_util::StreamExt::split(a.ws);
    let flood = tokio::spawn(async move {
        use futures_util::SinkExt;
        let ping = tokio_tungstenite::tungstenite::Message::text(r#"{"type":"ping"}"#);
        while sink.send(ping.clone()).await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    });
    let code = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(WAIT, stream.next()).await.expect("close in time") {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert!(v["type"] == "pong" || v["code"] == "rate_limited", "{v}");
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, 1008);
    flood.abort();
}

#[tokio::test]
async fn slow_consumer_is_closed_1013_and_others_keep_receiving() {
    let gw = Gateway::start_with(|c| {
        c.outbox_frames = 64;
        c.outbox_bytes = 256 << 10;
        c.rate_limit = 1_000_000;
        c.rate_burst = 1_000_000;
    })
    .await;
    let mut sender = gw.client().await;
    let mut fast = gw.client().await;
    // The slow client joins, then never reads.
    let mut slow = RawClient::connect(gw.addr, "/ws").await;
    slow.send_frame(1, br#"{"type":"join","group":"big","id":"j"}"#).await;
    sender.join("big").await;
    fast.join("big").await;
    eventually("slow client joined", || async {
        gw.http("GET", "/api/groups/big/members", &[], "").await.json()["users"].as_array().unwrap().len() == 3
    })
    .await;

    // Large messages fill the socket buffers, then the outbox.
    let payload = "y".repeat(30_000);
    let fast_reader = tokio::spawn(async move {
        let mut n = 0;
        loop {
            let m = fast.recv().await;
            if m["type"] == "group" {
                n += 1;
                if m["content"] == "last" {
                    return (n, fast);
                }
            }
        }
    });
    let mut sent = 0;
    loop {
        sender.send(json!({"type":"group","to":"big","content":payload})).await;
        sent += 1;
        let ack = sender.recv_type("ack").await;
        assert_eq!(ack["status"], "sent");
        let members = gw.http("GET", "/api/groups/big/members", &[], "").await.json();
        if members["users"].as_array().unwrap().len() == 2 {
            break; // the slow consumer was dropped
        }
        assert!(sent < 10_000, "slow consumer never detected");
    }
    sender.request(json!({"type":"group","to":"big","content":"last"}), "last").await;
    let (n, _fast) = tokio::time::timeout(WAIT, fast_reader).await.unwrap().unwrap();
    assert_eq!(n, sent + 1, "the fast client got every message");
    // Once it reads again, the slow client finds the 1013 close after what it was owed.
    assert_eq!(slow.close_code().await, 1013);
}

#[tokio::test]
async fn heartbeat_pings_then_timeout_closes() {
    let gw = Gateway::start_with(|c| c.heartbeat = std::time::Duration::from_millis(100)).await;
    let mut raw = RawClient::connect(gw.addr, "/ws").await;
    let welcome = raw.read_frame().await.unwrap();
    assert_eq!(welcome.opcode, 1);
    let v: serde_json::Value = serde_json::from_slice(&welcome.payload).unwrap();
    assert_eq!(v["heartbeat_ms"], 100);
    // The server pings; this client never answers.
    let ping = raw.read_frame().await.unwrap();
    assert_eq!(ping.opcode, 0x9, "server ping");
    assert_eq!(raw.close_code().await, 4000, "heartbeat timeout");

    // A client that answers pings (tungstenite does, while reading) stays connected.
    let mut ok = gw.client().await;
    for _ in 0..5 {
        let r = ok.request(json!({"type":"ping"}), "hb").await;
        assert_eq!(r["type"], "pong");
        // Reading for a few heartbeats lets tungstenite answer the server's pings.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(120), ok.recv()).await;
    }
    assert_eq!(ok.request(json!({"type":"online"}), "still").await["count"], 1);
}

#[tokio::test]
async fn graceful_shutdown_flushes_then_closes_1001() {
    let mut gw = Gateway::start().await;
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    let b_user = b.user.clone();
    for i in 0..50 {
        a.send(json!({"type":"once","to":b_user,"content":i})).await;
    }
    for _ in 0..50 {
        assert_eq!(a.recv_type("ack").await["status"], "sent");
    }
    let done = gw.begin_shutdown();
    let (frame, texts) = b.until_close().await;
    let got: Vec<_> =
        texts.iter().map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap()["content"].clone()).collect();
    assert_eq!(got, (0..50).map(|i| json!(i)).collect::<Vec<_>>(), "queued frames flushed before the close");
    assert_eq!(u16::from(frame.unwrap().code), 1001);
    assert_eq!(a.close_code().await, 1001);
    // Clients hang up after the close handshake, as real ones do.
    drop((a, b));
    tokio::time::timeout(WAIT, done).await.unwrap().unwrap();
    assert_eq!(gw.node.metrics.linger_timeouts.get(), 0, "no lingering once clients hung up");
    assert_eq!(gw.node.metrics.disconnects_with(1001), 2);
    assert_eq!(gw.node.hub.connections().len(), 0);
    assert_eq!(gw.node.presence.online_count().await.unwrap(), 0, "presence released");
}

#[tokio::test]
async fn invalid_utf8_closes_1007_and_protocol_violations_close_1002() {
    let gw = Gateway::start().await;
    let mut raw = RawClient::connect(gw.addr, "/ws").await;
    assert_eq!(raw.read_frame().await.unwrap().opcode, 1, "welcome");
    raw.send_frame(1, &[0xff, 0xfe, 0xfd]).await;
    assert_eq!(raw.close_code().await, 1007);

    // A client frame without a mask violates RFC 6455.
    let mut raw = RawClient::connect(gw.addr, "/ws").await;
    assert_eq!(raw.read_frame().await.unwrap().opcode, 1, "welcome");
    use tokio::io::AsyncWriteExt;
    raw.stream.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(raw.close_code().await, 1002);

    // The gateway is fine: others still connect and chat.
    let mut a = gw.client().await;
    assert_eq!(a.request(json!({"type":"ping"}), "ok").await["type"], "pong");
}
