//! Redis presence: cluster state in one hash slot, atomic steps as Lua scripts.
//!
//! | file | concern |
//! |---|---|
//! | `scripts` | the Lua scripts and the key layout |
//! | `commands` | key names, script calls, the pipeline with `NOSCRIPT` reload |
//! | `writer` | the pipelined writer task and this node's ledger |
//! | `upkeep` | lease heartbeat, reconciliation after an outage, sweeping dead nodes |
//!
//! Writes (allocate, connect, disconnect, join, leave) go through one writer task that
//! drains everything queued and sends it as one pipeline of `EVALSHA`s. The same task keeps
//! a ledger of this node's connections (updated as each write completes) and runs upkeep
//! between pipelines: because all of that is serialized in one task, the ledger and the
//! store never race. Reads (`locate`, `online_count`, `members`) go straight to the
//! multiplexed connection; a routing lookup for a whole dispatcher drain is one pipeline.

mod commands;
mod scripts;
mod upkeep;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};

pub use commands::{Commands, Write};
use writer::{Op, WriteOp, Writer};

use super::{BackendError, BoxFuture, Located, Maintenance, NodeInfo, Presence, Target, retry, sort_users};
use crate::metrics::{Metrics, PresenceOp};
use crate::tasks::Tasks;

/// Writes queued for the writer task before callers wait.
const WRITE_QUEUE: usize = 4096;

/// How a node reaches Redis and who it is.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub connection: redis::ConnectionInfo,
    /// PEM certificates trusted for `rediss://` instead of the system's (`CHAT_REDIS_CA_FILE`).
    pub ca: Option<Vec<u8>>,
    /// Cluster name: the hash tag of every key.
    pub cluster: String,
    pub node: String,
    /// Distinguishes this process from an earlier one with the same node id.
    pub incarnation: u32,
    /// Node lease; upkeep runs every third of it.
    pub lease: Duration,
    pub metrics: Arc<Metrics>,
}

/// What the presence handle and the writer task share.
struct Shared {
    conn: ConnectionManager,
    metrics: Arc<Metrics>,
    keys: Commands,
    node: String,
    /// The first upkeep (which clears a previous incarnation's leftovers) has run.
    ready: AtomicBool,
    /// The last round trip succeeded.
    healthy: AtomicBool,
    /// What this node reports about itself at the next upkeep.
    report: Mutex<Option<NodeInfo>>,
}

impl Shared {
    /// Records that Redis failed; the error keeps its cause.
    fn down(&self, e: redis::RedisError) -> BackendError {
        self.healthy.store(false, Ordering::Relaxed);
        e.into()
    }
}

/// The Redis implementation of [`Presence`].
pub struct RedisPresence {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Op>,
    lease: Duration,
    /// The writer task, until [`Presence::start`] spawns it.
    idle: Mutex<Option<(Writer, mpsc::Receiver<Op>)>>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence").field("node", &self.shared.node).finish_non_exhaustive()
    }
}

impl RedisPresence {
    /// Sets up the connection (lazily: Redis may be down at start-up). Spawns nothing; the
    /// node is not ready until its first upkeep has reached Redis.
    pub fn new(cfg: RedisConfig) -> Result<RedisPresence, BackendError> {
        let client = match cfg.ca {
            Some(pem) => {
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
                redis::Client::build_with_tls(cfg.connection, certs)?
            }
            None => redis::Client::open(cfg.connection)?,
        };
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_min_delay(retry::MIN_DELAY)
            .set_max_delay(retry::MAX_DELAY);
        let conn = ConnectionManager::new_lazy_with_config(client, mgr_cfg)?;
        let shared = Arc::new(Shared {
            conn,
            metrics: cfg.metrics.clone(),
            keys: Commands::new(&cfg.cluster, &cfg.node),
            node: cfg.node.clone(),
            ready: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            report: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = Writer::new(shared.clone(), cfg.incarnation, cfg.lease);
        Ok(RedisPresence { shared, ops: tx, lease: cfg.lease, idle: Mutex::new(Some((writer, rx))) })
    }

    fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, BackendError>>) -> Op,
    ) -> BoxFuture<'static, Result<T, BackendError>> {
        let (tx, rx) = oneshot::channel();
        let ops = self.ops.clone();
        let op = make(tx);
        Box::pin(async move {
            let stopped = || BackendError::presence("presence writer stopped");
            ops.send(op).await.map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())?
        })
    }

    async fn read<T: redis::FromRedisValue>(&self, op: PresenceOp, pipe: redis::Pipeline) -> Result<T, BackendError> {
        let mut conn = self.shared.conn.clone();
        let m = &self.shared.metrics.presence;
        m.op(op);
        let started = std::time::Instant::now();
        let res = pipe.query_async(&mut conn).await.map_err(|e| self.shared.down(e));
        m.latency.observe_duration(started.elapsed());
        res
    }
}

impl Presence for RedisPresence {
    fn start(&self, tasks: &Tasks) {
        if let Some((writer, rx)) = self.idle.lock().take() {
            tasks.spawn(writer.run(rx, tasks.stopped()));
        }
    }

