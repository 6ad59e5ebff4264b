//! Cluster routing: sharded dispatchers between sessions and the broker.
//!
//! ```text
//! session ─► Router::send ─► dispatcher shard (bounded mpsc, chosen by the sender's
//!                             connection, so one sender's messages stay in order)
//! dispatcher: drain everything queued ─► ONE presence lookup for all distinct targets
//!   ├─ this node in the answer  ─► Hub (local outboxes), now
//!   └─ other nodes              ─► one batch per node (bounded) ─► Broker::publish
//! confirms (awaited off the dispatcher) ─► acks: `sent` / `offline` / `unavailable`
//!
//! broker consumer ─► inbound batch ─► Hub (frames are slices of the delivery)
//! ```
//!
//! No timer anywhere: an idle dispatcher wakes on the first message and sends it at once;
//! under load, what queued during the previous round trip becomes the next drain.

pub mod batch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::backend::{BackendError, Broker, Inbox, Presence, Target};
use crate::hub::{Conn, Hub};
use crate::protocol::{AckStatus, ErrorCode, MessageId, encode, ws};
use batch::{Addr, BatchBuf};

/// Jobs taken per drain.
const DRAIN: usize = 1024;

/// Who learns the outcome of a job.
#[derive(Debug)]
pub enum Ack {
    /// Presence events: nobody.
    None,
    /// A client's message: an `ack` (or `unavailable` error) frame on its connection.
    Conn { conn: Arc<Conn>, id: Option<Box<str>>, mid: MessageId },
    /// `POST /api/publish`.
    Reply(oneshot::Sender<Result<AckStatus, BackendError>>),
}

/// One frame to route.
#[derive(Debug)]
pub struct Job {
    pub target: Target,
    /// The complete WebSocket frame.
    pub frame: Bytes,
    /// Local connection not to deliver to (the sender of a group message).
    pub exclude: u64,
    pub ack: Ack,
    /// `true` for client messages that must answer `sent` even with no recipient node
    /// (a group message: its sender is a member).
    pub group_sent: bool,
}

/// Batch bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub batch_bytes: usize,
    pub batch_frames: usize,
}

/// Dispatcher shards.
#[derive(Debug)]
pub struct Cluster {
    shards: Box<[mpsc::Sender<Job>]>,
}

struct Ctx {
    node: String,
    hub: Arc<Hub>,
    presence: Arc<dyn Presence>,
    broker: Arc<dyn Broker>,
    limits: Limits,
}

impl Cluster {
    /// Starts `shards` dispatchers, each with a queue of `queue` jobs, and the consumer.
    pub fn start(
        node: &str,
        hub: Arc<Hub>,
        presence: Arc<dyn Presence>,
        broker: Arc<dyn Broker>,
        shards: usize,
        queue: usize,
        limits: Limits,
    ) -> Arc<Cluster> {
        let ctx = Arc::new(Ctx { node: node.to_owned(), hub: hub.clone(), presence, broker: broker.clone(), limits });
        let shards = (0..shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(queue);
                tokio::spawn(dispatch(ctx.clone(), rx));
                tx
            })
            .collect();
        broker.start(inbox(hub));
        Arc::new(Cluster { shards })
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
                exclude: u64::MAX,
                ack: Ack::Reply(tx),
                group_sent: false,
            };
            async move {
                if shard.send(marker).await.is_ok() {
                    let _ = rx.await;
                }
            }
        });
        join_all(waits).await;
    }

    /// Queues a job on the shard for `key` (the sender's connection id). If that shard is
    /// full, answers the job `unavailable` at once and returns `false`.
    pub fn submit(&self, key: u64, job: Job) -> bool {
        let shard = &self.shards[(key % self.shards.len() as u64) as usize];
        match shard.try_send(job) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) => {
                answer(job.ack, Err(BackendError::Broker("routing queue full".into())));
                false
            }
        }
    }
}

/// Inbound batches go straight to the local outboxes.
fn inbox(hub: Arc<Hub>) -> Inbox {
    Arc::new(move |batch: Bytes| {
        for entry in batch::decode(&batch) {
            match entry {
                Ok((Addr::User(u), frame)) => {
                    hub.deliver_user(u, &frame);
                }
                Ok((Addr::Group(g), frame)) => {
                    hub.deliver_group(g, &frame, u64::MAX);
                }
                Err(e) => {
                    warn!(error = %e, "dropping malformed inbound batch");
                    return;
                }
            }
        }
    })
}

/// Answers `job` with `status`, or with `unavailable` on `Err`.
pub fn answer(ack: Ack, res: Result<AckStatus, BackendError>) {
    match ack {
        Ack::None => {}
        Ack::Reply(tx) => {
            let _ = tx.send(res);
        }
        Ack::Conn { conn, id, mid } => {
            let frame = match res {
                Ok(status) => encode::ack(id.as_deref(), &mid, status),
                Err(e) => encode::error(id.as_deref(), ErrorCode::Unavailable, &format!("not sent: {e}")),
            };
            let _ = conn.outbox.push(frame);
        }
    }
}

/// Per-node batches being built in one drain.
struct Outgoing {
    node: String,
    current: BatchBuf,
    done: Vec<Bytes>,
}

async fn dispatch(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Job>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(DRAIN);
    while rx.recv_many(&mut jobs, DRAIN).await > 0 {
        route(&ctx, &mut jobs).await;
        jobs.clear();
    }
}

