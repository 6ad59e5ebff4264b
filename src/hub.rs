//! This node's connections, sharded: user → connections and group → member connections.
//!
//! Each shard is a `RwLock` over two maps; a key's shard comes from a hash seeded apart
//! from the maps' own. Delivery takes one shard's read lock and pushes a clone of the
//! already-encoded frame into each recipient's outbox, so fan-out costs an atomic increment
//! and a queue push per recipient, and no lock is shared by all messages.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::outbox::Outbox;
use crate::protocol::Target;

type Map<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// One WebSocket connection as the router sees it.
#[derive(Debug)]
pub struct Conn {
    /// Unique on this node for the life of the process.
    pub id: u64,
    pub user: Arc<str>,
    pub outbox: Outbox,
    /// When the client last sent anything (ms on the node's clock); the heartbeat sweep
    /// closes connections silent for two intervals.
    last_seen: AtomicU64,
    /// Messages of this connection on their way to other nodes, not yet answered (see
    /// [`crate::delivery::Unacked`]): the session waits at a bound, so acks arriving in a
    /// burst never overflow its own outbox.
    unacked: AtomicU32,
    /// Set while the session waits for `unacked` to drop.
    waiting: AtomicBool,
    settled: Notify,
}

impl Conn {
    pub fn new(id: u64, user: Arc<str>, outbox: Outbox) -> Conn {
        Conn {
            id,
            user,
            outbox,
            last_seen: AtomicU64::new(0),
            unacked: AtomicU32::new(0),
            waiting: AtomicBool::new(false),
            settled: Notify::new(),
        }
    }

    /// Messages in flight to other nodes.
    pub fn unacked(&self) -> u32 {
        self.unacked.load(Ordering::Acquire)
    }

    pub(crate) fn add_unacked(&self) {
        self.unacked.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn settle_unacked(&self) {
        self.unacked.fetch_sub(1, Ordering::AcqRel);
        if self.waiting.load(Ordering::Acquire) {
            self.settled.notify_one();
        }
    }

    /// Waits until fewer than `limit` messages are in flight.
    pub async fn unacked_below(&self, limit: u32) {
        while self.unacked() >= limit {
            let settled = self.settled.notified();
            self.waiting.store(true, Ordering::Release);
            if self.unacked() < limit {
                break;
            }
            settled.await;
        }
        self.waiting.store(false, Ordering::Release);
    }

    /// Records activity at `now_ms`.
    #[inline]
    pub fn seen(&self, now_ms: u64) {
        self.last_seen.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
#[repr(align(128))] // keep shards on separate cache lines (adjacent-line prefetch included)
struct Shard {
    maps: RwLock<Maps>,
}

#[derive(Debug, Default)]
struct Maps {
    users: Map<Vec<Arc<Conn>>>,
    groups: Map<Vec<Arc<Conn>>>,
}

/// The local connection registry.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: foldhash::fast::RandomState,
}

impl Hub {
    /// `shards` is rounded up to a power of two.
    pub fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        Hub { shards: (0..n).map(|_| Shard::default()).collect(), hasher: Default::default() }
    }

    #[inline]
    fn shard(&self, key: &str) -> &RwLock<Maps> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h & (self.shards.len() - 1)].maps
    }

    pub fn add_user(&self, conn: &Arc<Conn>) {
        // The key shares the connection's user id allocation.
        self.shard(&conn.user).write().users.entry(conn.user.clone()).or_default().push(conn.clone());
    }

    pub fn remove_user(&self, conn: &Conn) {
        remove(&mut self.shard(&conn.user).write().users, &conn.user, conn.id);
    }

    /// Adds `conn` to `group`'s local members.
    pub fn join(&self, group: &str, conn: &Arc<Conn>) {
        self.shard(group).write().groups.entry(group.into()).or_default().push(conn.clone());
    }

    pub fn leave(&self, group: &str, conn: &Conn) {
        remove(&mut self.shard(group).write().groups, group, conn.id);
    }

    /// Pushes `frame` to every local connection of the target (but connection `exclude`,
    /// a group message's sender); returns how many took it.
    #[inline]
    pub fn deliver(&self, to: Target<&str>, frame: &Bytes, exclude: Option<u64>) -> usize {
        let exclude = exclude.unwrap_or(u64::MAX);
        match to {
            Target::User(user) => {
                self.shard(user).read().users.get(user).map_or(0, |conns| push_all(conns, frame, exclude))
            }
            Target::Group(group) => {
                self.shard(group).read().groups.get(group).map_or(0, |conns| push_all(conns, frame, exclude))
            }
        }
    }

    /// The local connections of `user`.
    pub fn user_conns(&self, user: &str) -> Vec<Arc<Conn>> {
        self.shard(user).read().users.get(user).cloned().unwrap_or_default()
    }

    /// Number of local connections of `user`.
    pub fn user_connections(&self, user: &str) -> usize {
        self.shard(user).read().users.get(user).map_or(0, Vec::len)
    }

    /// Number of local member connections of `group`.
    pub fn group_connections(&self, group: &str) -> usize {
        self.shard(group).read().groups.get(group).map_or(0, Vec::len)
    }

    /// Users with at least one connection on this node.
    pub fn user_count(&self) -> usize {
        self.shards.iter().map(|s| s.maps.read().users.len()).sum()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Calls `f` with every connection in shard `i` (under its read lock: `f` must not block).
    pub fn for_each_in_shard(&self, i: usize, mut f: impl FnMut(&Arc<Conn>)) {
        if let Some(shard) = self.shards.get(i) {
            shard.maps.read().users.values().flatten().for_each(&mut f);
        }
    }

    /// Every local connection (for shutdown and resync).
    pub fn connections(&self) -> Vec<Arc<Conn>> {
        let mut all = Vec::new();
        for s in self.shards.iter() {
            all.extend(s.maps.read().users.values().flatten().cloned());
        }
        all
    }
}

