//! The clock that times handler calls and publishes: the CPU's counter (`quanta`), read raw
//! per message and scaled to nanoseconds only for a difference. A `clock_gettime` costs about
//! three times a counter reading here, and scaling each reading would double it again.

use std::sync::OnceLock;
use std::time::Duration;

use quanta::Clock;

/// The process's clock: calibrating one against the OS clock takes about a millisecond, so it
/// is done once.
fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(Clock::new)
}

/// Calibrates the clock now, if it is not yet, so that no message's timing pays for it.
pub(crate) fn calibrate() {
    clock();
}

/// A reading of the clock, in the counter's own unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp(u64);

impl Stamp {
    pub(crate) fn now() -> Stamp {
        Stamp(clock().raw())
    }

    /// The time from `earlier` to this reading; zero if the counter went backwards (readings
    /// on two cores whose counters disagree).
    pub(crate) fn since(self, earlier: Stamp) -> Duration {
        clock().delta(earlier.0, self.0)
    }

    /// The time from this reading to now.
    pub(crate) fn elapsed(self) -> Duration {
        Stamp::now().since(self)
    }
}

#[cfg(test)]
mod tests {
    use super::Stamp;
    use std::time::Duration;

    #[test]
    fn a_stamp_measures_the_time_that_passed_and_never_goes_negative() {
        let before = Stamp::now();
        std::thread::sleep(Duration::from_millis(20));
        let after = Stamp::now();
        let took = after.since(before);
        // The sleep lasts at least what was asked; the bound above only rules out a unit
        // error (the counter's ticks taken for nanoseconds would read several times more).
        assert!(took >= Duration::from_millis(19), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(before.since(after), Duration::ZERO);
    }
}
