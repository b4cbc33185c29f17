//! `cargo xtask conformance`: the conformance suite as a pass/fail table (the `conformance`
//! binary of `eventbus-bench`).

use crate::flags;
use crate::util::tool;

impl flags::Conformance {
    pub(crate) fn run(self) -> Result<(), String> {
        let mut args = Vec::new();
        if let Some(t) = self.transport {
            args.extend(["--transport".to_owned(), t.name().to_owned()]);
        }
        if self.quick {
            args.push("--quick".to_owned());
        }
        if let Some(n) = self.stress {
            args.extend(["--stress".to_owned(), n.to_string()]);
        }
        if let Some(secs) = self.timeout {
            args.extend(["--timeout".to_owned(), secs.to_string()]);
        }
        tool("conformance", &args)
    }
}
