//! A gateway node: configuration, local hub, router and backends, and its life cycle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::backend::memory::MemoryPresence;
use crate::backend::{BackendError, Broker, Presence};
use crate::config::Config;
use crate::hub::Hub;
use crate::router::Router;

/// The backends a node runs on.
pub struct Backends {
    pub presence: Arc<dyn Presence>,
    pub broker: Option<Arc<dyn Broker>>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").field("broker", &self.broker.is_some()).finish_non_exhaustive()
    }
}

impl Backends {
    /// The embedded, single-node pair.
    pub fn embedded(node_id: &str) -> Self {
        Backends { presence: Arc::new(MemoryPresence::standalone(node_id)), broker: None }
    }
}

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Anonymous mode: an id reserved from the cluster-wide allocator.
    Anonymous(u64),
    /// An authenticated user id (from a token's `sub`).
    User(String),
}

impl Identity {
    pub fn user(&self) -> String {
        match self {
            Identity::Anonymous(id) => id.to_string(),
            Identity::User(u) => u.clone(),
        }
    }
}

/// A node of the chat cluster (or the whole chat server, embedded).
pub struct Node {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub router: Router,
    pub presence: Arc<dyn Presence>,
    pub broker: Option<Arc<dyn Broker>>,
    /// Random per process: part of every message id, so ids stay unique across restarts.
    pub incarnation: u32,
    next_conn: AtomicU64,
    connections: Arc<AtomicUsize>,
    draining: AtomicBool,
    shutdown: watch::Sender<bool>,
    /// Upgraded connections: hyper's graceful shutdown does not see them.
    pub(crate) sessions: TaskTracker,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("node_id", &self.config.node_id).finish_non_exhaustive()
    }
}

/// A reserved connection slot; released on drop.
#[derive(Debug)]
pub struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Node {
    pub fn new(config: Config, backends: Backends) -> Arc<Node> {
        let hub = Arc::new(Hub::new(config.shards));
        Arc::new(Node {
            router: Router::new(hub.clone()),
            hub,
            presence: backends.presence,
            broker: backends.broker,
            incarnation: fastrand::u32(..),
            next_conn: AtomicU64::new(1),
            connections: Arc::new(AtomicUsize::new(0)),
            draining: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            sessions: TaskTracker::new(),
            config,
        })
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Reserves a connection slot, or `None` at `CHAT_MAX_CONNECTIONS`.
    pub fn admit(&self) -> Option<Admission> {
        let n = self.connections.fetch_add(1, Ordering::Relaxed);
        let slot = Admission(self.connections.clone());
        (n < self.config.max_connections).then_some(slot)
    }

    /// WebSocket connections open (or being opened) on this node.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Serving, and every backend reachable.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.presence.is_healthy() && self.broker.as_ref().is_none_or(|b| b.is_healthy())
    }

    /// Resolves to `true` once shutdown has begun.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Stops admitting connections and tells every session to close with 1001.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.shutdown.send_replace(true);
        self.sessions.close();
    }

    /// Waits for every session to finish (after [`begin_shutdown`](Self::begin_shutdown)).
    pub async fn sessions_finished(&self) {
        self.sessions.wait().await
    }

    /// Releases what this node holds in the backends.
    pub async fn release(&self) -> Result<(), BackendError> {
        let res = self.presence.release_node().await;
        if let Some(b) = &self.broker {
            b.close().await;
        }
        res
    }

    /// Gives back an anonymous id whose connection never started.
    pub async fn release_identity(&self, identity: &Identity) {
        if let Identity::Anonymous(id) = identity {
            if let Err(e) = self.presence.release_id(*id).await {
                warn!(id, error = %e, "could not release id");
            }
        }
    }
}
