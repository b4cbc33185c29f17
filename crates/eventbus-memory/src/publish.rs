//! Publishing: appending messages to a topic's log, waiting for room while it is full.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use eventbus_core::transport::{PublishFuture, Publisher};
use eventbus_core::{Error, Message, Result};

use crate::MemoryTransport;
use crate::broker::{Topic, lock};

impl MemoryTransport {
    /// Appends `message` if its topic has room; gives it back if the topic is full.
    fn try_append(&self, message: Message) -> Append {
        let topic = self.topic(message.topic());
        let mut st = lock(&topic.state);
        if self.closed.load(Ordering::Acquire) {
            return Append::Done(Err(Error::Closed));
        }
        if st.held >= self.broker.config.topic_capacity {
            return Append::Full(message);
        }
        st.log.push_back(Some(Arc::new(message)));
        st.held += 1;
        st.wake_members();
        Append::Done(Ok(()))
    }

    /// Appends messages of one topic, waiting for room as needed.
    async fn append<I>(&self, messages: I) -> Result<()>
    where
        I: IntoIterator<Item = Message>,
        I::IntoIter: Send,
    {
        let mut messages = messages.into_iter().map(Arc::new).peekable();
        let Some(first) = messages.peek() else {
            return Ok(());
        };
        let topic = self.topic(first.topic());
        let capacity = self.broker.config.topic_capacity;
        while messages.peek().is_some() {
            let space = topic.space.notified();
            tokio::pin!(space);
            let _blocked = {
                let mut st = lock(&topic.state);
                if self.closed.load(Ordering::Acquire) {
                    return Err(Error::Closed);
                }
                let room = capacity.saturating_sub(st.held);
                if room > 0 {
                    let before = st.log.len();
                    st.log.extend(messages.by_ref().take(room).map(Some));
                    st.held += st.log.len() - before;
                    st.wake_members();
                    continue;
                }
                // Registered under the topic lock, so room freed after we looked wakes us.
                space.as_mut().enable();
                st.blocked_publishers += 1;
                Blocked(&topic)
            };
            space.await;
        }
        Ok(())
    }
}

/// What [`MemoryTransport::try_append`] did.
enum Append {
    Done(Result<()>),
    /// The topic is full: the message back, to wait for room with.
    Full(Message),
}

/// Counts a publisher waiting for room for as long as it waits (a timed-out publish included).
struct Blocked<'a>(&'a Topic);

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).blocked_publishers -= 1;
    }
}

impl Publisher for MemoryTransport {
    fn publish(&self, message: Message) -> PublishFuture<'_> {
        // A topic with room takes the message on the spot: nothing to wait for, no future
        // to box. Only a full topic makes one.
        match self.try_append(message) {
            Append::Done(appended) => PublishFuture::ready(appended),
            Append::Full(message) => PublishFuture::waiting(self.append(std::iter::once(message))),
        }
    }

    fn publish_batch(&self, messages: Vec<Message>) -> PublishFuture<'_> {
        PublishFuture::waiting(async move {
            // One append per run of messages on the same topic, in order.
            let mut run: Vec<Message> = Vec::new();
            for message in messages {
                if run
                    .last()
                    .is_some_and(|last| last.topic() != message.topic())
                {
                    self.append(std::mem::take(&mut run)).await?;
                }
                run.push(message);
            }
            self.append(run).await
        })
    }
}
