//! A gateway node: configuration, local hub, router and backends, and its life cycle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::backend::amqp::{AmqpBroker, AmqpConfig};
use crate::backend::memory::MemoryPresence;
use crate::backend::redis::{RedisConfig, RedisPresence};
use crate::backend::{BackendError, Broker, Presence};
use crate::cluster::{Cluster, Limits};
use crate::config::Config;
use crate::hub::Hub;
use crate::router::Router;

/// Jobs each dispatcher shard queues before senders get `unavailable`.
const DISPATCH_QUEUE: usize = 16_384;

/// The backends a node runs on.
pub struct Backends {
    pub presence: Arc<dyn Presence>,
    /// `None`: single node, everything is local.
    pub broker: Option<Arc<dyn Broker>>,
    /// Random per process: part of every message id and of the node's lease.
    pub incarnation: u32,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").field("broker", &self.broker.is_some()).finish_non_exhaustive()
    }
}

impl Backends {
    /// The embedded, single-node pair.
    pub fn embedded(node_id: &str) -> Self {
        Backends {
            presence: Arc::new(MemoryPresence::standalone(node_id)),
            broker: None,
            incarnation: fastrand::u32(..),
        }
    }

    /// Redis and RabbitMQ, from `config.cluster`; embedded if that is `None`. Connections
    /// are made in the background: a backend that is down at start-up only delays readiness.
    pub fn from_config(config: &Config) -> Result<Self, BackendError> {
        let Some(c) = &config.cluster else { return Ok(Self::embedded(&config.node_id)) };
        let incarnation = fastrand::u32(..);
        let presence = RedisPresence::new(RedisConfig {
            url: c.redis_url.clone(),
            cluster: c.name.clone(),
            node: config.node_id.clone(),
            incarnation,
            lease: c.node_ttl,
        })?;
        let broker = AmqpBroker::new(AmqpConfig {
            url: c.amqp_url.clone(),
            cluster: c.name.clone(),
            node: config.node_id.clone(),
            lease: c.node_ttl,
            persistent: c.persistent,
            prefetch: c.prefetch,
            buffer_bytes: c.broker_buffer_bytes,
            buffer_for: c.broker_buffer,
        })?;
        Ok(Backends { presence: Arc::new(presence), broker: Some(Arc::new(broker)), incarnation })
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
    pub auth: crate::auth::Auth,
    pub hub: Arc<Hub>,
    pub router: Router,
    pub presence: Arc<dyn Presence>,
    pub broker: Option<Arc<dyn Broker>>,
    /// Random per process: part of every message id, so ids stay unique across restarts.
    pub incarnation: u32,
    next_conn: AtomicU64,
    /// Origin of the node's millisecond clock (connection activity).
    started: std::time::Instant,
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
    /// Builds the node; in cluster mode also starts the dispatchers, the broker consumer
    /// and presence maintenance. Needs a Tokio runtime.
    pub fn new(config: Config, backends: Backends) -> Arc<Node> {
        let hub = Arc::new(Hub::new(config.shards));
        let cluster = backends.broker.as_ref().map(|broker| {
            let limits = config.cluster.as_ref().map_or(
                Limits { batch_bytes: 128 << 10, batch_frames: 512, pacing: std::time::Duration::from_millis(1) },
                |c| Limits { batch_bytes: c.batch_bytes, batch_frames: c.batch_frames, pacing: c.publish_pacing },
            );
            Cluster::start(
                &config.node_id,
                hub.clone(),
                backends.presence.clone(),
                broker.clone(),
                config.workers,
                DISPATCH_QUEUE,
                limits,
            )
        });
        let period = config.cluster.as_ref().map(|c| c.node_ttl / 3);
        let node = Arc::new(Node {
            auth: crate::auth::Auth::new(config.jwt_secret.as_deref(), config.allowed_origins.clone()),
            router: Router::new(hub.clone(), cluster),
            hub,
            presence: backends.presence,
            broker: backends.broker,
            incarnation: backends.incarnation,
            next_conn: AtomicU64::new(1),
            started: std::time::Instant::now(),
            connections: Arc::new(AtomicUsize::new(0)),
            draining: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            sessions: TaskTracker::new(),
            config,
        });
        if let (Some(period), true) = (period, node.broker.is_some()) {
            tokio::spawn(crate::cluster::maintain(node.clone(), period));
        }
        tokio::spawn(heartbeat(node.clone()));
        node
    }

    /// Milliseconds since the node started (connection activity clock).
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.ms_at(std::time::Instant::now())
    }

    /// `at` on the node's millisecond clock.
    #[inline]
    pub fn ms_at(&self, at: std::time::Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
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
        self.draining.load(Ordering::SeqCst)
    }

    /// Serving, and every backend reachable.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.presence.is_healthy() && self.broker.as_ref().is_none_or(|b| b.is_healthy())
    }

    /// Resolves to `true` once shutdown has begun.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Stops admitting connections and queues close 1001 behind what every connection is
    /// owed. A session registering concurrently sees `is_draining` right after it joins the
    /// hub (the hub's locks order the two), and closes itself.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
        self.sessions.close();
        for conn in self.hub.connections() {
            conn.outbox.close_with(shutdown_close());
        }
    }

    /// Waits for every session to finish (after [`begin_shutdown`](Self::begin_shutdown)).
    pub async fn sessions_finished(&self) {
        self.sessions.wait().await
    }

    /// Releases what this node holds in the backends: routes what is still queued, removes
    /// this node's presence, then closes the broker.
    pub async fn release(&self) -> Result<(), BackendError> {
        if let Some(cluster) = self.router.cluster() {
            cluster.flush().await;
        }
        let res = self.presence.release_node().await;
        if let Some(b) = &self.broker {
            b.close().await;
        }
        res
    }

    /// Gives back an anonymous id whose connection never started.
    pub async fn release_identity(&self, identity: &Identity) {
        let Identity::Anonymous(id) = identity else { return };
        if let Err(e) = self.presence.release_id(*id).await {
            warn!(id, error = %e, "could not release id");
        }
    }
}

/// The close frame every client gets at shutdown.
pub fn shutdown_close() -> bytes::Bytes {
    crate::protocol::ws::close_frame(crate::protocol::ws::close::GOING_AWAY, "server shutting down")
}

/// One task per node instead of a timer per connection: it visits one hub shard every
/// `heartbeat / shards`, so each connection is seen once per interval. A connection silent
/// for two intervals is closed (4000); the others get a WebSocket ping.
async fn heartbeat(node: Arc<Node>) {
    let hb = node.config.heartbeat;
    let shards = node.hub.shard_count().max(1);
    let mut tick = tokio::time::interval((hb / shards as u32).max(std::time::Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = node.shutdown_signal();
    let silent = 2 * hb.as_millis() as u64;
    let mut shard = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|&s| s) => return,
        }
        let now = node.now_ms();
        node.hub.for_each_in_shard(shard, |conn| {
            if now.saturating_sub(conn.last_seen()) >= silent {
                use crate::protocol::ws;
                conn.outbox.close_with(ws::close_frame(ws::close::HEARTBEAT_TIMEOUT, "heartbeat timeout"));
            } else {
                let _ = conn.outbox.push(crate::protocol::ws::ping_frame());
            }
        });
        shard = (shard + 1) % shards;
    }
}
