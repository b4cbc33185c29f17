//! Publishing: one message or a batch (pipelined), each with its `Nats-Msg-Id` and key
//! headers to its partition's subject, returning after JetStream's ack.
//!
//! A publish that fails the way a cluster's failover makes it fail is made again, with the
//! same message id, for up to [`NatsConfig::publish_retry`](crate::NatsConfig::publish_retry):
//! the stream's duplicate window drops a copy it already holds, so the stream ends up with
//! each message once. A batch whose messages failed so is made again from its first failed
//! message on, one message at a time, so none of them overtakes an earlier one.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use eventbus_core::transport::{PublishFuture, Publisher};
use eventbus_core::{Error, Message, Result};
use futures::TryFutureExt;

use crate::mapping::{HEADER_ID, HEADER_KEY};
use crate::partition::Layout;
use crate::{NatsConfig, NatsError, NatsTransport};

/// A message as it goes out: subject, headers, payload.
struct Outgoing {
    subject: Subject,
    headers: HeaderMap,
    payload: Bytes,
}

/// Which step of a publish failed, with async-nats's error.
enum Failed {
    Send(PublishError),
    Ack(PublishError),
}

impl Failed {
    fn kind(&self) -> PublishErrorKind {
        match self {
            Failed::Send(e) | Failed::Ack(e) => e.kind(),
        }
    }

    /// Whether making the publish again may succeed: no stream leader answered (one is being
    /// elected: async-nats reports the server's "no responders" as `StreamNotFound`), the ack
    /// did not come in time, or the connection broke.
    fn passing(&self) -> bool {
        matches!(
            self.kind(),
            PublishErrorKind::StreamNotFound
                | PublishErrorKind::TimedOut
                | PublishErrorKind::BrokenPipe
        )
    }

    fn into_error(self) -> Error {
        match self {
            Failed::Send(e) => NatsError::request("publish", e).into(),
            Failed::Ack(e) => NatsError::request("publish ack", e).into(),
        }
    }
}

/// The subjects of a topic's partitions, made once for a run of a batch's messages on one
/// topic: each message's subject is then a shared one (a reference count), not a string made
/// and copied per message.
struct Subjects {
    layout: Layout,
    subjects: Vec<Subject>,
}

impl Subjects {
    fn of(config: &NatsConfig, topic: &str) -> Self {
        let layout = config.layout(topic);
        let subjects = layout.subjects().into_iter().map(Subject::from).collect();
        Subjects { layout, subjects }
    }

    fn of_message(&self, message: &Message) -> Subject {
        self.subjects[usize::from(self.layout.partition_of(message))].clone()
    }
}

/// The subject of `message`'s partition, made for it alone (a single publish).
fn subject_of(config: &NatsConfig, message: &Message) -> Subject {
    let layout = config.layout(message.topic());
    Subject::from(layout.subject_of(layout.partition_of(message)))
}

/// The waits between attempts: from 50 ms, doubling, at most 1 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64 << attempt.min(5)).min(Duration::from_secs(1))
}

impl NatsTransport {
    /// Checks `message` against the server's limit and makes what goes out to `subject`.
    fn outgoing(&self, message: &Message, subject: Subject) -> Result<Outgoing> {
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
        Ok(Outgoing {
            subject,
            headers,
            payload: message.payload().clone(),
        })
    }

    /// Sends one message (its stream ensured by the caller); returns its ack future.
    /// async-nats's future itself, not wrapped in one more: a batch makes one per message,
    /// and each layer moved it once more (about a hundred bytes per move).
    fn send(
        &self,
        out: Outgoing,
    ) -> impl Future<Output = std::result::Result<jetstream::context::PublishAckFuture, Failed>> + '_
    {
        self.inner
            .js
            .publish_with_headers(out.subject, out.headers, out.payload)
            .map_err(Failed::Send)
    }

    /// Sends `message` (its stream ensured by the caller) and waits for its ack; a failure
    /// that may pass is tried again until `deadline`.
    async fn publish_one(&self, message: &Message, deadline: Instant) -> Result<()> {
        let mut attempt = 0;
        loop {
            let out = self.outgoing(message, subject_of(&self.inner.config, message))?;
            let failed = match self.send(out).await {
                Ok(ack) => match ack.await {
                    Ok(_) => return Ok(()),
                    Err(e) => Failed::Ack(e),
                },
                Err(failed) => failed,
            };
            let wait = backoff(attempt);
            if !failed.passing() || Instant::now() + wait > deadline {
                return Err(failed.into_error());
            }
            tracing::debug!(
                message_id = %message.id(),
                error = %failed.kind(),
                attempt,
                "publish failed; making it again"
            );
            tokio::time::sleep(wait).await;
            self.check_open()?;
            attempt += 1;
        }
    }

