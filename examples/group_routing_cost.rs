//! Measures the two ways to fan a group message out only to nodes with members:
//!
//! (a) RabbitMQ bindings: each node binds its queue to a `groups` exchange with the group as
//!     routing key while it has local members. Cost: a `queue.bind` / `queue.unbind` round
//!     trip on every first-join / last-leave per node, and one extra copy per message to
//!     the sender's own node (it is bound too).
//! (b) Redis group→nodes hash (what chatgate does): the join/leave scripts already write
//!     Redis; routing does one `HKEYS` per distinct group per dispatcher drain, pipelined
//!     with the direct-message lookups.
//!
//! Run: `cargo run --release --example group_routing_cost` (needs local Redis and RabbitMQ,
//! or CHAT_TEST_REDIS_URL / CHAT_TEST_AMQP_URL).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

const N: usize = 500;

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let amqp = std::env::var("CHAT_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let redis_url = std::env::var("CHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let tag = format!("grc-{:08x}", fastrand::u32(..));

    // (a) binding churn: a first join and a last leave on one node.
    let conn = Connection::connect(&amqp, ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let ex = format!("{tag}.groups");
    let q = format!("{tag}.node");
    ch.exchange_declare(
        ex.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions { auto_delete: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut bind = Vec::with_capacity(N);
    let mut unbind = Vec::with_capacity(N);
    let start = Instant::now();
    for i in 0..N {
        let key = format!("room.{i}");
        let t = Instant::now();
        ch.queue_bind(
            q.as_str().into(),
            ex.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        bind.push(t.elapsed());
        let t = Instant::now();
        ch.queue_unbind(q.as_str().into(), ex.as_str().into(), key.as_str().into(), FieldTable::default())
            .await
            .unwrap();
        unbind.push(t.elapsed());
    }
    let churn = start.elapsed();
    let _ = ch.exchange_delete(ex.as_str().into(), Default::default()).await;
    let _ = conn.close(200, "".into()).await;
    println!(
        "rabbitmq queue.bind:   p50 {:?}  p99 {:?}\nrabbitmq queue.unbind: p50 {:?}  p99 {:?}\n  => {:.0} join+leave pairs/s on one channel",
        pct(bind.clone(), 0.5),
        pct(bind, 0.99),
        pct(unbind.clone(), 0.5),
        pct(unbind, 0.99),
        N as f64 / churn.as_secs_f64()
    );

    // (b) Redis lookups as the dispatcher does them: one pipeline per drain.
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut r = client.get_multiplexed_async_connection().await.unwrap();
    for g in 0..64 {
        let _: () = redis::cmd("HSET")
            .arg(format!("{tag}:gn:room.{g}"))
            .arg("node-a")
            .arg(1)
            .query_async(&mut r)
            .await
            .unwrap();
    }
    for drain in [1usize, 64] {
        let mut lat = Vec::with_capacity(N);
        for _ in 0..N {
            let mut pipe = redis::pipe();
            for g in 0..drain {
                pipe.cmd("HKEYS").arg(format!("{tag}:gn:room.{g}"));
            }
            let t = Instant::now();
            let _: Vec<Vec<String>> = pipe.query_async(&mut r).await.unwrap();
            lat.push(t.elapsed());
        }
        println!(
            "redis HKEYS pipeline of {drain:>2} groups: p50 {:?}  p99 {:?}",
            pct(lat.clone(), 0.5),
            pct(lat, 0.99)
        );
    }
    let keys: Vec<String> = (0..64).map(|g| format!("{tag}:gn:room.{g}")).collect();
    let _: () = redis::cmd("DEL").arg(keys).query_async(&mut r).await.unwrap();
}
