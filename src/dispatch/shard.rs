//! One dispatcher shard: lookups, outlets per destination node, confirm windows, pacing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::{debug, trace};

use super::batch::{BatchBuf, Origin};
use super::{Ctx, Job};
use crate::backend::{BackendError, BoxFuture, chain};
use crate::delivery::{Ack, Target, decide};
use crate::protocol::AckStatus;

/// Jobs taken per drain.
const DRAIN: usize = 1024;

/// Unconfirmed batches per destination node, per shard.
const WINDOW: usize = 2;

/// Entries an outlet holds beyond its window (a broker outage); more are `unavailable`.
const MAX_PENDING: usize = 1 << 16;

/// How often messages waiting in outlets are checked against the outage bound.
const EXPIRY_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// A confirm is awaited this long past its batch's deadline (the publisher's own bound plus
/// a margin): whatever the broker does, every message is answered.
const CONFIRM_GUARD: std::time::Duration = std::time::Duration::from_millis(750);

/// A job waiting for its remote batches to be confirmed.
struct Waiting {
    ack: Ack,
    read_at: std::time::Instant,
    /// Batches (published or still pending) carrying it that are not confirmed yet.
    remaining: usize,
    delivered: bool,
    undelivered: AckStatus,
    failed: Option<BackendError>,
}

/// One frame queued for a node, and the job it belongs to.
struct Entry {
    target: Target,
    frame: Bytes,
    job: usize,
}

/// What one shard sends to one node: entries waiting for room in the confirm window.
/// Whatever arrives while confirms are outstanding goes into the next batch, so under load
/// batches grow with the broker's latency.
struct Outlet {
    node: String,
    pending: VecDeque<Entry>,
    inflight: usize,
}

type Confirm = BoxFuture<'static, (usize, Vec<usize>, Result<bool, BackendError>)>;

struct Shard {
    ctx: Arc<Ctx>,
    outlets: Vec<Outlet>,
    /// Entries waiting in all outlets: past [`Ctx::queue`] the shard stops taking jobs, so
    /// its queue fills and the sessions feeding it wait (back-pressure, not `unavailable`).
    pending: usize,
    outlet_of: HashMap<String, usize>,
    /// Jobs with batches in flight, by slot; `free` lists unused slots.
    waiting: Vec<Option<Waiting>>,
    free: Vec<usize>,
    confirms: FuturesUnordered<Confirm>,
}

/// A shard's loop, until `stopped`.
///
/// Drain pacing: while traffic flows, the shard takes one drain per `Limits::pacing`, so at a
/// moderate rate (where each drain would otherwise hold a single message) what arrives within
/// an interval shares one presence lookup and one AMQP message per node, for at most one
/// interval of latency. After an idle interval the next message is routed at once: no timer
/// delay when idle.
pub(super) async fn run(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Job>, stopped: WaitForCancellationFutureOwned) {
    let pacing = ctx.limits.pacing;
    let mut s = Shard {
        ctx,
        outlets: Vec::new(),
        pending: 0,
        outlet_of: HashMap::new(),
        waiting: Vec::new(),
        free: Vec::new(),
        confirms: FuturesUnordered::new(),
    };
    let mut jobs: Vec<Job> = Vec::with_capacity(DRAIN);
    let mut last_drain: Option<tokio::time::Instant> = None;
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stopped);
    loop {
        let wait = last_drain.map(|t| t + pacing).filter(|&t| t > tokio::time::Instant::now());
        let waiting = s.pending > 0;
        let room = s.pending < s.ctx.queue;
        tokio::select! {
            n = rx.recv_many(&mut jobs, DRAIN), if wait.is_none() && room => {
                if n == 0 {
                    return;
                }
                last_drain = Some(tokio::time::Instant::now());
                s.route(&mut jobs).await;
                jobs.clear();
            }
            Some((outlet, done, res)) = s.confirms.next() => s.confirmed(outlet, done, res),
            () = tokio::time::sleep_until(wait.unwrap_or_else(tokio::time::Instant::now)), if wait.is_some() => {
                // Paced: whatever is queued now is the next drain.
                if rx.is_empty() {
                    last_drain = None;
                }
            }
            _ = expiry.tick(), if waiting => s.expire(),
            () = &mut stopped => return,
        }
    }
}