    fn retry_deadline(&self) -> Instant {
        Instant::now() + self.inner.config.publish_retry
    }
}

impl Publisher for NatsTransport {
    fn publish(&self, message: Message) -> PublishFuture<'_> {
        PublishFuture::waiting(async move {
            self.check_open()?;
            self.ensure_stream(message.topic()).await?;
            self.publish_one(&message, self.retry_deadline()).await
        })
    }

    /// Sends every message, then waits for all the acks (pipelined), by the batch rule of
    /// [`Publisher::publish_batch`]. If the first failure in message order is one that may
    /// pass, the messages from it on are made again one at a time (see the module docs).
    fn publish_batch(&self, messages: Vec<Message>) -> PublishFuture<'_> {
        PublishFuture::waiting(self.publish_all(messages))
    }
}

impl NatsTransport {
    async fn publish_all(&self, messages: Vec<Message>) -> Result<()> {
        self.check_open()?;
        let deadline = self.retry_deadline();
        let mut acks = Vec::with_capacity(messages.len());
        // Why sending stopped early: a message that cannot go out at all, or a send failure.
        let mut stopped: Option<std::result::Result<Failed, Error>> = None;
        let mut subjects: Option<Subjects> = None;
        for (i, message) in messages.iter().enumerate() {
            if i == 0 || message.topic() != messages[i - 1].topic() {
                if let Err(e) = self.ensure_stream(message.topic()).await {
                    stopped = Some(Err(e));
                    break;
                }
                subjects = None;
            }
            let subject = subjects
                .get_or_insert_with(|| Subjects::of(&self.inner.config, message.topic()))
                .of_message(message);
            let sent = match self.outgoing(message, subject) {
                Ok(out) => self.send(out).await,
                Err(e) => {
                    stopped = Some(Err(e));
                    break;
                }
            };
            match sent {
                Ok(ack) => acks.push(ack),
                Err(failed) => {
                    stopped = Some(Ok(failed));
                    break;
                }
            }
        }
        // The acks are awaited in order, up to the first that failed: the messages from it on
        // are made again anyway (below), so what became of the later ones does not matter.
        // One at a time costs no time: acks come back in order, so most are in by the time
        // the first is. Nor does a dead leader cost more than one timeout: async-nats starts
        // an ack's timeout (5 s) only when it is awaited, and the first missing ack ends the
        // wait. (Awaiting them all at once, `join_all`, cost about 2,800 instructions per
        // message more: a task and a timer per ack.)
        let sent = acks.len();
        let mut first_failed = None;
        for (i, ack) in acks.into_iter().enumerate() {
            if let Err(e) = ack.await {
                first_failed = Some((i, Failed::Ack(e)));
                break;
            }
        }
        let (from, failed) = match (first_failed, stopped) {
            (Some(first), _) => first,
            (None, Some(Ok(failed))) => (sent, failed),
            (None, Some(Err(e))) => return Err(e),
            (None, None) => return Ok(()),
        };
        if !failed.passing() {
            return Err(failed.into_error());
        }
        tracing::debug!(
            error = %failed.kind(),
            from,
            of = messages.len(),
            "batch publish failed; making it again one message at a time"
        );
        for (i, message) in messages.iter().enumerate().skip(from) {
            if i == from || message.topic() != messages[i - 1].topic() {
                self.ensure_stream(message.topic()).await?;
            }
            self.publish_one(message, deadline).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_failover_explains_is_tried_again() {
        let failed = |kind| Failed::Ack(PublishError::new(kind));
        for kind in [
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
        ] {
            assert!(failed(kind).passing(), "{kind:?}");
        }
        for kind in [
            PublishErrorKind::WrongLastMessageId,
            PublishErrorKind::WrongLastSequence,
            PublishErrorKind::MaxAckPending,
            PublishErrorKind::MaxPayloadExceeded,
            PublishErrorKind::Other,
        ] {
            assert!(!failed(kind).passing(), "{kind:?}");
        }
    }

    #[test]
    fn backoff_doubles_from_50_ms_to_at_most_a_second() {
        let waits: Vec<u64> = (0..7).map(|a| backoff(a).as_millis() as u64).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1000, 1000]);
    }
}
