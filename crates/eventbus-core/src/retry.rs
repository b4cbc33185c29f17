//! How failed handler calls are retried in place.

use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::error::BoxError;
use crate::message::{Key, MessageId};

/// A message waiting out its backoff before another attempt: its key is held meanwhile.
/// [`EventBus::health`](crate::EventBus::health) lists them, so a key that keeps failing is
/// never stuck in silence.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retrying {
    /// The key it holds (`None`: a message without a key, which holds nothing else).
    pub key: Option<Key>,
    /// The message.
    pub message_id: MessageId,
    /// Handler calls made so far.
    pub attempts: u32,
    /// When its first attempt failed.
    pub first_failure: SystemTime,
    /// The last attempt's error, as text.
    pub last_error: String,
}

/// Retry policy for failed handler calls.
///
/// Retries happen *in place*: the message's key waits (no later message of it is handled) while
/// every other key keeps flowing, and the waiting message holds no worker.
///
/// The default makes [`DEFAULT_MAX_ATTEMPTS`](Self::DEFAULT_MAX_ATTEMPTS) handler calls, with exponential backoff from
/// 100 ms to 30 s and jitter (about a minute of retries in all), and then the message has
/// failed for good: the subscription's [`DeadLetter`](crate::DeadLetter) topic takes it (on by
/// default), and its key moves on. A failing message blocks only its own key while it is
/// retried, is never lost and never overtaken; [`EventBus::health`](crate::EventBus::health)
/// names it meanwhile. With dead-lettering off, it is handed back to the transport as failed
/// after its last attempt; keep order then with [`unlimited`](Self::unlimited).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    max_attempts: Option<NonZeroU32>,
    min_delay: Duration,
    max_delay: Duration,
    factor: f32,
    jitter: bool,
    retryable: Retryable,
}

/// Which errors are worth retrying.
#[derive(Clone, Copy)]
struct Retryable(fn(&BoxError) -> bool);

impl Retryable {
    fn all_but_permanent(_: &BoxError) -> bool {
        true
    }
}

impl PartialEq for Retryable {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::fn_addr_eq(self.0, other.0)
    }
}

impl std::fmt::Debug for Retryable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Retryable(Retryable::all_but_permanent) {
            f.write_str("all but Permanent")
        } else {
            f.write_str("custom")
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: NonZeroU32::new(Self::DEFAULT_MAX_ATTEMPTS),
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            factor: 2.0,
            jitter: true,
            retryable: Retryable(Retryable::all_but_permanent),
        }
    }
}

impl RetryPolicy {
    /// Handler calls the default policy makes per delivery.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

    /// No retries: the first failure is final.
    pub fn never() -> Self {
        Self::default().max_attempts(1)
    }
    /// At most `n` handler calls per delivery (`n` ≥ 1; 0 is treated as 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        self
    }
    /// Retry without limit: a message that keeps failing holds its key until it succeeds (or
    /// fails with a [`Permanent`](crate::Permanent) error).
    pub fn unlimited(mut self) -> Self {
        self.max_attempts = None;
        self
    }
    /// First and largest backoff delay.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_delay = min;
        self.max_delay = max.max(min);
        self
    }
    /// Multiplier between successive delays.
    pub fn factor(mut self, factor: f32) -> Self {
        self.factor = factor.max(1.0);
        self
    }
    /// Whether to add random jitter to delays (default on; it avoids retry storms).
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }
    /// Retries only errors for which `retryable` returns true; the others fail the message at
    /// once (as a [`Permanent`](crate::Permanent) error always does, whatever the predicate).
    ///
    /// ```
    /// use eventbus_core::{RetryPolicy, BoxError};
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("invalid order")]
    /// struct Invalid;
    /// let policy = RetryPolicy::default()
    ///     .max_attempts(5)
    ///     .retry_if(|e: &BoxError| !e.is::<Invalid>());
    /// assert!(!policy.is_retryable(&(Box::new(Invalid) as BoxError)));
    /// ```
    pub fn retry_if(mut self, retryable: fn(&BoxError) -> bool) -> Self {
        self.retryable = Retryable(retryable);
        self
    }
    /// Whether `error` may be retried under this policy (attempts left aside).
    pub fn is_retryable(&self, error: &BoxError) -> bool {
        !crate::Permanent::is_permanent(error) && (self.retryable.0)(error)
    }
    /// The attempt limit, if any.
    pub fn attempt_limit(&self) -> Option<u32> {
        self.max_attempts.map(NonZeroU32::get)
    }

    /// The delays before attempts 2, 3, ...; exhausted when no attempt is left.
    pub(crate) fn delays(&self) -> ExponentialBackoff {
        let mut b = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor);
        b = match self.max_attempts {
            Some(n) => b.with_max_times(n.get() as usize - 1),
            None => b.without_max_times(),
        };
        if self.jitter {
            b = b.with_jitter();
        }
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_bound_the_delays() {
        assert_eq!(RetryPolicy::never().delays().count(), 0);
        let p = RetryPolicy::default()
            .max_attempts(4)
            .jitter(false)
            .backoff(Duration::from_millis(10), Duration::from_millis(25));
        let d: Vec<_> = p.delays().collect();
        assert_eq!(
            d,
            [10, 20, 25].map(Duration::from_millis).to_vec(),
            "exponential, capped"
        );
        assert_eq!(
            RetryPolicy::default().delays().count(),
            RetryPolicy::DEFAULT_MAX_ATTEMPTS as usize - 1
        );
        assert!(
            RetryPolicy::default()
                .unlimited()
                .delays()
                .take(1000)
                .count()
                == 1000
        );
    }
}
