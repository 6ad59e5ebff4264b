//! Cluster routing: sharded dispatchers between sessions and the broker.
//!
//! ```text
//! session ─► Router::send ─► dispatcher shard (bounded mpsc, chosen by the sender's
//!                             connection, so one sender's messages stay in order)
//! dispatcher: drain everything queued ─► ONE presence lookup for all distinct targets
//!   ├─ this node in the answer  ─► Hub (local outboxes), now
//!   └─ other nodes              ─► outlet per node ─► batches (≤ 2 unconfirmed) ─► Broker::publish
//! confirms (polled by the dispatcher) ─► acks: `sent` / `offline` / `unavailable`
//!
//! broker consumer ─► inbound batch ─► Hub (frames are slices of the delivery)
//! ```
//!
//! An idle dispatcher routes the first message at once. Under load, batches form from what
//! queued during the previous round trip and while confirms were outstanding; at moderate
//! rates, drain pacing (`Limits::pacing`) lets messages of one interval share a lookup and
//! an AMQP message.

pub mod batch;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace, warn};

use crate::backend::{BackendError, BoxFuture, Broker, Inbox, Presence, Target};
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

/// Batch bounds and pacing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub batch_bytes: usize,
    pub batch_frames: usize,
    /// While traffic flows, a dispatcher takes at most one drain per this interval (zero: no
    /// pacing). After an idle interval the next message is routed at once.
    pub pacing: Duration,
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
            let pushed = conn.outbox.push(frame);
            trace!(conn = conn.id, ?pushed, "answered");
        }
    }
}

/// A job waiting for its remote batches to be confirmed.
struct Waiting {
    ack: Ack,
    /// Batches (published or still pending) carrying it that are not confirmed yet.
    remaining: usize,
    delivered: bool,
    group_sent: bool,
    failed: Option<BackendError>,
}

/// One frame queued for a node, and the job it belongs to.
struct Entry {
    target: Target,
    frame: Bytes,
    job: usize,
}

/// What one dispatcher sends to one node: entries waiting for room in the confirm window.
/// Whatever arrives while confirms are outstanding goes into the next batch, so under load
/// batches grow with the broker's latency (see also the drain pacing in [`dispatch`]).
struct Outlet {
    node: String,
    pending: VecDeque<Entry>,
    inflight: usize,
}

/// Unconfirmed batches per destination node, per dispatcher shard.
const WINDOW: usize = 2;

/// Entries an outlet holds beyond its window (a broker outage); more are `unavailable`.
const MAX_PENDING: usize = 1 << 16;

type Confirm = BoxFuture<'static, (usize, Vec<usize>, Result<bool, BackendError>)>;

/// One dispatcher shard.
struct Dispatcher {
    ctx: Arc<Ctx>,
    outlets: Vec<Outlet>,
    outlet_of: HashMap<String, usize>,
    /// Jobs with batches in flight, by slot; `free` lists unused slots.
    waiting: Vec<Option<Waiting>>,
    free: Vec<usize>,
    confirms: FuturesUnordered<Confirm>,
}

/// A dispatcher shard's loop.
///
/// Drain pacing: while traffic flows, the shard takes one drain per `Limits::pacing`, so at a
/// moderate rate (where each drain would otherwise hold a single message) what arrives within
/// an interval shares one presence lookup and one AMQP message per node, for at most one
/// interval of latency. After an idle interval the next message is routed at once: no timer
/// delay when idle.
async fn dispatch(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Job>) {
    let pacing = ctx.limits.pacing;
    let mut d = Dispatcher {
        ctx,
        outlets: Vec::new(),
        outlet_of: HashMap::new(),
        waiting: Vec::new(),
        free: Vec::new(),
        confirms: FuturesUnordered::new(),
    };
    let mut jobs: Vec<Job> = Vec::with_capacity(DRAIN);
    let mut last_drain: Option<tokio::time::Instant> = None;
    loop {
        let wait = last_drain.map(|t| t + pacing).filter(|&t| t > tokio::time::Instant::now());
        tokio::select! {
            n = rx.recv_many(&mut jobs, DRAIN), if wait.is_none() => {
                if n == 0 {
                    break;
                }
                last_drain = Some(tokio::time::Instant::now());
                d.route(&mut jobs).await;
                jobs.clear();
            }
            Some((outlet, done, res)) = d.confirms.next() => d.confirmed(outlet, done, res),
            () = tokio::time::sleep_until(wait.unwrap_or_else(tokio::time::Instant::now)), if wait.is_some() => {
                // Paced: whatever is queued now is the next drain.
                if rx.is_empty() {
                    last_drain = None;
                }
            }
        }
    }
    // The router is gone (shutdown): let what is in flight finish.
    while let Some((outlet, done, res)) = d.confirms.next().await {
        d.confirmed(outlet, done, res);
    }
}

