//! The conformance suite every transport passes (listed in `docs/conformance.md`).
//!
//! Checks 1–28 are the shared list; 29 (`health_reports`) and 30 (`trace_propagation`) cover
//! operations whose result depends on the broker (lag and connection state as the broker reports
//! them; W3C trace context carried through its headers); 31 (`reserved_headers`) that no user
//! header takes the place of what a transport writes for itself. [`publish_arbitrary`], a
//! property test over every publish path, is run by each transport with its own case count.
//!
//! Each check is a public async function over a [`Harness`]; a transport's test crate expands
//! [`conformance_tests!`](crate::conformance_tests) to get one named `#[tokio::test]` per
//! check, so failures don't hide each other; `CHECKS` lists them for runners (the
//! `conformance` binary of `eventbus-bench` prints a pass/fail table from it). A check fails by panicking with a
//! message that says what was expected and what happened; message sets are compared exactly
//! (missing, unexpected and duplicated ids).
//!
//! Capabilities a transport lacks are declared by its harness; the checks that need them then
//! assert the typed [`Error::Unsupported`](eventbus_core::Error::Unsupported) instead of
//! skipping silently.
//!
//! Not a semver-stable API: it is a yardstick for implementations.

mod arbitrary;
pub(crate) mod checks;
mod headers;
mod support;

pub use arbitrary::publish_arbitrary;
pub use checks::*;
pub use headers::reserved_headers;
pub use support::{Harness, Scale, assert_all_received, assert_exactly_once, unique};

use futures::future::BoxFuture;

/// A check, as runners call it.
pub type Check = for<'a> fn(&'a Harness) -> BoxFuture<'a, ()>;

macro_rules! registry {
    ($($(#[pending = $why:literal, ignore = $ignore:literal])? $n:literal $name:ident),* $(,)?) => {
        /// Every check, numbered as in `conformance.md`, for runners.
        pub const CHECKS: &[(u32, &str, Check)] = &[
            $(($n, stringify!($name), |h| Box::pin($name(h)))),*
        ];

        /// Checks that wait for a feature not implemented yet, with the reason: they fail by
        /// saying so, runners report them as pending, and
        /// [`conformance_tests!`](crate::conformance_tests) marks their tests `#[ignore]`.
        pub const PENDING: &[(&str, &str)] = &[
            $($((stringify!($name), $why),)?)*
        ];

        /// Expands to one `#[tokio::test]` per check, each calling the check with the harness
        /// `$make` evaluates to (an expression, evaluated inside each test's runtime). Pending
        /// checks (see [`PENDING`](crate::conformance::PENDING)) are `#[ignore]`d with their reason.
        ///
        /// A transport with an out-of-process broker names two harnesses: checks in
        /// [`PRIVATE_BROKER`](crate::conformance::PRIVATE_BROKER) (they kill or reconfigure
        /// the broker) get the `private` one, every other check the `shared` one.
        ///
        /// ```ignore
        /// eventbus_testkit::conformance_tests!(my_transport_harness());
        /// eventbus_testkit::conformance_tests!(shared = shared_harness(), private = private_harness());
        /// ```
        #[macro_export]
        macro_rules! conformance_tests {
            (shared = $shared:expr, private = $private:expr) => {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    $(#[ignore = $ignore])?
                    async fn $name() {
                        $crate::log_to_test_output();
                        let harness = if $crate::conformance::PRIVATE_BROKER
                            .contains(&stringify!($name))
                        {
                            $private
                        } else {
                            $shared
                        };
                        $crate::conformance::$name(&harness).await;
                    }
                )*
            };
            ($make:expr) => {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    $(#[ignore = $ignore])?
                    async fn $name() {
                        $crate::log_to_test_output();
                        let harness = $make;
                        $crate::conformance::$name(&harness).await;
                    }
                )*
            };
        }
    };
}

/// Checks that measure process-wide figures (threads, file descriptors, heap): a runner must
/// run them while nothing else runs in the process (nextest runs every test in a process of
/// its own; the `conformance` binary of `eventbus-bench` runs them alone).
pub const RUN_ALONE: &[&str] = &["zero_leaks"];

/// Checks that kill or restart the broker: a transport with an out-of-process broker runs them
/// on a private one (see [`conformance_tests!`](crate::conformance_tests)), every other check on
/// a broker it shares with other tests.
pub const PRIVATE_BROKER: &[&str] = &["reconnect"];

// A check waiting for a feature not implemented yet is marked
// `#[pending = "why", ignore = "pending: why"]` (both literals: libtest prints only a literal
// ignore reason).
registry! {
    1 publish_subscribe,
    2 concurrent_subscribe,
    3 concurrent_subscribe_multiple_topics,
    4 resend_on_error,
    5 no_ack_holds_key,
    6 continue_after_subscription_close,
    7 concurrent_close,
    8 continue_after_errors,
    9 publish_subscribe_in_order,
    10 publisher_close,
    11 topic_isolation,
    12 message_context,
    13 subscribe_cancel,
    14 new_subscriber_receives_old_messages,
    15 reconnect,
    16 consumer_groups,
    17 no_head_of_line_blocking,
    18 retry_keeps_key_order,
    19 poison_to_dead_letter,
    20 handler_panic,
    21 backpressure,
    22 graceful_close_drains,
    23 shutdown_is_not_failure,
    24 zero_leaks,
    25 bad_input,
    26 publish_confirms,
    27 envelope_roundtrip,
    28 scale_out,
    29 health_reports,
    30 trace_propagation,
    31 reserved_headers,
}
