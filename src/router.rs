//! The one delivery path.
//!
//! Every `once`/`group` message and presence event comes here already encoded. The router
//! pushes it to this node's recipients through the [`Hub`] at once and hands the rest of
//! the cluster to the [`Dispatch`]er, which finds the other nodes holding recipients and
//! publishes to them. A single node is a cluster whose broker reaches no other node: it has
//! no dispatcher, and every message is settled on the spot. Either way the sender's `ack`
//! follows the one rule in [`crate::delivery::decide`].

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::backend::BackendError;
use crate::delivery::{Ack, AckTo, Target, decide};
use crate::dispatch::{Dispatch, Job};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{AckStatus, encode};
use crate::tasks::Tasks;

/// A message waiting for room on its way to other nodes (see [`Router::send`]).
#[derive(Debug)]
pub struct Waiting {
    key: u64,
    job: Box<Job>,
}

/// Routes frames to their recipients, here and on other nodes.
#[derive(Debug)]
pub struct Router {
    hub: Arc<Hub>,
    /// `None` when no other node can be reached: everything is settled here.
    remote: Option<Dispatch>,
    metrics: Arc<Metrics>,
    hasher: foldhash::fast::FixedState,
}

impl Router {
    pub fn new(hub: Arc<Hub>, remote: Option<Dispatch>, metrics: Arc<Metrics>) -> Self {
        Router { hub, remote, metrics, hasher: Default::default() }
    }

    /// Pushes `frame` to this node's recipients; counts them.
    #[inline]
    fn deliver(&self, to: Target<&str>, frame: &Bytes, exclude: Option<u64>) -> bool {
        let n = self.hub.deliver(to, frame, exclude);
        self.metrics.delivered.inc_by(n as u64);
        n > 0
    }

    /// Spawns the dispatchers, if any.
    pub fn start(&self, tasks: &Tasks) {
        if let Some(remote) = &self.remote {
            remote.start(tasks);
        }
    }

    /// Waits until everything queued for other nodes has been handed to the broker.
    pub async fn flush(&self) {
        if let Some(remote) = &self.remote {
            remote.flush().await;
        }
    }

    /// Routes a client's message and, once routed, queues its `ack` on the sender's
    /// connection. A group message skips the sending connection. `Some` when the way to
    /// other nodes is full: the session must [`wait`](Self::wait) with it before reading on.
    #[must_use]
    pub fn send(&self, to: Target<&str>, frame: &Bytes, ack: AckTo<'_>) -> Option<Waiting> {
        let exclude = to.is_group().then_some(ack.conn.id);
        let delivered = self.deliver(to, frame, exclude);
        // The sender of a group message is a member: the group has a live connection.
        let undelivered = if to.is_group() { AckStatus::Sent } else { AckStatus::Offline };
        let Some(remote) = &self.remote else {
            ack.answer(decide(delivered, undelivered, None), &self.metrics);
            return None;
        };
        let job = Job {
            target: to.to_owned(),
            frame: frame.clone(),
            ack: ack.to_owned(),
            delivered,
            undelivered,
            read_at: ack.read_at,
        };
        // One shard per sender connection keeps its messages in order.
        let key = ack.conn.id;
        remote.try_submit(key, job).err().map(|job| Waiting { key, job })
    }

    /// Queues a message [`send`](Self::send) could not, waiting for room.
    pub async fn wait(&self, waiting: Waiting) {
        self.metrics.backpressure_pauses.inc();
        if let Some(remote) = &self.remote {
            remote.submit(waiting.key, *waiting.job).await;
        }
    }

    /// Routes a message that has no connection to ack (`POST /api/publish`): `offline` when
    /// no connection took it (for a group: no member is online).
    pub async fn publish(&self, to: Target<&str>, frame: &Bytes) -> Result<AckStatus, BackendError> {
        let read_at = Instant::now();
        let delivered = self.deliver(to, frame, None);
        let (tx, rx) = oneshot::channel();
        let Some(remote) = &self.remote else {
            Ack::Reply(tx).answer(decide(delivered, AckStatus::Offline, None), read_at, &self.metrics);
            return rx.await.unwrap_or_else(|_| Err(BackendError::broker("router stopped")));
        };
        let job = Job {
            target: to.to_owned(),
            frame: frame.clone(),
            ack: Ack::Reply(tx),
            delivered,
            undelivered: AckStatus::Offline,
            read_at,
        };
        remote.submit(fastrand::u64(..), job).await;
        rx.await.unwrap_or_else(|_| Err(BackendError::broker("router stopped")))
    }

    /// Tells `group`'s members, on every node, that `user` joined or left it.
    pub async fn presence(&self, group: &str, user: &str, join: bool) {
        let frame = encode::presence(group, user, join);
        self.deliver(Target::Group(group), &frame, None);
        if let Some(remote) = &self.remote {
            let job = Job {
                target: Target::Group(group.into()),
                frame,
                ack: Ack::None,
                delivered: true,
                undelivered: AckStatus::Sent,
                read_at: Instant::now(),
            };
            // Events of one group share a shard, so a join is never overtaken by its leave.
            remote.submit(self.hasher.hash_one(group), job).await;
        }
    }
}
