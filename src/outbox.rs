//! The per-connection outgoing queue, and the node's congestion signal.
//!
//! Every frame for a connection (deliveries, replies, control frames) is a shared `Bytes`
//! pushed here; the connection's writer task takes everything queued at once and writes it
//! with one vectored write (corking). The pusher never waits.
//!
//! The bounds (`CHAT_OUTBOX_FRAMES`, `CHAT_OUTBOX_BYTES`) work with the writer to tell a
//! client that does not keep up from a node that does not:
//! - A queue past half a bound is *full*: the node is *congested* ([`Congestion`]) and its
//!   sessions stop reading their clients' next frames until every full queue has been taken
//!   by its writer. When the node is behind (writers runnable but not scheduled often enough
//!   for what the producers send), that is fan-in control: the cost falls on the senders,
//!   whose frames wait in their own TCP buffers, and every reading client keeps getting every
//!   frame.
//! - A client whose socket does not drain keeps its queue full: its writer, waiting for the
//!   socket to become writable with a full queue for the slow-consumer time
//!   (`CHAT_SLOW_CONSUMER_MS`), declares it a slow consumer ([`Outbox::stalled`]): what it had
//!   not started to receive is dropped and it is closed 1013. So a client that stops reading
//!   holds the node back for that long at most.
//! - Whatever the writer does, a queue is never let past twice its bounds: the push that
//!   would is refused and makes the client a slow consumer. That is the memory bound.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// The node's fan-in control: how many outboxes are full (past half a bound, not yet taken
/// by their writer).
#[derive(Debug, Default)]
pub struct Congestion {
    congested: AtomicUsize,
    cleared: Notify,
}

impl Congestion {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Whether producers should wait before reading more.
    #[inline]
    pub fn is_congested(&self) -> bool {
        self.congested.load(Ordering::Acquire) > 0
    }

    /// Outboxes congested now.
    pub fn outboxes(&self) -> usize {
        self.congested.load(Ordering::Relaxed)
    }

    /// Resolves once no outbox is congested.
    pub async fn cleared(&self) {
        loop {
            let notified = self.cleared.notified();
            if !self.is_congested() {
                return;
            }
            notified.await;
        }
    }

    fn enter(&self) {
        self.congested.fetch_add(1, Ordering::AcqRel);
    }

    fn leave(&self) {
        if self.congested.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.cleared.notify_waiters();
        }
    }
}

/// Where a connection's output stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting frames.
    Open,
    /// A close frame is queued last; flush the queue, then end the connection.
    Closing,
    /// The client fell too far behind: close with 1013 without the queued frames.
    SlowConsumer,
    /// The socket failed; nothing more can be written.
    Dead,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection is closing or gone.
    Closed,
    /// This push overflowed the queue: the connection is now a slow consumer.
    Overflow,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Bytes>,
    bytes: usize,
    phase: Phase,
    /// The code of the close frame queued by [`Outbox::close_with`].
    close_code: Option<u16>,
    /// Past half a bound since the writer last took the queue (counted in [`Congestion`]).
    full: bool,
}

/// Bounded multi-producer, single-consumer queue of encoded frames.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer: the queue went from empty to non-empty, or the phase changed.
    writer: Notify,
    /// Wakes the session: the phase left `Open`.
    session: Notify,
    max_frames: usize,
    max_bytes: usize,
    congestion: Arc<Congestion>,
}

