//! Redis presence: cluster state in one hash slot, atomic steps as Lua scripts.
//!
//! Writes (allocate, connect, disconnect, join, leave) go through one writer task that
//! drains everything queued and sends it as one pipeline of `EVALSHA`s. The same task keeps
//! a ledger of what this node's connections are (updated as each write completes) and runs
//! maintenance between pipelines: lease heartbeat, reconciliation after an outage (the store
//! is brought back in line with the ledger) and the sweep of dead nodes. Because all of that
//! is serialized in one task, the ledger and the store never race.
//!
//! Reads (`locate`, `online_count`, `members`) go straight to the multiplexed connection;
//! a routing lookup for a whole dispatcher drain is one pipeline of `HKEYS`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisError, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{BackendError, BoxFuture, Maintenance, Presence, Target, scripts, sort_users};

/// Writes per pipeline, and commands per reconciliation pipeline.
const MAX_PIPELINE: usize = 512;

/// How a node reaches Redis and who it is.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`.
    pub url: String,
    /// Cluster name: the hash tag of every key.
    pub cluster: String,
    pub node: String,
    /// Distinguishes this process from an earlier one with the same node id.
    pub incarnation: u32,
    /// Node lease; maintenance runs every third of it.
    pub lease: Duration,
}

type Reply<T> = oneshot::Sender<Result<T, BackendError>>;

enum Op {
    Allocate(Reply<u64>),
    ReleaseId(u64, Reply<()>),
    Connect(String, Reply<()>),
    Disconnect(String, Vec<Box<str>>, Reply<Vec<Box<str>>>),
    Join(String, String, Reply<bool>),
    Leave(String, String, Reply<bool>),
    Maintain(Reply<Maintenance>),
    ReleaseNode(Reply<()>),
}

/// One presence write: a script call in the writer's pipeline.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// Reserve the smallest free anonymous id on this node.
    Allocate,
    /// Give back a reservation that never connected.
    ReleaseId(&'a str),
    /// `delta` connections of `user` on this node (`anon`: the id is allocator-owned).
    AdjustUser { user: &'a str, delta: i64, anon: bool },
    /// One connection of `user` ended while a member of `groups`.
    Disconnect { user: &'a str, groups: &'a [Box<str>] },
    /// `delta` member connections of `user` in `group` on this node.
    AdjustMember { group: &'a str, user: &'a str, delta: i64 },
}

/// Builds this node's Redis commands: key names (see `scripts` for the layout) and script
/// calls. Pure, so the pipeline construction is unit-tested and benched.
#[derive(Debug, Clone)]
pub struct Commands {
    prefix: String,
    online: String,
    node: String,
}

impl Commands {
    pub fn new(cluster: &str, node: &str) -> Self {
        let prefix = format!("chatgate:{{{cluster}}}:");
        Commands { online: format!("{prefix}online"), prefix, node: node.to_owned() }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    /// `EVALSHA` of `script` with the common key and arguments.
    fn eval(&self, script: &scripts::Lua) -> Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&script.sha).arg(1).arg(&self.online).arg(&self.prefix).arg(&self.node);
        c
    }

    /// The command for one write.
    pub fn write(&self, w: Write<'_>) -> Cmd {
        match w {
            Write::Allocate => self.eval(&scripts::ALLOCATE),
            Write::ReleaseId(id) => {
                let mut c = self.eval(&scripts::RELEASE_ID);
                c.arg(id);
                c
            }
            Write::AdjustUser { user, delta, anon } => {
                let mut c = self.eval(&scripts::ADJUST_USER);
                c.arg(user).arg(delta).arg(if anon { "1" } else { "0" });
                c
            }
            Write::Disconnect { user, groups } => {
                let mut c = self.eval(&scripts::DISCONNECT);
                c.arg(user);
                for g in groups {
                    c.arg(&**g);
                }
                c
            }
            Write::AdjustMember { group, user, delta } => {
                let mut c = self.eval(&scripts::ADJUST_MEMBER);
                c.arg(group).arg(user).arg(delta);
                c
            }
        }
    }

    /// One pipeline for a batch of writes; per-command errors come back as values.
    pub fn pipeline<'a>(&self, writes: impl IntoIterator<Item = Write<'a>>) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for w in writes {
            pipe.add_command(self.write(w));
        }
        pipe
    }
}

