//! `cargo xtask peers`: builds the Go harness (`peers/go/`) and runs the `peers` tool against
//! it: this bus and Go event buses, the same load scenarios, one machine, one run, the table
//! into BENCHMARKS.md.

use std::process::Command;

use crate::brokers::with_shared_brokers;
use crate::flags::{self, Broker, Transport};
use crate::util::{tool, workspace_root};

impl flags::Peers {
    pub(crate) fn run(self) -> Result<(), String> {
        let root = workspace_root()?;
        let binary = root.join("target").join("peers").join("go-peer");
        eprintln!(
            "$ go build -o {} ./cmd/peer (in peers/go)",
            binary.display()
        );
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg("./cmd/peer")
            .current_dir(root.join("peers").join("go"))
            .status()
            .map_err(|e| format!("cannot run go (Go 1.26 is needed for the peers): {e}"))?;
        if !status.success() {
            return Err(format!("building the Go peers failed ({status})"));
        }
        let mut args = vec![
            "--go-peer".to_owned(),
            binary.display().to_string(),
            "--report".to_owned(),
            root.display().to_string(),
        ];
        if let Some(n) = self.rounds {
            args.extend(["--rounds".to_owned(), n.to_string()]);
        }
        let brokers: &[Broker] = match self.transport {
            Some(Transport::Memory) => &[],
            Some(Transport::Nats) => &[Broker::Nats],
            Some(Transport::Kafka) => &[Broker::Kafka],
            None | Some(Transport::All) => &[Broker::Nats, Broker::Kafka],
        };
        if let Some(t) = self.transport {
            args.extend(["--transport".to_owned(), t.name().to_owned()]);
        }
        if brokers.is_empty() {
            return tool("peers", &args);
        }
        with_shared_brokers(brokers, || tool("peers", &args))
    }
}
