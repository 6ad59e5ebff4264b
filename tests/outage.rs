//! Backend outages: RabbitMQ `stop_app`/`start_app` under continuous traffic, and a Redis
//! restart that loses every key. They stop shared services, so the tests in this file take
//! a lock and run one at a time (cargo runs test binaries one after another).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{TestCluster, services};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).status().is_ok_and(|s| s.success())
}

/// Starts the RabbitMQ application again when dropped, whatever happened in between.
struct RabbitBack;

impl Drop for RabbitBack {
    fn drop(&mut self) {
        run("rabbitmqctl", &["-q", "start_app"]);
        run("rabbitmqctl", &["-q", "await_startup"]);
    }
}

/// Starts the local Redis again (the command .ci/services.sh uses) when dropped.
struct RedisBack;

impl Drop for RedisBack {
    fn drop(&mut self) {
        let _ = std::fs::create_dir_all("/var/lib/redis");
        let _ = std::fs::create_dir_all("/var/log/redis");
        run(
            "redis-server",
            &[
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "-::1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                "/var/lib/redis",
                "--logfile",
                "/var/log/redis/ci.log",
            ],
        );
        let deadline = Instant::now() + WAIT;
        while !run("redis-cli", &["-p", "6379", "ping"]) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_under_traffic_loses_no_acked_message() {
    let Some(svc) = services() else { return };
    let _serial = SERIAL.lock().await;
    // A buffer long enough to ride out the restart.
    let c = TestCluster::start(&svc, 2, &[("CHAT_BROKER_BUFFER_MS", "30000")]).await;
    let sender = c.client(0).await;
    let mut receiver = c.client(1).await;
    let to = receiver.user.clone();

    // The receiver records every message up to the final marker.
    let receiving = tokio::spawn(async move {
        let mut got = BTreeSet::new();
        let mut duplicates = 0;
        loop {
            // Longer than `recv`'s own bound: nothing arrives while the broker is down.
            let msg =
                tokio::time::timeout(Duration::from_secs(45), receiver.ws.next()).await.expect("receiver stalled");
            let Some(Ok(Message::Text(text))) = msg else { continue };
            let m: Value = serde_json::from_str(&text).unwrap();
            if m["type"] != "once" {
                continue;
            }
            if m["content"] == "end" {
                return (got, duplicates);
            }
            if !got.insert(m["content"].as_u64().unwrap()) {
                duplicates += 1;
            }
        }
    });

    // Open-loop sender, one message every 5 ms until told to stop, then the marker.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (mut sink, mut acks) = sender.ws.split();
    let sending = tokio::spawn(async move {
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while !*stop_rx.borrow_and_update() {
            tick.tick().await;
            let text = json!({"type":"once","to":to,"content":n,"id":n.to_string()}).to_string();
            sink.send(Message::text(text)).await.unwrap();
            n += 1;
        }
        sink.send(Message::text(json!({"type":"once","to":to,"content":"end","id":"end"}).to_string())).await.unwrap();
        (n, sink)
    });
    let acking = tokio::spawn(async move {
        let (mut sent, mut unavailable) = (BTreeSet::new(), BTreeSet::new());
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(45), acks.next())
                .await
                .expect("acks stalled")
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_str(msg.to_text().unwrap_or("null")).unwrap_or(Value::Null);
            match (v["type"].as_str(), v["status"].as_str(), v["code"].as_str(), v["id"].as_str()) {
                (Some("ack"), Some("sent"), _, Some("end")) => return (sent, unavailable),
                (Some("ack"), Some("sent"), _, Some(id)) => {
                    sent.insert(id.parse::<u64>().unwrap());
                }
                (Some("error"), _, Some("unavailable"), Some(id)) => {
                    unavailable.insert(id.parse::<u64>().unwrap_or(u64::MAX));
                }
                (Some("ack"), Some(other), _, _) => panic!("unexpected ack {other}: {v}"),
                _ => {}
            }
        }
    });

