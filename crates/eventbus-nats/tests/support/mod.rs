//! What the NATS tests share: the servers (`eventbus_nats::testing`), unique names and thread
//! counts.

#![allow(dead_code, unreachable_pub)]

pub use eventbus_nats::testing::{PrivateServer, SharedServer};

pub fn unique(prefix: &str) -> String {
    eventbus_testkit::conformance::unique(prefix)
}

/// OS threads of this process. Only meaningful when the test has the process to itself, as
/// under cargo-nextest (which sets `NEXTEST`); `None` otherwise.
pub fn threads() -> Option<usize> {
    std::env::var_os("NEXTEST")
        .map(|_| std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count))
}

/// The names of this process's OS threads, to say which one a leak check found.
pub fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The thread count once it is back to `expected`, or after 2 s. The transport's `close` joins
/// its thread, but the kernel may list an exited thread in `/proc` a moment longer (it wakes
/// the joiner before it removes the thread), so a leak is a thread still there after that.
pub async fn threads_after_close(expected: Option<usize>) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let now = threads();
        if now <= expected || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
