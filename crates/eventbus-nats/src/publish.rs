//! Publishing: one message or a batch (pipelined), each with its `Nats-Msg-Id` and key
//! headers to its partition's subject, returning after JetStream's ack.

use async_nats::HeaderMap;
use async_nats::jetstream;
use eventbus_core::transport::{Publisher, settle_batch};
use eventbus_core::{Error, Message, Result};

use crate::mapping::{HEADER_ID, HEADER_KEY};
use crate::{NatsError, NatsTransport};

impl NatsTransport {
    /// Sends one message (its stream ensured by the caller) and returns its ack future.
    async fn send(&self, message: &Message) -> Result<jetstream::context::PublishAckFuture> {
        let max = self.inner.client.max_payload();
        let size = message.encoded_len();
        if max > 0 && size > max {
            return Err(Error::PayloadTooLarge { size, limit: max });
        }
        let mut headers = HeaderMap::new();
        for (name, value) in message.headers().iter() {
            // The bus validated them already; a transport used on its own must not panic in
            // async-nats's header constructors either (the core's rule is the stricter one).
            eventbus_core::validate::validate_header(name, value)?;
            headers.insert(name, value);
        }
        headers.insert(HEADER_ID, message.id().as_str());
        if let Some(key) = message.key() {
            headers.insert(HEADER_KEY, key.as_str());
        }
        let config = &self.inner.config;
        let partitions = config.stream_for(message.topic()).partitions;
        let subject = crate::partition::subject(
            &config.subject(message.topic()),
            crate::partition::of(message, partitions),
        );
        self.inner
            .js
            .publish_with_headers(subject, headers, message.payload().clone())
            .await
            .map_err(|e| NatsError::request("publish", e).into())
    }
}

async fn confirm(ack: jetstream::context::PublishAckFuture) -> Result<()> {
    ack.await
        .map(drop)
        .map_err(|e| NatsError::request("publish ack", e).into())
}

#[async_trait::async_trait]
impl Publisher for NatsTransport {
    async fn publish(&self, message: Message) -> Result<()> {
        self.check_open()?;
        self.ensure_stream(message.topic()).await?;
        confirm(self.send(&message).await?).await
    }

    /// Sends every message, then waits for all the acks (pipelined), by the batch rule of
    /// [`Publisher::publish_batch`].
    async fn publish_batch(&self, messages: Vec<Message>) -> Result<()> {
        self.check_open()?;
        let mut acks = Vec::with_capacity(messages.len());
        let mut sent = Ok(());
        for (i, message) in messages.iter().enumerate() {
            if (i == 0 || message.topic() != messages[i - 1].topic())
                && let Err(e) = self.ensure_stream(message.topic()).await
            {
                sent = Err(e);
                break;
            }
            match self.send(message).await {
                Ok(ack) => acks.push(confirm(ack)),
                Err(e) => {
                    sent = Err(e);
                    break;
                }
            }
        }
        settle_batch(acks, sent).await
    }
}
