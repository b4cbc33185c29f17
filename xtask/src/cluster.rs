//! `cargo xtask cluster`: a 3-node cluster of its own loses the node leading the topic under
//! keyed load and gets it back (the `cluster` tool). Its brokers are its own (installed here if
//! missing): no shared broker is needed.

use crate::flags::{self, Transport};
use crate::util::tool;

impl flags::Cluster {
    pub(crate) fn run(self) -> Result<(), String> {
        let mut args = Vec::new();
        match self.transport {
            Some(Transport::Memory) => {
                return Err(
                    "cluster needs a broker: the memory bus has no nodes to lose (nats, kafka \
                     or all)"
                        .into(),
                );
            }
            Some(t) => args.extend(["--transport".to_owned(), t.name().to_owned()]),
            None => {}
        }
        if let Some(n) = self.messages {
            args.extend(["--messages".to_owned(), n.to_string()]);
        }
        crate::brokers::install()?;
        tool("cluster", &args)
    }
}
