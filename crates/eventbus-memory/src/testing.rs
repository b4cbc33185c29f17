//! The memory transport's conformance harness, written once for its own tests and for the
//! suite's runner (feature `testing`).

use eventbus_core::{EventBus, Transport};
use eventbus_testkit::conformance::Harness;

use crate::MemoryTransport;

/// The conformance harness: every bus is a connection to one broker
/// ([`MemoryTransport::connect`]), like processes sharing a broker.
pub fn harness() -> Harness {
    let broker = MemoryTransport::new();
    let capabilities = broker.capabilities();
    Harness::new("memory", capabilities, move |options| {
        let connection = broker.connect();
        async move { EventBus::builder(connection).options(options).build() }
    })
}
