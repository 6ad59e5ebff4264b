//! Cluster backends behind two small traits.
//!
//! * [`Presence`]: anonymous ids, user→node mapping, online count, group membership and
//!   the node-location lookups routing needs.
//! * [`Broker`]: moves encoded batches of frames between nodes.
//!
//! Each has an in-memory implementation ([`memory`]): standalone it is the embedded default
//! that makes a single binary a complete chat server; shared by several nodes in one process
//! it is a whole cluster for tests. The cluster implementations are Redis ([`redis`]) and
//! RabbitMQ ([`amqp`]). Nothing above this module sees which one runs.
//!
//! Implementations spawn nothing when built: background loops start in `start`, on the
//! node's [`Tasks`], and end when it signals stop.

pub mod amqp;
pub mod memory;
pub mod redis;
pub mod retry;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

pub use crate::protocol::Target;
use crate::tasks::Tasks;

/// A boxed, sendable future: the traits are used as `dyn` so the backend is chosen at
/// start-up without making every caller generic. Calls are per connect/join/batch, never
/// per recipient.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend could not do what was asked. Maps to the `unavailable` error code.
///
/// The `Display` text is what a client may see (`not sent: broker unavailable`); the cause
/// is kept as the error's `source` for logs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// Redis could not be reached, or failed the command.
    #[error("presence store unavailable")]
    Redis(#[source] Arc<::redis::RedisError>),
    /// The presence store is not usable for another reason (not ready yet, odd reply).
    #[error("presence store unavailable: {0}")]
    Presence(Cow<'static, str>),
    /// RabbitMQ could not be reached, or failed the request.
    #[error("broker unavailable")]
    Amqp(#[source] Arc<lapin::Error>),
    /// The broker path is not usable for another reason (queue full, outage bound passed).
    #[error("broker unavailable: {0}")]
    Broker(Cow<'static, str>),
}

impl BackendError {
    pub fn presence(why: impl Into<Cow<'static, str>>) -> Self {
        BackendError::Presence(why.into())
    }

    pub fn broker(why: impl Into<Cow<'static, str>>) -> Self {
        BackendError::Broker(why.into())
    }
}

impl From<::redis::RedisError> for BackendError {
    fn from(e: ::redis::RedisError) -> Self {
        BackendError::Redis(Arc::new(e))
    }
}

impl From<lapin::Error> for BackendError {
    fn from(e: lapin::Error) -> Self {
        BackendError::Amqp(Arc::new(e))
    }
}

/// `error` and its sources, `: `-separated, for logs.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// Cluster state shared by all nodes.
///
/// Counts are per connection: a user with two connections in a group is one member, who
/// "joins" when the first connection joins and "leaves" when the last one leaves.
pub trait Presence: Send + Sync + 'static {
    /// Spawns the backend's own loops (the Redis pipelined writer) on `tasks`.
    fn start(&self, _tasks: &Tasks) {}

    /// Reserves the smallest free positive integer as an anonymous user id, cluster-wide.
    fn allocate_id(&self) -> BoxFuture<'_, Result<u64, BackendError>>;

    /// Returns an id from [`allocate_id`](Self::allocate_id) whose connection never
    /// started (the upgrade failed).
    fn release_id(&self, id: u64) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Records one more connection of `user` on this node. Once this resolves, routing
    /// lookups from any node find this node for `user`.
    fn connect<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Records that one connection of `user` on this node ended while a member of
    /// `groups`. Frees the user's anonymous id when it was its last connection. Returns
    /// the groups the user has now left cluster-wide (each needs a presence `leave`).
    fn disconnect<'a>(
        &'a self,
        user: &'a str,
        groups: &'a [Box<str>],
    ) -> BoxFuture<'a, Result<Vec<Box<str>>, BackendError>>;

    /// One connection of `user` on this node joined `group`. `true` if it is the user's
    /// first connection in the group (a presence `join` is due).
    fn join<'a>(&'a self, user: &'a str, group: &'a str) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// One connection of `user` on this node left `group`. `true` if it was the user's last
    /// connection in the group (a presence `leave` is due).
    fn leave<'a>(&'a self, user: &'a str, group: &'a str) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Cluster-wide number of online users.
    fn online_count(&self) -> BoxFuture<'_, Result<u64, BackendError>>;

    /// Online users in `group`, cluster-wide, sorted.
    fn members<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Result<Vec<String>, BackendError>>;

    /// For each target, the nodes holding at least one of its connections. One round trip
    /// for the whole batch.
    fn locate<'a>(&'a self, targets: &'a [Target]) -> BoxFuture<'a, Result<Located, BackendError>>;

    /// `false` while the store is unreachable.
    fn is_healthy(&self) -> bool;

    /// Removes everything this node registered (graceful shutdown).
    fn release_node(&self) -> BoxFuture<'_, Result<(), BackendError>>;

    /// How often [`maintain`](Self::maintain) must run (a third of the node lease), or
    /// `None` when there is nothing to maintain (a standalone node).
    fn upkeep_period(&self) -> Option<Duration>;

    /// Periodic upkeep: refresh this node's lease, bring the store back in line with this
    /// node's connections after an outage, and sweep nodes whose lease expired.
    fn maintain(&self) -> BoxFuture<'_, Result<Maintenance, BackendError>>;

    /// This node's figures, published with the next upkeep (for `GET /api/nodes`).
    fn report(&self, _me: NodeInfo) {}

    /// The live nodes of the cluster, as each last reported itself.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BackendError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
}