impl Outbox {
    /// An outbox with a congestion signal of its own (tests, benches).
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self::with_congestion(max_frames, max_bytes, Congestion::new())
    }

    /// An outbox that reports to the node's `congestion`.
    pub fn with_congestion(max_frames: usize, max_bytes: usize, congestion: Arc<Congestion>) -> Self {
        Outbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
                phase: Phase::Open,
                close_code: None,
                full: false,
            }),
            writer: Notify::new(),
            session: Notify::new(),
            max_frames,
            max_bytes,
            congestion,
        }
    }

    /// Clears `full`, and its share of the congestion count.
    fn unfull(&self, st: &mut State) {
        if std::mem::take(&mut st.full) {
            self.congestion.leave();
        }
    }

    /// Ends the connection as a slow consumer: the queue is dropped, the writer closes 1013.
    fn slow(&self, mut st: parking_lot::MutexGuard<'_, State>) {
        st.phase = Phase::SlowConsumer;
        st.queue.clear();
        st.bytes = 0;
        self.unfull(&mut st);
        drop(st);
        self.writer.notify_one();
        self.session.notify_one();
    }

    /// Queues `frame`. Never blocks.
    #[inline]
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut st = self.state.lock();
        if st.phase != Phase::Open {
            return Err(PushError::Closed);
        }
        let (frames, bytes) = (st.queue.len() + 1, st.bytes + frame.len());
        if frames > 2 * self.max_frames || bytes > 2 * self.max_bytes {
            self.slow(st);
            return Err(PushError::Overflow);
        }
        st.bytes = bytes;
        st.queue.push_back(frame);
        if !st.full && (2 * frames > self.max_frames || 2 * bytes > self.max_bytes) {
            st.full = true;
            self.congestion.enter();
        }
        // The writer drains the whole queue each time it wakes, so only the transition
        // from empty needs a wake-up; a burst of pushes costs one.
        let wake = frames == 1;
        drop(st);
        if wake {
            self.writer.notify_one();
        }
        Ok(())
    }

    /// Writer side, after waiting for the socket for the slow-consumer time: if the queue is
    /// still full, the client is not keeping up: slow consumer. Returns whether it was.
    pub fn stalled(&self) -> bool {
        let st = self.state.lock();
        if st.phase != Phase::Open || !st.full {
            return false;
        }
        self.slow(st);
        true
    }

    /// Queues `close` as the last frame: everything before it is still written.
    /// Returns `false` if the outbox had already left `Open`.
    pub fn close_with(&self, close: Bytes) -> bool {
        let mut st = self.state.lock();
        if st.phase != Phase::Open {
            return false;
        }
        st.close_code = crate::protocol::ws::close_code(&close);
        st.bytes += close.len();
        st.queue.push_back(close);
        st.phase = Phase::Closing;
        drop(st);
        self.writer.notify_one();
        self.session.notify_one();
        true
    }

    /// Marks the socket failed (called by the writer).
    pub fn mark_dead(&self) {
        let mut st = self.state.lock();
        st.phase = Phase::Dead;
        st.queue.clear();
        st.bytes = 0;
        self.unfull(&mut st);
        drop(st);
        self.session.notify_one();
    }

    pub fn phase(&self) -> Phase {
        self.state.lock().phase
    }

    /// The code of the close frame the gateway queued, if it queued one.
    pub fn close_code(&self) -> Option<u16> {
        self.state.lock().close_code
    }

    /// Frames queued and not yet taken by the writer.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Writer side: moves every queued frame to the back of `into` and returns the phase.
    pub fn take(&self, into: &mut VecDeque<Bytes>) -> Phase {
        let mut st = self.state.lock();
        if into.is_empty() {
            // Swap, so the producer side keeps the writer's spare capacity.
            std::mem::swap(&mut st.queue, into);
        } else {
            into.extend(st.queue.drain(..));
        }
        st.bytes = 0;
        self.unfull(&mut st);
        st.phase
    }

    /// Writer side: waits until frames are queued or the phase changes.
    pub async fn writer_wakeup(&self) {
        self.writer.notified().await
    }

    /// Session side: resolves with the phase once the outbox has left `Open`: a close was
    /// queued (by the node: shutdown, heartbeat), the client fell behind, or the socket died.
    pub async fn ended(&self) -> Phase {
        loop {
            let phase = self.phase();
            if phase != Phase::Open {
                return phase;
            }
            self.session.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn push_take_in_order() {
        let o = Outbox::new(10, 1000);
        o.push(b("a")).unwrap();
        o.push(b("b")).unwrap();
        let mut q = VecDeque::new();
        assert_eq!(o.take(&mut q), Phase::Open);
        assert_eq!(q, [b("a"), b("b")]);
        o.push(b("c")).unwrap();
        assert_eq!(o.take(&mut q), Phase::Open);
        assert_eq!(q, [b("a"), b("b"), b("c")]);
        assert!(o.is_empty());
    }

    #[test]
    fn overflow_by_frames_makes_a_slow_consumer() {
        let o = Outbox::new(1, 1000);
        o.push(b("a")).unwrap();
        o.push(b("b")).unwrap();
        assert_eq!(o.push(b("c")), Err(PushError::Overflow), "twice the bound");
        assert_eq!(o.phase(), Phase::SlowConsumer);
        assert_eq!(o.push(b("d")), Err(PushError::Closed));
        let mut q = VecDeque::new();
        assert_eq!(o.take(&mut q), Phase::SlowConsumer);
        assert!(q.is_empty(), "queued frames are dropped");
    }

    #[test]
    fn overflow_by_bytes() {
        let o = Outbox::new(100, 3);
        o.push(b("abc")).unwrap();
        o.push(b("abc")).unwrap();
        assert_eq!(o.push(b("a")), Err(PushError::Overflow));
    }

    #[test]
    fn a_full_queue_congests_the_node_until_taken_or_stalled() {
        let c = Congestion::new();
        let o = Outbox::with_congestion(4, 1000, c.clone());
        o.push(b("a")).unwrap();
        o.push(b("b")).unwrap();
        assert!(!c.is_congested(), "at half the bound");
        assert!(!o.stalled(), "not full: a writer waiting for its socket is fine");
        o.push(b("c")).unwrap();
        assert!(c.is_congested(), "past half the bound");
        let mut q = VecDeque::new();
        o.take(&mut q);
        assert!(!c.is_congested(), "taken by its writer");
        for f in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            o.push(b(f)).unwrap();
        }
        assert_eq!(o.push(b("i")), Err(PushError::Overflow), "twice the bound is the hard cap");
        assert!(!c.is_congested(), "a slow consumer no longer counts");

        let o = Outbox::with_congestion(4, 1000, c.clone());
        for f in ["a", "b", "c"] {
            o.push(b(f)).unwrap();
        }
        assert!(o.stalled(), "full, and its writer waited the slow-consumer time");
        assert_eq!(o.phase(), Phase::SlowConsumer);
        assert!(!c.is_congested());
    }

    #[tokio::test]
    async fn congestion_clears_when_the_last_queue_is_taken() {
        let c = Congestion::new();
        let (o1, o2) = (Outbox::with_congestion(2, 1000, c.clone()), Outbox::with_congestion(2, 1000, c.clone()));
        for o in [&o1, &o2] {
            o.push(b("a")).unwrap();
            o.push(b("b")).unwrap();
        }
        assert_eq!(c.outboxes(), 2);
        let mut q = VecDeque::new();
        o1.take(&mut q);
        assert!(c.is_congested());
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.cleared().await }
        });
        tokio::task::yield_now().await;
        o2.mark_dead();
        waiter.await.unwrap();
        assert!(!c.is_congested());
    }

    #[test]
    fn take_frees_byte_budget() {
        let o = Outbox::new(100, 5);
        let mut q = VecDeque::new();
        for _ in 0..10 {
            o.push(b("abcd")).unwrap();
            o.take(&mut q);
        }
        assert_eq!(q.len(), 10);
    }

    #[test]
    fn close_keeps_queue_and_refuses_more() {
        let o = Outbox::new(10, 1000);
        o.push(b("a")).unwrap();
        assert!(o.close_with(b("close")));
        assert!(!o.close_with(b("close")));
        assert_eq!(o.push(b("late")), Err(PushError::Closed));
        let mut q = VecDeque::new();
        assert_eq!(o.take(&mut q), Phase::Closing);
        assert_eq!(q, [b("a"), b("close")]);
    }

    #[tokio::test]
    async fn writer_is_woken_by_first_push() {
        let o = std::sync::Arc::new(Outbox::new(10, 1000));
        let o2 = o.clone();
        let t = tokio::spawn(async move {
            o2.writer_wakeup().await;
            let mut q = VecDeque::new();
            o2.take(&mut q);
            q.len()
        });
        tokio::task::yield_now().await;
        o.push(b("a")).unwrap();
        assert!(t.await.unwrap() >= 1);
    }

    #[tokio::test]
    async fn session_learns_the_outbox_ended() {
        let o = Outbox::new(1, 1000);
        o.push(b("a")).unwrap();
        o.push(b("b")).unwrap();
        let _ = o.push(b("c"));
        assert_eq!(o.ended().await, Phase::SlowConsumer);
        let o = Outbox::new(1, 1000);
        o.close_with(b("bye"));
        assert_eq!(o.ended().await, Phase::Closing);
    }
}
