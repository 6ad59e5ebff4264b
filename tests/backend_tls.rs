//! TLS to the backends: `rediss://` with `CHAT_REDIS_CA_FILE` and `amqps://` with
//! `CHAT_AMQP_CA_FILE`, against a private `redis-server` that serves TLS only and a private
//! RabbitMQ node with a TLS listener, both with certificates made at test time. Gateway
//! processes chat across nodes through them; a node that trusts another CA refuses both.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::cluster::{Services, TestCluster};
use common::services::{PrivateRabbit, PrivateRedis};
use common::tls::TestPki;
use common::*;
use serde_json::json;

#[tokio::test]
async fn nodes_chat_through_rediss_and_amqps_and_refuse_an_unknown_ca() {
    let pki = TestPki::new();
    let Some(redis) = PrivateRedis::start_tls(&pki).await else { return };
    let Some(rabbit) = PrivateRabbit::start_tls(&pki).await else { return };
    let svc = Services { redis_url: redis.url(), amqp_url: rabbit.amqps_url().unwrap() };
    assert!(svc.redis_url.starts_with("rediss://") && svc.amqp_url.starts_with("amqps://"), "{svc:?}");
    let ca = pki.ca.to_str().unwrap();
    let trusted = [("CHAT_REDIS_CA_FILE", ca), ("CHAT_AMQP_CA_FILE", ca)];
    let c = TestCluster::start(&svc, 2, &trusted).await;

    let mut a = c.client(0).await;
    let mut b = c.client(1).await;
    assert_ne!(a.welcome["node"], b.welcome["node"]);
    eventually("both users online in Redis", || async { c.online(0).await == 2 }).await;
    let ack = a.request(json!({"type":"once","to":b.user,"content":"over TLS"}), "m").await;
    assert_eq!(ack["status"], "sent", "{ack}");
    assert_eq!(b.recv_type("once").await["content"], "over TLS");
    b.join("tls-room").await;
    a.join("tls-room").await;
    eventually("both are members, as node 0 reads Redis", || async { c.members(0, "tls-room").await.len() == 2 }).await;
    let ack = a.request(json!({"type":"group","to":"tls-room","content":"all"}), "g").await;
    assert_eq!(ack["status"], "sent", "{ack}");
    assert_eq!(b.recv_type("group").await["content"], "all");

    // A node that trusts another CA reaches neither backend, says why, and is not ready.
    let other = TestPki::new();
    let other_ca = other.ca.to_str().unwrap();
    let mut wary =
        TestCluster::start(&svc, 0, &[("CHAT_REDIS_CA_FILE", other_ca), ("CHAT_AMQP_CA_FILE", other_ca)]).await;
    let i = wary.spawn("wary");
    let node = &wary.nodes[i];
    eventually("both backends refused for the certificate", || async {
        let refused = |what: &str| node.logs().iter().any(|l| l.contains(what) && l.contains("UnknownIssuer"));
        refused("presence store unavailable") && refused("cannot connect to RabbitMQ")
    })
    .await;
    assert_eq!(http(node.addr, "GET", "/readyz", &[], "").await.status, 503);
    a.close().await;
    b.close().await;
}
