//! Upkeep, between the writer's pipelines: the node's lease, reconciliation of the store
//! with this node's ledger after an outage, and the sweep of nodes whose lease ran out.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use redis::Value;
use tracing::{info, warn};

use super::commands::{Write, exec, one, parse};
use super::scripts;
use super::writer::{Ledger, MAX_PIPELINE, Writer};
use crate::backend::{BackendError, Maintenance};
use crate::metrics::PresenceOp;

impl Writer {
    pub(super) async fn maintain(&mut self) -> Result<Maintenance, BackendError> {
        self.shared.metrics.presence.op(PresenceOp::Maintain);
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
        let mut m = Maintenance::default();
        if !sh.ready.load(Ordering::Relaxed) {
            // An earlier process with this node id may have died without cleaning up.
            let left = self.sweep(&sh.node, true).await?.unwrap_or_default();
            if !left.is_empty() {
                info!(events = left.len(), "cleared presence left by a previous run of this node");
            }
            m.left.extend(left);
        }
        let mut hb = sh.keys.eval(&scripts::HEARTBEAT);
        let held = sh.ready.load(Ordering::Relaxed);
        hb.arg(&self.incarnation).arg(self.lease_ms).arg(if held { "1" } else { "0" });
        let ours: i64 = one(&sh.conn, hb).await?;
        let report = sh.report.lock().take();
        if let Some(me) = report {
            let key = sh.keys.key("info", &sh.node);
            let mut pipe = redis::pipe();
            pipe.cmd("HSET")
                .arg(&key)
                .arg("connections")
                .arg(me.connections)
                .arg("users")
                .arg(me.users)
                .arg("started")
                .arg(me.started)
                .ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(2 * self.lease_ms).ignore();
            let mut conn = sh.conn.clone();
            let () = pipe.query_async(&mut conn).await.map_err(|e| sh.down(e))?;
        }
        if !sh.ready.swap(true, Ordering::Relaxed) {
            info!(node = %sh.node, "presence store ready");
        } else if ours == 0 {
            warn!(node = %sh.node, "node lease was lost (Redis restarted or this node was presumed dead); re-registering");
            self.dirty = true;
        }
        if self.dirty {
            if ours == 0 {
                sh.metrics.presence.resyncs.inc();
            }
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
            read.query_async(&mut conn).await.map_err(|e| sh.down(e))?;

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
            let results = exec(&sh.conn, cmds).await.map_err(|e| sh.down(e))?;
            for (fix, v) in fixes.iter().zip(results) {
                if let Value::ServerError(e) = v {
                    return Err(redis::RedisError::from(e).into());
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
            let still: Vec<bool> = pipe.query_async(&mut conn).await.map_err(|e| sh.down(e))?;
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
            .map_err(|e| sh.down(e))?;
        let others: Vec<&String> = nodes.iter().filter(|n| **n != sh.node).collect();
        if others.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for n in &others {
            pipe.cmd("EXISTS").arg(sh.keys.key("lease", n));
        }
        let alive: Vec<bool> = pipe.query_async(&mut conn).await.map_err(|e| sh.down(e))?;
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
                .map_err(|e| sh.down(e))?;
            if locked.is_none() {
                continue;
            }
            if let Some(left) = self.sweep(n, false).await? {
                info!(dead = %n, leaves = left.len(), "swept a dead node");
                sh.metrics.presence.swept.inc();
                m.left.extend(left);
                m.swept.push(n.clone());
            }
        }
        Ok(())
    }

    /// Runs the sweep script for `node`; `None` if it turned out to be alive.
    async fn sweep(&self, node: &str, force: bool) -> Result<Option<Vec<(Box<str>, Box<str>)>>, BackendError> {
        let sh = &self.shared;
        let mut c = sh.keys.eval(&scripts::SWEEP);
        c.arg(node).arg(if force { "1" } else { "0" });
        let flat: Option<Vec<String>> = one(&sh.conn, c).await?;
        Ok(flat.map(|flat| flat.chunks_exact(2).map(|p| (p[0].as_str().into(), p[1].as_str().into())).collect()))
    }

    pub(super) async fn release_node(&mut self) -> Result<(), BackendError> {
        if !self.shared.ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let left = self.sweep(&self.shared.node.clone(), true).await?.unwrap_or_default();
        if !left.is_empty() {
            warn!(leaves = left.len(), "memberships were still registered at shutdown; removed");
        }
        let mut conn = self.shared.conn.clone();
        let info = self.shared.keys.key("info", &self.shared.node);
        let () = redis::cmd("DEL").arg(info).query_async(&mut conn).await.map_err(|e| self.shared.down(e))?;
        self.ledger = Ledger::default();
        Ok(())
    }
}
