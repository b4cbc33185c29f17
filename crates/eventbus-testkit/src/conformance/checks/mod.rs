//! The checks, numbered as in `docs/conformance.md`.
//!
//! Every check builds fresh buses from the harness, names its topics and groups with
//! [`unique`](crate::conformance::unique), waits only for what it observes (channels, counters,
//! gates; broker state such as lag is polled), each wait bounded by the harness timeout, closes
//! everything it opened, and fails by panicking with what it expected and what it got. Message
//! sets are compared by the suite's own ids (a header), listing missing, unexpected and
//! duplicated ones.
//!
//! Handlers never assert: a panic in a handler is caught by the bus (and counted as a handler
//! panic), so handlers record what they saw and the check asserts afterwards.
//!
//! The checks live in one module per theme and are all re-exported here (and from
//! `conformance`); `helpers` holds what several themes share, `telemetry` the process's global
//! tracing subscriber.

mod broker_faults;
mod delivery;
mod failure;
mod flow_control;
mod groups;
mod helpers;
mod input;
mod lifecycle;
mod observability;
mod telemetry;

pub use broker_faults::reconnect;
pub use delivery::{
    envelope_roundtrip, new_subscriber_receives_old_messages, publish_confirms, publish_subscribe,
    publish_subscribe_in_order, topic_isolation,
};
pub use failure::{
    continue_after_errors, handler_panic, poison_to_dead_letter, resend_on_error,
    retry_keeps_key_order,
};
pub use flow_control::{backpressure, no_ack_holds_key, no_head_of_line_blocking};
pub use groups::{
    concurrent_subscribe, concurrent_subscribe_multiple_topics, consumer_groups, scale_out,
};
pub use input::bad_input;
pub use lifecycle::{
    concurrent_close, continue_after_subscription_close, graceful_close_drains, message_context,
    publisher_close, shutdown_is_not_failure, subscribe_cancel, zero_leaks,
};
pub use observability::{health_reports, trace_propagation};
pub(crate) use telemetry::install_global_subscriber;
