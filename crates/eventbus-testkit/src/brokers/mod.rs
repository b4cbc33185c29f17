//! Real brokers as processes, installed and started by the project itself: Apache Kafka (KRaft,
//! run with `java` from jars fetched by Maven) and nats-server (built by `go install`).
//!
//! - [`install`] puts pinned versions into a cache outside the checkout (`$EVENTBUS_CACHE`, else
//!   `$XDG_CACHE_HOME/eventbus`, else `~/.cache/eventbus`), once per machine.
//! - [`ServerProcess`] is one broker: a test that kills or reconfigures a broker starts a
//!   private one (free ports, its own store, stopped by pid); a failed test keeps its log and
//!   store and prints where they are. [`ServerProcess::kafka_sasl_ssl`] adds a `SASL_SSL`
//!   listener (TLS with [`TestCertificates`](crate::tls::TestCertificates), SASL `PLAIN`).
//! - [`Cluster`] is several nodes of one broker forming a cluster (NATS routes, a KRaft quorum)
//!   on free ports, for tests that kill a node under load.
//! - [`shared`] is the pair a working session or CI starts once (`cargo xtask brokers up`) on
//!   fixed ports, which every other test shares; tests find them through
//!   [`shared::kafka_brokers`] and [`shared::nats_url`].
//!
//! The `eventbus-brokers` binary of this crate (`install | up | down | status`) is what
//! `cargo xtask brokers` and `cargo xtask test` run.

mod cluster;
pub mod install;
mod kafka;
mod nats;
mod process;
pub mod shared;

pub use cluster::Cluster;
pub use process::{ServerKind, ServerProcess};