fn addr(target: &Target) -> Addr<'_> {
    match target {
        Target::User(u) => Addr::User(u),
        Target::Group(g) => Addr::Group(g),
    }
}

impl Dispatcher {
    /// Routes one drain: one presence lookup for all distinct targets, local deliveries at
    /// once, remote ones into the destination nodes' outlets.
    async fn route(&mut self, jobs: &mut Vec<Job>) {
        let ctx = self.ctx.clone();
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
        drop(index);
        trace!(jobs = jobs.len(), targets = targets.len(), "routing a drain");
        let located = match ctx.presence.locate(&targets).await {
            Ok(l) if l.len() == targets.len() => l,
            res => {
                let e = res.err().unwrap_or_else(|| BackendError::Presence("routing lookup answered wrongly".into()));
                debug!(error = %e, jobs = jobs.len(), "routing lookup failed");
                for job in jobs.drain(..) {
                    answer(job.ack, Err(e.clone()));
                }
                return;
            }
        };
        trace!(?located, "located");
        let mut touched: Vec<usize> = Vec::new();
        let mut remote: Vec<usize> = Vec::new();
        for (job, t) in jobs.drain(..).zip(slots) {
            let mut local = 0;
            remote.clear();
            for n in &located[t] {
                if *n == ctx.node {
                    local += match &job.target {
                        Target::User(u) => ctx.hub.deliver_user(u, &job.frame),
                        Target::Group(g) => ctx.hub.deliver_group(g, &job.frame, job.exclude),
                    };
                } else {
                    remote.push(self.outlet(n));
                }
            }
            if remote.is_empty() {
                answer(job.ack, Ok(status(local > 0, job.group_sent)));
                continue;
            }
            if remote.iter().any(|&o| self.outlets[o].pending.len() >= MAX_PENDING) {
                answer(job.ack, Err(BackendError::Broker("too many messages waiting for the broker".into())));
                continue;
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.waiting.push(None);
                self.waiting.len() - 1
            });
            self.waiting[slot] = Some(Waiting {
                ack: job.ack,
                remaining: remote.len(),
                delivered: local > 0,
                group_sent: job.group_sent,
                failed: None,
            });
            for &o in &remote {
                self.outlets[o].pending.push_back(Entry {
                    target: job.target.clone(),
                    frame: job.frame.clone(),
                    job: slot,
                });
                if !touched.contains(&o) {
                    touched.push(o);
                }
            }
        }
        for o in touched {
            self.flush(o);
        }
    }

    fn outlet(&mut self, node: &str) -> usize {
        if let Some(&o) = self.outlet_of.get(node) {
            return o;
        }
        self.outlets.push(Outlet { node: node.to_owned(), pending: VecDeque::new(), inflight: 0 });
        self.outlet_of.insert(node.to_owned(), self.outlets.len() - 1);
        self.outlets.len() - 1
    }

    /// Publishes pending entries of outlet `o` while its window has room, one batch (bounded
    /// by bytes and frames) per publish. Batches leave in order.
    fn flush(&mut self, o: usize) {
        let limits = self.ctx.limits;
        let outlet = &mut self.outlets[o];
        while outlet.inflight < WINDOW && !outlet.pending.is_empty() {
            let mut batch = BatchBuf::new();
            let mut jobs = Vec::new();
            while let Some(e) = outlet.pending.front() {
                let a = addr(&e.target);
                if !batch.is_empty()
                    && (batch.entries() >= limits.batch_frames
                        || batch.len() + BatchBuf::entry_len(a, &e.frame) > limits.batch_bytes)
                {
                    break;
                }
                batch.push(a, &e.frame);
                jobs.push(e.job);
                outlet.pending.pop_front();
            }
            outlet.inflight += 1;
            trace!(node = %outlet.node, frames = jobs.len(), inflight = outlet.inflight, "publishing a batch");
            let confirm = self.ctx.broker.publish(&outlet.node, batch.finish());
            self.confirms.push(Box::pin(async move { (o, jobs, confirm.await) }));
        }
    }

    /// A batch of outlet `o` was confirmed (or failed): settle its jobs, refill the window.
    fn confirmed(&mut self, o: usize, jobs: Vec<usize>, res: Result<bool, BackendError>) {
        self.outlets[o].inflight -= 1;
        trace!(node = %self.outlets[o].node, frames = jobs.len(), ?res, "batch settled");
        for j in jobs {
            let Some(w) = self.waiting[j].as_mut() else { continue };
            match &res {
                Ok(true) => w.delivered = true,
                Ok(false) => {}
                Err(e) => w.failed = Some(e.clone()),
            }
            w.remaining -= 1;
            if w.remaining > 0 {
                continue;
            }
            if let Some(w) = self.waiting[j].take() {
                self.free.push(j);
                answer(w.ack, w.failed.map_or_else(|| Ok(status(w.delivered, w.group_sent)), Err));
            }
        }
        self.flush(o);
    }
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
