//! The per-connection outgoing queue.
//!
//! Every frame for a connection (deliveries, replies, control frames) is a shared `Bytes`
//! pushed here; the connection's writer task takes everything queued at once and writes it
//! with one vectored write (corking). The queue is bounded in frames and bytes: a push past
//! either bound marks the connection a slow consumer, drops what it had not started to
//! write, and wakes the writer to close it with 1013. The pusher never waits, so one slow
//! client cannot slow the router or anyone else.

use std::collections::VecDeque;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

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
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State { queue: VecDeque::new(), bytes: 0, phase: Phase::Open, close_code: None }),
            writer: Notify::new(),
            session: Notify::new(),
            max_frames,
            max_bytes,
        }
    }

    /// Queues `frame`. Never blocks.
    #[inline]
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut st = self.state.lock();
        if st.phase != Phase::Open {
            return Err(PushError::Closed);
        }
        if st.queue.len() >= self.max_frames || st.bytes + frame.len() > self.max_bytes {
            st.phase = Phase::SlowConsumer;
            st.queue.clear();
            st.bytes = 0;
            drop(st);
            self.writer.notify_one();
            self.session.notify_one();
            return Err(PushError::Overflow);
        }
        st.bytes += frame.len();
        st.queue.push_back(frame);
        // The writer drains the whole queue each time it wakes, so only the transition
        // from empty needs a wake-up; a burst of pushes costs one.
        let wake = st.queue.len() == 1;
        drop(st);
        if wake {
            self.writer.notify_one();
        }
        Ok(())
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
        let o = Outbox::new(2, 1000);
        o.push(b("a")).unwrap();
        o.push(b("b")).unwrap();
        assert_eq!(o.push(b("c")), Err(PushError::Overflow));
        assert_eq!(o.phase(), Phase::SlowConsumer);
        assert_eq!(o.push(b("d")), Err(PushError::Closed));
        let mut q = VecDeque::new();
        assert_eq!(o.take(&mut q), Phase::SlowConsumer);
        assert!(q.is_empty(), "queued frames are dropped");
    }

    #[test]
    fn overflow_by_bytes() {
        let o = Outbox::new(100, 5);
        o.push(b("abc")).unwrap();
        assert_eq!(o.push(b("abc")), Err(PushError::Overflow));
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
        let _ = o.push(b("b"));
        assert_eq!(o.ended().await, Phase::SlowConsumer);
        let o = Outbox::new(1, 1000);
        o.close_with(b("bye"));
        assert_eq!(o.ended().await, Phase::Closing);
    }
}
