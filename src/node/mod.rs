//! A gateway node: its parts, and its life cycle.
//!
//! [`Node::new`] builds the parts (hub, router, dispatchers, backends) and spawns nothing.
//! [`Node::start`] spawns every background loop into the node's [`Tasks`].
//! [`Node::begin_shutdown`] drains (1001 to every client after what it is owed), and
//! [`Node::release`] then hands what is queued to the broker, removes the node's presence,
//! closes the broker and waits for every background task to end.

mod admission;
mod expiry;
mod heartbeat;
mod upkeep;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tracing::warn;

pub use admission::{Admission, Full, Gate, Handshake};
pub use expiry::{Deadline, Expiry};
pub use heartbeat::Clock;

/// The live nodes of the cluster for `GET /api/nodes`: what the others last reported, and this
/// node as it is now.
pub async fn cluster_nodes(node: &Node) -> Result<Vec<NodeInfo>, BackendError> {
    let me = node.stats.info();
    let mut nodes: Vec<NodeInfo> = node.presence.nodes().await?.into_iter().filter(|n| n.node != me.node).collect();
    nodes.push(me);
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}

use crate::backend::amqp::AmqpBroker;
use crate::backend::memory::{MemoryBroker, MemoryCluster, MemoryNetwork, MemoryPresence};
use crate::backend::redis::RedisPresence;
use crate::backend::{BackendError, Broker, NodeInfo, Presence, chain};
use crate::config::Config;
use crate::dispatch::{self, Dispatch, Limits};
use crate::hub::Hub;
use crate::metrics::{Metrics, ScrapeGauge};
use crate::outbox::Congestion;
use crate::router::Router;
use crate::tasks::Tasks;

/// The backends a node runs on, and the metrics they (and the node) record into.
pub struct Backends {
    pub presence: Arc<dyn Presence>,
    pub broker: Arc<dyn Broker>,
    /// Random per process: part of every message id and of the node's lease.
    pub incarnation: u32,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").field("solo", &self.broker.is_solo()).finish_non_exhaustive()
    }
}

impl Backends {
    /// The embedded pair: a single node, everything local.
    pub fn embedded(node_id: &str) -> Self {
        Backends {
            presence: Arc::new(MemoryPresence::standalone(node_id)),
            broker: Arc::new(MemoryBroker::solo()),
            incarnation: fastrand::u32(..),
            metrics: Arc::default(),
        }
    }

    /// Node `node_id` of an in-process cluster (tests): nodes built on the same `cluster`
    /// and `network` behave as nodes on Redis and RabbitMQ do.
    pub fn in_process(cluster: &Arc<MemoryCluster>, network: &Arc<MemoryNetwork>, node_id: &str) -> Self {
        Backends {
            presence: Arc::new(MemoryPresence::new(cluster.clone(), node_id)),
            broker: Arc::new(MemoryBroker::new(network.clone(), node_id)),
            incarnation: fastrand::u32(..),
            metrics: Arc::default(),
        }
    }

    /// Redis and RabbitMQ when the configuration names them, else embedded. Connections are
    /// made once the node starts, in the background: a backend that is down at start-up
    /// only delays readiness.
    pub fn from_config(config: &Config) -> Result<Self, BackendError> {
        let Some(endpoints) = config.cluster.endpoints() else { return Ok(Self::embedded(&config.node_id)) };
        let incarnation = fastrand::u32(..);
        let metrics = Arc::new(Metrics::new());
        let c = &config.cluster;
        let presence = RedisPresence::new(crate::backend::redis::RedisConfig {
            connection: endpoints.redis.clone(),
            ca: endpoints.redis_ca.clone(),
            cluster: c.name.clone(),
            node: config.node_id.clone(),
            incarnation,
            lease: c.node_ttl,
            metrics: metrics.clone(),
        })?;
        let broker = AmqpBroker::new(crate::backend::amqp::AmqpConfig {
            url: endpoints.amqp_url.clone(),
            cluster: c.name.clone(),
            node: config.node_id.clone(),
            lease: c.node_ttl,
            persistent: c.persistent,
            prefetch: c.prefetch,
            buffer_bytes: c.broker_buffer_bytes,
            heartbeat: c.amqp_heartbeat,
            ca: endpoints.amqp_ca.clone(),
            metrics: metrics.clone(),
        })?;
        Ok(Backends { presence: Arc::new(presence), broker: Arc::new(broker), incarnation, metrics })
    }
}

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Anonymous mode: an id reserved from the cluster-wide allocator.
    Anonymous(u64),
    /// A verified token: the user id (`sub`), its expiry and its groups.
    User(crate::auth::Grant),
}

