//! Cluster mode: three `chatgate` processes against the real Redis and RabbitMQ behave as one
//! chat server. Each test has its own cluster name, so tests run side by side.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::cluster::{TEST_TTL_MS, TestCluster, services};
use common::*;
use serde_json::json;

#[tokio::test]
async fn once_group_presence_online_and_members_across_nodes() {
    let Some(svc) = services() else { return };
    let c = TestCluster::start(&svc, 3, &[]).await;
    let mut a = c.client(0).await;
    let mut b = c.client(1).await;
    let mut d = c.client(2).await;
    assert_eq!(a.welcome["node"], "n0");
    assert_eq!(b.welcome["node"], "n1");

    // Direct message from n0 to n1.
    let ack = a.request(json!({"type":"once","to":b.user,"content":{"x":1}}), "m1").await;
    assert_eq!(ack["status"], "sent", "{ack}");
    let m = b.recv_type("once").await;
    assert_eq!(
        (m["from"].as_str(), m["content"].clone(), m["mid"].clone()),
        (Some(a.user.as_str()), json!({"x":1}), ack["mid"].clone())
    );
    // Offline is cluster-wide too.
    assert_eq!(a.request(json!({"type":"once","to":"99999","content":1}), "m2").await["status"], "offline");

    // A group spanning all three nodes, with presence events everywhere.
    a.join("room").await;
    b.join("room").await;
    assert_eq!(a.recv_type("presence").await["user"], a.user);
    assert_eq!(a.recv_type("presence").await["user"], b.user, "n0 sees n1's join");
    d.join("room").await;
    for x in [&mut a, &mut b] {
        assert_eq!(x.presence_of(&d.user).await["event"], "join");
    }
    let ack = b.request(json!({"type":"group","to":"room","content":"hello"}), "g1").await;
    assert_eq!(ack["status"], "sent");
    for x in [&mut a, &mut d] {
        let m = x.recv_type("group").await;
        assert_eq!(
            (m["from"].as_str(), m["to"].as_str(), m["content"].as_str()),
            (Some(b.user.as_str()), Some("room"), Some("hello"))
        );
    }
    // No echo to the sender: its next frame is the pong.
    let mut before = Vec::new();
    b.send(json!({"type":"ping","id":"p"})).await;
    loop {
        let v = b.recv().await;
        if v["id"] == "p" {
            break;
        }
        before.push(v);
    }
    assert!(before.iter().all(|v| v["type"] != "group"), "{before:?}");

    // Cluster-wide online and members, asked on any node.
    assert_eq!(d.request(json!({"type":"online"}), "o").await["count"], 3);
    let mut users = vec![a.user.clone(), b.user.clone(), d.user.clone()];
    users.sort_by_key(|u| (u.len(), u.clone()));
    assert_eq!(d.request(json!({"type":"members","group":"room"}), "mm").await["users"], json!(users));
    assert_eq!(c.online(1).await, 3);

    // Leaving on n2 is seen on n0.
    let d_user = d.user.clone();
    d.close().await;
    assert_eq!(a.presence_of(&d_user).await["event"], "leave");
    assert_eq!(c.online(0).await, 2);

    // Every node is listed, from any node.
    let addr = c.nodes[2].addr;
    eventually("GET /api/nodes lists the three nodes", || async move {
        let nodes = http(addr, "GET", "/api/nodes", &[], "").await.json()["nodes"].clone();
        let names: Vec<&str> = nodes.as_array().unwrap().iter().filter_map(|n| n["node"].as_str()).collect();
        names == ["n0", "n1", "n2"] && nodes[0]["connections"] == 1
    })
    .await;

    // The Redis and RabbitMQ metrics moved.
    let metrics = http(c.nodes[1].addr, "GET", "/metrics", &[], "").await.body;
    for series in [
        r#"chatgate_presence_operations_total{op="write"}"#,
        r#"chatgate_presence_operations_total{op="locate"}"#,
        r#"chatgate_presence_operations_total{op="maintain"}"#,
        "chatgate_presence_latency_seconds_count",
        "chatgate_broker_published_total",
        "chatgate_broker_consumed_total",
    ] {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{series} "))).unwrap_or_else(|| panic!("{series}"));
        assert!(!line.ends_with(" 0"), "{line}");
    }
}

#[tokio::test]
async fn ids_are_smallest_free_across_the_cluster() {
    let Some(svc) = services() else { return };
    let c = TestCluster::start(&svc, 3, &[]).await;
    let a = c.client(0).await;
    let b = c.client(1).await;
    let d = c.client(2).await;
    let mut ids = [a.user.clone(), b.user.clone(), d.user.clone()];
    ids.sort();
    assert_eq!(ids, ["1", "2", "3"]);
    let freed = b.user.clone();
    b.close().await;
    eventually("disconnect recorded", || async { c.online(0).await == 2 }).await;
    // The freed id is handed out again, by another node.
    let e = c.client(2).await;
    assert_eq!(e.user, freed);
    let f = c.client(0).await;
    assert_eq!(f.user, "4");
    drop((a, d, e, f));
}