    fn allocate_id(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        self.call(|r| Op::Write(WriteOp::Allocate(r)))
    }

    fn release_id(&self, id: u64) -> BoxFuture<'_, Result<(), BackendError>> {
        self.call(|r| Op::Write(WriteOp::ReleaseId(id, r)))
    }

    fn connect<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        let user = user.to_owned();
        self.call(|r| Op::Write(WriteOp::Connect(user, r)))
    }

    fn disconnect<'a>(
        &'a self,
        user: &'a str,
        groups: &'a [Box<str>],
    ) -> BoxFuture<'a, Result<Vec<Box<str>>, BackendError>> {
        let (user, groups) = (user.to_owned(), groups.to_vec());
        self.call(|r| Op::Write(WriteOp::Disconnect(user, groups, r)))
    }

    fn join<'a>(&'a self, user: &'a str, group: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        let (user, group) = (user.to_owned(), group.to_owned());
        self.call(|r| Op::Write(WriteOp::Join(user, group, r)))
    }

    fn leave<'a>(&'a self, user: &'a str, group: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        let (user, group) = (user.to_owned(), group.to_owned());
        self.call(|r| Op::Write(WriteOp::Leave(user, group, r)))
    }

    fn online_count(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        let mut pipe = redis::pipe();
        pipe.cmd("SCARD").arg(&self.shared.keys.online);
        Box::pin(async move { self.read::<(u64,)>(PresenceOp::Read, pipe).await.map(|(n,)| n) })
    }

    fn members<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Result<Vec<String>, BackendError>> {
        let mut pipe = redis::pipe();
        pipe.cmd("HKEYS").arg(self.shared.keys.key("g", group));
        Box::pin(async move {
            let (mut users,): (Vec<String>,) = self.read(PresenceOp::Read, pipe).await?;
            sort_users(&mut users);
            Ok(users)
        })
    }

    fn locate<'a>(&'a self, targets: &'a [Target]) -> BoxFuture<'a, Result<Located, BackendError>> {
        let keys = &self.shared.keys;
        let mut pipe = redis::pipe();
        // Whether the store is whole: its epoch marker exists (a restarted, empty Redis has
        // none) and no node is re-registering after data loss.
        pipe.cmd("EXISTS").arg(keys.key_of("epoch"));
        pipe.cmd("EXISTS").arg(keys.key_of("recovering"));
        for t in targets {
            let key = match t {
                Target::User(u) => self.shared.keys.key("u", u),
                Target::Group(g) => self.shared.keys.key("gn", g),
            };
            pipe.cmd("HKEYS").arg(key);
        }
        Box::pin(async move {
            if targets.is_empty() {
                return Ok(Located { nodes: Vec::new(), settled: true });
            }
            let mut replies: Vec<redis::Value> = self.read(PresenceOp::Locate, pipe).await?;
            if replies.len() != targets.len() + 2 {
                return Err(BackendError::presence("routing lookup answered wrongly"));
            }
            let nodes = replies.split_off(2).into_iter().map(commands::parse).collect::<Result<_, _>>()?;
            let epoch: bool = commands::parse(replies[0].clone())?;
            let recovering: bool = commands::parse(replies[1].clone())?;
            Ok(Located { nodes, settled: epoch && !recovering })
        })
    }

    fn is_healthy(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed) && self.shared.healthy.load(Ordering::Relaxed)
    }

    fn release_node(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.call(Op::ReleaseNode)
    }

    fn upkeep_period(&self) -> Option<Duration> {
        Some(self.lease / 3)
    }

    fn maintain(&self) -> BoxFuture<'_, Result<Maintenance, BackendError>> {
        self.call(Op::Maintain)
    }

    fn report(&self, me: NodeInfo) {
        *self.shared.report.lock() = Some(me);
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BackendError>> {
        Box::pin(async move {
            let keys = &self.shared.keys;
            let mut list = redis::pipe();
            list.cmd("SMEMBERS").arg(format!("{}nodes", keys.prefix));
            let (mut nodes,): (Vec<String>,) = self.read(PresenceOp::Read, list).await?;
            nodes.sort();
            let mut pipe = redis::pipe();
            for n in &nodes {
                pipe.cmd("EXISTS").arg(keys.key("lease", n));
                pipe.cmd("HGETALL").arg(keys.key("info", n));
            }
            let replies: Vec<redis::Value> = self.read(PresenceOp::Read, pipe).await?;
            let mut out = Vec::new();
            for (node, pair) in nodes.into_iter().zip(replies.chunks_exact(2)) {
                let alive: bool = commands::parse(pair[0].clone())?;
                let info: std::collections::HashMap<String, u64> = commands::parse(pair[1].clone())?;
                if alive {
                    let get = |k: &str| info.get(k).copied().unwrap_or(0);
                    out.push(NodeInfo {
                        connections: get("connections"),
                        users: get("users"),
                        started: get("started"),
                        node,
                    });
                }
            }
            Ok(out)
        })
    }
}