    // Traffic flows, the broker goes away, comes back, traffic flows again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = RabbitBack;
    assert!(run("rabbitmqctl", &["-q", "stop_app"]), "rabbitmqctl stop_app");
    let down_at = Instant::now();
    let n0 = c.nodes[0].addr;
    let n1 = c.nodes[1].addr;
    eventually("readyz 503 while the broker is down", || async {
        http(n0, "GET", "/readyz", &[], "").await.status == 503
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    drop(back);
    let outage = down_at.elapsed();
    eventually("both nodes ready again", || async {
        http(n0, "GET", "/readyz", &[], "").await.status == 200
            && http(n1, "GET", "/readyz", &[], "").await.status == 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop_tx.send(true).unwrap();
    let (n, _sink) = sending.await.unwrap();
    let (sent, unavailable) = acking.await.unwrap();
    let (got, duplicates) = receiving.await.unwrap();

    let lost: Vec<u64> = sent.difference(&got).copied().collect();
    eprintln!(
        "outage {outage:?}: sent {n}, acked sent {}, unavailable {}, delivered {}, duplicates {duplicates}",
        sent.len(),
        unavailable.len(),
        got.len()
    );
    assert!(
        lost.is_empty(),
        "{} messages acked sent were never delivered: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(sent.len() + unavailable.len(), n as usize, "every message was answered");
    let after: Vec<&u64> = sent.iter().filter(|&&i| i + 150 > n).collect();
    assert!(!after.is_empty(), "traffic flows after recovery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_rebuilds_presence_from_the_nodes() {
    let Some(svc) = services() else { return };
    if !svc.redis_url.contains("127.0.0.1:6379") && !svc.redis_url.contains("localhost:6379") {
        assert!(
            std::env::var("CHAT_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "this test restarts the local Redis; CHAT_TEST_REDIS_URL points elsewhere"
        );
        eprintln!("!!!! SKIPPING redis restart test: Redis is not local !!!!");
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start(&svc, 2, &[]).await;
    let mut a = c.client(0).await;
    let mut b = c.client(1).await;
    let mut ghost = c.client(1).await;
    let d = c.client(0).await;
    for x in [&mut a, &mut b, &mut ghost] {
        x.join("room").await;
    }
    let ghost_user = ghost.user.clone();
    eventually("all joins seen", || async { c.members(0, "room").await.len() == 3 }).await;

    // Redis dies and loses everything.
    let back = RedisBack;
    assert!(run("redis-cli", &["-p", "6379", "shutdown", "nosave"]) || !run("redis-cli", &["-p", "6379", "ping"]));
    let n0 = c.nodes[0].addr;
    let n1 = c.nodes[1].addr;
    eventually("readyz 503 while Redis is down", || async { http(n0, "GET", "/readyz", &[], "").await.status == 503 })
        .await;
    let r = a.request(json!({"type":"online"}), "o").await;
    assert_eq!(r["code"], "unavailable", "{r}");
    let r = a.request(json!({"type":"once","to":b.user,"content":1}), "x").await;
    assert_eq!(r["code"], "unavailable", "routing needs Redis: {r}");
    assert!(tokio_tungstenite::connect_async(c.url(0)).await.is_err(), "no new connections");
    // A client leaves while its departure cannot be recorded.
    ghost.close().await;
    drop(back);

    eventually("both nodes ready again", || async {
        http(n0, "GET", "/readyz", &[], "").await.status == 200
            && http(n1, "GET", "/readyz", &[], "").await.status == 200
    })
    .await;
    // The nodes re-registered their users and memberships; the ghost is gone.
    eventually("online rebuilt", || async { c.online(0).await == 3 }).await;
    let mut members = c.members(1, "room").await;
    members.sort();
    let mut want = vec![a.user.clone(), b.user.clone()];
    want.sort();
    assert_eq!(members, want);
    let ev = a.recv_type("presence").await;
    let ev = if ev["user"] == ghost_user { ev } else { a.recv_type("presence").await };
    assert_eq!(ev, json!({"type":"presence","group":"room","user":ghost_user,"event":"leave"}));
    // Ids survived: the next anonymous id is the ghost's, not one in use.
    let mut next = None;
    for _ in 0..100 {
        match tokio_tungstenite::connect_async(c.url(1)).await {
            Ok((ws, _)) => {
                let mut cl = Client { ws, user: String::new(), welcome: Value::Null };
                next = Some(cl.recv().await["user"].as_str().unwrap().to_owned());
                break;
            }
            // Allocation pauses for one lease after the restart.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(next.as_deref(), Some(ghost_user.as_str()));
    // Traffic flows across nodes again.
    let ack = a.request(json!({"type":"once","to":b.user,"content":"back"}), "back").await;
    assert_eq!(ack["status"], "sent");
    assert_eq!(b.recv_type("once").await["content"], "back");
    drop(d);
}