async fn route(ctx: &Ctx, jobs: &mut Vec<Job>) {
    // One lookup for every distinct target in the drain.
    let mut index: HashMap<&Target, usize> = HashMap::with_capacity(jobs.len());
    let mut targets: Vec<Target> = Vec::new();
    let slots: Vec<usize> = jobs
        .iter()
        .map(|j| {
            *index.entry(&j.target).or_insert_with(|| {
                targets.push(j.target.clone());
                targets.len() - 1
            })
        })
        .collect();
    let located = match ctx.presence.locate(&targets).await {
        Ok(l) => l,
        Err(e) => {
            debug!(error = %e, jobs = jobs.len(), "routing lookup failed");
            for job in jobs.drain(..) {
                answer(job.ack, Err(e.clone()));
            }
            return;
        }
    };

    // Local deliveries now; remote ones into per-node batches.
    let mut out: Vec<Outgoing> = Vec::new();
    let mut node_slot: HashMap<&str, usize> = HashMap::new();
    // For each job: local deliveries, and which (outgoing, batch) pairs carry it.
    let mut carried: Vec<(usize, Vec<(usize, usize)>)> = Vec::with_capacity(jobs.len());
    for (job, &slot) in jobs.iter().zip(&slots) {
        let addr = match &job.target {
            Target::User(u) => Addr::User(u),
            Target::Group(g) => Addr::Group(g),
        };
        let mut local = 0;
        let mut remote = Vec::new();
        for n in &located[slot] {
            if *n == ctx.node {
                local += match addr {
                    Addr::User(u) => ctx.hub.deliver_user(u, &job.frame),
                    Addr::Group(g) => ctx.hub.deliver_group(g, &job.frame, job.exclude),
                };
                continue;
            }
            let o = *node_slot.entry(n.as_str()).or_insert_with(|| {
                out.push(Outgoing { node: n.clone(), current: BatchBuf::new(), done: Vec::new() });
                out.len() - 1
            });
            let og = &mut out[o];
            if !og.current.is_empty()
                && (og.current.entries() >= ctx.limits.batch_frames
                    || og.current.len() + BatchBuf::entry_len(addr, &job.frame) > ctx.limits.batch_bytes)
            {
                og.done.push(std::mem::take(&mut og.current).finish());
            }
            og.current.push(addr, &job.frame);
            remote.push((o, og.done.len()));
        }
        carried.push((local, remote));
    }

    // Publish in order; confirms are awaited off the dispatcher so the next drain can start.
    let mut confirms = Vec::new();
    let mut batch_ids: Vec<Vec<usize>> = Vec::with_capacity(out.len());
    for og in out {
        let mut ids = Vec::new();
        for b in og.done.into_iter().chain((!og.current.is_empty()).then(|| og.current.finish())) {
            ids.push(confirms.len());
            confirms.push(ctx.broker.publish(&og.node, b));
        }
        batch_ids.push(ids);
    }
    let mut waiting = Vec::new();
    for (job, (local, remote)) in jobs.drain(..).zip(carried) {
        if remote.is_empty() {
            answer(job.ack, Ok(status(local > 0, job.group_sent)));
        } else {
            let ids: Vec<usize> = remote.iter().map(|&(o, b)| batch_ids[o][b]).collect();
            waiting.push((job, local, ids));
        }
    }
    if waiting.is_empty() {
        // Presence events and purely local messages: still let the publishes complete.
        if !confirms.is_empty() {
            tokio::spawn(join_all(confirms));
        }
        return;
    }
    tokio::spawn(async move {
        let results = join_all(confirms).await;
        for (job, local, ids) in waiting {
            let mut delivered = local > 0;
            let mut failed = None;
            for i in ids {
                match &results[i] {
                    Ok(true) => delivered = true,
                    Ok(false) => {}
                    Err(e) => failed = Some(e.clone()),
                }
            }
            match failed {
                Some(e) => answer(job.ack, Err(e)),
                None => answer(job.ack, Ok(status(delivered, job.group_sent))),
            }
        }
    });
}

fn status(delivered: bool, group_sent: bool) -> AckStatus {
    if delivered || group_sent { AckStatus::Sent } else { AckStatus::Offline }
}

/// Runs presence maintenance every third of the lease until the node shuts down, acting on
/// what it reports: presence `leave` events, connections whose id was lost, dead nodes'
/// queues.
pub async fn maintain(node: Arc<crate::Node>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = node.shutdown_signal();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|&s| s) => return,
        }
        match node.presence.maintain().await {
            Ok(m) => {
                if failing {
                    warn!("presence store reachable again");
                    failing = false;
                }
                for (group, user) in &m.left {
                    node.router.presence(group, user, false);
                }
                if !m.left_later.is_empty() {
                    let node = node.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(period * 3).await;
                        for (group, user) in &m.left_later {
                            node.router.presence(group, user, false);
                        }
                    });
                }
                for user in &m.conflicts {
                    warn!(%user, "anonymous id was reassigned while this node was presumed dead; closing its connection");
                    for conn in node.hub.user_conns(user) {
                        conn.outbox.close_with(ws::close_frame(ws::close::TRY_AGAIN_LATER, "session lost, reconnect"));
                    }
                }
                if let Some(broker) = &node.broker {
                    for dead in &m.swept {
                        broker.remove_node(dead).await;
                    }
                }
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "presence maintenance failed");
                    failing = true;
                }
            }
        }
    }
}
