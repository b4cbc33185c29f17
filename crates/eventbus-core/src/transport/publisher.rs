//! Publishing, as a transport implements it.

use std::future::Future;

use crate::error::Result;
use crate::message::Message;

/// Publishes messages. Topic, key and size are validated by the bus before a call.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message; returns once the broker has it (its ack, where it has one).
    async fn publish(&self, message: Message) -> Result<()>;

    /// Publishes several messages, in order; returns once the broker has all of them.
    ///
    /// Every transport follows one rule (see [`settle_batch`]): messages are sent in order,
    /// sending stops at the first message that cannot be sent, every message sent is then
    /// confirmed, and the first error (in message order) is returned once all confirmations
    /// finished. So an error never leaves confirmations running unseen, and nothing after a
    /// message that could not be sent goes out before it. The default publishes one at a time.
    async fn publish_batch(&self, messages: Vec<Message>) -> Result<()> {
        for message in messages {
            self.publish(message).await?;
        }
        Ok(())
    }
}

/// Ends a batch publish by the one rule of [`Publisher::publish_batch`]: waits for every
/// confirmation of the messages sent (in order), then returns the first error: a failed
/// confirmation, else `sent`'s error (the message that could not be sent, after those).
pub async fn settle_batch<F>(confirmations: Vec<F>, sent: Result<()>) -> Result<()>
where
    F: Future<Output = Result<()>>,
{
    let mut first_error = None;
    for confirmation in confirmations {
        if let Err(e) = confirmation.await {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => sent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn failed(what: &'static str) -> Error {
        Error::transport("test", what)
    }

    #[tokio::test]
    async fn the_first_error_comes_after_every_confirmation() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let confirmed = AtomicUsize::new(0);
        let confirm = |r: Result<()>| {
            let confirmed = &confirmed;
            async move {
                confirmed.fetch_add(1, Ordering::SeqCst);
                r
            }
        };
        let confirmations = vec![
            confirm(Ok(())),
            confirm(Err(failed("second"))),
            confirm(Err(failed("third"))),
            confirm(Ok(())),
        ];
        let result = settle_batch(confirmations, Err(failed("fifth, not sent"))).await;
        assert_eq!(
            confirmed.load(Ordering::SeqCst),
            4,
            "every confirmation awaited"
        );
        assert!(result.unwrap_err().to_string().contains("second"));

        let confirmations = vec![confirm(Ok(()))];
        let result = settle_batch(confirmations, Err(failed("not sent"))).await;
        assert!(result.unwrap_err().to_string().contains("not sent"));
        assert!(settle_batch(vec![confirm(Ok(()))], Ok(())).await.is_ok());
    }
}
