//! Process CPU time: what a broker benchmark's side spends per message, every thread of the
//! process counted (the client's I/O threads, librdkafka's, the runtime's workers). On a
//! shared 2-core machine it is steadier than throughput, which the broker and everything else
//! running take their share of.

use std::time::{Duration, Instant};

/// User plus system CPU time of this process so far, every thread counted, those that ended
/// too (`getrusage(RUSAGE_SELF)`); zero if the call fails.
pub fn process() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike;
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let micros = u.user_time().num_microseconds() + u.system_time().num_microseconds();
            Duration::from_micros(u64::try_from(micros).unwrap_or(0))
        })
        .unwrap_or_default()
}

/// One measured run of a side: its rate and the CPU it cost per message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    /// Messages a second, from the first publish to the last receipt.
    pub rate: f64,
    /// Process CPU over the same time, per message.
    pub cpu_per_message: Duration,
}

/// The clock and the CPU counter, read together when a run's messages start.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    at: Instant,
    cpu: Duration,
}

impl Start {
    /// Now.
    pub fn now() -> Self {
        Start {
            cpu: process(),
            at: Instant::now(),
        }
    }

    /// The run of `messages` whose last one was received at `finished` (the CPU counter is
    /// read now, right after).
    pub fn finish(self, messages: usize, finished: Instant) -> Run {
        let cpu = process().saturating_sub(self.cpu);
        Run {
            rate: crate::workload::rate(messages, finished - self.at),
            cpu_per_message: cpu / u32::try_from(messages.max(1)).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_shows_as_process_cpu() {
        // Spins until the counter moved by 50 ms of CPU: on a loaded machine that takes longer
        // but never fails; a counter that does not move runs into the 10 s limit.
        let before = process();
        let limit = Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while process() - before < Duration::from_millis(50) && Instant::now() < limit {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
        assert!(
            process() - before >= Duration::from_millis(50),
            "10 s of spinning did not move the process's CPU counter"
        );
    }
}
