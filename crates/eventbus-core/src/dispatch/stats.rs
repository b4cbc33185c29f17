//! The dispatcher's counters.

/// Counters of a dispatcher, read with [`Dispatcher::stats`](super::Dispatcher::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatcherStats {
    /// Handler calls running now.
    pub in_flight: usize,
    /// Most handler calls ever running at once.
    pub peak_in_flight: usize,
    /// Worker tasks alive now.
    pub workers: usize,
    /// Messages admitted and not finished (queued, running or backing off).
    pub buffered: usize,
    /// Their encoded bytes.
    pub buffered_bytes: usize,
    /// Keys with at least one message in the dispatcher.
    pub active_keys: usize,
    /// Messages handled successfully.
    pub handled: u64,
    /// Messages that failed for good.
    pub failed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Handler panics caught.
    pub panicked: u64,
    /// Messages cancelled by a closing subscription or bus.
    pub cancelled: u64,
}
