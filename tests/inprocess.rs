//! Cluster behaviour without Redis or RabbitMQ: three gateways in this process share the
//! in-process presence and broker, so every message between them crosses the dispatcher,
//! the batch codec and the "broker" exactly as between processes.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use chatgate::backend::Presence;
use chatgate::backend::memory::MemoryPresence;
use common::inprocess::InProcess;
use common::*;
use serde_json::json;

const LEASE: Duration = Duration::from_millis(300);

#[tokio::test]
async fn once_group_presence_online_and_members_across_nodes() {
    let c = InProcess::start(3, LEASE, |_| {}).await;
    let mut a = c.client(0).await;
    let mut b = c.client(1).await;
    let mut d = c.client(2).await;
    assert_eq!((a.welcome["node"].as_str(), b.welcome["node"].as_str()), (Some("n0"), Some("n1")));
    let mut ids = [a.user.clone(), b.user.clone(), d.user.clone()];
    ids.sort();
    assert_eq!(ids, ["1", "2", "3"], "ids are cluster-wide");

    let before = c.network.published();
    let ack = a.request(json!({"type":"once","to":b.user,"content":{"x":1}}), "m1").await;
    assert_eq!(ack["status"], "sent", "{ack}");
    let m = b.recv_type("once").await;
    assert_eq!((m["from"].as_str(), m["mid"].clone()), (Some(a.user.as_str()), ack["mid"].clone()));
    assert!(c.network.published() > before, "it crossed the broker");
    assert_eq!(a.request(json!({"type":"once","to":"99999","content":1}), "m2").await["status"], "offline");

    a.join("room").await;
    b.join("room").await;
    assert_eq!(a.presence_of(&b.user).await["event"], "join", "n0 sees n1's join");
    d.join("room").await;
    for x in [&mut a, &mut b] {
        assert_eq!(x.presence_of(&d.user).await["event"], "join");
    }
    assert_eq!(b.request(json!({"type":"group","to":"room","content":"hello"}), "g1").await["status"], "sent");
    for x in [&mut a, &mut d] {
        let m = x.recv_type("group").await;
        assert_eq!((m["from"].as_str(), m["content"].as_str()), (Some(b.user.as_str()), Some("hello")));
    }
    assert_eq!(d.request(json!({"type":"online"}), "o").await["count"], 3);
    let mut users = vec![a.user.clone(), b.user.clone(), d.user.clone()];
    users.sort_by_key(|u| (u.len(), u.clone()));
    assert_eq!(d.request(json!({"type":"members","group":"room"}), "mm").await["users"], json!(users));

    let d_user = d.user.clone();
    d.close().await;
    assert_eq!(a.presence_of(&d_user).await["event"], "leave");
    eventually("d's id freed", || async { c.cluster.online() == 2 }).await;
    assert_eq!(c.client(1).await.user, d_user, "the freed id is handed out again, by another node");
}

#[tokio::test]
async fn one_senders_messages_arrive_in_order_and_share_batches() {
    let c = InProcess::start(2, LEASE, |c| (c.rate_limit, c.rate_burst) = (100_000, 100_000)).await;
    let mut a = c.client(0).await;
    let mut b = c.client(1).await;
    let before = c.network.published();
    const N: u64 = 500;
    for i in 0..N {
        a.send(json!({"type":"once","to":b.user,"content":i})).await;
    }
    for i in 0..N {
        assert_eq!(b.recv_type("once").await["content"], i, "in order");
    }
    for _ in 0..N {
        assert_eq!(a.recv_type("ack").await["status"], "sent");
    }
    let batches = c.network.published() - before;
    assert!(batches < N, "{N} messages in {batches} batches: a burst shares AMQP messages");
}

#[tokio::test]
async fn a_crashed_nodes_users_leave_and_its_ids_are_freed() {
    let c = InProcess::start(2, LEASE, |_| {}).await;
    let mut watcher = c.client(0).await;
    watcher.join("room").await;
    // A node that registered a user in `room`, then died: it never renews its lease.
    let ghost = MemoryPresence::new(c.cluster.clone(), "ghost");
    ghost.maintain().await.unwrap();
    let id = ghost.allocate_id().await.unwrap().to_string();
    ghost.connect(&id).await.unwrap();
    assert!(ghost.join(&id, "room").await.unwrap());
    assert_eq!(watcher.request(json!({"type":"online"}), "o").await["count"], 2);
    // A live node sweeps it once its lease has run out.
    let ev = watcher.presence_of(&id).await;
    assert_eq!(ev, json!({"type":"presence","group":"room","user":id,"event":"leave"}));
    assert_eq!(watcher.request(json!({"type":"online"}), "o2").await["count"], 1);
    assert_eq!(c.client(1).await.user, id, "its id is free again");
}

