//! In-process backends: the embedded default, and a whole cluster inside one test process.
//!
//! [`MemoryPresence`] keeps the same per-connection counts the Redis implementation keeps,
//! so id reuse, presence events and `members` behave identically. Standalone it is a
//! single-node cluster. Several nodes in one process share one [`MemoryCluster`] (with node
//! leases and sweeps, like Redis) and one [`MemoryNetwork`] (a broker with a queue per
//! node, like RabbitMQ), so the dispatcher, batching, sweeps and presence events are tested
//! end to end without either server.

mod broker;
mod presence;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

pub use broker::{MemoryBroker, MemoryNetwork};
pub use presence::MemoryPresence;

/// Cluster state shared by the in-process nodes.
#[derive(Debug, Default)]
pub struct MemoryCluster {
    state: Mutex<State>,
    /// Node lease; `None` for a standalone node, which has nobody to be swept by.
    lease: Option<Duration>,
}

impl MemoryCluster {
    /// State for several nodes: a node that stops calling `maintain` for `lease` is swept
    /// by the next one that does.
    pub fn with_lease(lease: Duration) -> Arc<Self> {
        Arc::new(MemoryCluster { state: Mutex::default(), lease: Some(lease) })
    }

    /// Users online, cluster-wide.
    pub fn online(&self) -> usize {
        self.state.lock().users.len()
    }
}

/// Connections per node. Almost always one or two nodes: a short vector, with node ids
/// shared (`Arc<str>`), keeps an online user to a few dozen bytes.
type PerNode = Vec<(Arc<str>, u32)>;

#[derive(Debug, Default)]
struct State {
    /// Smallest-free-id allocator: every id below `next` not in `free` is in use.
    next: u64,
    free: BTreeSet<u64>,
    /// Ids handed out by the allocator (only these are freed on last disconnect).
    allocated: BTreeSet<u64>,
    /// user → connections per node.
    users: HashMap<Box<str>, PerNode>,
    /// group → user → connections.
    groups: HashMap<Box<str>, HashMap<Box<str>, u32>>,
    /// group → member connections per node.
    group_nodes: HashMap<Box<str>, PerNode>,
    /// node → "group\0user" → member connections (what a departing node takes with it).
    node_members: HashMap<Arc<str>, HashMap<Box<str>, u32>>,
    /// node → when its lease runs out (only with [`MemoryCluster::with_lease`]).
    leases: HashMap<Arc<str>, Instant>,
    /// node → what it last reported.
    reports: HashMap<Arc<str>, crate::backend::NodeInfo>,
}

impl State {
    fn allocate(&mut self) -> u64 {
        let id = match self.free.pop_first() {
            Some(id) => id,
            None => {
                self.next = self.next.max(1);
                let id = self.next;
                self.next += 1;
                id
            }
        };
        self.allocated.insert(id);
        id
    }

    fn release(&mut self, id: u64) {
        if !self.allocated.remove(&id) {
            return;
        }
        if id + 1 == self.next {
            self.next = id;
            // Trailing free ids fold back into `next` so `free` stays small.
            while self.next > 1 && self.free.remove(&(self.next - 1)) {
                self.next -= 1;
            }
        } else {
            self.free.insert(id);
        }
    }

    /// Applies one connection of `user` on `node` joining (`+1`) or leaving (`-1`) `group`;
    /// returns the user's remaining connection count in the group.
    fn member(&mut self, node: &Arc<str>, user: &str, group: &str, delta: i64) -> u32 {
        bump_node(&mut self.group_nodes, group, node, delta);
        let members = self.node_members.entry(node.clone()).or_default();
        bump(members, &format!("{group}\0{user}"), delta);
        if members.is_empty() {
            self.node_members.remove(node);
        }
        let users = self.groups.entry(group.into()).or_default();
        let n = bump(users, user, delta);
        if users.is_empty() {
            self.groups.remove(group);
        }
        n
    }

    /// Frees `user`'s anonymous id once no node has a connection of it.
    fn settle(&mut self, user: &str) {
        if let (false, Ok(id)) = (self.users.contains_key(user), user.parse::<u64>()) {
            self.release(id);
        }
    }

    /// Removes everything `node` holds; returns the `(group, user)` pairs that left their
    /// group cluster-wide (presence `leave` events due).
    fn remove_node(&mut self, node: &Arc<str>) -> Vec<(Box<str>, Box<str>)> {
        let mut gone = Vec::new();
        for (user, nodes) in self.users.iter_mut() {
            nodes.retain(|(n, _)| n != node);
            if nodes.is_empty() {
                gone.push(user.clone());
            }
        }
        for user in gone {
            self.users.remove(&user);
            self.settle(&user);
        }
        let mut left = Vec::new();
        for (key, count) in self.node_members.remove(node).unwrap_or_default() {
            if let Some((group, user)) = key.split_once('\0')
                && self.member(node, user, group, -i64::from(count)) == 0
            {
                left.push((group.into(), user.into()));
            }
        }
        self.node_members.remove(node);
        self.leases.remove(node);
        self.reports.remove(node);
        left
    }
}

/// Adds `delta` to a count, removing it at zero. Returns the new count.
fn bump(map: &mut HashMap<Box<str>, u32>, key: &str, delta: i64) -> u32 {
    let count = map.entry(key.into()).or_default();
    let new = (i64::from(*count) + delta).max(0) as u32;
    *count = new;
    if new == 0 {
        map.remove(key);
    }
    new
}

/// Adds `delta` to `key`'s count on `node`, removing empty entries. Returns the new count.
fn bump_node(map: &mut HashMap<Box<str>, PerNode>, key: &str, node: &Arc<str>, delta: i64) -> u32 {
    let nodes = map.entry(key.into()).or_default();
    let i = match nodes.iter().position(|(n, _)| n == node) {
        Some(i) => i,
        None => {
            nodes.push((node.clone(), 0));
            nodes.len() - 1
        }
    };
    let new = (i64::from(nodes[i].1) + delta).max(0) as u32;
    nodes[i].1 = new;
    if new == 0 {
        nodes.swap_remove(i);
        if nodes.is_empty() {
            map.remove(key);
        }
    }
    new
}
