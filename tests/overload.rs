//! Overload: senders much faster than the node can deliver. Back-pressure, not casualties:
//! every client that keeps reading gets every message, in order, and none is closed; a
//! client that stops reading is closed 1013; no outbox grows past its hard cap.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::inprocess::InProcess;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The floods here load the machine to the full; one at a time, so that a reader task
/// starved by the others' floods is not taken for a slow consumer.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Outbox bounds of the nodes under test: small, so the flood passes them many times over.
const FRAMES: usize = 64;
const BYTES: usize = 64 << 10;

/// Sends `n` group messages to `group` as fast as the socket takes them (open loop: the
/// acks are read by a task of their own), and returns how many were acked `sent`.
fn flood(sender: Client, group: &'static str, n: usize, payload: Arc<str>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let (mut sink, mut stream) = sender.ws.split();
        let acks = tokio::spawn(async move {
            let mut sent = 0;
            while sent < n {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        match v["type"].as_str() {
                            Some("ack") => {
                                assert_eq!(v["status"], "sent", "{v}");
                                sent += 1;
                            }
                            Some("error") => panic!("a sender got {v}"),
                            _ => {}
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("sender connection ended: {other:?}"),
                }
            }
            sent
        });
        for i in 0..n {
            let frame = json!({"type":"group","to":group,"content":{"i":i,"pad":&*payload},"id":i.to_string()});
            sink.send(Message::text(frame.to_string())).await.unwrap();
        }
        acks.await.unwrap()
    })
}

/// Reads until it has `expect` group messages from each of `senders`, checking per-sender
/// order; returns the count. Panics if its connection ends.
fn read_all(mut c: Client, senders: Vec<String>, expect: usize) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut next: Vec<usize> = vec![0; senders.len()];
        while next.iter().any(|&n| n < expect) {
            let v = c.recv().await;
            if v["type"] != "group" {
                continue;
            }
            let from = senders.iter().position(|s| v["from"] == s.as_str()).unwrap();
            assert_eq!(v["content"]["i"], next[from], "in order from {from}");
            next[from] += 1;
        }
        next.iter().sum()
    })
}

