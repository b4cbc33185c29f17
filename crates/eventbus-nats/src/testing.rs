//! The NATS transport's conformance harnesses and test servers, written once for its own tests
//! and for the suite's runner (feature `testing`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::EventBus;
use eventbus_testkit::brokers::{ServerProcess, shared};
use eventbus_testkit::conformance::Harness;

use crate::{ConsumerOptions, NatsConfig, NatsTransport, Sharing};

/// The shared server (`cargo xtask brokers up`; `EVENTBUS_NATS_URL` names another). When
/// dropped (also when the test fails) it deletes the streams whose names this process made
/// (every [`unique`](eventbus_testkit::conformance::unique) name holds the process id).
#[derive(Debug)]
pub struct SharedServer {
    url: String,
}

impl SharedServer {
    /// The shared server's address, with the clean-up guard.
    pub fn get() -> Self {
        SharedServer {
            url: shared::nats_url(),
        }
    }

    /// Its address.
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
#[derive(Debug)]
pub struct PrivateServer(ServerProcess);

impl PrivateServer {
    /// Starts `nats-server -js` on a free port, with `extra` arguments (e.g. `--auth secret`).
    pub fn start(extra: &[&str]) -> Self {
        PrivateServer(
            ServerProcess::nats(extra)
                .unwrap_or_else(|e| panic!("cannot start nats-server (see DEVELOPERS.md): {e}")),
        )
    }

    /// Its address.
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

/// Buses on `url` whose groups share topics by `sharing`; `keep` lives as long as the harness.
fn harness_on<K>(url: String, sharing: Sharing, keep: Arc<K>) -> Harness
where
    K: Send + Sync + 'static,
{
    Harness::new(
        "nats",
        NatsTransport::capabilities_with(sharing),
        move |options| {
            let url = url.clone();
            let _keep = Arc::clone(&keep);
            async move {
                // A short ack wait: messages left unacked at a subscription's close (by design)
                // come back in seconds rather than the default 30 s.
                let config = NatsConfig::new(url.clone()).consumer(
                    ConsumerOptions::default()
                        .ack_wait(Duration::from_secs(3))
                        .sharing(sharing),
                );
                let transport = NatsTransport::connect(config)
                    .await
                    .unwrap_or_else(|e| panic!("connect to nats-server at {url}: {e}"));
                EventBus::builder(transport).options(options).build()
            }
        },
    )
}

/// The conformance harness on the shared server: every check but `reconnect`. Groups are keyed
/// ([`Sharing::ByKey`], the default).
pub fn shared_harness() -> Harness {
    shared_harness_with(Sharing::ByKey)
}

/// The conformance harness on the shared server, groups sharing topics by `sharing`.
pub fn shared_harness_with(sharing: Sharing) -> Harness {
    let server = SharedServer::get();
    harness_on(server.url(), sharing, Arc::new(server))
}

/// The conformance harness on a private server it can kill and restart: `reconnect`.
pub fn private_harness() -> Harness {
    let server = Arc::new(Mutex::new(PrivateServer::start(&[])));
    let url = server.lock().unwrap_or_else(|e| e.into_inner()).url();
    // One subscription across crashes: copies the server sends again are recognised by stream
    // sequence, id and store time, and dropped.
    harness_on(url, Sharing::ByKey, Arc::clone(&server))
        .once_across_restarts_promised()
        .with_restart(move || {
            let server = Arc::clone(&server);
            async move {
                // SIGKILL and start again on the same port and store, as a crash would.
                tokio::task::spawn_blocking(move || {
                    server.lock().unwrap_or_else(|e| e.into_inner()).restart()
                })
                .await
                .map_err(|e| eventbus_core::Error::transport("nats", e))
            }
        })
}
