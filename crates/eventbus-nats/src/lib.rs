//! NATS JetStream (async-nats) transport for eventbus.
//!
//! **Not implemented yet.** This crate is a placeholder so the workspace and the facade's
//! `nats` feature have their final shape; it offers no API and fakes no behaviour. The transport
//! arrives with its own issue (see the project's issue list), where it must pass the
//! conformance suite of `eventbus-testkit` against a real broker.
#![warn(missing_docs)]
