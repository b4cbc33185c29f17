//! What the NATS tests share: the local server's address, a private server for tests that must
//! kill or reconfigure one, unique names and a thread count.

#![allow(dead_code, unreachable_pub)]

use eventbus_testkit::process::ServerProcess;

pub const SHARED_URL: &str = "nats://127.0.0.1:4222";

/// A private nats-server (its own port and store), stopped by pid on drop.
pub struct PrivateServer(ServerProcess);

impl PrivateServer {
    /// Starts `nats-server -js` on a free port, with `extra` arguments (e.g. `--auth secret`).
    pub fn start(extra: &[&str]) -> Self {
        PrivateServer(
            ServerProcess::nats(extra)
                .unwrap_or_else(|e| panic!("cannot start nats-server (see DEVELOPERS.md): {e}")),
        )
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.0.port())
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.0
            .restart()
            .unwrap_or_else(|e| panic!("cannot restart nats-server: {e}"));
    }
}

pub fn unique(prefix: &str) -> String {
    eventbus_testkit::conformance::unique(prefix)
}

/// OS threads of this process. Only meaningful when the test has the process to itself, as
/// under cargo-nextest (which sets `NEXTEST`); `None` otherwise.
pub fn threads() -> Option<usize> {
    std::env::var_os("NEXTEST")
        .map(|_| std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count))
}
