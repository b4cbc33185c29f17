//! What the NATS tests share: the shared server (with a guard that cleans up after this
//! process), a private server for tests that must kill or reconfigure one, unique names and a
//! thread count.

#![allow(dead_code, unreachable_pub)]

use eventbus_testkit::brokers::{ServerProcess, shared};

/// The shared server (`cargo xtask brokers up`; `EVENTBUS_NATS_URL` names another). When
/// dropped (also when the test fails) it deletes the streams whose names this process made
/// (every [`unique`] name holds the process id).
pub struct SharedServer {
    url: String,
}

impl SharedServer {
    pub fn get() -> Self {
        SharedServer {
            url: shared::nats_url(),
        }
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }
}

impl Drop for SharedServer {
    fn drop(&mut self) {
        // A runtime of its own, on a thread of its own: this may be dropped inside another
        // runtime, which must not be blocked on.
        let url = self.url.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(delete_this_process_streams(&url));
        })
        .join();
    }
}

async fn delete_this_process_streams(url: &str) {
    use futures::StreamExt;
    let mine = format!("-{}-", std::process::id());
    let Ok(client) = async_nats::connect(url).await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let mut doomed = Vec::new();
    let mut names = js.stream_names();
    while let Some(Ok(name)) = names.next().await {
        if name.contains(&mine) {
            doomed.push(name);
        }
    }
    for name in doomed {
        let _ = js.delete_stream(&name).await;
    }
}

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
