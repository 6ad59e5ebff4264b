//! Per-connection token bucket.
//!
//! `rate` tokens per second up to `burst`; each client frame takes one. A frame without a
//! token is refused (`rate_limited`). A client that keeps going over the limit (refusals
//! never more than [`QUIET`] apart) for `close_after` is closed (1008); one that slows
//! down for a moment starts with a clean slate.

use std::time::{Duration, Instant};

/// A gap this long without a refused frame ends an episode of limiting.
pub const QUIET: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Reject,
    Close,
}

#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens, in nanoseconds of refill time (`1 token = nanos_per_token`): integer math.
    level: u64,
    capacity: u64,
    nanos_per_token: u64,
    last: Instant,
    /// Start of the current episode of limiting, and the last refusal in it.
    limited: Option<(Instant, Instant)>,
    close_after: Duration,
}

impl RateLimiter {
    pub fn new(rate: u32, burst: u32, close_after: Duration) -> Self {
        let nanos_per_token = 1_000_000_000 / u64::from(rate.max(1));
        let capacity = nanos_per_token * u64::from(burst.max(1));
        RateLimiter { level: capacity, capacity, nanos_per_token, last: Instant::now(), limited: None, close_after }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_nanos().min(u64::MAX as u128) as u64;
        self.last = now;
        self.level = self.level.saturating_add(elapsed).min(self.capacity);
        if self.level >= self.nanos_per_token {
            self.level -= self.nanos_per_token;
            return Verdict::Allow;
        }
        let since = match self.limited {
            Some((since, last)) if now.saturating_duration_since(last) < QUIET => since,
            _ => now,
        };
        self.limited = Some((since, now));
        if now.saturating_duration_since(since) >= self.close_after { Verdict::Close } else { Verdict::Reject }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(100, 200, Duration::from_secs(10));
        for _ in 0..200 {
            assert_eq!(r.check(t0), Verdict::Allow);
        }
        assert_eq!(r.check(t0), Verdict::Reject);
        // 10 ms refills one token at 100/s.
        assert_eq!(r.check(t0 + Duration::from_millis(10)), Verdict::Allow);
        assert_eq!(r.check(t0 + Duration::from_millis(10)), Verdict::Reject);
        // A full second refills 100, not more than the burst.
        let t1 = t0 + Duration::from_millis(1010);
        for _ in 0..100 {
            assert_eq!(r.check(t1), Verdict::Allow);
        }
        assert_eq!(r.check(t1), Verdict::Reject);
    }

    #[test]
    fn sustained_flood_closes_after_the_window() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(100, 200, Duration::from_secs(10));
        // 1,000 frames/s against 100/s: some get through, most are refused, on and on.
        let mut closed_at = None;
        for ms in 0..20_000u64 {
            if r.check(t0 + Duration::from_millis(ms)) == Verdict::Close {
                closed_at = Some(ms);
                break;
            }
        }
        let ms = closed_at.expect("a sustained flood is closed");
        assert!((10_000..10_300).contains(&ms), "closed at {ms} ms");
    }

    #[test]
    fn a_pause_resets_the_window() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1, 1, Duration::from_secs(2));
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Flood at 10/s for 1.5 s: limited, not yet closed.
        for ms in (0..1500).step_by(100) {
            assert_ne!(r.check(at(ms)), Verdict::Close);
        }
        // Quiet for 1.5 s, then flood again: the 2 s window starts over.
        let closed_at = (3000..8000).step_by(100).find(|&ms| r.check(at(ms)) == Verdict::Close);
        let ms = closed_at.expect("closed");
        assert!((5000..=5200).contains(&ms), "closed at {ms} ms");
    }
}