#[tokio::test]
async fn a_user_on_two_nodes_gets_direct_messages_on_both() {
    let Some(svc) = services() else { return };
    let secret = "cluster-secret";
    let c = TestCluster::start(&svc, 3, &[("CHAT_JWT_SECRET", secret)]).await;
    let token = |sub: &str| {
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": sub, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let mut alice0 = Client::connect(&format!("{}?token={}", c.url(0), token("alice"))).await;
    let mut alice1 = Client::connect(&format!("{}?token={}", c.url(1), token("alice"))).await;
    let mut bob = Client::connect(&format!("{}?token={}", c.url(2), token("bob"))).await;
    assert_eq!(bob.request(json!({"type":"online"}), "o").await["count"], 2);
    let ack = bob.request(json!({"type":"once","to":"alice","content":"both?"}), "m").await;
    assert_eq!(ack["status"], "sent");
    for x in [&mut alice0, &mut alice1] {
        assert_eq!(x.recv_type("once").await["content"], "both?");
    }
    // Group message from alice on n0 reaches alice's other connection on n1.
    alice0.join("g").await;
    alice1.join("g").await;
    alice0.request(json!({"type":"group","to":"g","content":"me too"}), "g").await;
    assert_eq!(alice1.recv_type("group").await["content"], "me too");
    // Alice stays online (and a member) while one connection remains.
    alice1.close().await;
    let ack = bob.request(json!({"type":"once","to":"alice","content":"still"}), "m2").await;
    assert_eq!(ack["status"], "sent");
    assert_eq!(alice0.recv_type("once").await["content"], "still");
    assert_eq!(bob.request(json!({"type":"members","group":"g"}), "mm").await["users"], json!(["alice"]));
}

/// What a node logs when it sweeps a dead one.
const SWEPT: &str = "swept a dead node";

#[tokio::test]
async fn killed_node_is_swept_within_two_leases() {
    let Some(svc) = services() else { return };
    let mut c = TestCluster::start(&svc, 3, &[]).await;
    let mut watcher = c.client(0).await;
    watcher.join("room").await;
    let mut victim = c.client(1).await;
    victim.join("room").await;
    let victim_user = victim.user.clone();
    watcher.presence_of(&victim_user).await;
    let _other = c.client(2).await;
    assert_eq!(c.online(0).await, 3);
    assert!(c.queue_exists("n1").await);

    // The sweep comes within two leases because the lease expires at most one lease after
    // its last refresh and every survivor looks every third of a lease (the bound itself is
    // checked in logical time by `inprocess::a_crashed_node_is_swept_within_two_leases`).
    let mut r = c.redis().await;
    let pttl: i64 = redis::cmd("PTTL").arg(c.key("lease:n1")).query_async(&mut r).await.unwrap();
    assert!((1..=TEST_TTL_MS as i64).contains(&pttl), "n1's lease runs out within one lease: {pttl} ms");
    c.kill(1);
    let ev = watcher.recv_type("presence").await;
    assert_eq!(ev, json!({"type":"presence","group":"room","user":victim_user,"event":"leave"}));
    let lease: i64 = redis::cmd("EXISTS").arg(c.key("lease:n1")).query_async(&mut r).await.unwrap();
    assert_eq!(lease, 0, "swept only once the lease was gone");
    assert_eq!(c.online(0).await, 2);
    assert_eq!(c.members(2, "room").await, vec![watcher.user.clone()]);
    eventually("dead node's queue deleted", || async { !c.queue_exists("n1").await }).await;
    let sweeps = c.nodes[0].logged(SWEPT).len() + c.nodes[2].logged(SWEPT).len();
    assert_eq!(sweeps, 1, "one survivor swept n1 (the log line the graceful test looks for)");
    // Its id is free again.
    let again = c.client(2).await;
    assert_eq!(again.user, victim_user);
    // The survivors' state is untouched.
    let nodes: Vec<String> = redis::cmd("SMEMBERS").arg(c.key("nodes")).query_async(&mut r).await.unwrap();
    let mut nodes = nodes;
    nodes.sort();
    assert_eq!(nodes, ["n0", "n2"]);
    let n1_users: usize = redis::cmd("HLEN").arg(c.key("nu:n1")).query_async(&mut r).await.unwrap();
    assert_eq!(n1_users, 0);
    assert_eq!(watcher.request(json!({"type":"ping"}), "alive").await["type"], "pong");
}

#[tokio::test]
async fn graceful_node_shutdown_cleans_up() {
    let Some(svc) = services() else { return };
    let mut c = TestCluster::start(&svc, 2, &[]).await;
    let mut stay = c.client(0).await;
    stay.join("room").await;
    let mut leaving = c.client(1).await;
    leaving.join("room").await;
    let leaving_user = leaving.user.clone();
    stay.presence_of(&leaving_user).await;
    // Something queued for the leaving node's client before the signal is still delivered.
    stay.request(json!({"type":"once","to":leaving_user,"content":"last words"}), "lw").await;
    c.sigterm(1);
    let (close, texts) = leaving.until_close().await;
    assert_eq!(u16::from(close.unwrap().code), 1001);
    assert!(texts.iter().any(|t| t.contains("last words")), "{texts:?}");
    drop(leaving);
    let status = c.wait_exit(1).await;
    assert_eq!(status.code(), Some(0));
    // The leave reached the other node before the node went away: no sweep needed.
    let ev = stay.recv_type("presence").await;
    assert_eq!(ev, json!({"type":"presence","group":"room","user":leaving_user,"event":"leave"}));
    assert_eq!(c.online(0).await, 1);
    assert!(!c.queue_exists("n1").await, "queue deleted");
    let mut r = c.redis().await;
    for key in ["nu:n1", "nm:n1", "lease:n1"] {
        let exists: bool = redis::cmd("EXISTS").arg(c.key(key)).query_async(&mut r).await.unwrap();
        assert!(!exists, "{key} removed");
    }
    let is_member: bool = redis::cmd("SISMEMBER").arg(c.key("nodes")).arg("n1").query_async(&mut r).await.unwrap();
    assert!(!is_member);
    // The leave came from n1 itself: with its keys gone there is nothing left to sweep, and
    // the survivor has not swept it.
    let swept = c.nodes[0].logged(SWEPT);
    assert!(swept.is_empty(), "n0 swept: {swept:?}");
}
