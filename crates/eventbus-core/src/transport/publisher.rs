//! Publishing, as a transport implements it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

use crate::error::Result;
use crate::message::Message;

/// Publishes messages. Topic, key and size are validated by the bus before a call.
///
/// The bus holds its transport as a trait object, so the methods return a
/// [`PublishFuture`] instead of being `async fn`: a transport that is done on the spot (an
/// in-memory append) answers [`PublishFuture::ready`] and costs no allocation, one that waits
/// for its broker answers [`PublishFuture::waiting`] with an `async` block.
///
/// ```
/// use eventbus_core::transport::{PublishFuture, Publisher};
/// use eventbus_core::{Message, Result};
///
/// struct Discard;
///
/// impl Publisher for Discard {
///     fn publish(&self, message: Message) -> PublishFuture<'_> {
///         drop(message);
///         PublishFuture::ready(Ok(()))
///     }
/// }
/// ```
pub trait Publisher: Send + Sync + 'static {
    /// Publishes one message; resolves once the broker has it (its ack, where it has one).
    fn publish(&self, message: Message) -> PublishFuture<'_>;

    /// Publishes several messages, in order; resolves once the broker has all of them.
    ///
    /// Every transport follows one rule (see [`settle_batch`]): messages are sent in order,
    /// sending stops at the first message that cannot be sent, every message sent is then
    /// confirmed, and the first error (in message order) is returned once all confirmations
    /// finished. So an error never leaves confirmations running unseen, and nothing after a
    /// message that could not be sent goes out before it. The default publishes one at a time.
    fn publish_batch(&self, messages: Vec<Message>) -> PublishFuture<'_> {
        PublishFuture::waiting(async move {
            for message in messages {
                self.publish(message).await?;
            }
            Ok(())
        })
    }
}

/// The future of a [`Publisher`] call: finished already, or an `async` block still waiting,
/// boxed (a trait object's method cannot return an unnamed future).
#[must_use = "futures do nothing unless polled"]
pub struct PublishFuture<'a>(State<'a>);

enum State<'a> {
    Ready(Option<Result<()>>),
    Waiting(BoxFuture<'a, Result<()>>),
}

impl<'a> PublishFuture<'a> {
    /// Already finished with `result`.
    pub fn ready(result: Result<()>) -> Self {
        PublishFuture(State::Ready(Some(result)))
    }
    /// Finishes with `publish`.
    pub fn waiting(publish: impl Future<Output = Result<()>> + Send + 'a) -> Self {
        PublishFuture(State::Waiting(Box::pin(publish)))
    }
    /// Its result, if it was made [`ready`](Self::ready) and not polled yet: the bus takes it
    /// without polling, or arming a timeout for, a publish that finished on the spot.
    pub(crate) fn take_ready(&mut self) -> Option<Result<()>> {
        match &mut self.0 {
            State::Ready(result) => result.take(),
            State::Waiting(_) => None,
        }
    }
}

impl Future for PublishFuture<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut self.0 {
            State::Ready(result) => Poll::Ready(
                result
                    .take()
                    .expect("a PublishFuture polled after it finished"),
            ),
            State::Waiting(publish) => publish.as_mut().poll(cx),
        }
    }
}

impl std::fmt::Debug for PublishFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            State::Ready(_) => "PublishFuture::Ready",
            State::Waiting(_) => "PublishFuture::Waiting",
        })
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
