//! A node's background tasks: one tracker, one stop signal.
//!
//! Building a node spawns nothing. [`crate::Node::start`] spawns every long-lived loop
//! (dispatchers, heartbeat, presence writer and upkeep, broker publisher and consumer)
//! through a [`Tasks`]; at shutdown the node releases its backends, signals stop, and waits
//! for all of them within the grace period. A loop takes the parts it needs and a
//! [`Tasks::stopped`] future, never the whole node.

use std::future::Future;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// Spawns and tracks background tasks; tells them when to stop.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task` on the current runtime, tracked.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Resolves once stop has been signalled.
    pub fn stopped(&self) -> WaitForCancellationFutureOwned {
        self.stop.clone().cancelled_owned()
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Signals every task to stop; no new tasks are expected after this.
    pub fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
    }

    /// Waits until every task has ended (after [`stop`](Self::stop)).
    pub async fn wait(&self) {
        self.tracker.wait().await
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_loops_and_wait_sees_them_end() {
        let tasks = Tasks::new();
        for _ in 0..3 {
            tasks.spawn(tasks.stopped());
        }
        assert_eq!(tasks.len(), 3);
        tasks.stop();
        tasks.wait().await;
        assert!(tasks.is_empty());
    }
}
