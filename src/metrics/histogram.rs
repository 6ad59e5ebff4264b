//! A lock-free histogram: one atomic add per bucket, count and sum per observation.
//!
//! prometheus-client's own histogram takes a mutex per observation; the routing latency is
//! observed once per message, so this one stays on atomics (the hot-path rule: no lock and
//! no allocation per message). Encoded through prometheus-client like any other metric.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds for latencies, in seconds: 100 µs to 10 s.
pub const LATENCY_BOUNDS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Upper bounds for counts (frames per AMQP message, writes per pipeline).
pub const COUNT_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

#[derive(Debug)]
struct Inner {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// In units of `1 / scale` (nanoseconds for latencies), so it stays an integer add.
    sum: AtomicU64,
    scale: f64,
}

/// A cloneable handle on one histogram.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<Inner>);

impl Histogram {
    fn with(bounds: &'static [f64], scale: f64) -> Self {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(Inner { bounds, buckets, count: AtomicU64::new(0), sum: AtomicU64::new(0), scale }))
    }

    /// A histogram of durations, in seconds.
    pub fn latency() -> Self {
        Self::with(LATENCY_BOUNDS, 1e9)
    }

    /// A histogram of counts.
    pub fn counts() -> Self {
        Self::with(COUNT_BOUNDS, 1.0)
    }

    /// Records a duration (for [`latency`](Self::latency) histograms).
    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        let secs = d.as_secs_f64();
        self.record(secs, d.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// Records a count (for [`counts`](Self::counts) histograms).
    #[inline]
    pub fn observe_count(&self, n: u64) {
        self.record(n as f64, n);
    }

    #[inline]
    fn record(&self, v: f64, scaled: u64) {
        let i = self.0.bounds.partition_point(|&b| b < v);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0.sum.fetch_add(scaled, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let bounds = inner.bounds.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(inner.buckets.iter().map(|b| b.load(Ordering::Relaxed))).collect();
        // Read after the buckets: a scrape may see an observation in `count` before its
        // bucket, never the other way round.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum.load(Ordering::Relaxed) as f64 / inner.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_take_values_at_their_upper_bound() {
        let h = Histogram::counts();
        for n in [1, 1, 2, 3, 5000] {
            h.observe_count(n);
        }
        let counts: Vec<u64> = h.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        assert_eq!(&counts[..3], &[2, 1, 1], "le=1: two ones; le=2: the 2; le=4: the 3");
        assert_eq!(*counts.last().unwrap(), 1, "+Inf");
        assert_eq!(h.count(), 5);
        let l = Histogram::latency();
        l.observe_duration(Duration::from_micros(300));
        assert_eq!(l.0.buckets[2].load(Ordering::Relaxed), 1, "300 µs is in le=0.0005");
        assert_eq!(l.0.sum.load(Ordering::Relaxed), 300_000);
    }
}