impl Identity {
    pub fn user(&self) -> String {
        match self {
            Identity::Anonymous(id) => id.to_string(),
            Identity::User(g) => g.user.clone(),
        }
    }
}

/// What the node reports about itself (`GET /api/nodes`), read live.
#[derive(Debug, Clone)]
pub struct Stats {
    node: String,
    hub: Arc<Hub>,
    connections: Arc<AtomicUsize>,
    /// Process start, ms since the epoch.
    started: u64,
}

impl Stats {
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            node: self.node.clone(),
            connections: self.connections.load(Ordering::Relaxed) as u64,
            users: self.hub.user_count() as u64,
            started: self.started,
        }
    }
}

/// A node of the chat cluster (or the whole chat server, embedded).
pub struct Node {
    pub config: Config,
    pub auth: crate::auth::Auth,
    pub hub: Arc<Hub>,
    pub router: Arc<Router>,
    pub presence: Arc<dyn Presence>,
    pub broker: Arc<dyn Broker>,
    /// Random per process: part of every message id, so ids stay unique across restarts.
    pub incarnation: u32,
    pub clock: Clock,
    /// Token connections by the time their token expires (token mode only).
    pub expiry: Arc<Expiry>,
    pub metrics: Arc<Metrics>,
    pub stats: Stats,
    /// Fan-in control: set while outboxes lag behind their (runnable) writers.
    pub congestion: Arc<Congestion>,
    next_conn: AtomicU64,
    /// The handshake caps: connections per node and per client address, handshakes.
    pub gate: Gate,
    connections: Arc<AtomicUsize>,
    started: AtomicBool,
    /// Cancelled when shutdown begins: the loops that must not outlive the node's presence
    /// (heartbeat, lease upkeep) end then.
    draining: CancellationToken,
    /// Upgraded connections: hyper's graceful shutdown does not see them.
    pub(crate) sessions: TaskTracker,
    /// Every background loop.
    tasks: Tasks,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("node_id", &self.config.node_id).finish_non_exhaustive()
    }
}

impl Node {
    /// Builds the node's parts. Spawns nothing: see [`start`](Self::start).
    pub fn new(config: Config, backends: Backends) -> Arc<Node> {
        let hub = Arc::new(Hub::new(config.shards));
        let metrics = backends.metrics;
        let remote = (!backends.broker.is_solo()).then(|| {
            let c = &config.cluster;
            Dispatch::new(
                &config.node_id,
                backends.incarnation,
                backends.presence.clone(),
                backends.broker.clone(),
                config.workers,
                c.dispatch_queue,
                Limits {
                    batch_bytes: c.batch_bytes,
                    batch_frames: c.batch_frames,
                    pacing: c.publish_pacing,
                    outage: c.broker_buffer,
                },
                metrics.clone(),
            )
        });
        let connections = Arc::new(AtomicUsize::new(0));
        let clock = Clock::default();
        let congestion = Congestion::new();
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let stats = Stats {
            node: config.node_id.clone(),
            hub: hub.clone(),
            connections: connections.clone(),
            started: started as u64,
        };
        register_gauges(&metrics, &hub, &connections, clock, &congestion);
        if let Some(dispatch) = &remote {
            let queued = dispatch.queue_gauge();
            metrics.register_collector(Box::new(ScrapeGauge {
                name: "dispatch_queued",
                help: "Messages queued for other nodes in the dispatcher shards, not yet taken (bound: CHAT_DISPATCH_QUEUE per shard)",
                unit: None,
                value: Box::new(move || queued() as i64),
            }));
        }
        Arc::new(Node {
            auth: crate::auth::Auth::from_config(&config),
            expiry: Arc::new(Expiry::new(config.jwt_leeway)),
            router: Arc::new(Router::new(hub.clone(), remote, metrics.clone())),
            hub,
            presence: backends.presence,
            broker: backends.broker,
            incarnation: backends.incarnation,
            clock,
            metrics,
            stats,
            congestion,
            next_conn: AtomicU64::new(1),
            gate: Gate::new(
                connections.clone(),
                config.max_connections,
                config.max_connections_per_ip,
                config.max_handshakes,
                config.trusted_proxies.clone().unwrap_or_default(),
            ),
            connections,
            started: AtomicBool::new(false),
            draining: CancellationToken::new(),
            sessions: TaskTracker::new(),
            tasks: Tasks::new(),
            config,
        })
    }

