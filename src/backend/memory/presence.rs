//! [`MemoryPresence`]: one node's view of a [`MemoryCluster`].

use std::sync::Arc;

use tokio::time::Instant;

use super::{MemoryCluster, PerNode, bump_node};
use crate::backend::{BackendError, BoxFuture, Located, Maintenance, NodeInfo, Presence, Target, sort_users};

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

    fn locate<'a>(&'a self, targets: &'a [Target]) -> BoxFuture<'a, Result<Located, BackendError>> {
        let st = self.cluster.state.lock();
        let nodes = |m: Option<&PerNode>| m.map(|m| m.iter().map(|(n, _)| n.to_string()).collect()).unwrap_or_default();
        let found = targets
            .iter()
            .map(|t| match t {
                Target::User(u) => nodes(st.users.get(&**u)),
                Target::Group(g) => nodes(st.group_nodes.get(&**g)),
            })
            .collect();
        Self::now(Located { nodes: found, settled: true })
    }

    fn is_healthy(&self) -> bool {
        true
    }

    fn release_node(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.cluster.state.lock().remove_node(&self.node);
        Self::now(())
    }

    fn upkeep_period(&self) -> Option<std::time::Duration> {
        self.cluster.lease.map(|lease| lease / 3)
    }

    fn report(&self, me: NodeInfo) {
        self.cluster.state.lock().reports.insert(self.node.clone(), me);
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, BackendError>> {
        let mut nodes: Vec<NodeInfo> = self.cluster.state.lock().reports.values().cloned().collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Self::now(nodes)
    }

    /// Refreshes this node's lease and sweeps the nodes whose lease ran out (in-process
    /// state has no outages to recover from).
    fn maintain(&self) -> BoxFuture<'_, Result<Maintenance, BackendError>> {
        let Some(lease) = self.cluster.lease else { return Self::now(Maintenance::default()) };
        let now = Instant::now();
        let mut st = self.cluster.state.lock();
        st.leases.insert(self.node.clone(), now + lease);
        let dead: Vec<Arc<str>> =
            st.leases.iter().filter(|(_, until)| **until <= now).map(|(n, _)| n.clone()).collect();
        let mut m = Maintenance::default();
        for node in dead {
            m.left.extend(st.remove_node(&node));
            m.swept.push(node.to_string());
        }
        Self::now(m)
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
        let found = a
            .locate(&[Target::User("1".into()), Target::Group("g".into()), Target::User("9".into())])
            .await
            .unwrap()
            .nodes;
        let mut users = found[0].clone();
        users.sort();
        assert_eq!(users, ["a", "b"]);
        assert_eq!(found[1], ["b"]);
        assert!(found[2].is_empty());
        b.release_node().await.unwrap();
        assert_eq!(a.online_count().await.unwrap(), 1);
        assert_eq!(connect_anon(&a).await, "2", "b's user id is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_stops_renewing_its_lease_is_swept() {
        let lease = std::time::Duration::from_secs(3);
        let cluster = MemoryCluster::with_lease(lease);
        let a = MemoryPresence::new(cluster.clone(), "a");
        let b = MemoryPresence::new(cluster.clone(), "b");
        assert_eq!(a.upkeep_period(), Some(lease / 3));
        a.maintain().await.unwrap();
        b.maintain().await.unwrap();
        let (ua, ub) = (connect_anon(&a).await, connect_anon(&b).await);
        a.join(&ua, "g").await.unwrap();
        b.join(&ub, "g").await.unwrap();
        b.join(&ub, "h").await.unwrap();
        // `a` keeps renewing; `b` has crashed.
        for _ in 0..2 {
            tokio::time::advance(lease / 3).await;
            let m = a.maintain().await.unwrap();
            assert!(m.swept.is_empty(), "not before the lease runs out");
        }
        tokio::time::advance(lease / 3 + std::time::Duration::from_millis(1)).await;
        let mut m = a.maintain().await.unwrap();
        m.left.sort();
        assert_eq!(m.swept, ["b"]);
        assert_eq!(m.left, [("g".into(), ub.as_str().into()), ("h".into(), ub.as_str().into())]);
        assert_eq!(a.members("g").await.unwrap(), std::slice::from_ref(&ua));
        assert_eq!(a.online_count().await.unwrap(), 1);
        assert_eq!(connect_anon(&a).await, ub, "the swept node's id is free again");
        assert!(a.maintain().await.unwrap().swept.is_empty(), "swept once");
    }
}
