//! `cargo xtask report`: the README's main job, the throughput comparison (no heap counter),
//! then the leak report (with one).

use crate::flags;
use crate::util::{TOOLS, cargo};

impl flags::Report {
    pub(crate) fn run(self) -> Result<(), String> {
        // Both tools get the same flags: `report` reads the ones it knows and skips the rest.
        let mut args = Vec::new();
        for (flag, value) in [
            ("--aggregates", self.aggregates),
            ("--versions", self.versions),
            ("--rounds", self.rounds),
        ] {
            if let Some(v) = value {
                args.extend([flag.to_owned(), v.to_string()]);
            }
        }
        for bin in ["throughput", "report"] {
            let mut full = vec![
                "run",
                "--quiet",
                "--release",
                "-p",
                TOOLS,
                "--bin",
                bin,
                "--",
            ];
            full.extend(args.iter().map(String::as_str));
            cargo(&full)?;
            println!();
        }
        Ok(())
    }
}
