//! [`MemoryBroker`]: batches between nodes of one process, through a [`MemoryNetwork`].
//!
//! The network plays RabbitMQ's part: a bounded queue per node, a consumer task per node
//! feeding its inbox in order, `Ok(false)` for a node that has no queue (gone or swept), and
//! a switch that makes it unreachable for outage tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::{BackendError, BoxFuture, Broker, Inbox};
use crate::tasks::Tasks;

/// Batches a node's queue holds before publishes to it fail.
const QUEUE: usize = 65_536;

/// The in-process "broker" several nodes share.
#[derive(Debug, Default)]
pub struct MemoryNetwork {
    queues: Mutex<HashMap<String, mpsc::Sender<Bytes>>>,
    down: AtomicBool,
    published: AtomicU64,
}

impl MemoryNetwork {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Batches published so far (each is one AMQP message's worth).
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Makes every publish fail (`true`) or work again (`false`), like a broker outage.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// Whether `node` has a queue.
    pub fn has_queue(&self, node: &str) -> bool {
        self.queues.lock().contains_key(node)
    }
}

/// One node's handle on the network; or, standalone, a broker with nobody to reach.
#[derive(Debug)]
pub struct MemoryBroker {
    /// `None`: standalone, the embedded single node.
    network: Option<Arc<MemoryNetwork>>,
    node: String,
}

impl MemoryBroker {
    /// The embedded default: no other node exists, so the router never publishes.
    pub fn solo() -> Self {
        MemoryBroker { network: None, node: String::new() }
    }

    /// Node `node`'s broker on a shared network.
    pub fn new(network: Arc<MemoryNetwork>, node: &str) -> Self {
        MemoryBroker { network: Some(network), node: node.to_owned() }
    }
}

impl Broker for MemoryBroker {
    fn is_solo(&self) -> bool {
        self.network.is_none()
    }

    fn start(&self, inbox: Inbox, tasks: &Tasks) {
        let Some(network) = &self.network else { return };
        let (tx, mut rx) = mpsc::channel(QUEUE);
        network.queues.lock().insert(self.node.clone(), tx);
        let stopped = tasks.stopped();
        tasks.spawn(async move {
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    batch = rx.recv() => match batch {
                        Some(batch) => inbox.deliver(batch).await,
                        None => return,
                    },
                    () = &mut stopped => return,
                }
            }
        });
    }

    fn publish(&self, node: &str, batch: Bytes, _deadline: Instant) -> BoxFuture<'static, Result<bool, BackendError>> {
        let res = match &self.network {
            None => Ok(false),
            Some(net) if net.down.load(Ordering::Relaxed) => Err(BackendError::broker("network down")),
            Some(net) => {
                let queue = net.queues.lock().get(node).cloned();
                match queue.map(|q| q.try_send(batch)) {
                    None => Ok(false),
                    Some(Ok(())) => {
                        net.published.fetch_add(1, Ordering::Relaxed);
                        Ok(true)
                    }
                    Some(Err(_)) => Err(BackendError::broker("queue full")),
                }
            }
        };
        Box::pin(std::future::ready(res))
    }

    fn remove_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, ()> {
        if let Some(net) = &self.network {
            net.queues.lock().remove(node);
        }
        Box::pin(std::future::ready(()))
    }

    fn is_healthy(&self) -> bool {
        self.network.as_ref().is_none_or(|n| !n.down.load(Ordering::Relaxed))
    }

    /// Deletes this node's queue: batches for it come back unroutable.
    fn close(&self) -> BoxFuture<'_, ()> {
        self.remove_node(&self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_reach_the_addressed_node_in_order() {
        let net = MemoryNetwork::new();
        let (a, b) = (MemoryBroker::new(net.clone(), "a"), MemoryBroker::new(net.clone(), "b"));
        let tasks = Tasks::new();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let inbox = Inbox::new(crate::outbox::Congestion::new(), move |batch| sink.lock().push(batch));
        b.start(inbox, &tasks);
        for i in 0..10u8 {
            assert!(a.publish("b", Bytes::from(vec![i]), Instant::now()).await.unwrap());
        }
        assert!(!a.publish("nobody", Bytes::new(), Instant::now()).await.unwrap(), "no queue: not routed");
        while got.lock().len() < 10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*got.lock(), (0..10u8).map(|i| Bytes::from(vec![i])).collect::<Vec<_>>());
        assert_eq!(net.published(), 10);
        net.set_down(true);
        assert!(a.publish("b", Bytes::new(), Instant::now()).await.is_err());
        assert!(!a.is_healthy());
        net.set_down(false);
        b.close().await;
        assert!(!a.publish("b", Bytes::new(), Instant::now()).await.unwrap(), "b's queue is gone");
        tasks.stop();
        tasks.wait().await;
    }

    #[tokio::test]
    async fn solo_reaches_nobody() {
        let solo = MemoryBroker::solo();
        assert!(solo.is_solo());
        assert!(!solo.publish("x", Bytes::new(), Instant::now()).await.unwrap());
    }
}
