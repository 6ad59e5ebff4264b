//! The way off this node: sharded dispatchers between the router and the broker.
//!
//! ```text
//! Router (local recipients already served) ─► dispatcher shard (bounded mpsc, chosen by the
//!   sender's connection, so one sender's messages stay in order)
//! shard: drain everything queued ─► ONE presence lookup for all distinct targets
//!   └─ other nodes holding recipients ─► outlet per node ─► batches (≤ 2 unconfirmed) ─► Broker
//! confirms (polled by the shard) ─► the ack rule (`delivery::decide`) ─► sender's outbox
//!
//! broker consumer ─► inbound batch ─► Hub (frames are slices of the delivery)
//! ```
//!
//! An idle shard routes the first message at once. Under load, batches form from what
//! queued during the previous round trip and while confirms were outstanding; at moderate
//! rates, drain pacing (`Limits::pacing`) lets messages of one interval share a lookup and
//! an AMQP message.

pub mod batch;
mod dedup;
mod shard;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::backend::{BackendError, Broker, Inbox, Presence};
use crate::delivery::{Ack, Target};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::AckStatus;
use crate::tasks::Tasks;

/// One message for other nodes.
#[derive(Debug)]
pub struct Job {
    pub target: Target,
    /// The complete WebSocket frame.
    pub frame: Bytes,
    pub ack: Ack,
    /// A connection on this node already took it.
    pub delivered: bool,
    /// The answer when no connection anywhere takes it (see [`crate::delivery::decide`]).
    pub undelivered: AckStatus,
    /// When the message was read.
    pub read_at: Instant,
}

/// Batch bounds and pacing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub batch_bytes: usize,
    pub batch_frames: usize,
    /// While traffic flows, a shard takes at most one drain per this interval (zero: no
    /// pacing). After an idle interval the next message is routed at once.
    pub pacing: Duration,
    /// Longest a message may wait for an unreachable broker, counted from when it was read
    /// (`CHAT_BROKER_BUFFER_MS`): then it is answered `unavailable`, wherever it waits.
    pub outage: Duration,
}

/// What every shard shares.
struct Ctx {
    node: String,
    /// This process, and the number of the next batch it sends (all shards share it).
    incarnation: u32,
    batches: std::sync::atomic::AtomicU64,
    presence: Arc<dyn Presence>,
    broker: Arc<dyn Broker>,
    limits: Limits,
    /// Jobs a shard holds (queued, and waiting in its outlets) before senders wait.
    queue: usize,
    metrics: Arc<Metrics>,
}

/// The shards' loops, until they are spawned.
type Idle = (Arc<Ctx>, Vec<mpsc::Receiver<Job>>);

/// The dispatcher shards of one node.
pub struct Dispatch {
    shards: Box<[mpsc::Sender<Job>]>,
    metrics: Arc<Metrics>,
    /// The shards' loops until [`start`](Self::start) spawns them.
    idle: Mutex<Option<Idle>>,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch").field("shards", &self.shards.len()).finish_non_exhaustive()
    }
}

impl Dispatch {
    /// `shards` dispatchers for node `node` (process `incarnation`), each queueing up to
    /// `queue` jobs. Spawns nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: &str,
        incarnation: u32,
        presence: Arc<dyn Presence>,
        broker: Arc<dyn Broker>,
        shards: usize,
        queue: usize,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ctx = Arc::new(Ctx {
            node: node.to_owned(),
            incarnation,
            batches: Default::default(),
            presence,
            broker,
            limits,
            queue,
            metrics: metrics.clone(),
        });
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards.max(1)).map(|_| mpsc::channel(queue)).unzip();
        Dispatch { shards: txs.into(), metrics, idle: Mutex::new(Some((ctx, rxs))) }
    }

    /// Spawns the shards' loops. They end at the stop signal.
    pub fn start(&self, tasks: &Tasks) {
        let Some((ctx, rxs)) = self.idle.lock().take() else { return };
        for rx in rxs {
            tasks.spawn(shard::run(ctx.clone(), rx, tasks.stopped()));
        }
    }

    /// Queues a job on the shard for `key` (the sender's connection id, or a group's hash
    /// for presence events). If that shard is full, hands the job back: the caller waits
    /// with [`submit`](Self::submit), which is how a busy broker slows its senders down.
    pub fn try_submit(&self, key: u64, job: Job) -> Result<(), Box<Job>> {
        match self.shard(key).try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => Err(Box::new(job)),
            Err(mpsc::error::TrySendError::Closed(job)) => {
                self.stopped(job);
                Ok(())
            }
        }
    }

    /// Queues a job, waiting for room in its shard.
    pub async fn submit(&self, key: u64, job: Job) {
        if let Err(mpsc::error::SendError(job)) = self.shard(key).send(job).await {
            self.stopped(job);
        }
    }

    fn shard(&self, key: u64) -> &mpsc::Sender<Job> {
        &self.shards[(key % self.shards.len() as u64) as usize]
    }

    /// The dispatcher is gone (shutdown): nothing more leaves this node.
    fn stopped(&self, job: Job) {
        job.ack.answer(Err(BackendError::broker("node shutting down")), job.read_at, &self.metrics);
    }

    /// Reads the jobs queued in all shards, not yet taken by their dispatcher (a gauge read
    /// when scraped). It holds the shards weakly, so it never keeps a dispatcher running.
    pub fn queue_gauge(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let weak: Box<[_]> = self.shards.iter().map(mpsc::Sender::downgrade).collect();
        move || weak.iter().filter_map(|w| w.upgrade()).map(|s| s.max_capacity() - s.capacity()).sum()
    }

    /// Waits until every job queued so far has been routed (its batches handed to the
    /// broker). Used before closing the broker at shutdown.
    pub async fn flush(&self) {
        let waits = self.shards.iter().map(|shard| {
            let (tx, rx) = oneshot::channel();
            // An empty user id is never online: the marker routes nowhere and answers.
            let marker = Job {
                target: Target::User("".into()),
                frame: Bytes::new(),
                ack: Ack::Reply(tx),
                delivered: false,
                undelivered: AckStatus::Offline,
                read_at: Instant::now(),
            };
            async move {
                if shard.send(marker).await.is_ok() {
                    let _ = rx.await;
                }
            }
        });
        join_all(waits).await;
    }
}

/// Where the broker's consumer hands this node's inbound batches: straight into the local
/// outboxes, each frame a zero-copy slice of the delivery. A batch delivered before (the
/// broker redelivers after a restart or a consumer reconnect) is dropped.
pub fn inbox(hub: Arc<Hub>, metrics: Arc<Metrics>, congestion: Arc<crate::outbox::Congestion>) -> Inbox {
    let seen = dedup::Dedup::default();
    Inbox::new(congestion, move |batch: Bytes| {
        metrics.broker.consumed.inc();
        let (origin, entries) = match batch::decode(&batch) {
            Ok(decoded) => decoded,
            Err(e) => {
                warn!(error = %e, "dropping malformed inbound batch");
                return;
            }
        };
        if let Some(origin) = origin
            && !seen.first_time(origin)
        {
            metrics.broker.duplicates.inc();
            return;
        }
        for entry in entries {
            match entry {
                Ok((target, frame)) => {
                    metrics.delivered.inc_by(hub.deliver(target, &frame, None) as u64);
                }
                Err(e) => {
                    warn!(error = %e, "dropping the rest of a malformed inbound batch");
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests;