impl Shard {
    /// Routes one drain: one presence lookup for all distinct targets, then the jobs' frames
    /// into the outlets of the other nodes that hold recipients.
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
            Ok(l) if l.nodes.len() == targets.len() => l,
            res => {
                let e = res.err().unwrap_or_else(|| BackendError::presence("routing lookup answered wrongly"));
                debug!(error = %chain(&e), jobs = jobs.len(), "routing lookup failed");
                for job in jobs.drain(..) {
                    job.ack.answer(Err(e.clone()), job.read_at, &ctx.metrics);
                }
                return;
            }
        };
        let mut touched: Vec<usize> = Vec::new();
        let mut remote: Vec<usize> = Vec::new();
        for (job, t) in jobs.drain(..).zip(slots) {
            remote.clear();
            for n in located.nodes[t].iter().filter(|n| **n != ctx.node) {
                remote.push(self.outlet(n));
            }
            if remote.is_empty() {
                // Found nowhere else while the store is being rebuilt: the recipient may be
                // online on a node that has not re-registered yet, so never `offline` then.
                let failed = (!located.settled && !job.delivered)
                    .then(|| BackendError::presence("rebuilding after a store restart"));
                job.ack.answer(decide(job.delivered, job.undelivered, failed), job.read_at, &ctx.metrics);
                continue;
            }
            if remote.iter().any(|&o| self.outlets[o].pending.len() >= MAX_PENDING) {
                let e = BackendError::broker("too many messages waiting for the broker");
                job.ack.answer(Err(e), job.read_at, &ctx.metrics);
                continue;
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.waiting.push(None);
                self.waiting.len() - 1
            });
            self.waiting[slot] = Some(Waiting {
                ack: job.ack,
                read_at: job.read_at,
                remaining: remote.len(),
                delivered: job.delivered,
                undelivered: job.undelivered,
                failed: None,
            });
            for &o in &remote {
                self.pending += 1;
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
        let waiting = &self.waiting;
        while outlet.inflight < WINDOW && !outlet.pending.is_empty() {
            let seq = self.ctx.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut batch = BatchBuf::new(Origin { node: &self.ctx.node, incarnation: self.ctx.incarnation, seq });
            let mut jobs = Vec::new();
            let mut oldest: Option<std::time::Instant> = None;
            while let Some(e) = outlet.pending.front() {
                let to = e.target.as_deref();
                if !batch.is_empty()
                    && (batch.entries() >= limits.batch_frames
                        || batch.len() + BatchBuf::entry_len(to, &e.frame) > limits.batch_bytes)
                {
                    break;
                }
                batch.push(to, &e.frame);
                jobs.push(e.job);
                if let Some(w) = &waiting[e.job] {
                    oldest = Some(oldest.map_or(w.read_at, |t| t.min(w.read_at)));
                }
                outlet.pending.pop_front();
            }
            self.pending -= jobs.len();
            let oldest = oldest.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std);
            let deadline = oldest + limits.outage;
            outlet.inflight += 1;
            trace!(node = %outlet.node, frames = jobs.len(), inflight = outlet.inflight, "publishing a batch");
            let m = &self.ctx.metrics.broker;
            m.published.inc();
            m.frames_per_message.observe_count(jobs.len() as u64);
            let confirm = self.ctx.broker.publish(&outlet.node, batch.finish(), deadline);
            let (sent, ctx) = (std::time::Instant::now(), self.ctx.clone());
            self.confirms.push(Box::pin(async move {
                let res = match tokio::time::timeout_at(deadline + CONFIRM_GUARD, confirm).await {
                    Ok(res) => res,
                    Err(_) => Err(BackendError::broker("no confirm within the outage bound")),
                };
                ctx.metrics.broker.confirm_latency.observe_duration(sent.elapsed());
                (o, jobs, res)
            }));
        }
    }

    /// A batch of outlet `o` was confirmed (or failed): settle its jobs, refill the window.
    fn confirmed(&mut self, o: usize, jobs: Vec<usize>, res: Result<bool, BackendError>) {
        self.outlets[o].inflight -= 1;
        trace!(node = %self.outlets[o].node, frames = jobs.len(), ?res, "batch settled");
        for j in jobs {
            self.settle(j, &res);
        }
        self.flush(o);
    }

    /// One of job `j`'s batches (or pending entries) has its outcome; the job is answered
    /// once all have.
    fn settle(&mut self, j: usize, res: &Result<bool, BackendError>) {
        let Some(w) = self.waiting[j].as_mut() else { return };
        match res {
            Ok(true) => w.delivered = true,
            Ok(false) => {}
            Err(e) => w.failed = Some(e.clone()),
        }
        w.remaining -= 1;
        if w.remaining > 0 {
            return;
        }
        if let Some(w) = self.waiting[j].take() {
            self.free.push(j);
            w.ack.answer(decide(w.delivered, w.undelivered, w.failed), w.read_at, &self.ctx.metrics);
        }
    }

    /// Answers `unavailable` for messages still waiting in an outlet (its window full: the
    /// broker is not confirming) once they have waited the outage bound since they were read.
    fn expire(&mut self) {
        let now = std::time::Instant::now();
        let bound = self.ctx.limits.outage;
        let expired = Err(BackendError::broker("unreachable for longer than the outage bound"));
        for o in 0..self.outlets.len() {
            while let Some(e) = self.outlets[o].pending.front() {
                let due = self.waiting[e.job].as_ref().is_none_or(|w| w.read_at + bound <= now);
                if !due {
                    break;
                }
                if let Some(e) = self.outlets[o].pending.pop_front() {
                    self.pending -= 1;
                    self.settle(e.job, &expired);
                }
            }
        }
    }
}
