//! The dispatcher against a broker whose confirms the test releases one by one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::{Dispatch, Job, Limits, batch};
use crate::backend::memory::{MemoryCluster, MemoryPresence};
use crate::backend::{BackendError, BoxFuture, Broker, Inbox, Presence};
use crate::delivery::{Ack, Target};
use crate::protocol::AckStatus;
use crate::tasks::Tasks;

type Confirm = oneshot::Sender<Result<bool, BackendError>>;

/// Records every publish; its confirm waits for the test.
#[derive(Default)]
struct Held {
    published: Mutex<Vec<(String, Bytes, Option<Confirm>)>>,
}

impl Held {
    fn count(&self) -> usize {
        self.published.lock().len()
    }

    /// Entries of batch `i`.
    fn entries(&self, i: usize) -> usize {
        batch::decode(&self.published.lock()[i].1).map_or(0, |(_, entries)| entries.count())
    }

    fn confirm(&self, i: usize, res: Result<bool, BackendError>) {
        let tx = self.published.lock()[i].2.take().expect("confirmed once");
        let _ = tx.send(res);
    }
}

impl Broker for Arc<Held> {
    fn start(&self, _: Inbox, _: &Tasks) {}
    fn publish(
        &self,
        node: &str,
        batch: Bytes,
        _: tokio::time::Instant,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        let (tx, rx) = oneshot::channel();
        self.published.lock().push((node.to_owned(), batch, Some(tx)));
        Box::pin(async move { rx.await.unwrap_or(Err(BackendError::broker("dropped"))) })
    }
    fn remove_node<'a>(&'a self, _: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn is_healthy(&self) -> bool {
        true
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

struct Setup {
    held: Arc<Held>,
    dispatch: Dispatch,
    _tasks: Tasks,
}

/// Node `a` dispatching, with user `u` connected on node `b`.
async fn setup() -> Setup {
    let cluster = MemoryCluster::with_lease(Duration::from_secs(60));
    let b = MemoryPresence::new(cluster.clone(), "b");
    b.connect("u").await.unwrap();
    let presence: Arc<dyn Presence> = Arc::new(MemoryPresence::new(cluster, "a"));
    let held = Arc::new(Held::default());
    let limits =
        Limits { batch_bytes: 1 << 20, batch_frames: 512, pacing: Duration::ZERO, outage: Duration::from_secs(60) };
    let dispatch = Dispatch::new("a", 7, presence, Arc::new(held.clone()), 1, 1024, limits, Arc::default());
    let tasks = Tasks::new();
    dispatch.start(&tasks);
    Setup { held, dispatch, _tasks: tasks }
}

fn job(delivered: bool) -> (Job, oneshot::Receiver<Result<AckStatus, BackendError>>) {
    let (tx, rx) = oneshot::channel();
    let job = Job {
        target: Target::User("u".into()),
        frame: Bytes::from_static(b"\x81\x01x"),
        ack: Ack::Reply(tx),
        delivered,
        undelivered: AckStatus::Offline,
        read_at: std::time::Instant::now(),
    };
    (job, rx)
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn two_batches_in_flight_then_what_waited_leaves_as_one() {
    let s = setup().await;
    let mut acks = Vec::new();
    for n in 1..=2 {
        let (j, rx) = job(false);
        s.dispatch.submit(0, j).await;
        acks.push(rx);
        until("a batch per drain while the window has room", || s.held.count() == n).await;
    }
    for _ in 0..8 {
        let (j, rx) = job(false);
        s.dispatch.submit(0, j).await;
        acks.push(rx);
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(s.held.count(), 2, "the window is full: the rest waits in the outlet");
    assert_eq!(s.held.published.lock()[0].0, "b", "addressed to the recipient's node");
    s.held.confirm(0, Ok(true));
    until("the waiting messages leave together", || s.held.count() == 3).await;
    assert_eq!(s.held.entries(2), 8);
    assert_eq!(acks.remove(0).await.unwrap().unwrap(), AckStatus::Sent, "acked once confirmed");
    s.held.confirm(1, Ok(true));
    s.held.confirm(2, Ok(true));
    for rx in acks {
        assert_eq!(rx.await.unwrap().unwrap(), AckStatus::Sent);
    }
}

#[tokio::test]
async fn the_ack_follows_the_confirm() {
    let s = setup().await;
    let cases: [(bool, Result<bool, BackendError>, Option<AckStatus>); 4] = [
        (false, Ok(false), Some(AckStatus::Offline)),
        (true, Ok(false), Some(AckStatus::Sent)),
        (false, Err(BackendError::broker("nack")), None),
        (true, Err(BackendError::broker("nack")), None),
    ];
    for (i, (delivered, confirm, want)) in cases.into_iter().enumerate() {
        let (j, rx) = job(delivered);
        s.dispatch.submit(0, j).await;
        until("published", || s.held.count() == i + 1).await;
        s.held.confirm(i, confirm);
        match (rx.await.unwrap(), want) {
            (Ok(got), Some(want)) => assert_eq!(got, want, "case {i}"),
            (Err(_), None) => {}
            (got, want) => panic!("case {i}: {got:?}, wanted {want:?}"),
        }
    }
}

#[tokio::test]
async fn nobody_elsewhere_is_settled_without_publishing() {
    let s = setup().await;
    let (tx, rx) = oneshot::channel();
    let j = Job {
        target: Target::User("nobody".into()),
        frame: Bytes::new(),
        ack: Ack::Reply(tx),
        delivered: false,
        undelivered: AckStatus::Offline,
        read_at: std::time::Instant::now(),
    };
    s.dispatch.submit(0, j).await;
    assert_eq!(rx.await.unwrap().unwrap(), AckStatus::Offline);
    s.dispatch.flush().await;
    assert_eq!(s.held.count(), 0);
}
