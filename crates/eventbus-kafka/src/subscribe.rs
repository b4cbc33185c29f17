//! Subscribing: the [`Subscriber`] impl, which makes a subscription's consumer and starts the
//! thread that polls it, and [`Running`], what the transport keeps of that thread.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

use eventbus_core::transport::{Started, SubscribeRequest, Subscriber};
use eventbus_core::{Error, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::GroupProtocol;
use crate::consumer::{self, KafkaContext, KafkaStream, Shared};
use crate::error::KafkaError;
use crate::{KafkaTransport, NAME, client_config, drop_blocking, lock, millis};

/// A subscription's consumer thread.
pub(crate) struct Running {
    pub(crate) group_id: String,
    /// Its consumer, for `lag` (committed offsets are asked of a client of the group): the
    /// consumer thread holds it, and closes it when it ends.
    pub(crate) consumer: Weak<BaseConsumer<KafkaContext>>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) done: tokio::sync::oneshot::Receiver<()>,
    pub(crate) thread: std::thread::JoinHandle<()>,
}

#[async_trait::async_trait]
impl Subscriber for KafkaTransport {
    async fn subscribe(&self, request: SubscribeRequest) -> Result<Started> {
        self.check_open()?;
        let config = &self.inner.config;
        let topic = request.topic().to_owned();
        let group = request.group().to_owned();
        self.ensure_topic(&topic).await?;
        let c = &config.consumer;
        let mut settings = BTreeMap::from([
            ("group.id".to_owned(), config.group_id(&topic, &group)),
            ("enable.auto.commit".to_owned(), "false".to_owned()),
            ("enable.auto.offset.store".to_owned(), "false".to_owned()),
            ("auto.offset.reset".to_owned(), "earliest".to_owned()),
            ("enable.partition.eof".to_owned(), "false".to_owned()),
            (
                "group.protocol".to_owned(),
                c.group_protocol.as_str().to_owned(),
            ),
            (
                "max.poll.interval.ms".to_owned(),
                millis(c.max_poll_interval),
            ),
            // librdkafka's prefetch per partition (64 MB by default): keep it small, the
            // bus buffers what matters.
            ("queued.max.messages.kbytes".to_owned(), "4096".to_owned()),
            ("fetch.wait.max.ms".to_owned(), "100".to_owned()),
        ]);
        if c.group_protocol == GroupProtocol::Classic {
            // librdkafka refuses these under KIP-848: the broker sets them there.
            settings.extend([
                ("session.timeout.ms".to_owned(), millis(c.session_timeout)),
                (
                    "heartbeat.interval.ms".to_owned(),
                    millis(c.heartbeat_interval),
                ),
                (
                    "partition.assignment.strategy".to_owned(),
                    "cooperative-sticky".to_owned(),
                ),
            ]);
        }
        settings.extend(config.consumer_settings.clone());
        let shared = Shared::new(topic.clone());
        let context = KafkaContext {
            shared: Arc::clone(&shared),
            link: Arc::clone(&self.inner.link),
            revoke_timeout: c.revoke_timeout,
            request_timeout: config.request_timeout,
        };
        let mut consumer: BaseConsumer<KafkaContext> = client_config(config, &settings)
            .create_with_context(context)
            .map_err(KafkaError::Config)?;
        {
            let shared = Arc::clone(&shared);
            consumer.set_nonempty_callback(move || shared.wake());
        }
        if let Err(e) = consumer.subscribe(&[&topic]) {
            drop_blocking(consumer).await;
            return Err(KafkaError::request("subscribe", e).into());
        }
        let consumer = Arc::new(consumer);
        let for_lag = Arc::downgrade(&consumer);
        let capacity = c.prefetch.min(request.max_buffered()).max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let commit_interval = c.commit_interval;
        let for_thread = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("eventbus-kafka-consumer".into())
            .spawn(move || {
                consumer::poll_loop(consumer, tx, &for_thread, commit_interval);
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::transport(NAME, e))?;
        {
            let mut consumers = lock(&self.inner.consumers);
            // Forget the threads of subscriptions that ended (they were joined by exiting).
            consumers.retain(|r| !r.thread.is_finished());
            consumers.push(Running {
                group_id: config.group_id(&topic, &group),
                consumer: for_lag,
                stop: Arc::clone(&stop),
                shared: Arc::clone(&shared),
                done,
                thread,
            });
        }
        // Joining takes a rebalance; messages published after `subscribe` returns must not
        // reach a member that is about to give its partition up (its handlers would hold up
        // the hand-over), so wait for the first assignment, bounded (see `join_wait`).
        if tokio::time::timeout(c.join_wait, shared.assigned())
            .await
            .is_err()
        {
            tracing::debug!(%topic, %group, "no partition assigned yet; consuming once the group assigns some");
        }
        if let Some(reason) = shared.fatal() {
            // The poller stops by itself and closes the consumer; `close` joins it.
            return Err(KafkaError::Group {
                group: config.group_id(&topic, &group),
                reason: reason.to_owned(),
            }
            .into());
        }
        let stream = KafkaStream::new(rx, shared, stop, request.redelivery_delay());
        Ok(request.start(stream))
    }
}
