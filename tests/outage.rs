//! Backend outages: the private RabbitMQ node's application stopped and started again under
//! continuous traffic, and a private Redis killed and restarted empty. Each fault hits a
//! server this test binary started for itself (tests/common/services.rs); the machine's
//! shared Redis and RabbitMQ are only used, never stopped.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Services, TestCluster, shared_amqp, shared_redis};
use common::services::{PrivateRedis, RabbitLease};
use common::traffic::Traffic;
use common::*;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};

/// Messages per second from node 0 to node 1 (the rate the first version of this test used).
const RATE: u32 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_under_traffic_loses_no_acked_message() {
    let Some(redis_url) = shared_redis() else { return };
    let Some(rabbit) = RabbitLease::acquire().await else { return };
    let svc = Services { redis_url, amqp_url: rabbit.amqp_url() };
    // A buffer long enough to ride out the restart.
    let c = TestCluster::start(&svc, 2, &[("CHAT_BROKER_BUFFER_MS", "30000")]).await;
    let traffic = Traffic::start(c.client(0).await, c.client(1).await, RATE);
    eventually("traffic flows", || async { traffic.delivered() >= 50 }).await;

    // The broker goes away for as long as it takes to send a second of traffic into the
    // outage, comes back, traffic flows again.
    rabbit.app_stop().await;
    let down_at = Instant::now();
    let (n0, n1) = (c.nodes[0].addr, c.nodes[1].addr);
    eventually("readyz 503 while the broker is down", || async {
        http(n0, "GET", "/readyz", &[], "").await.status == 503
    })
    .await;
    let into_outage = traffic.sent() + u64::from(RATE);
    eventually("traffic sent into the outage", || async { traffic.sent() >= into_outage }).await;
    rabbit.app_start().await;
    let outage = down_at.elapsed();
    eventually("both nodes ready again", || async {
        http(n0, "GET", "/readyz", &[], "").await.status == 200
            && http(n1, "GET", "/readyz", &[], "").await.status == 200
    })
    .await;
    let recovered = traffic.sent();
    eventually("traffic flows after recovery", || async { traffic.delivered_since(recovered) >= 100 }).await;
    // Longer than the broker buffer: everything sent is answered by then.
    let report = traffic.finish(Duration::from_secs(45)).await;
    eprintln!("broker application down for {:.1} s (node {})\n{report}", outage.as_secs_f64(), rabbit.node());

    assert!(
        report.lost.is_empty(),
        "{} messages acked sent were never delivered: {:?}",
        report.lost.len(),
        &report.lost[..report.lost.len().min(20)]
    );
    assert!(report.unanswered.is_empty(), "every message is answered: {report}");
    assert_eq!(report.answered_twice, 0, "one answer per message: {report}");
    assert!(report.acks.keys().all(|s| s == "sent"), "the receiver stayed connected: {report}");
    assert!(report.errors.keys().all(|code| code == "unavailable"), "{report}");
    assert_eq!(report.acked("sent") + report.errored("unavailable"), report.sent, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_rebuilds_presence_from_the_nodes() {
    let Some(amqp_url) = shared_amqp() else { return };
    let Some(mut redis) = PrivateRedis::start().await else { return };
    let c = TestCluster::start(&Services { redis_url: redis.url(), amqp_url }, 2, &[]).await;
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
    redis.kill9();
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
    redis.restart().await;

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

/// The harness does what fault tests rely on: a paused server answers nothing until resumed,
/// a killed one refuses connections, a restarted Redis is empty, and a restarted RabbitMQ
/// node still has its durable queues and persistent messages. (The short timeouts below
/// only show an absence: a paused process cannot answer however long one waits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_servers_pause_kill_and_restart_as_documented() {
    let Some(mut redis) = PrivateRedis::start().await else { return };
    let Some(mut rabbit) = RabbitLease::acquire().await else { return };
    let port_open = |port: u16| async move { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() };

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SET").arg("k").arg("v").query_async(&mut conn).await.unwrap();
    redis.pause();
    let mut get = redis::cmd("GET");
    let get = get.arg("k").query_async::<Option<String>>(&mut conn);
    // The client's own response timeout may fire first: either way, no value.
    let r = tokio::time::timeout(Duration::from_millis(500), get).await;
    assert!(!matches!(r, Ok(Ok(_))), "a paused Redis answers: {r:?}");
    redis.resume();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut conn).await.unwrap();
    assert_eq!(v.as_deref(), Some("v"), "resumed with its data");
    redis.kill9();
    assert!(!port_open(redis.port()).await, "a killed Redis refuses connections");
    redis.restart().await;
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut conn).await.unwrap();
    assert_eq!(v, None, "a restarted Redis is empty");

    let queue = format!("harness-{:08x}", fastrand::u32(..));
    let conn = Connection::connect(&rabbit.amqp_url(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(queue.as_str().into(), durable, FieldTable::default()).await.unwrap();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let publish =
        ch.basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), b"kept", persistent);
    assert!(publish.await.unwrap().await.unwrap().is_ack(), "publish confirmed");

    rabbit.pause();
    let url = rabbit.amqp_url();
    let connect = Connection::connect(&url, ConnectionProperties::default());
    assert!(tokio::time::timeout(Duration::from_secs(1), connect).await.is_err(), "a paused broker answers");
    rabbit.resume();
    assert!(common::services::amqp_handshake(&rabbit.amqp_url()).await, "a resumed broker answers");
    rabbit.kill9();
    assert!(!port_open(rabbit.port()).await, "a killed broker refuses connections");
    rabbit.restart().await;
    let url = rabbit.amqp_url();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    // RabbitMQ recovers queues after it takes connections; on a loaded machine that can be
    // seconds later. A failed passive declare closes its channel (one channel per try), and
    // lapin may report that close on the connection's next channel: then a fresh connection.
    let conn = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
    let conn = tokio::sync::Mutex::new(conn);
    eventually_within("the durable queue is recovered", Duration::from_secs(60), || async {
        // A try every 100 ms: a booting broker is not hurried by being asked more often.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut conn = conn.lock().await;
        let ch = match conn.create_channel().await {
            Ok(ch) => ch,
            Err(_) => {
                if let Ok(fresh) = Connection::connect(&url, ConnectionProperties::default()).await {
                    *conn = fresh;
                }
                return false;
            }
        };
        ch.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await.is_ok()
    })
    .await;
    let conn = conn.into_inner();
    let ch = conn.create_channel().await.unwrap();
    let got = ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap();
    assert_eq!(got.map(|m| m.delivery.data), Some(b"kept".to_vec()), "the persistent message survived");
    ch.queue_delete(queue.as_str().into(), Default::default()).await.unwrap();
    let _ = conn.close(200, "".into()).await;
}
