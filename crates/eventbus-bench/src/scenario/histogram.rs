//! A fixed-size latency histogram that many threads record into, and its summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two in a [`Histogram`] (as bits): values are kept within 1/64.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A latency histogram of fixed size (about 30 KB, whatever it records): log-linear buckets,
/// 64 per power of two, so a quantile is off by at most 1/128 of its value; recording is two
/// relaxed atomic additions, from any number of threads.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("summary", &self.summary())
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn bucket(ns: u64) -> usize {
        if ns < SUB as u64 {
            return ns as usize;
        }
        let shift = 63 - ns.leading_zeros() - SUB_BITS;
        (shift as usize + 1) * SUB + ((ns >> shift) as usize & (SUB - 1))
    }

    /// The middle of bucket `b`.
    fn value(b: usize) -> u64 {
        if b < SUB {
            return b as u64;
        }
        let shift = (b / SUB - 1) as u32;
        (((SUB + b % SUB) as u64) << shift) + ((1u64 << shift) >> 1)
    }

    /// Records one latency, in nanoseconds.
    pub fn record_ns(&self, ns: u64) {
        self.buckets[Self::bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Records one latency.
    pub fn record(&self, latency: Duration) {
        self.record_ns(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds everything `other` recorded.
    pub fn merge(&self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter().zip(other.buckets.iter()) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_ns
            .fetch_add(other.sum_ns.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The value at quantile `q` (0..=1), or zero when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Duration {
        let count = self.count();
        if count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (b, n) in self.buckets.iter().enumerate() {
            seen += n.load(Ordering::Relaxed);
            if seen >= rank {
                return Duration::from_nanos(Self::value(b));
            }
        }
        Duration::ZERO
    }

    /// Count, mean, median, 99th percentile and maximum.
    pub fn summary(&self) -> Latency {
        let count = self.count();
        Latency {
            count,
            mean: Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed) / count.max(1)),
            p50: self.quantile(0.5),
            p99: self.quantile(0.99),
            max: self.quantile(1.0),
        }
    }
}

/// A summary of a [`Histogram`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Values recorded.
    pub count: u64,
    /// Their mean (exact).
    pub mean: Duration,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest value.
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_round_trip_within_resolution() {
        for v in [
            0u64,
            1,
            63,
            64,
            65,
            127,
            128,
            1_000,
            123_456,
            10_000_000_000,
            u64::MAX,
        ] {
            let mid = Histogram::value(Histogram::bucket(v));
            let err = mid.abs_diff(v) as f64 / v.max(1) as f64;
            assert!(err <= 1.0 / 64.0, "{v} -> {mid}");
            assert!(Histogram::bucket(v) < BUCKETS);
        }
    }

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        let near = |d: Duration, us: f64| (d.as_secs_f64() * 1e6 - us).abs() / us < 0.02;
        assert!(near(s.p50, 500.0), "{s:?}");
        assert!(near(s.p99, 990.0), "{s:?}");
        assert!(near(s.max, 1000.0), "{s:?}");
        assert!(near(s.mean, 500.5), "{s:?}");
        let other = Histogram::new();
        other.merge(&h);
        assert_eq!(other.summary(), s);
        assert_eq!(Histogram::new().summary(), Latency::default());
    }
}