struct Shared {
    conn: ConnectionManager,
    keys: Commands,
    node: String,
    /// The first maintenance (which clears a previous incarnation's leftovers) has run.
    ready: AtomicBool,
    /// The last round trip succeeded.
    healthy: AtomicBool,
}

impl Shared {
    fn eval(&self, script: &scripts::Lua) -> Cmd {
        self.keys.eval(script)
    }

    fn down(&self, e: &RedisError) -> BackendError {
        self.healthy.store(false, Ordering::Relaxed);
        BackendError::Presence(e.to_string())
    }
}

/// The Redis implementation of [`Presence`].
pub struct RedisPresence {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Op>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence").field("node", &self.shared.node).finish_non_exhaustive()
    }
}

impl RedisPresence {
    /// Sets up the connection (lazily: Redis may be down at start-up) and the writer task.
    /// The node is not ready until its first [`Presence::maintain`] has reached Redis.
    pub fn new(cfg: RedisConfig) -> Result<RedisPresence, BackendError> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(|e| BackendError::Presence(e.to_string()))?;
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, mgr_cfg)
            .map_err(|e| BackendError::Presence(e.to_string()))?;
        let shared = Arc::new(Shared {
            conn,
            keys: Commands::new(&cfg.cluster, &cfg.node),
            node: cfg.node.clone(),
            ready: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(4096);
        let writer = Writer {
            shared: shared.clone(),
            ledger: Ledger::default(),
            dirty: false,
            incarnation: cfg.incarnation.to_string(),
            lease_ms: cfg.lease.as_millis() as u64,
            heartbeats: 0,
        };
        tokio::spawn(writer.run(rx));
        Ok(RedisPresence { shared, ops: tx })
    }

    fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Op,
    ) -> BoxFuture<'static, Result<T, BackendError>> {
        let (tx, rx) = oneshot::channel();
        let ops = self.ops.clone();
        let op = make(tx);
        Box::pin(async move {
            ops.send(op).await.map_err(|_| BackendError::Presence("presence writer stopped".into()))?;
            rx.await.map_err(|_| BackendError::Presence("presence writer stopped".into()))?
        })
    }

    async fn read<T: redis::FromRedisValue>(&self, pipe: redis::Pipeline) -> Result<T, BackendError> {
        let mut conn = self.shared.conn.clone();
        pipe.query_async(&mut conn).await.map_err(|e| self.shared.down(&e))
    }
}

impl Presence for RedisPresence {
    fn allocate_id(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        self.call(Op::Allocate)
    }

    fn release_id(&self, id: u64) -> BoxFuture<'_, Result<(), BackendError>> {
        self.call(|r| Op::ReleaseId(id, r))
    }

    fn connect<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        let user = user.to_owned();
        self.call(|r| Op::Connect(user, r))
    }

    fn disconnect<'a>(
        &'a self,
        user: &'a str,
        groups: &'a [Box<str>],
    ) -> BoxFuture<'a, Result<Vec<Box<str>>, BackendError>> {
        let (user, groups) = (user.to_owned(), groups.to_vec());
        self.call(|r| Op::Disconnect(user, groups, r))
    }

    fn join<'a>(&'a self, user: &'a str, group: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        let (user, group) = (user.to_owned(), group.to_owned());
        self.call(|r| Op::Join(user, group, r))
    }

    fn leave<'a>(&'a self, user: &'a str, group: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        let (user, group) = (user.to_owned(), group.to_owned());
        self.call(|r| Op::Leave(user, group, r))
    }

    fn online_count(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        let mut pipe = redis::pipe();
        pipe.cmd("SCARD").arg(&self.shared.keys.online);
        Box::pin(async move { self.read::<(u64,)>(pipe).await.map(|(n,)| n) })
    }

    fn members<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Result<Vec<String>, BackendError>> {
        let mut pipe = redis::pipe();
        pipe.cmd("HKEYS").arg(self.shared.keys.key("g", group));
        Box::pin(async move {
            let (mut users,): (Vec<String>,) = self.read(pipe).await?;
            sort_users(&mut users);
            Ok(users)
        })
    }

    fn locate<'a>(&'a self, targets: &'a [Target]) -> BoxFuture<'a, Result<Vec<Vec<String>>, BackendError>> {
        let mut pipe = redis::pipe();
        for t in targets {
            let key = match t {
                Target::User(u) => self.shared.keys.key("u", u),
                Target::Group(g) => self.shared.keys.key("gn", g),
            };
            pipe.cmd("HKEYS").arg(key);
        }
        Box::pin(async move {
            if targets.is_empty() {
                return Ok(Vec::new());
            }
            self.read(pipe).await
        })
    }

    fn is_healthy(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed) && self.shared.healthy.load(Ordering::Relaxed)
    }

    fn release_node(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.call(Op::ReleaseNode)
    }

    fn maintain(&self) -> BoxFuture<'_, Result<Maintenance, BackendError>> {
        self.call(Op::Maintain)
    }
}