async fn overload(c: &InProcess, node_of_sender: impl Fn(usize) -> usize) {
    const READERS: usize = 40;
    const SENDERS: usize = 4;
    const MESSAGES: usize = 600;
    let payload: Arc<str> = "p".repeat(400).into();
    let mut readers = Vec::new();
    for i in 0..READERS {
        let mut r = c.client(i % c.nodes.len()).await;
        r.join("flood").await;
        readers.push(r);
    }
    // A client that joined and then stopped reading, with a window that shuts early.
    let node0 = &c.nodes[0];
    let mut stuck = RawClient::connect_with_receive_buffer(node0.addr, "/ws", 4096).await;
    stuck.send_frame(0x1, br#"{"type":"join","group":"flood","id":"j"}"#).await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let mut s = c.client(node_of_sender(i)).await;
        s.join("flood").await;
        senders.push(s);
    }
    let total = READERS + SENDERS + 1;
    eventually("everyone in the group", || async {
        node0.http("GET", "/api/groups/flood/members", &[], "").await.json()["users"].as_array().unwrap().len() == total
    })
    .await;
    let ids: Vec<String> = senders.iter().map(|s| s.user.clone()).collect();
    let readers: Vec<_> = readers.into_iter().map(|r| read_all(r, ids.clone(), MESSAGES)).collect();

    // Watch every outbox while the flood runs: none may pass its hard cap (twice its bound).
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let watch = {
        let (done, peak) = (done.clone(), peak.clone());
        let hubs: Vec<_> = c.nodes.iter().map(|g| g.node.hub.clone()).collect();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                for hub in &hubs {
                    for conn in hub.connections() {
                        peak.fetch_max(conn.outbox.queued_bytes(), Ordering::Relaxed);
                    }
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let floods: Vec<_> = senders.into_iter().map(|s| flood(s, "flood", MESSAGES, payload.clone())).collect();
    for f in floods {
        assert_eq!(f.await.unwrap(), MESSAGES, "every message acked sent");
    }
    for r in readers {
        assert_eq!(r.await.unwrap(), SENDERS * MESSAGES, "every reader got every message");
    }
    done.store(true, Ordering::Relaxed);
    watch.await.unwrap();
    assert!(peak.load(Ordering::Relaxed) <= 2 * BYTES, "an outbox held {} bytes", peak.load(Ordering::Relaxed));
    let closed_slow: u64 = c.nodes.iter().map(|g| g.node.metrics.slow_consumers.get()).sum();
    assert_eq!(closed_slow, 1, "only the client that stopped reading is a slow consumer");
    // Its 1013 cannot reach it (it does not read): the socket is reset once the close
    // linger is over. Reading now drains what it had been sent, then the connection ends.
    while let Some(f) = stuck.read_frame().await {
        if f.opcode == 0x8 {
            assert_eq!(u16::from_be_bytes([f.payload[0], f.payload[1]]), 1013);
            break;
        }
    }
    let paused: u64 = c.nodes.iter().map(|g| g.node.metrics.backpressure_pauses.get()).sum();
    eprintln!("back-pressure pauses: {paused}; peak outbox {} bytes", peak.load(Ordering::Relaxed));
}

fn tune(c: &mut chatgate::Config) {
    c.outbox_frames = FRAMES;
    c.outbox_bytes = BYTES;
    // Readers run in this process, beside the gateway and the floods: on a busy machine one
    // may not be scheduled for a second. The client that really stops reading still goes.
    c.slow_consumer = std::time::Duration::from_secs(4);
    // A batch from another node is delivered whole: keep one well inside an outbox.
    c.cluster.batch_frames = FRAMES / 4;
    c.kernel_unsent_bytes = 16 << 10;
    (c.rate_limit, c.rate_burst) = (1_000_000, 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_node_slows_the_senders_not_the_readers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = InProcess::start(1, std::time::Duration::from_secs(10), tune).await;
    overload(&c, |_| 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_across_nodes_slows_the_senders_not_the_readers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = InProcess::start(2, std::time::Duration::from_secs(10), tune).await;
    overload(&c, |i| i % 2).await;
}

/// The same flood between two gateway processes on the real RabbitMQ and Redis: the way to
/// the other node back-pressures the senders; nobody is answered `unavailable` while both
/// services are up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_across_real_nodes_gets_no_unavailable() {
    use common::cluster::{TestCluster, services};
    let Some(svc) = services() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let frames = FRAMES.to_string();
    let bytes = BYTES.to_string();
    let batch = (FRAMES / 4).to_string();
    let c = TestCluster::start(
        &svc,
        2,
        &[
            ("CHAT_OUTBOX_FRAMES", frames.as_str()),
            ("CHAT_OUTBOX_BYTES", bytes.as_str()),
            ("CHAT_PUBLISH_BATCH_FRAMES", batch.as_str()),
            ("CHAT_KERNEL_UNSENT_BYTES", "16384"),
            // No client stops reading here; readers starved by the machine are not slow.
            ("CHAT_SLOW_CONSUMER_MS", "10000"),
        ],
    )
    .await;
    const READERS: usize = 20;
    const SENDERS: usize = 4;
    const MESSAGES: usize = 500;
    let payload: Arc<str> = "q".repeat(400).into();
    let mut readers = Vec::new();
    for i in 0..READERS {
        let mut r = c.client(i % 2).await;
        r.join("flood").await;
        readers.push(r);
    }
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let mut s = c.client(i % 2).await;
        s.join("flood").await;
        senders.push(s);
    }
    eventually("everyone in the group", || async { c.members(0, "flood").await.len() == READERS + SENDERS }).await;
    let ids: Vec<String> = senders.iter().map(|s| s.user.clone()).collect();
    let readers: Vec<_> = readers.into_iter().map(|r| read_all(r, ids.clone(), MESSAGES)).collect();
    // `flood` panics on any error answer: `unavailable` included.
    let floods: Vec<_> = senders.into_iter().map(|s| flood(s, "flood", MESSAGES, payload.clone())).collect();
    for f in floods {
        assert_eq!(f.await.unwrap(), MESSAGES, "every message acked sent");
    }
    for r in readers {
        assert_eq!(r.await.unwrap(), SENDERS * MESSAGES, "every reader got every message");
    }
    let metrics = common::http(c.nodes[0].addr, "GET", "/metrics", &[], "").await.body;
    let line = |name: &str| metrics.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned();
    eprintln!("{}\n{}", line("chatgate_backpressure_pauses_total"), line("chatgate_slow_consumer_closes_total"));
    assert!(line("chatgate_slow_consumer_closes_total").ends_with(" 0"), "no reader was a casualty");
}