    /// Spawns every background loop: dispatchers, the broker's publisher and consumer, the
    /// presence writer and upkeep, the heartbeat, token expiry. Needs a Tokio runtime; a second call does
    /// nothing.
    pub fn start(&self) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let tasks = &self.tasks;
        self.presence.start(tasks);
        let inbox = dispatch::inbox(self.hub.clone(), self.metrics.clone(), self.congestion.clone());
        self.broker.start(inbox, tasks);
        self.router.start(tasks);
        if let Some(period) = self.presence.upkeep_period() {
            let parts = upkeep::Parts {
                presence: self.presence.clone(),
                broker: self.broker.clone(),
                router: self.router.clone(),
                hub: self.hub.clone(),
                stats: self.stats.clone(),
            };
            tasks.spawn(upkeep::run(parts, period, self.draining_signal()));
        }
        tasks.spawn(heartbeat::run(
            self.hub.clone(),
            self.clock,
            self.config.heartbeat,
            self.congestion.clone(),
            self.draining_signal(),
        ));
        if self.auth.tokens_required() {
            tasks.spawn(expiry::run(self.expiry.clone(), self.draining_signal()));
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// WebSocket connections open (or being opened) on this node.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves once shutdown has begun.
    pub fn draining_signal(&self) -> WaitForCancellationFutureOwned {
        self.draining.clone().cancelled_owned()
    }

    /// Serving, and every backend reachable.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.presence.is_healthy() && self.broker.is_healthy()
    }

    /// Stops admitting connections and queues close 1001 behind what every connection is
    /// owed. A session registering concurrently sees `is_draining` right after it joins the
    /// hub (the hub's locks order the two), and closes itself.
    pub fn begin_shutdown(&self) {
        self.draining.cancel();
        self.sessions.close();
        for conn in self.hub.connections() {
            conn.outbox.close_with(shutdown_close());
        }
    }

    /// Waits for every session to finish (after [`begin_shutdown`](Self::begin_shutdown)).
    pub async fn sessions_finished(&self) {
        self.sessions.wait().await
    }

    /// Releases what this node holds, in order: routes what is still queued for other
    /// nodes, removes this node's presence, closes the broker; then stops every background
    /// loop and waits for them. Call it after [`begin_shutdown`](Self::begin_shutdown): the
    /// heartbeat and presence upkeep loops end on the drain signal, and this waits for them.
    pub async fn release(&self) -> Result<(), BackendError> {
        self.router.flush().await;
        let res = self.presence.release_node().await;
        self.broker.close().await;
        self.tasks.stop();
        self.tasks.wait().await;
        res
    }

    /// Background tasks still running (zero once [`release`](Self::release) returned).
    pub fn background_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Gives back an anonymous id whose connection never started.
    pub async fn release_identity(&self, identity: &Identity) {
        let Identity::Anonymous(id) = identity else { return };
        if let Err(e) = self.presence.release_id(*id).await {
            warn!(id, error = %chain(&e), "could not release id");
        }
    }
}

/// The node's gauges that are read when scraped rather than kept on the hot path.
fn register_gauges(
    metrics: &Metrics,
    hub: &Arc<Hub>,
    connections: &Arc<AtomicUsize>,
    clock: Clock,
    congestion: &Arc<Congestion>,
) {
    let open = connections.clone();
    metrics.register_collector(Box::new(ScrapeGauge {
        name: "connections",
        help: "WebSocket connections open (or being opened)",
        unit: None,
        value: Box::new(move || open.load(Ordering::Relaxed) as i64),
    }));
    let hub = hub.clone();
    metrics.register_collector(Box::new(ScrapeGauge {
        name: "outbox_queued",
        help: "Bytes queued in client outboxes, not yet taken by their writers",
        unit: Some(prometheus_client::registry::Unit::Bytes),
        value: Box::new(move || hub.connections().iter().map(|c| c.outbox.queued_bytes()).sum::<usize>() as i64),
    }));
    let congested = congestion.clone();
    metrics.register_collector(Box::new(ScrapeGauge {
        name: "congested_outboxes",
        help: "Outboxes past half their bound with a runnable writer: while any, sessions pause reading",
        unit: None,
        value: Box::new(move || congested.outboxes() as i64),
    }));
    metrics.register_collector(Box::new(ScrapeGauge {
        name: "uptime",
        help: "Time since the node started",
        unit: Some(prometheus_client::registry::Unit::Seconds),
        value: Box::new(move || (clock.now_ms() / 1000) as i64),
    }));
}

/// The close frame every client gets at shutdown.
pub fn shutdown_close() -> bytes::Bytes {
    crate::protocol::ws::close_frame(crate::protocol::ws::close::GOING_AWAY, "server shutting down")
}
