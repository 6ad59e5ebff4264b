//! The one reconnect policy every backend loop uses.
//!
//! Exponential from 100 ms to 2 s, with jitter: after a broker or Redis restart, every node
//! of a cluster (and both connections of each) retries at once otherwise, in lock step.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// First retry delay.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// Delays between reconnect attempts, forever. Start a new one after each success.
pub fn reconnect() -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::new()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The next delay of `delays` (never runs dry: the policy has no attempt limit).
pub fn next(delays: &mut impl Iterator<Item = Duration>) -> Duration {
    delays.next().unwrap_or(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_never_ends() {
        let delays: Vec<Duration> = reconnect().take(20).collect();
        assert_eq!(delays.len(), 20);
        assert!(delays[0] >= MIN_DELAY && delays[0] <= MIN_DELAY * 2, "{:?}", delays[0]);
        // Jitter adds up to one more delay on top; the base is capped at MAX_DELAY.
        assert!(delays.iter().all(|d| *d <= MAX_DELAY * 2), "{delays:?}");
        assert!(delays[19] >= MAX_DELAY, "{delays:?}");
        let other: Vec<Duration> = reconnect().take(20).collect();
        assert_ne!(delays, other, "two loops do not retry in lock step");
    }
}