/// What this node's connections are, as far as presence is concerned.
#[derive(Debug, Default)]
struct Ledger {
    /// user → connections on this node.
    users: HashMap<String, i64>,
    /// (group, user) → member connections on this node.
    members: HashMap<(String, String), i64>,
    /// Ids allocated and not yet connected or released.
    reserved: HashSet<u64>,
    /// Users whose id came from the allocator.
    anon: HashSet<String>,
    /// Memberships that ended while the store could not record it: if the store lost them
    /// (restart), reconciliation alone cannot see they ended, so their `leave` is due then.
    pending_leaves: HashSet<(String, String)>,
}

impl Ledger {
    fn user(&mut self, user: &str, d: i64) {
        let n = self.users.entry(user.to_owned()).or_default();
        *n += d;
        if *n <= 0 {
            self.users.remove(user);
            self.anon.remove(user);
        }
    }

    fn member(&mut self, group: &str, user: &str, d: i64) {
        let key = (group.to_owned(), user.to_owned());
        let n = self.members.entry(key.clone()).or_default();
        *n += d;
        if *n <= 0 {
            self.members.remove(&key);
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    ledger: Ledger,
    /// A write may have failed half-way: reconcile at the next maintenance.
    dirty: bool,
    incarnation: String,
    lease_ms: u64,
    heartbeats: u64,
}

fn unavailable(what: &str) -> BackendError {
    BackendError::Presence(what.to_owned())
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut ops = Vec::with_capacity(MAX_PIPELINE);
        let mut batch = Vec::with_capacity(MAX_PIPELINE);
        while rx.recv_many(&mut ops, MAX_PIPELINE).await > 0 {
            for op in ops.drain(..) {
                match op {
                    Op::Maintain(reply) => {
                        self.flush(&mut batch).await;
                        let res = self.maintain().await;
                        let _ = reply.send(res);
                    }
                    Op::ReleaseNode(reply) => {
                        self.flush(&mut batch).await;
                        let res = self.release_node().await;
                        let _ = reply.send(res);
                    }
                    op => batch.push(op),
                }
            }
            self.flush(&mut batch).await;
        }
    }

    /// Sends the queued writes as one pipeline and answers each.
    async fn flush(&mut self, batch: &mut Vec<Op>) {
        if batch.is_empty() {
            return;
        }
        if !self.shared.ready.load(Ordering::Relaxed) {
            for op in batch.drain(..) {
                fail(op, unavailable("presence store not reachable yet"));
            }
            return;
        }
        let sh = self.shared.clone();
        let ids: Vec<String> =
            batch.iter().map(|op| if let Op::ReleaseId(id, _) = op { id.to_string() } else { String::new() }).collect();
        let writes = batch.iter().zip(&ids).map(|(op, id)| match op {
            Op::Allocate(_) => Write::Allocate,
            Op::ReleaseId(..) => Write::ReleaseId(id),
            Op::Connect(user, _) => {
                let anon = user.parse().is_ok_and(|id| self.ledger.reserved.contains(&id));
                Write::AdjustUser { user, delta: 1, anon }
            }
            Op::Disconnect(user, groups, _) => Write::Disconnect { user, groups },
            Op::Join(user, group, _) => Write::AdjustMember { group, user, delta: 1 },
            Op::Leave(user, group, _) => Write::AdjustMember { group, user, delta: -1 },
            Op::Maintain(_) | Op::ReleaseNode(_) => unreachable!("handled by run"),
        });
        let cmds: Vec<Cmd> = writes.map(|w| sh.keys.write(w)).collect();
        let results = match exec(&sh.conn, &cmds).await {
            Ok(v) => {
                sh.healthy.store(true, Ordering::Relaxed);
                v.into_iter().map(Some).collect()
            }
            Err(e) => {
                // The pipeline may have been applied in part: bring the store back in line
                // at the next maintenance.
                debug!(error = %e, "presence pipeline failed");
                self.dirty = true;
                sh.down(&e);
                vec![None; batch.len()]
            }
        };
        for (op, res) in batch.drain(..).zip(results) {
            self.answer(op, res);
        }
    }

    /// Answers one write from its result (`None`: the pipeline failed) and updates the ledger.
    fn answer(&mut self, op: Op, res: Option<Value>) {
        let value = |res: Option<Value>| -> Result<Value, BackendError> {
            match res {
                None => Err(unavailable("presence store unavailable")),
                Some(Value::ServerError(e)) => Err(BackendError::Presence(e.to_string())),
                Some(v) => Ok(v),
            }
        };
        let failed = res.as_ref().is_none_or(|v| matches!(v, Value::ServerError(_)));
        if failed {
            self.dirty = true;
        }
        match op {
            Op::Allocate(reply) => {
                let r = value(res).and_then(parse::<u64>);
                if let Ok(id) = r {
                    self.ledger.reserved.insert(id);
                }
                let _ = reply.send(r);
            }
            Op::ReleaseId(id, reply) => {
                self.ledger.reserved.remove(&id);
                let _ = reply.send(value(res).map(|_| ()));
            }
            Op::Connect(user, reply) => {
                let r = value(res).map(|_| ());
                if r.is_ok() {
                    if user.parse().is_ok_and(|id| self.ledger.reserved.remove(&id)) {
                        self.ledger.anon.insert(user.clone());
                    }
                    self.ledger.user(&user, 1);
                }
                let _ = reply.send(r);
            }
            Op::Disconnect(user, groups, reply) => {
                // The connection is gone whatever the store says: the ledger follows the
                // truth, and reconciliation removes it from the store if this failed.
                for g in &groups {
                    self.ledger.member(g, &user, -1);
                    if failed {
                        self.ledger.pending_leaves.insert((g.to_string(), user.clone()));
                    }
                }
                self.ledger.user(&user, -1);
                let r = value(res).and_then(parse::<Vec<String>>).map(|v| v.into_iter().map(Into::into).collect());
                let _ = reply.send(r);
            }
            Op::Join(user, group, reply) => {
                let r = value(res).and_then(parse::<(i64, i64)>);
                if r.is_ok() {
                    self.ledger.member(&group, &user, 1);
                }
                let _ = reply.send(r.map(|(before, after)| before <= 0 && after > 0));
            }
            Op::Leave(user, group, reply) => {
                let r = value(res).and_then(parse::<(i64, i64)>);
                if r.is_ok() {
                    self.ledger.member(&group, &user, -1);
                }
                let _ = reply.send(r.map(|(before, after)| before > 0 && after <= 0));
            }
            Op::Maintain(_) | Op::ReleaseNode(_) => unreachable!("handled by run"),
        }
    }

    async fn maintain(&mut self) -> Result<Maintenance, BackendError> {
        let res = self.try_maintain().await;
        match &res {
            Ok(_) => self.shared.healthy.store(true, Ordering::Relaxed),
            Err(_) => {
                self.shared.healthy.store(false, Ordering::Relaxed);
                self.dirty = true;
            }
        }
        res
    }

    async fn try_maintain(&mut self) -> Result<Maintenance, BackendError> {
        let sh = self.shared.clone();
        let err = |e: RedisError| sh.down(&e);
        let mut m = Maintenance::default();
        if !sh.ready.load(Ordering::Relaxed) {
            // An earlier process with this node id may have died without cleaning up.
            let left = self.sweep(&sh.node, true).await?.unwrap_or_default();
            if !left.is_empty() {
                info!(events = left.len(), "cleared presence left by a previous run of this node");
            }
            m.left.extend(left);
        }
        let mut hb = sh.eval(&scripts::HEARTBEAT);
        let held = sh.ready.load(Ordering::Relaxed);
        hb.arg(&self.incarnation).arg(self.lease_ms).arg(if held { "1" } else { "0" });
        let ours: i64 = one(&sh.conn, hb).await.map_err(err)?;
        self.heartbeats += 1;
        if !sh.ready.swap(true, Ordering::Relaxed) {
            info!(node = %sh.node, "presence store ready");
        } else if ours == 0 {
            warn!(node = %sh.node, "node lease was lost (Redis restarted or this node was presumed dead); re-registering");
            self.dirty = true;
        }
        if self.dirty {
            self.reconcile(&mut m, ours == 0).await?;
            self.dirty = false;
        }
        self.sweep_dead(&mut m).await?;
        Ok(m)
    }

    /// Brings this node's part of the store in line with the ledger. `lost`: the lease was
    /// gone, so other nodes may not have re-registered their group members yet.
    async fn reconcile(&mut self, m: &mut Maintenance, lost: bool) -> Result<(), BackendError> {
        let sh = self.shared.clone();
        let mut read = redis::pipe();
        read.cmd("HGETALL").arg(sh.keys.key("nu", &sh.node));
        read.cmd("HGETALL").arg(sh.keys.key("nm", &sh.node));
        let mut conn = sh.conn.clone();
        let (nu, nm): (HashMap<String, i64>, HashMap<String, i64>) =
            read.query_async(&mut conn).await.map_err(|e| sh.down(&e))?;

        enum Fix {
            User(String),
            Member(String, String),
            Other,
        }
        let mut cmds = Vec::new();
        let mut fixes = Vec::new();
        let l = &self.ledger;
        for (user, &want) in &l.users {
            let d = want - nu.get(user).copied().unwrap_or(0);
            let anon = l.anon.contains(user);
            if d != 0 || anon {
                cmds.push(sh.keys.write(Write::AdjustUser { user, delta: d, anon }));
                fixes.push(Fix::User(user.clone()));
            }
        }
        for (user, &have) in &nu {
            if l.users.contains_key(user) {
                continue;
            }
            let reserved = user.parse().is_ok_and(|id| l.reserved.contains(&id));
            if have == 0 && reserved {
                continue;
            }
            cmds.push(sh.keys.write(if have == 0 {
                Write::ReleaseId(user)
            } else {
                Write::AdjustUser { user, delta: -have, anon: false }
            }));
            fixes.push(Fix::Other);
        }
        let mut seen = HashSet::new();
        for ((group, user), &want) in &l.members {
            let key = format!("{group} {user}");
            let d = want - nm.get(&key).copied().unwrap_or(0);
            seen.insert(key);
            if d != 0 {
                cmds.push(sh.keys.write(Write::AdjustMember { group, user, delta: d }));
                fixes.push(Fix::Member(group.clone(), user.clone()));
            }
        }
        for (key, &have) in &nm {
            if seen.contains(key) {
                continue;
            }
            if let Some((group, user)) = key.split_once(' ') {
                cmds.push(sh.keys.write(Write::AdjustMember { group, user, delta: -have }));
                fixes.push(Fix::Member(group.to_owned(), user.to_owned()));
            }
        }
        let changes = cmds.len();
        let mut emitted = HashSet::new();
        for (cmds, fixes) in cmds.chunks(MAX_PIPELINE).zip(fixes.chunks(MAX_PIPELINE)) {
            let results = exec(&sh.conn, cmds).await.map_err(|e| sh.down(&e))?;
            for (fix, v) in fixes.iter().zip(results) {
                if let Value::ServerError(e) = &v {
                    return Err(BackendError::Presence(e.to_string()));
                }
                match fix {
                    Fix::User(user) if parse::<i64>(v.clone()).ok() == Some(2) => {
                        m.conflicts.push(user.as_str().into())
                    }
                    Fix::Member(group, user) => {
                        if matches!(parse::<(i64, i64)>(v), Ok((before, after)) if before > 0 && after <= 0) {
                            m.left.push((group.as_str().into(), user.as_str().into()));
                            emitted.insert((group.clone(), user.clone()));
                        }
                    }
                    _ => {}
                }
            }
        }
        // Departures the store never saw: due a `leave` unless the user is still a member
        // somewhere (another connection, another node).
        let pending: Vec<(String, String)> = std::mem::take(&mut self.ledger.pending_leaves)
            .into_iter()
            .filter(|key| !emitted.contains(key) && !self.ledger.members.contains_key(key))
            .collect();
        if !pending.is_empty() {
            let mut pipe = redis::pipe();
            for (group, user) in &pending {
                pipe.cmd("HEXISTS").arg(sh.keys.key("g", group)).arg(user);
            }
            let still: Vec<bool> = pipe.query_async(&mut conn).await.map_err(|e| sh.down(&e))?;
            let due = if lost { &mut m.left_later } else { &mut m.left };
            for ((group, user), still) in pending.into_iter().zip(still) {
                if !still {
                    due.push((group.into(), user.into()));
                }
            }
        }
        if changes > 0 {
            info!(changes, conflicts = m.conflicts.len(), "presence reconciled with this node's connections");
        }
        Ok(())
    }

    /// Sweeps every registered node whose lease is gone.
    async fn sweep_dead(&mut self, m: &mut Maintenance) -> Result<(), BackendError> {
        let sh = self.shared.clone();
        let mut conn = sh.conn.clone();
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}nodes", sh.keys.prefix))
            .query_async(&mut conn)
            .await
            .map_err(|e| sh.down(&e))?;
        let others: Vec<&String> = nodes.iter().filter(|n| **n != sh.node).collect();
        if others.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for n in &others {
            pipe.cmd("EXISTS").arg(sh.keys.key("lease", n));
        }
        let alive: Vec<bool> = pipe.query_async(&mut conn).await.map_err(|e| sh.down(&e))?;
        for (n, alive) in others.into_iter().zip(alive) {
            if alive {
                continue;
            }
            // One sweeper per dead node: the lock outlives the sweep, so a slower node
            // arriving later finds nothing left to do either way.
            let locked: Option<String> = redis::cmd("SET")
                .arg(sh.keys.key("sweep", n))
                .arg(&sh.node)
                .arg("NX")
                .arg("PX")
                .arg(self.lease_ms)
                .query_async(&mut conn)
                .await
                .map_err(|e| sh.down(&e))?;
            if locked.is_none() {
                continue;
            }
            if let Some(left) = self.sweep(n, false).await? {
                info!(dead = %n, leaves = left.len(), "swept a dead node");
                m.left.extend(left);
                m.swept.push(n.clone());
            }
        }
        Ok(())
    }

