//! Order checking: each aggregate's versions must arrive in increasing order.

use std::sync::atomic::{AtomicU64, Ordering};

/// Tracks the last version seen per aggregate (aggregates are numbered `0..n`) and counts
/// every delivery whose version is not greater than the last one seen (the Go SDK's order
/// checker: a redelivered duplicate or an overtaken event both count).
#[derive(Debug)]
pub struct VersionTracker {
    last: Vec<AtomicU64>,
    received: AtomicU64,
    violations: AtomicU64,
}

impl VersionTracker {
    /// A tracker for aggregates `0..aggregates`.
    pub fn new(aggregates: usize) -> Self {
        VersionTracker {
            last: (0..aggregates).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicU64::new(0),
            violations: AtomicU64::new(0),
        }
    }

    /// Records one delivery; returns the number of deliveries recorded so far.
    /// Per-key order means calls for one aggregate never overlap, so a swap is exact.
    pub fn observe(&self, aggregate: usize, version: u64) -> u64 {
        let prev = self.last[aggregate].swap(version, Ordering::AcqRel);
        if prev >= version {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
        self.received.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Deliveries recorded.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }
    /// Deliveries out of order (or duplicated).
    pub fn violations(&self) -> u64 {
        self.violations.load(Ordering::Acquire)
    }
    /// Versions never seen, given each aggregate published `1..=versions`: the last version seen
    /// is the count of distinct versions when order held.
    pub fn lost(&self, versions: u64) -> u64 {
        self.last
            .iter()
            .map(|v| versions.saturating_sub(v.load(Ordering::Acquire)))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_violations_and_loss() {
        let t = VersionTracker::new(2);
        t.observe(0, 1);
        t.observe(0, 2);
        t.observe(0, 2); // duplicate
        t.observe(1, 2);
        t.observe(1, 1); // overtaken
        assert_eq!(t.received(), 5);
        assert_eq!(t.violations(), 2);
        assert_eq!(t.lost(3), 1 + 2);
    }
}