#[tokio::test]
async fn broker_down_answers_unavailable_and_recovers() {
    let c = InProcess::start(2, LEASE, |_| {}).await;
    let mut a = c.client(0).await;
    let b = c.client(1).await;
    c.network.set_down(true);
    let r = a.request(json!({"type":"once","to":b.user,"content":1}), "down").await;
    assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("error"), Some("unavailable")), "{r}");
    assert_eq!(c.nodes[0].http("GET", "/readyz", &[], "").await.status, 503);
    c.network.set_down(false);
    assert_eq!(a.request(json!({"type":"once","to":b.user,"content":2}), "up").await["status"], "sent");
}

#[tokio::test]
async fn graceful_shutdown_releases_presence_and_the_queue_and_stops_every_task() {
    let mut c = InProcess::start(2, LEASE, |_| {}).await;
    let mut a = c.client(0).await;
    a.join("room").await;
    let b = c.client(1).await;
    let b_user = b.user.clone();
    let mut b = b;
    b.join("room").await;
    a.presence_of(&b_user).await;
    let node = c.nodes[1].node.clone();
    let gw = c.nodes.remove(1);
    let done = tokio::spawn(gw.shutdown());
    assert_eq!(b.close_code().await, 1001);
    drop(b);
    done.await.unwrap();
    assert_eq!(a.presence_of(&b_user).await["event"], "leave", "its leave crossed before the broker closed");
    assert!(!c.network.has_queue("n1"), "the node deleted its queue");
    assert_eq!(c.cluster.online(), 1);
    assert_eq!(node.background_tasks(), 0, "every background task ended");
}

/// In logical time (no sockets): a crashed node's members are gone within two leases.
#[tokio::test(start_paused = true)]
async fn a_crashed_node_is_swept_within_two_leases() {
    use chatgate::backend::memory::{MemoryCluster, MemoryNetwork};
    use chatgate::hub::Conn;
    use chatgate::outbox::Outbox;
    use std::sync::Arc;

    let lease = Duration::from_secs(10);
    let (cluster, network) = (MemoryCluster::with_lease(lease), MemoryNetwork::new());
    let mut config = chatgate::Config::for_tests();
    config.node_id = "live".into();
    let node = chatgate::Node::new(config, chatgate::Backends::in_process(&cluster, &network, "live"));
    node.start();
    let watcher = Arc::new(Conn::new(1, "w".into(), Outbox::new(64, 1 << 20)));
    node.hub.add_user(&watcher);
    node.hub.join("room", &watcher);

    let ghost = MemoryPresence::new(cluster.clone(), "ghost");
    ghost.maintain().await.unwrap();
    ghost.connect("7").await.unwrap();
    ghost.join("7", "room").await.unwrap();
    let crashed_at = tokio::time::Instant::now();
    let leave = chatgate::protocol::encode::presence("room", "7", false);
    let mut queued = std::collections::VecDeque::new();
    while !queued.contains(&leave) {
        assert!(crashed_at.elapsed() <= 2 * lease, "not swept within two leases");
        tokio::time::sleep(Duration::from_millis(100)).await;
        watcher.outbox.take(&mut queued);
    }
    assert!(crashed_at.elapsed() > lease, "not before its lease ran out");
    assert_eq!(cluster.online(), 0);
}

#[tokio::test]
async fn api_nodes_lists_every_live_node() {
    let c = InProcess::start(3, LEASE, |_| {}).await;
    let _a = c.client(1).await;
    let gw = &c.nodes[0];
    eventually("every node reported itself", || async {
        let nodes = gw.http("GET", "/api/nodes", &[], "").await.json()["nodes"].clone();
        let names: Vec<&str> = nodes.as_array().unwrap().iter().filter_map(|n| n["node"].as_str()).collect();
        names == ["n0", "n1", "n2"] && nodes[1]["connections"] == 1
    })
    .await;
}

/// The life cycle: building a node spawns nothing, `start` spawns every loop into one
/// tracker, `release` ends them all.
#[tokio::test]
async fn building_a_node_spawns_nothing_and_release_ends_every_task() {
    use chatgate::backend::memory::{MemoryCluster, MemoryNetwork};
    use chatgate::{Backends, Config, Node};
    let cluster = MemoryCluster::with_lease(LEASE);
    let network = MemoryNetwork::new();
    let mut config = Config::for_tests();
    config.node_id = "solo-life".into();
    let backends = Backends::in_process(&cluster, &network, &config.node_id);
    let runtime = tokio::runtime::Handle::current().metrics();
    let alive = runtime.num_alive_tasks();
    let node = Node::new(config, backends);
    assert_eq!(runtime.num_alive_tasks(), alive, "the constructors spawned no task");
    assert_eq!(node.background_tasks(), 0);
    assert!(!network.has_queue("solo-life"), "nor declared the node's queue");
    node.start();
    assert!(node.background_tasks() > 0, "start spawned the loops");
    eventually("the consumer declared its queue", || async { network.has_queue("solo-life") }).await;
    // As the server does at shutdown: drain (the heartbeat and upkeep loops end), release.
    node.begin_shutdown();
    tokio::time::timeout(WAIT, node.release()).await.expect("release in time").unwrap();
    assert_eq!(node.background_tasks(), 0, "release awaited every loop");
}