    /// Runs the sweep script for `node`; `None` if it turned out to be alive.
    async fn sweep(&self, node: &str, force: bool) -> Result<Option<Vec<(Box<str>, Box<str>)>>, BackendError> {
        let sh = &self.shared;
        let mut c = sh.eval(&scripts::SWEEP);
        c.arg(node).arg(if force { "1" } else { "0" });
        let flat: Option<Vec<String>> = one(&sh.conn, c).await.map_err(|e| sh.down(&e))?;
        Ok(flat.map(|flat| flat.chunks_exact(2).map(|p| (p[0].as_str().into(), p[1].as_str().into())).collect()))
    }

    async fn release_node(&mut self) -> Result<(), BackendError> {
        if !self.shared.ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let left = self.sweep(&self.shared.node.clone(), true).await?.unwrap_or_default();
        if !left.is_empty() {
            warn!(leaves = left.len(), "memberships were still registered at shutdown; removed");
        }
        self.ledger = Ledger::default();
        Ok(())
    }
}

fn fail(op: Op, e: BackendError) {
    match op {
        Op::Allocate(r) => drop(r.send(Err(e))),
        Op::ReleaseId(_, r) => drop(r.send(Err(e))),
        Op::Connect(_, r) => drop(r.send(Err(e))),
        Op::Disconnect(_, _, r) => drop(r.send(Err(e))),
        Op::Join(_, _, r) | Op::Leave(_, _, r) => drop(r.send(Err(e))),
        Op::Maintain(r) => drop(r.send(Err(e))),
        Op::ReleaseNode(r) => drop(r.send(Err(e))),
    }
}

