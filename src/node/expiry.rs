//! Token expiry: one task per node (token mode only) closes each connection with 4001
//! "token expired" when its token's `exp` plus `CHAT_JWT_LEEWAY_S` passes, unless a
//! `refresh` moved its deadline first.
//!
//! The deadlines sit in one ordered map, earliest first, and the task sleeps until the first
//! of them. That costs a token connection one map entry (about 50 bytes) and an idle
//! connection's session no timer: the session future stays the size it was, and the timer
//! wheel holds one entry per node instead of one per connection. The heartbeat sweep could
//! have checked a deadline too, but only once per heartbeat interval (25 s by default) late.
//!
//! Deadlines are on Tokio's clock, computed from the wall clock when the token is verified:
//! `exp` is wall-clock time, and the ordered map and the sleep need a monotonic one (this is
//! also what lets the tests pause time).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::hub::Conn;
use crate::protocol::ws;

/// Beyond this a deadline is as good as never (and `Instant` arithmetic stays in range).
const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);

/// One scheduled close: when, and which connection (so equal instants stay apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    at: Instant,
    conn: u64,
}

impl Deadline {
    pub fn at(&self) -> Instant {
        self.at
    }
}

/// The node's token deadlines.
#[derive(Debug)]
pub struct Expiry {
    queue: Mutex<BTreeMap<Deadline, Arc<Conn>>>,
    /// Wakes the task: a deadline earlier than every other was added.
    earlier: Notify,
    leeway: Duration,
}

impl Expiry {
    pub fn new(leeway: Duration) -> Expiry {
        Expiry { queue: Mutex::default(), earlier: Notify::new(), leeway }
    }

    /// Closes `conn` when `exp` (seconds since the epoch) plus the leeway passes.
    pub fn schedule(&self, conn: &Arc<Conn>, exp: u64) -> Deadline {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let due = Duration::from_secs(exp).saturating_add(self.leeway);
        let deadline = Deadline { at: Instant::now() + due.saturating_sub(wall).min(FAR), conn: conn.id };
        let mut queue = self.queue.lock();
        let first = queue.first_key_value().is_none_or(|(k, _)| deadline < *k);
        queue.insert(deadline, conn.clone());
        drop(queue);
        if first {
            // A stored permit if the task is not waiting yet: it then re-reads the queue.
            self.earlier.notify_one();
        }
        deadline
    }

    /// Removes a deadline (the connection ended, or refreshed its token).
    pub fn cancel(&self, deadline: Deadline) {
        self.queue.lock().remove(&deadline);
    }

    /// Connections waiting for their token to expire.
    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection due at `now`; returns the next deadline.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut due = Vec::new();
        let next = {
            let mut queue = self.queue.lock();
            while let Some(entry) = queue.first_entry() {
                if entry.key().at > now {
                    break;
                }
                due.push(entry.remove());
            }
            queue.first_key_value().map(|(k, _)| k.at)
        };
        for conn in due {
            conn.outbox.close_with(ws::close_frame(ws::close::TOKEN_EXPIRED, "token expired"));
        }
        next
    }
}

/// Sleeps until the earliest deadline, closes what is due, repeats. Ends at `draining`
/// (shutdown closes every connection anyway).
pub async fn run(expiry: Arc<Expiry>, draining: WaitForCancellationFutureOwned) {
    tokio::pin!(draining);
    loop {
        let next = expiry.expire(Instant::now());
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = expiry.earlier.notified() => {}
            () = &mut draining => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Outbox, Phase};
    use tokio_util::sync::CancellationToken;

    fn conn(id: u64) -> Arc<Conn> {
        Arc::new(Conn::new(id, "u".into(), Outbox::new(8, 1 << 16)))
    }

    fn now_s() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    /// Lets the expiry task run until it waits again (paused time: no real waiting).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closes_4001_at_exp_plus_leeway_and_not_before() {
        let expiry = Arc::new(Expiry::new(Duration::from_secs(5)));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(expiry.clone(), stop.clone().cancelled_owned()));
        let (early, late) = (conn(1), conn(2));
        let exp = now_s() + 10;
        expiry.schedule(&late, exp + 20);
        expiry.schedule(&early, exp);
        settle().await;
        // `exp` is whole seconds: the deadline is up to 1 s less than 15 s away.
        tokio::time::advance(Duration::from_secs(13)).await;
        settle().await;
        assert_eq!(early.outbox.phase(), Phase::Open, "not before exp + leeway");
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(early.outbox.phase(), Phase::Closing, "closed once exp + leeway passed");
        assert_eq!(early.outbox.close_code(), Some(ws::close::TOKEN_EXPIRED));
        assert_eq!(late.outbox.phase(), Phase::Open, "the later token is still good");
        assert_eq!(expiry.len(), 1);
        tokio::time::advance(Duration::from_secs(20)).await;
        settle().await;
        assert_eq!(late.outbox.close_code(), Some(ws::close::TOKEN_EXPIRED));
        assert!(expiry.is_empty());
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_moves_the_deadline_and_a_cancel_removes_it() {
        let expiry = Arc::new(Expiry::new(Duration::ZERO));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(expiry.clone(), stop.clone().cancelled_owned()));
        let (refreshed, ended) = (conn(1), conn(2));
        let first = expiry.schedule(&refreshed, now_s() + 10);
        let gone = expiry.schedule(&ended, now_s() + 10);
        settle().await;
        tokio::time::advance(Duration::from_secs(5)).await;
        expiry.cancel(first);
        expiry.schedule(&refreshed, now_s() + 60);
        expiry.cancel(gone);
        tokio::time::advance(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(refreshed.outbox.phase(), Phase::Open, "the old deadline no longer applies");
        assert_eq!(ended.outbox.phase(), Phase::Open, "a cancelled deadline never fires");
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
        assert_eq!(refreshed.outbox.close_code(), Some(ws::close::TOKEN_EXPIRED));
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_wakes_the_sleeping_task() {
        let expiry = Arc::new(Expiry::new(Duration::ZERO));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(expiry.clone(), stop.clone().cancelled_owned()));
        let (late, soon) = (conn(1), conn(2));
        expiry.schedule(&late, now_s() + 3600);
        settle().await; // the task now sleeps for an hour
        expiry.schedule(&soon, now_s() + 2);
        settle().await;
        tokio::time::advance(Duration::from_secs(3)).await;
        settle().await;
        assert_eq!(soon.outbox.close_code(), Some(ws::close::TOKEN_EXPIRED));
        assert_eq!(late.outbox.phase(), Phase::Open);
        // Past tokens (accepted within the leeway) and absurd ones do not break it.
        let (past, never) = (conn(3), conn(4));
        expiry.schedule(&past, 0);
        expiry.schedule(&never, u64::MAX);
        settle().await;
        assert_eq!(past.outbox.close_code(), Some(ws::close::TOKEN_EXPIRED));
        assert_eq!(never.outbox.phase(), Phase::Open);
        stop.cancel();
        task.await.unwrap();
    }
}
