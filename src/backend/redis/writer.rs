//! The writer task: every presence write of this node, pipelined, and the ledger of what
//! this node's connections are.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::{Cmd, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::debug;

use super::Shared;
use super::commands::{Write, exec, parse};
use crate::backend::{BackendError, Maintenance, chain};
use crate::metrics::PresenceOp;

/// Writes per pipeline, and commands per reconciliation pipeline.
pub(super) const MAX_PIPELINE: usize = 512;

type Reply<T> = oneshot::Sender<Result<T, BackendError>>;

/// A request to the writer task.
pub(super) enum Op {
    /// A write, pipelined with the others queued.
    Write(WriteOp),
    /// Upkeep, between pipelines.
    Maintain(Reply<Maintenance>),
    /// Graceful shutdown: remove this node's presence.
    ReleaseNode(Reply<()>),
}

/// A presence write and who waits for its result.
pub(super) enum WriteOp {
    Allocate(Reply<u64>),
    ReleaseId(u64, Reply<()>),
    Connect(String, Reply<()>),
    Disconnect(String, Vec<Box<str>>, Reply<Vec<Box<str>>>),
    Join(String, String, Reply<bool>),
    Leave(String, String, Reply<bool>),
}

/// What this node's connections are, as far as presence is concerned.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// user → connections on this node.
    pub(super) users: HashMap<String, i64>,
    /// (group, user) → member connections on this node.
    pub(super) members: HashMap<(String, String), i64>,
    /// Ids allocated and not yet connected or released.
    pub(super) reserved: HashSet<u64>,
    /// Users whose id came from the allocator.
    pub(super) anon: HashSet<String>,
    /// Memberships that ended while the store could not record it: if the store lost them
    /// (restart), reconciliation alone cannot see they ended, so their `leave` is due then.
    pub(super) pending_leaves: HashSet<(String, String)>,
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

/// The writer task's state.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) ledger: Ledger,
    /// A write may have failed half-way: reconcile at the next upkeep.
    pub(super) dirty: bool,
    pub(super) incarnation: String,
    pub(super) lease_ms: u64,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>, incarnation: u32, lease: Duration) -> Self {
        Writer {
            shared,
            ledger: Ledger::default(),
            dirty: false,
            incarnation: incarnation.to_string(),
            lease_ms: lease.as_millis() as u64,
        }
    }

    /// Serves writes until every handle is gone or `stopped`.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Op>, stopped: WaitForCancellationFutureOwned) {
        let mut ops = Vec::with_capacity(MAX_PIPELINE);
        let mut batch = Vec::with_capacity(MAX_PIPELINE);
        tokio::pin!(stopped);
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut ops, MAX_PIPELINE) => n,
                () = &mut stopped => return,
            };
            if n == 0 {
                return;
            }
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
                    Op::Write(op) => batch.push(op),
                }
            }
            self.flush(&mut batch).await;
        }
    }

    /// Sends the queued writes as one pipeline and answers each.
    async fn flush(&mut self, batch: &mut Vec<WriteOp>) {
        if batch.is_empty() {
            return;
        }
        if !self.shared.ready.load(Ordering::Relaxed) {
            for op in batch.drain(..) {
                fail(op, BackendError::presence("not reachable yet"));
            }
            return;
        }
        let sh = self.shared.clone();
        let ids: Vec<String> = batch
            .iter()
            .map(|op| if let WriteOp::ReleaseId(id, _) = op { id.to_string() } else { String::new() })
            .collect();
        let writes = batch.iter().zip(&ids).map(|(op, id)| match op {
            WriteOp::Allocate(_) => Write::Allocate,
            WriteOp::ReleaseId(..) => Write::ReleaseId(id),
            WriteOp::Connect(user, _) => {
                let anon = user.parse().is_ok_and(|id| self.ledger.reserved.contains(&id));
                Write::AdjustUser { user, delta: 1, anon }
            }
            WriteOp::Disconnect(user, groups, _) => Write::Disconnect { user, groups },
            WriteOp::Join(user, group, _) => Write::AdjustMember { group, user, delta: 1 },
            WriteOp::Leave(user, group, _) => Write::AdjustMember { group, user, delta: -1 },
        });
        let cmds: Vec<Cmd> = writes.map(|w| sh.keys.write(w)).collect();
        let m = &sh.metrics.presence;
        m.op(PresenceOp::Write);
        m.pipeline_size.observe_count(cmds.len() as u64);
        let started = std::time::Instant::now();
        let results = exec(&sh.conn, &cmds).await;
        m.latency.observe_duration(started.elapsed());
        let results = match results {
            Ok(v) => {
                sh.healthy.store(true, Ordering::Relaxed);
                v.into_iter().map(Some).collect()
            }
            Err(e) => {
                // The pipeline may have been applied in part: bring the store back in line
                // at the next maintenance.
                let e = sh.down(e);
                debug!(error = %chain(&e), "presence pipeline failed");
                self.dirty = true;
                vec![None; batch.len()]
            }
        };
        for (op, res) in batch.drain(..).zip(results) {
            self.answer(op, res);
        }
    }

    /// Answers one write from its result (`None`: the pipeline failed) and updates the ledger.
    fn answer(&mut self, op: WriteOp, res: Option<Value>) {
        let value = |res: Option<Value>| -> Result<Value, BackendError> {
            match res {
                None => Err(BackendError::presence("pipeline failed")),
                Some(Value::ServerError(e)) => Err(redis::RedisError::from(e).into()),
                Some(v) => Ok(v),
            }
        };
        let failed = res.as_ref().is_none_or(|v| matches!(v, Value::ServerError(_)));
        if failed {
            self.dirty = true;
        }
        match op {
            WriteOp::Allocate(reply) => {
                let r = value(res).and_then(parse::<u64>);
                if let Ok(id) = r {
                    self.ledger.reserved.insert(id);
                }
                let _ = reply.send(r);
            }
            WriteOp::ReleaseId(id, reply) => {
                self.ledger.reserved.remove(&id);
                let _ = reply.send(value(res).map(|_| ()));
            }
            WriteOp::Connect(user, reply) => {
                let r = value(res).map(|_| ());
                if r.is_ok() {
                    if user.parse().is_ok_and(|id| self.ledger.reserved.remove(&id)) {
                        self.ledger.anon.insert(user.clone());
                    }
                    self.ledger.user(&user, 1);
                }
                let _ = reply.send(r);
            }
            WriteOp::Disconnect(user, groups, reply) => {
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
            WriteOp::Join(user, group, reply) => {
                let r = value(res).and_then(parse::<(i64, i64)>);
                if r.is_ok() {
                    self.ledger.member(&group, &user, 1);
                }
                let _ = reply.send(r.map(|(before, after)| before <= 0 && after > 0));
            }
            WriteOp::Leave(user, group, reply) => {
                let r = value(res).and_then(parse::<(i64, i64)>);
                if r.is_ok() {
                    self.ledger.member(&group, &user, -1);
                }
                let _ = reply.send(r.map(|(before, after)| before > 0 && after <= 0));
            }
        }
    }
}

fn fail(op: WriteOp, e: BackendError) {
    match op {
        WriteOp::Allocate(r) => drop(r.send(Err(e))),
        WriteOp::ReleaseId(_, r) => drop(r.send(Err(e))),
        WriteOp::Connect(_, r) => drop(r.send(Err(e))),
        WriteOp::Disconnect(_, _, r) => drop(r.send(Err(e))),
        WriteOp::Join(_, _, r) | WriteOp::Leave(_, _, r) => drop(r.send(Err(e))),
    }
}
