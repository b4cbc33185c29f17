use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::sync::oneshot;

use crate::error::Error;
use crate::outcome::Outcome;

pin_project_lite::pin_project! {
    /// Resolves with the message's final [`Outcome`].
    #[derive(Debug)]
    pub struct ResponseFuture {
        #[pin]
        pub(super) rx: oneshot::Receiver<Outcome>,
    }
}

impl Future for ResponseFuture {
    type Output = Result<Outcome, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every job answers, even one dropped unrun (`Job::drop` replies `Cancelled`); a closed
        // channel is read the same way, as a message not handled, to be redelivered.
        Poll::Ready(Ok(
            ready!(self.project().rx.poll(cx)).unwrap_or(Outcome::Cancelled)
        ))
    }
}
