//! `cargo xtask load`: the Go SDK's load levels (the `load` binary of `eventbus-bench`), with
//! the shared nats-server up.

use crate::brokers::with_shared_brokers;
use crate::flags::{self, Broker, Transport};
use crate::util::tool;

impl flags::Load {
    pub(crate) fn run(self) -> Result<(), String> {
        if self.transport == Some(Transport::All) {
            return Err("load runs one transport at a time: memory, nats or kafka".into());
        }
        let levels = match (self.level, self.levels) {
            (Some(_), Some(_)) => return Err("give --level or --levels, not both".into()),
            (level, levels) => level.or(levels),
        };
        let mut args = Vec::new();
        if let Some(t) = self.transport {
            args.extend(["--transport".to_owned(), t.name().to_owned()]);
        }
        if let Some(levels) = levels {
            args.extend(["--level".to_owned(), levels]);
        }
        // NATS is measured on the shared server; Kafka on a private broker of the tool's own
        // (or `EVENTBUS_KAFKA_BROKERS`).
        with_shared_brokers(&[Broker::Nats], || tool("load", &args))
    }
}