fn parse<T: redis::FromRedisValue>(v: Value) -> Result<T, BackendError> {
    T::from_redis_value(v).map_err(|e| BackendError::Presence(format!("unexpected reply: {e}")))
}

/// One script call, loading scripts on `NOSCRIPT`.
async fn one<T: redis::FromRedisValue>(conn: &ConnectionManager, cmd: Cmd) -> Result<T, RedisError> {
    let v = exec(conn, std::slice::from_ref(&cmd)).await?.pop().unwrap_or(Value::Nil);
    match v {
        Value::ServerError(e) => Err(e.into()),
        v => T::from_redis_value(v)
            .map_err(|e| RedisError::from((redis::ErrorKind::Parse, "unexpected reply", e.to_string()))),
    }
}

/// Sends `cmds` as one pipeline. Per-command server errors come back as
/// `Value::ServerError`; a `NOSCRIPT` (Redis restarted and forgot the scripts) loads them all
/// and re-sends just those commands (a `NOSCRIPT` command did not run).
async fn exec(conn: &ConnectionManager, cmds: &[Cmd]) -> Result<Vec<Value>, RedisError> {
    let mut conn = conn.clone();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for c in cmds {
        pipe.add_command(c.clone());
    }
    let mut values: Vec<Value> = pipe.query_async(&mut conn).await?;
    let missing: Vec<usize> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript)))
        .map(|(i, _)| i)
        .collect();
    if !missing.is_empty() {
        let mut load = redis::pipe();
        for s in scripts::all() {
            load.cmd("SCRIPT").arg("LOAD").arg(&s.code);
        }
        let _: Vec<String> = load.query_async(&mut conn).await?;
        let mut retry = redis::pipe();
        retry.ignore_errors();
        for &i in &missing {
            retry.add_command(cmds[i].clone());
        }
        let again: Vec<Value> = retry.query_async(&mut conn).await?;
        for (i, v) in missing.into_iter().zip(again) {
            values[i] = v;
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<other>".into(),
            })
            .collect()
    }

    #[test]
    fn writes_are_evalsha_with_slot_key_prefix_and_node() {
        let c = Commands::new("prod", "n1");
        let got = args(&c.write(Write::AdjustMember { group: "room", user: "17", delta: -1 }));
        assert_eq!(
            got,
            [
                "EVALSHA",
                &scripts::ADJUST_MEMBER.sha,
                "1",
                "chatgate:{prod}:online",
                "chatgate:{prod}:",
                "n1",
                "room",
                "17",
                "-1"
            ]
        );
        let groups: Vec<Box<str>> = vec!["a".into(), "b".into()];
        let got = args(&c.write(Write::Disconnect { user: "5", groups: &groups }));
        assert_eq!(&got[6..], ["5", "a", "b"]);
        assert_eq!(&args(&c.write(Write::AdjustUser { user: "5", delta: 1, anon: true }))[6..], ["5", "1", "1"]);
        assert_eq!(args(&c.write(Write::Allocate)).len(), 6);
        assert_eq!(c.pipeline([Write::Allocate, Write::ReleaseId("3")]).cmd_iter().count(), 2);
    }

    #[test]
    fn every_key_shares_one_hash_tag() {
        let c = Commands::new("x.y", "n");
        for k in [c.key("u", "1"), c.key("gn", "g"), c.online.clone()] {
            assert!(k.starts_with("chatgate:{x.y}:"), "{k}");
        }
    }
}
