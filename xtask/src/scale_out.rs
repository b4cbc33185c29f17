//! `cargo xtask scale-out`: a group of instances losing one to `close`, one to SIGKILL and
//! gaining a replacement under load, and 3 instances against 1 draining a backlog (the
//! `scale-out` tool), on the shared brokers.

use crate::brokers::with_shared_brokers;
use crate::flags::{self, Broker, Transport};
use crate::util::tool;

impl flags::ScaleOut {
    pub(crate) fn run(self) -> Result<(), String> {
        let brokers = match self.transport {
            Some(Transport::Memory) => {
                return Err(
                    "scale-out needs a broker: the memory bus lives in one process, so there \
                     is no instance to kill (nats, kafka or all)"
                        .into(),
                );
            }
            Some(Transport::Nats) => vec![Broker::Nats],
            Some(Transport::Kafka) => vec![Broker::Kafka],
            Some(Transport::All) | None => vec![Broker::Nats, Broker::Kafka],
        };
        let mut args = Vec::new();
        if let Some(t) = self.transport {
            args.extend(["--transport".to_owned(), t.name().to_owned()]);
        }
        if let Some(only) = self.only {
            args.extend(["--only".to_owned(), only.name().to_owned()]);
        }
        if let Some(n) = self.messages {
            args.extend(["--messages".to_owned(), n.to_string()]);
        }
        with_shared_brokers(&brokers, || tool("scale-out", &args))
    }
}
