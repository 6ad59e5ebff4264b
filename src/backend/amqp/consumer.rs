//! The consumer task: its own connection, this node's queue, prefetch, batched acks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tracing::{debug, info, warn};

use super::{Shared, connect, declare_exchange};
use crate::backend::{Inbox, retry};

/// Longest an AMQP delivery waits to be acknowledged (acks are batched).
const ACK_DELAY: Duration = Duration::from_millis(5);

/// The consumer: connect, declare, consume into `inbox`; on failure, reconnect.
pub(super) async fn run(shared: Arc<Shared>, inbox: Inbox) {
    let mut first = true;
    let mut delays = retry::reconnect();
    loop {
        let stop = shared.stop_consumer.notified();
        tokio::pin!(stop);
        let res = tokio::select! {
            res = consume_once(&shared, &inbox, first) => res,
            () = &mut stop => Ok(true),
        };
        shared.consumer_up.store(false, Ordering::Relaxed);
        match res {
            Ok(true) => {
                delete_own_queue(&shared).await;
                shared.consumer_stopped.notify_one();
                return;
            }
            Ok(false) => {
                warn!("consumer lost its RabbitMQ connection; reconnecting");
                delays = retry::reconnect();
            }
            Err(e) => debug!(error = %crate::backend::chain(&e), "consumer cannot connect"),
        }
        first = false;
        tokio::select! {
            () = tokio::time::sleep(retry::next(&mut delays)) => {}
            () = &mut stop => {
                shared.consumer_stopped.notify_one();
                return;
            }
        }
    }
}

/// One consumer connection's life. `Ok(false)`: the connection ended.
async fn consume_once(shared: &Shared, inbox: &Inbox, first: bool) -> lapin::Result<bool> {
    let cfg = &shared.cfg;
    let conn = connect(cfg, "consume").await?;
    let ch = conn.create_channel().await?;
    declare_exchange(&ch, cfg).await?;
    let queue = cfg.queue(&cfg.node);
    let mut args = FieldTable::default();
    // A dead node's queue is deleted by whoever sweeps it; expiry is the fallback for when
    // no node is left to sweep. It must outlast this node's own reconnects (broker restarts).
    let expires = (2 * cfg.lease.as_millis()).clamp(60_000, u32::MAX as u128) as u32;
    args.insert("x-expires".into(), AMQPValue::LongUInt(expires));
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(queue.as_str().into(), opts, args).await?;
    if first {
        // Whatever an earlier process with this node id left is for connections that are
        // gone (and whose ids may since belong to someone else).
        let n = ch.queue_purge(queue.as_str().into(), QueuePurgeOptions::default()).await?;
        if n > 0 {
            info!(messages = n, "purged batches left for a previous run of this node");
        }
    }
    ch.queue_bind(
        queue.as_str().into(),
        cfg.exchange().into(),
        cfg.node.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.basic_qos(cfg.prefetch, BasicQosOptions::default()).await?;
    let opts = BasicConsumeOptions { exclusive: true, ..Default::default() };
    let mut consumer = ch
        .basic_consume(queue.as_str().into(), format!("chatgate-{}", cfg.node).into(), opts, FieldTable::default())
        .await?;
    info!(queue = %queue, "consuming from RabbitMQ");
    if !first {
        cfg.metrics.broker.reconnected(crate::metrics::Link::Consume);
    }
    shared.consumer_up.store(true, Ordering::Relaxed);
    // lapin does not always end a consumer's stream (or an ack under way) when the
    // connection dies under it: watch the channel too, as the publisher does.
    let pump = pump(&mut consumer, inbox);
    tokio::pin!(pump);
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            res = &mut pump => return res,
            _ = check.tick() => {
                if !ch.status().connected() {
                    return Ok(false);
                }
            }
        }
    }
}

/// Hands every delivery to the inbox and acknowledges in batches. `Ok(false)`: the stream
/// ended.
async fn pump(consumer: &mut lapin::Consumer, inbox: &Inbox) -> lapin::Result<bool> {
    let mut unacked = None;
    let mut count = 0u32;
    loop {
        // Acks are batched (multiple): every 64 deliveries, or ACK_DELAY after the first
        // unacknowledged one, whichever comes first. Each batch is already in the local
        // outboxes when it is counted; a crash before the ack only means redelivery.
        let next = match consumer.next().now_or_never() {
            Some(next) => next,
            None if unacked.is_some() => match tokio::time::timeout(ACK_DELAY, consumer.next()).await {
                Ok(next) => next,
                Err(_) => {
                    if let Some(acker) = unacked.take() {
                        ack(&acker).await?;
                    }
                    count = 0;
                    continue;
                }
            },
            None => consumer.next().await,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e),
            None => return Ok(false),
        };
        inbox.deliver(Bytes::from(delivery.data)).await;
        unacked = Some(delivery.acker);
        count += 1;
        if count >= 64 {
            if let Some(acker) = unacked.take() {
                ack(&acker).await?;
            }
            count = 0;
        }
    }
}

async fn ack(acker: &lapin::Acker) -> lapin::Result<()> {
    acker.ack(BasicAckOptions { multiple: true }).await.map(|_| ())
}

async fn delete_own_queue(shared: &Shared) {
    let cfg = &shared.cfg;
    let res = async {
        let conn = connect(cfg, "cleanup").await?;
        let ch = conn.create_channel().await?;
        ch.queue_delete(cfg.queue(&cfg.node).as_str().into(), QueueDeleteOptions::default()).await?;
        conn.close(200, "bye".into()).await
    };
    match tokio::time::timeout(Duration::from_secs(2), res).await {
        Ok(Ok(())) => info!("deleted this node's queue"),
        Ok(Err(e)) => warn!(error = %e, "could not delete this node's queue"),
        Err(_) => warn!("deleting this node's queue timed out"),
    }
}