#[inline]
fn push_all(conns: &[Arc<Conn>], frame: &Bytes, exclude: u64) -> usize {
    let mut n = 0;
    for c in conns {
        // A refused push means the connection is closing or was just marked a slow
        // consumer; either way it is not a delivery.
        if c.id != exclude && c.outbox.push(frame.clone()).is_ok() {
            n += 1;
        }
    }
    n
}

fn remove(map: &mut Map<Vec<Arc<Conn>>>, key: &str, id: u64) {
    if let Some(conns) = map.get_mut(key) {
        if let Some(i) = conns.iter().position(|c| c.id == id) {
            conns.swap_remove(i);
        }
        if conns.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    fn conn(id: u64, user: &str) -> Arc<Conn> {
        Arc::new(Conn::new(id, user.into(), Outbox::new(16, 1 << 20)))
    }

    fn drained(c: &Conn) -> usize {
        let mut q = VecDeque::new();
        c.outbox.take(&mut q);
        q.len()
    }

    #[test]
    fn users_and_groups() {
        let hub = Hub::new(4);
        let (a1, a2, b) = (conn(1, "a"), conn(2, "a"), conn(3, "b"));
        for c in [&a1, &a2, &b] {
            hub.add_user(c);
        }
        let f = Bytes::from_static(b"x");
        assert_eq!(hub.deliver(Target::User("a"), &f, None), 2);
        assert_eq!(hub.deliver(Target::User("nobody"), &f, None), 0);
        hub.join("g", &a1);
        hub.join("g", &b);
        assert_eq!(hub.deliver(Target::Group("g"), &f, Some(a1.id)), 1, "sender connection excluded");
        assert_eq!((drained(&a1), drained(&a2), drained(&b)), (1, 1, 1));
        hub.leave("g", &b);
        assert_eq!(hub.group_connections("g"), 1);
        hub.leave("g", &a1);
        assert_eq!(hub.group_connections("g"), 0);
        hub.remove_user(&a1);
        assert_eq!(hub.user_connections("a"), 1);
        assert_eq!(hub.connections().len(), 2);
    }
}