/// What a node reports about itself (`GET /api/nodes`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeInfo {
    pub node: String,
    pub connections: u64,
    pub users: u64,
    /// Process start, ms since the epoch.
    pub started: u64,
}

/// The answer to [`Presence::locate`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Located {
    /// Per target, in order, the nodes holding it.
    pub nodes: Vec<Vec<String>>,
    /// `false` while the store is being rebuilt after it lost its data (until every live
    /// node has registered its connections again): a target found nowhere may still be
    /// online, so it must not be reported `offline`.
    pub settled: bool,
}

/// What [`Presence::maintain`] did that the node must act on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintenance {
    /// `(group, user)` pairs that left a group cluster-wide (a dead node was swept, or
    /// connections that ended during an outage were removed): presence `leave` events due.
    pub left: Vec<(Box<str>, Box<str>)>,
    /// `leave` events due once every live node has re-registered after the store lost its
    /// data (one lease from now): sent now, they would miss the nodes not yet back.
    pub left_later: Vec<(Box<str>, Box<str>)>,
    /// Anonymous ids of this node's connections that the cluster gave to someone else
    /// while this node was presumed dead: those connections must be closed.
    pub conflicts: Vec<Box<str>>,
    /// Nodes found dead and swept this round.
    pub swept: Vec<String>,
}

/// Where a node's consumer hands each batch it receives, in order.
#[derive(Clone)]
pub struct Inbox {
    deliver: Arc<dyn Fn(Bytes) + Send + Sync>,
    /// While this node's outboxes lag behind their writers, the consumer takes no more
    /// batches: they wait in the broker (the consumer's prefetch bounds what it holds).
    congestion: Arc<crate::outbox::Congestion>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl Inbox {
    pub fn new(congestion: Arc<crate::outbox::Congestion>, deliver: impl Fn(Bytes) + Send + Sync + 'static) -> Self {
        Inbox { deliver: Arc::new(deliver), congestion }
    }

    /// Delivers one batch, once the node can take it.
    pub async fn deliver(&self, batch: Bytes) {
        self.congestion.cleared().await;
        (self.deliver)(batch)
    }
}

/// Moves batches between nodes. A batch is opaque bytes (see `dispatch::batch`).
pub trait Broker: Send + Sync + 'static {
    /// `true` when no other node can be reached through this broker (the embedded,
    /// standalone one): the router then settles every message locally.
    fn is_solo(&self) -> bool {
        false
    }

    /// Spawns the publisher and starts consuming this node's batches into `inbox`.
    fn start(&self, inbox: Inbox, tasks: &Tasks);

    /// Queues one batch for `node` before returning (so batches leave in call order) and
    /// returns a future that resolves once the broker has taken responsibility for it
    /// (publisher confirm): only then may the messages in it be acked `sent`. `Ok(false)`:
    /// the broker has no queue for that node (it is gone), nothing was delivered there. A
    /// batch still waiting for an unreachable broker at `deadline` fails (its oldest message
    /// has waited as long as `CHAT_BROKER_BUFFER_MS` allows).
    fn publish(&self, node: &str, batch: Bytes, deadline: Instant) -> BoxFuture<'static, Result<bool, BackendError>>;

    /// Deletes what the broker holds for a dead node (its queue).
    fn remove_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, ()>;

    /// `false` while the broker is unreachable.
    fn is_healthy(&self) -> bool;

    /// Waits for pending confirms (briefly), deletes this node's queue, closes connections.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Ordering used for `members` lists: shorter names first, then lexically, so numeric ids
/// come out in numeric order.
pub fn sort_users(users: &mut [String]) {
    users.sort_unstable_by(|a, b| (a.len(), a.as_str()).cmp(&(b.len(), b.as_str())));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_source() {
        let io = ::redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        let e = BackendError::from(io);
        assert_eq!(e.to_string(), "presence store unavailable", "what a client sees");
        assert!(std::error::Error::source(&e).is_some());
        assert!(chain(&e).contains("refused"), "{}", chain(&e));
    }
}
