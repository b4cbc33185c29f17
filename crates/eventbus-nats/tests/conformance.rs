//! The conformance suite against nats-server: every check runs on the shared server (streams
//! of this process deleted afterwards), but `reconnect`, which kills and restarts its server,
//! on a private one.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::EventBus;
use eventbus_core::transport::Capabilities;
use eventbus_nats::{ConsumerOptions, NatsConfig, NatsTransport};
use eventbus_testkit::conformance::Harness;
use support::{PrivateServer, SharedServer};

/// Buses on `url`; `keep` lives as long as the harness.
fn harness_on<K>(url: String, capabilities: Capabilities, keep: Arc<K>) -> Harness
where
    K: Send + Sync + 'static,
{
    Harness::new("nats", capabilities, move |options| {
        let url = url.clone();
        let _keep = Arc::clone(&keep);
        async move {
            // A short ack wait: messages left unacked at a subscription's close (by design)
            // come back in seconds rather than the default 30 s.
            let config = NatsConfig::new(url.clone())
                .consumer(ConsumerOptions::default().ack_wait(Duration::from_secs(3)));
            let transport = NatsTransport::connect(config)
                .await
                .unwrap_or_else(|e| panic!("connect to nats-server at {url}: {e}"));
            EventBus::builder(transport).options(options).build()
        }
    })
}

fn shared() -> Harness {
    let server = SharedServer::get();
    harness_on(server.url(), NatsTransport::CAPABILITIES, Arc::new(server))
}

fn private() -> Harness {
    let server = Arc::new(Mutex::new(PrivateServer::start(&[])));
    let url = server.lock().unwrap_or_else(|e| e.into_inner()).url();
    let capabilities = NatsTransport::CAPABILITIES;
    // One subscription across crashes: copies the server sends again are recognised by stream
    // sequence, id and store time, and dropped.
    harness_on(url, capabilities, Arc::clone(&server))
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

eventbus_testkit::conformance_tests!(shared = shared(), private = private());

/// Arbitrary header names and values, keys and payloads through every publish path (fewer
/// cases than in memory: each is a round trip to the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_arbitrary_input() {
    eventbus_testkit::conformance::publish_arbitrary(&shared(), 1_000).await;
}
