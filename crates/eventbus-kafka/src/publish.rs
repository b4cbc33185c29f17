//! Publishing: queueing a message at the producer, awaiting its delivery report, mapping
//! delivery errors, and the [`Publisher`] impl (single messages and pipelined batches).

use std::time::{Duration, UNIX_EPOCH};

use eventbus_core::transport::{PublishFuture, Publisher, settle_batch};
use eventbus_core::{Error, Message, Result};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord};

use crate::error::KafkaError;
use crate::mapping::HEADER_ID;
use crate::{KafkaTransport, Producer};

impl KafkaTransport {
    /// Queues one message at the producer; its future resolves with the delivery report.
    async fn send(&self, producer: &Producer, message: &Message) -> Result<DeliveryFuture> {
        let limit = self.inner.config.max_message_bytes;
        let size = message.encoded_len();
        if size > limit {
            return Err(Error::PayloadTooLarge { size, limit });
        }
        let mut headers = OwnedHeaders::new_with_capacity(message.headers().len() + 1);
        headers = headers.insert(Header {
            key: HEADER_ID,
            value: Some(message.id().as_str()),
        });
        for (name, value) in message.headers().iter() {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let timestamp = message
            .timestamp()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok());
        let key = message.key().map(|k| k.as_str());
        let mut record = FutureRecord::to(message.topic())
            .payload(message.payload().as_ref())
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // librdkafka's queue is full: wait for deliveries to free it.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(self.delivery_error(message, e)),
            }
        }
    }

    fn delivery_error(&self, message: &Message, e: RdError) -> Error {
        match e {
            RdError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
                Error::PayloadTooLarge {
                    size: message.encoded_len(),
                    limit: self.inner.config.max_message_bytes,
                }
            }
            source => KafkaError::Delivery {
                topic: message.topic().to_owned(),
                source,
            }
            .into(),
        }
    }

    async fn confirm(&self, message: &Message, delivery: DeliveryFuture) -> Result<()> {
        match delivery.await {
            Ok(Ok(_)) => {
                self.inner.link.up();
                Ok(())
            }
            Ok(Err((e, _))) => Err(self.delivery_error(message, e)),
            // The producer was dropped with the message in its queue.
            Err(_) => Err(Error::Closed),
        }
    }
}

impl Publisher for KafkaTransport {
    fn publish(&self, message: Message) -> PublishFuture<'_> {
        PublishFuture::waiting(async move {
            self.check_open()?;
            self.ensure_topic(message.topic()).await?;
            let producer = self.producer()?;
            let delivery = self.send(&producer, &message).await?;
            self.confirm(&message, delivery).await
        })
    }

    /// Queues every message, then waits for all the delivery reports (pipelined), by the batch
    /// rule of [`Publisher::publish_batch`].
    fn publish_batch(&self, messages: Vec<Message>) -> PublishFuture<'_> {
        PublishFuture::waiting(self.publish_all(messages))
    }
}

impl KafkaTransport {
    async fn publish_all(&self, messages: Vec<Message>) -> Result<()> {
        self.check_open()?;
        let producer = self.producer()?;
        let mut deliveries = Vec::with_capacity(messages.len());
        let mut sent = Ok(());
        for (i, message) in messages.iter().enumerate() {
            if (i == 0 || message.topic() != messages[i - 1].topic())
                && let Err(e) = self.ensure_topic(message.topic()).await
            {
                sent = Err(e);
                break;
            }
            match self.send(&producer, message).await {
                Ok(delivery) => deliveries.push(self.confirm(message, delivery)),
                Err(e) => {
                    sent = Err(e);
                    break;
                }
            }
        }
        settle_batch(deliveries, sent).await
    }
}
