//! `cargo xtask groups`: Kafka's group protocols side by side (the `group-protocols` tool), on
//! the shared broker.

use crate::brokers::with_shared_brokers;
use crate::flags::{self, Broker};
use crate::util::tool;

impl flags::Groups {
    pub(crate) fn run(self) -> Result<(), String> {
        let mut args = vec!["--shared".to_owned()];
        if self.quick {
            args.push("--quick".to_owned());
        }
        if let Some(n) = self.rounds {
            args.extend(["--rounds".to_owned(), n.to_string()]);
        }
        with_shared_brokers(&[Broker::Kafka], || tool("group-protocols", &args))
    }
}
