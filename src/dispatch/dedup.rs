//! Dropping batches the broker delivers twice.
//!
//! RabbitMQ redelivers what a consumer had not acknowledged when its connection dropped (a
//! broker restart, a consumer reconnect): at-least-once. Every batch carries its origin (the
//! sending process) and a sequence number, so the receiving node keeps, per origin, a window
//! of the last [`WINDOW`] numbers it has seen and drops a batch it has already delivered.
//! Batches from one origin can arrive out of order (several dispatcher shards publish to the
//! same node), but never by thousands: a number that far behind the newest is taken as seen.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::batch::Origin;

/// Sequence numbers remembered per origin.
pub const WINDOW: u64 = 4096;

/// Origins remembered; the one heard from least recently goes first.
const ORIGINS: usize = 256;

const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Debug)]
struct Window {
    /// Newest number seen.
    max: u64,
    /// Bit `seq % WINDOW` set: `seq` in `(max - WINDOW, max]` was seen.
    seen: [u64; WORDS],
    last: Instant,
}

impl Window {
    fn new(seq: u64) -> Self {
        let mut w = Window { max: seq, seen: [0; WORDS], last: Instant::now() };
        w.set(seq);
        w
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (w, b) = Self::bit(seq);
        self.seen[w] |= b;
    }

    /// Records `seq`; `false` if it was seen (or is too old to tell).
    fn first_time(&mut self, seq: u64) -> bool {
        self.last = Instant::now();
        if seq > self.max {
            if seq - self.max >= WINDOW {
                self.seen = [0; WORDS];
            } else {
                for s in self.max + 1..seq {
                    let (w, b) = Self::bit(s);
                    self.seen[w] &= !b;
                }
                let (w, b) = Self::bit(seq);
                self.seen[w] &= !b;
            }
            self.max = seq;
            self.set(seq);
            return true;
        }
        if self.max - seq >= WINDOW {
            return false;
        }
        let (w, b) = Self::bit(seq);
        let fresh = self.seen[w] & b == 0;
        self.seen[w] |= b;
        fresh
    }
}

/// The receiving node's memory of recent batches.
#[derive(Debug, Default)]
pub struct Dedup {
    origins: Mutex<HashMap<(Box<str>, u32), Window>>,
}

impl Dedup {
    /// `true` the first time a batch from `origin` with its number arrives.
    pub fn first_time(&self, origin: Origin<'_>) -> bool {
        let mut origins = self.origins.lock();
        let key = (origin.node, origin.incarnation);
        // Look up without allocating a key on the hot path.
        if let Some(w) = origins.iter_mut().find(|((n, i), _)| **n == *key.0 && *i == key.1).map(|(_, w)| w) {
            return w.first_time(origin.seq);
        }
        if origins.len() >= ORIGINS
            && let Some(oldest) = origins.iter().min_by_key(|(_, w)| w.last).map(|(k, _)| k.clone())
        {
            origins.remove(&oldest);
        }
        origins.insert((origin.node.into(), origin.incarnation), Window::new(origin.seq));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(node: &str, incarnation: u32, seq: u64) -> Origin<'_> {
        Origin { node, incarnation, seq }
    }

    #[test]
    fn repeats_are_dropped_per_origin() {
        let d = Dedup::default();
        for seq in [1, 2, 5, 3] {
            assert!(d.first_time(o("a", 1, seq)), "{seq}");
        }
        for seq in [1, 2, 3, 5] {
            assert!(!d.first_time(o("a", 1, seq)), "redelivered {seq}");
        }
        assert!(d.first_time(o("a", 1, 4)), "out of order, not a repeat");
        assert!(d.first_time(o("a", 2, 1)), "a new process of the same node starts afresh");
        assert!(d.first_time(o("b", 1, 1)), "another node");
    }

    #[test]
    fn the_window_slides() {
        let d = Dedup::default();
        assert!(d.first_time(o("a", 1, 10)));
        assert!(d.first_time(o("a", 1, 10 + WINDOW - 1)));
        assert!(!d.first_time(o("a", 1, 10)), "still remembered");
        assert!(d.first_time(o("a", 1, 10 + WINDOW)), "slides past 10");
        assert!(!d.first_time(o("a", 1, 10)), "too old to tell: taken as seen");
        assert!(d.first_time(o("a", 1, 10 + WINDOW + 1)));
        assert!(!d.first_time(o("a", 1, 10 + WINDOW)), "a slide keeps what is in the window");
        assert!(d.first_time(o("a", 1, 100 * WINDOW)), "a jump clears the window");
        assert!(d.first_time(o("a", 1, 100 * WINDOW - 1)));
    }

    #[test]
    fn memory_is_bounded_by_origins() {
        let d = Dedup::default();
        for i in 0..(ORIGINS as u32 + 10) {
            d.first_time(o("n", i, 1));
        }
        assert_eq!(d.origins.lock().len(), ORIGINS);
    }
}
