//! The conformance suite against a real nats-server: each check gets a private server (its own
//! port and store directory, removed afterwards), so `reconnect` can kill and restart it.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus_core::EventBus;
use eventbus_nats::{ConsumerOptions, NatsConfig, NatsTransport};
use eventbus_testkit::conformance::Harness;
use support::PrivateServer;

fn harness() -> Harness {
    let server = Arc::new(Mutex::new(PrivateServer::start(&[])));
    let url = server.lock().unwrap_or_else(|e| e.into_inner()).url();
    let capabilities = NatsTransport::CAPABILITIES.with_broker_restart();
    let for_restart = Arc::clone(&server);
    Harness::new("nats", capabilities, move |options| {
        let url = url.clone();
        async move {
            // A short ack wait: messages left unacked at a subscription's close (by design)
            // come back in seconds rather than the default 30 s.
            let config = NatsConfig::new(url)
                .consumer(ConsumerOptions::default().ack_wait(Duration::from_secs(3)));
            let transport = NatsTransport::connect(config)
                .await
                .unwrap_or_else(|e| panic!("connect to the private nats-server: {e}"));
            EventBus::builder(transport).options(options).build()
        }
    })
    .with_restart(move || {
        let server = Arc::clone(&for_restart);
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

eventbus_testkit::conformance_tests!(harness());
