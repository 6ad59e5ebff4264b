//! In-process backends: the embedded default.
//!
//! [`MemoryPresence`] keeps the same per-connection counts the Redis implementation keeps,
//! so id reuse, presence events and `members` behave identically on one node. Several
//! nodes in one process can share one [`MemoryCluster`] (tests do).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{BackendError, BoxFuture, Maintenance, Presence, Target, sort_users};

/// Cluster state shared by the in-process nodes.
#[derive(Debug, Default)]
pub struct MemoryCluster {
    state: Mutex<State>,
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

/// This node's view of a [`MemoryCluster`].
#[derive(Debug, Clone)]
pub struct MemoryPresence {
    cluster: Arc<MemoryCluster>,
    node: Arc<str>,
}

impl MemoryPresence {
    pub fn new(cluster: Arc<MemoryCluster>, node: impl Into<Arc<str>>) -> Self {
        MemoryPresence { cluster, node: node.into() }
    }

    /// A presence store of its own: a single-node cluster.
    pub fn standalone(node: impl Into<Arc<str>>) -> Self {
        Self::new(Arc::default(), node)
    }

    fn now<T: Send + 'static>(v: T) -> BoxFuture<'static, Result<T, BackendError>> {
        Box::pin(std::future::ready(Ok(v)))
    }
}

impl Presence for MemoryPresence {
    fn allocate_id(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        Self::now(self.cluster.state.lock().allocate())
    }

    fn release_id(&self, id: u64) -> BoxFuture<'_, Result<(), BackendError>> {
        self.cluster.state.lock().release(id);
        Self::now(())
    }

    fn connect<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        bump_node(&mut self.cluster.state.lock().users, user, &self.node, 1);
        Self::now(())
    }

    fn disconnect<'a>(
        &'a self,
        user: &'a str,
        groups: &'a [Box<str>],
    ) -> BoxFuture<'a, Result<Vec<Box<str>>, BackendError>> {
        let mut st = self.cluster.state.lock();
        let mut left = Vec::new();
        for g in groups {
            if st.member(&self.node, user, g, -1) == 0 {
                left.push(g.clone());
            }
        }
        bump_node(&mut st.users, user, &self.node, -1);
        st.settle(user);
        Self::now(left)
    }

    fn join<'a>(&'a self, user: &'a str, group: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        Self::now(self.cluster.state.lock().member(&self.node, user, group, 1) == 1)
    }

    fn leave<'a>(&'a self, user: &'a str, group: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        Self::now(self.cluster.state.lock().member(&self.node, user, group, -1) == 0)
    }

    fn online_count(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        Self::now(self.cluster.state.lock().users.len() as u64)
    }

    fn members<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Result<Vec<String>, BackendError>> {
        let mut users: Vec<String> = self
            .cluster
            .state
            .lock()
            .groups
            .get(group)
            .map(|m| m.keys().map(|u| u.to_string()).collect())
            .unwrap_or_default();
        sort_users(&mut users);
        Self::now(users)
    }

    fn locate<'a>(&'a self, targets: &'a [Target]) -> BoxFuture<'a, Result<Vec<Vec<String>>, BackendError>> {
        let st = self.cluster.state.lock();
        let nodes = |m: Option<&PerNode>| m.map(|m| m.iter().map(|(n, _)| n.to_string()).collect()).unwrap_or_default();
        let found = targets
            .iter()
            .map(|t| match t {
                Target::User(u) => nodes(st.users.get(&**u)),
                Target::Group(g) => nodes(st.group_nodes.get(&**g)),
            })
            .collect();
        Self::now(found)
    }

    fn is_healthy(&self) -> bool {
        true
    }

    fn release_node(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut st = self.cluster.state.lock();
        let node = &self.node;
        let mut gone = Vec::new();
        for (user, nodes) in st.users.iter_mut() {
            nodes.retain(|(n, _)| n != node);
            if nodes.is_empty() {
                gone.push(user.clone());
            }
        }
        for user in gone {
            st.users.remove(&user);
            st.settle(&user);
        }
        for (key, count) in st.node_members.remove(node).unwrap_or_default() {
            if let Some((group, user)) = key.split_once('\0') {
                st.member(node, user, group, -i64::from(count));
            }
        }
        st.node_members.remove(node);
        Self::now(())
    }

    /// In-process state has no leases to refresh and no outages to recover from.
    fn maintain(&self) -> BoxFuture<'_, Result<Maintenance, BackendError>> {
        Self::now(Maintenance::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connect_anon(p: &MemoryPresence) -> String {
        let id = p.allocate_id().await.unwrap().to_string();
        p.connect(&id).await.unwrap();
        id
    }

    #[tokio::test]
    async fn smallest_free_id_is_reused() {
        let p = MemoryPresence::standalone("a");
        let ids: Vec<String> = [(); 5].iter().map(|_| String::new()).collect();
        let mut ids = ids;
        for slot in ids.iter_mut() {
            *slot = connect_anon(&p).await;
        }
        assert_eq!(ids, ["1", "2", "3", "4", "5"]);
        p.disconnect("4", &[]).await.unwrap();
        p.disconnect("2", &[]).await.unwrap();
        assert_eq!(connect_anon(&p).await, "2");
        assert_eq!(connect_anon(&p).await, "4");
        assert_eq!(connect_anon(&p).await, "6");
        for id in ["6", "5", "4"] {
            p.disconnect(id, &[]).await.unwrap();
        }
        assert_eq!(connect_anon(&p).await, "4");
        p.release_id(4).await.unwrap();
        assert_eq!(p.allocate_id().await.unwrap(), 4);
    }

    #[tokio::test]
    async fn membership_counts_connections() {
        let p = MemoryPresence::standalone("a");
        p.connect("u").await.unwrap();
        p.connect("u").await.unwrap();
        assert!(p.join("u", "g").await.unwrap(), "first connection joins");
        assert!(!p.join("u", "g").await.unwrap(), "second connection is no event");
        assert_eq!(p.members("g").await.unwrap(), ["u"]);
        assert!(!p.leave("u", "g").await.unwrap());
        assert_eq!(p.disconnect("u", &["g".into()]).await.unwrap(), vec![Box::<str>::from("g")]);
        assert!(p.members("g").await.unwrap().is_empty());
        assert_eq!(p.online_count().await.unwrap(), 1);
        p.disconnect("u", &[]).await.unwrap();
        assert_eq!(p.online_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn nodes_share_a_cluster() {
        let cluster = Arc::new(MemoryCluster::default());
        let a = MemoryPresence::new(cluster.clone(), "a");
        let b = MemoryPresence::new(cluster, "b");
        assert_eq!(connect_anon(&a).await, "1");
        assert_eq!(connect_anon(&b).await, "2");
        b.connect("1").await.unwrap();
        b.join("2", "g").await.unwrap();
        let found =
            a.locate(&[Target::User("1".into()), Target::Group("g".into()), Target::User("9".into())]).await.unwrap();
        let mut users = found[0].clone();
        users.sort();
        assert_eq!(users, ["a", "b"]);
        assert_eq!(found[1], ["b"]);
        assert!(found[2].is_empty());
        b.release_node().await.unwrap();
        assert_eq!(a.online_count().await.unwrap(), 1);
        assert_eq!(connect_anon(&a).await, "2", "b's user id is free again");
    }
}
