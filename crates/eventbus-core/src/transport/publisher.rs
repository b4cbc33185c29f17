//! Publishing, as a transport implements it.

use crate::error::Result;
use crate::message::Message;

/// Publishes messages. Topic, key and size are validated by the bus before a call.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message; returns once the broker has it (its ack, where it has one).
    async fn publish(&self, message: Message) -> Result<()>;

    /// Publishes several messages, in order; returns once the broker has all of them.
    async fn publish_batch(&self, messages: Vec<Message>) -> Result<()> {
        for message in messages {
            self.publish(message).await?;
        }
        Ok(())
    }
}
