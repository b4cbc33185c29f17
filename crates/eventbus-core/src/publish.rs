//! The one publish path: user publishes, dead letters and replays all go through it, so each
//! is validated, bounded by the publish timeout, traced and counted the same way.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::transport::Transport;
use crate::validate::{Limits, validate_key, validate_topic};

#[derive(Clone)]
pub(crate) struct Outlet {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) limits: Limits,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Outlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlet")
            .field("transport", &self.transport.name())
            .finish_non_exhaustive()
    }
}

impl Outlet {
    pub(crate) fn validate(&self, message: &Message) -> Result<()> {
        validate_topic(message.topic())?;
        if let Some(key) = message.key() {
            validate_key(key.as_str())?;
        }
        self.limits.check_size(message.encoded_len())
    }

    async fn with_timeout(&self, publish: impl Future<Output = Result<()>>) -> Result<()> {
        let after = self.timeout;
        let mut publish = std::pin::pin!(publish);
        // Most publishes finish on their first poll (the memory broker, a pipelined client):
        // only arm a timer for those that wait.
        if let Some(done) = futures::FutureExt::now_or_never(publish.as_mut()) {
            return done;
        }
        tokio::time::timeout(after, publish)
            .await
            .map_err(|_| Error::Timeout {
                operation: "publish",
                after,
            })?
    }

    pub(crate) async fn publish(&self, message: Message) -> Result<()> {
        self.validate(&message)?;
        self.with_timeout(self.transport.publish(message)).await
    }

    pub(crate) async fn publish_batch(&self, messages: Vec<Message>) -> Result<()> {
        messages.iter().try_for_each(|m| self.validate(m))?;
        self.with_timeout(self.transport.publish_batch(messages))
            .await
    }
}
