//! Broker, Redis and gateway faults under steady cross-node traffic, with full accounting
//! (tests/common/traffic.rs). Every fault hits a server this binary started for itself
//! (tests/common/services.rs) or a gateway process of its own; the machine's shared Redis
//! and RabbitMQ are only used.
//!
//! For the traffic between clients that stay connected, each scenario asserts what the
//! contract promises: no message acked `sent` is lost; every message is answered, within the
//! outage bound (`CHAT_BROKER_BUFFER_MS`) plus one second of when it was sent; nobody who
//! stayed connected is reported `offline`; no client sees a message twice.
//! Run with `--nocapture` for each scenario's table.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::cluster::{Services, TestCluster, shared_amqp, shared_redis};
use common::services::{PrivateRedis, RabbitLease};
use common::traffic::{Report, Traffic};
use common::*;

/// Messages per second between the two steady clients.
const RATE: u32 = 100;

/// The outage bound the gateways run with, in milliseconds.
const BOUND_MS: u64 = 3000;

const BOUND: Duration = Duration::from_millis(BOUND_MS);

fn env() -> Vec<(&'static str, String)> {
    vec![("CHAT_BROKER_BUFFER_MS", BOUND_MS.to_string()), ("CHAT_AMQP_HEARTBEAT_S", "2".into())]
}

async fn cluster(svc: &Services, nodes: usize) -> TestCluster {
    let env = env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestCluster::start(svc, nodes, &env).await
}

/// The sum of every series of metric `name` a node exposes (0 when it has none yet).
async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let text = http(addr, "GET", "/metrics", &[], "").await.body;
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The contract's promises for clients that stayed connected.
fn assert_kept_promises(what: &str, report: &Report) {
    eprintln!("---- {what}\n{report}");
    assert!(report.sent > 0, "{what}: traffic ran");
    assert!(report.lost.is_empty(), "{what}: messages acked sent were lost: {:?}", report.lost);
    assert!(report.unanswered.is_empty(), "{what}: unanswered: {:?}", report.unanswered);
    assert_eq!(report.answered_twice, 0, "{what}: one answer per message");
    let late = report.answered_later_than(BOUND + Duration::from_secs(1));
    assert!(late.is_empty(), "{what}: answered later than the bound plus 1 s: {late:?}");
    assert_eq!(report.acked("offline"), 0, "{what}: the recipient stayed connected, never offline");
    assert!(report.errors.keys().all(|c| c == "unavailable"), "{what}: errors {:?}", report.errors);
    assert_eq!(report.duplicates, 0, "{what}: a client saw a message twice");
}

