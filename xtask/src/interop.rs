//! `cargo xtask interop`: the tests that hold this bus to the Go SDK's wire format (every
//! crate's `go_sdk` test binary), on the shared brokers.
//!
//! The Go SDK itself is not run: this machine's Go module proxy refuses
//! `github.com/ChenBigdata421/jxt-core` (see `crates/eventbus-core/tests/golden/go-sdk/`), so its
//! side is golden vectors written from its source and raw clients publishing and reading what
//! it publishes and reads.

use crate::brokers::with_shared_brokers;
use crate::flags::{self, Broker};
use crate::util::cargo;

impl flags::Interop {
    pub(crate) fn run(self) -> Result<(), String> {
        with_shared_brokers(&[Broker::Nats, Broker::Kafka], || {
            cargo(&[
                "nextest",
                "run",
                "--workspace",
                "--all-features",
                "--no-fail-fast",
                "-E",
                "binary(go_sdk)",
            ])
        })
    }
}