/// Steady traffic through a broker fault: `fault` runs once traffic flows; afterwards
/// traffic must flow again.
async fn through_a_broker_fault<F, Fut>(what: &str, fault: F)
where
    F: FnOnce(TestCluster, Traffic, RabbitLease) -> Fut,
    Fut: std::future::Future<Output = (TestCluster, Traffic, RabbitLease)>,
{
    let Some(redis_url) = shared_redis() else { return };
    let Some(rabbit) = RabbitLease::acquire().await else { return };
    let c = cluster(&Services { redis_url, amqp_url: rabbit.amqp_url() }, 2).await;
    let traffic = Traffic::start(c.client(0).await, c.client(1).await, RATE);
    eventually("traffic flows", || async { traffic.delivered() >= 50 }).await;
    let (c, traffic, rabbit) = fault(c, traffic, rabbit).await;
    let (n0, n1) = (c.nodes[0].addr, c.nodes[1].addr);
    eventually_within("both nodes ready again", Duration::from_secs(60), || async {
        http(n0, "GET", "/readyz", &[], "").await.status == 200
            && http(n1, "GET", "/readyz", &[], "").await.status == 200
    })
    .await;
    let recovered = traffic.sent();
    eventually("traffic flows after recovery", || async { traffic.delivered_since(recovered) >= 100 }).await;
    let report = traffic.finish(BOUND * 3).await;
    drop(rabbit);
    assert_kept_promises(what, &report);
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted() {
    through_a_broker_fault("RabbitMQ kill -9, then restarted", |c, traffic, mut rabbit| async move {
        rabbit.kill9();
        let n0 = c.nodes[0].addr;
        eventually("not ready while the broker is gone", || async {
            http(n0, "GET", "/readyz", &[], "").await.status == 503
        })
        .await;
        rabbit.restart().await;
        eventually_within("the reconnects are counted", Duration::from_secs(60), || async {
            metric(n0, "chatgate_broker_reconnects_total").await > 0.0
        })
        .await;
        (c, traffic, rabbit)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_longer_than_the_bound() {
    through_a_broker_fault("RabbitMQ application stopped for longer than the bound", |c, traffic, rabbit| async move {
        rabbit.app_stop().await;
        let n0 = c.nodes[0].addr;
        eventually("messages wait in the outage buffer", || async {
            metric(n0, "chatgate_broker_buffer_bytes").await > 0.0
        })
        .await;
        // Outlast the bound: messages sent now cannot wait for the broker.
        let into = traffic.sent() + u64::from(RATE) * (BOUND_MS + 2000) / 1000;
        eventually("traffic sent for longer than the bound", || async { traffic.sent() >= into }).await;
        let report = traffic.report();
        assert!(report.errored("unavailable") > 0, "answered unavailable during the outage: {report}");
        rabbit.app_start().await;
        (c, traffic, rabbit)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_frozen_longer_than_the_bound() {
    through_a_broker_fault("RabbitMQ SIGSTOP for longer than the bound", |c, traffic, mut rabbit| async move {
        rabbit.pause();
        let n0 = c.nodes[0].addr;
        eventually("a hung broker makes the node not ready", || async {
            http(n0, "GET", "/readyz", &[], "").await.status == 503
        })
        .await;
        let into = traffic.sent() + u64::from(RATE) * (BOUND_MS + 2000) / 1000;
        eventually("traffic sent for longer than the bound", || async { traffic.sent() >= into }).await;
        let report = traffic.report();
        assert!(report.errored("unavailable") > 0, "answered while the broker was frozen: {report}");
        rabbit.resume();
        (c, traffic, rabbit)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_empty() {
    let Some(amqp_url) = shared_amqp() else { return };
    let Some(mut redis) = PrivateRedis::start().await else { return };
    let c = cluster(&Services { redis_url: redis.url(), amqp_url }, 2).await;
    let traffic = Traffic::start(c.client(0).await, c.client(1).await, RATE);
    eventually("traffic flows", || async { traffic.delivered() >= 50 }).await;
    redis.kill9();
    let (n0, n1) = (c.nodes[0].addr, c.nodes[1].addr);
    eventually("not ready without Redis", || async { http(n0, "GET", "/readyz", &[], "").await.status == 503 }).await;
    let into = traffic.sent() + u64::from(RATE);
    eventually("traffic sent into the outage", || async { traffic.sent() >= into }).await;
    redis.restart().await;
    eventually_within("both nodes ready again", Duration::from_secs(60), || async {
        http(n0, "GET", "/readyz", &[], "").await.status == 200
            && http(n1, "GET", "/readyz", &[], "").await.status == 200
    })
    .await;
    // The receiver is registered again once its node re-synced; until then it is not
    // `offline` but `unavailable`.
    let recovered = traffic.sent();
    eventually("traffic flows after recovery", || async { traffic.delivered_since(recovered) >= 100 }).await;
    let report = traffic.finish(BOUND * 3).await;
    assert_kept_promises("Redis kill -9, restarted empty", &report);
    assert!(
        metric(n0, "chatgate_presence_resyncs_total").await + metric(n1, "chatgate_presence_resyncs_total").await > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_under_traffic() {
    let Some(redis_url) = shared_redis() else { return };
    let Some(amqp_url) = shared_amqp() else { return };
    let mut c = cluster(&Services { redis_url, amqp_url }, 3).await;
    // Steady traffic n0 → n1, and traffic n0 → a client on n2, the node that will die.
    let steady = Traffic::start(c.client(0).await, c.client(1).await, RATE);
    let doomed = Traffic::start(c.client(0).await, c.client(2).await, RATE);
    eventually("traffic flows", || async { steady.delivered() >= 50 && doomed.delivered() >= 50 }).await;
    c.kill(2);
    // The dead node is swept; messages to its user end as `offline`.
    eventually("messages to the dead node's user answered offline", || async { doomed.report().acked("offline") > 0 })
        .await;
    let recovered = steady.sent();
    eventually("steady traffic flows on", || async { steady.delivered_since(recovered) >= 100 }).await;
    let to_dead = doomed.finish(BOUND * 3).await;
    let report = steady.finish(BOUND * 3).await;
    assert_kept_promises("gateway kill -9 (another node)", &report);
    // The dead node's user: every message answered in time, with sent, offline or
    // unavailable (those acked sent just before the kill were lost with the node's sockets).
    eprintln!("---- messages to the killed node's user\n{to_dead}");
    assert!(to_dead.unanswered.is_empty(), "{to_dead}");
    let late = to_dead.answered_later_than(BOUND + Duration::from_secs(1));
    assert!(late.is_empty(), "answered later than the bound plus 1 s: {late:?}");
    assert!(to_dead.errors.keys().all(|c| c == "unavailable"), "{to_dead}");
    assert_eq!(to_dead.duplicates, 0);
    let swept = metric(c.nodes[0].addr, "chatgate_presence_nodes_swept_total").await
        + metric(c.nodes[1].addr, "chatgate_presence_nodes_swept_total").await;
    assert_eq!(swept, 1.0, "one survivor swept the dead node");
}
