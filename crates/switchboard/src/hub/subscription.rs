//! Hub members that are not WebSockets: a [`Subscription`] is a member
//! whose messages go to a bounded in-memory queue read as a `Stream`
//! (Server-Sent Events use it; so can tests and in-process consumers).
//!
//! The hub keeps one [`Recipient`] per member: a socket's [`Sender`] or a
//! stream's queue. Both take a frame without waiting and fail when their
//! byte budget is spent, so fan-out treats them alike and the slow-consumer
//! policy is the same: the first refused message ends the member (a socket
//! gets close 1008 "slow consumer"; a stream drops what it had queued and
//! ends with that close frame as its reason). A stream item also carries
//! the room offset of the message, which a socket frame has no room for and
//! an SSE `id` needs.
//!
//! This file must not learn about HTTP or SSE: it hands out frames and
//! offsets, and `sse` decides how they look on the wire.

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, Weak},
    task::{Context, Poll, Waker},
};

use futures_core::Stream;
use switchboard_proto::{CloseCode, CloseFrame, Frame, OpCode};

use super::{ConnId, Hub, Inner, Member};
use crate::{
    error::{Error, Kind},
    ws::{Message, Sender},
};

/// Where a member's messages go.
#[derive(Debug, Clone)]
pub(crate) enum Recipient {
    /// A WebSocket: frames go to its writer queue.
    Socket(Sender),
    /// A [`Subscription`]: frames and offsets go to its queue.
    Stream(Arc<StreamQueue>),
}

impl Recipient {
    /// Ends the member after what is already queued.
    pub(crate) fn close(&self, code: CloseCode, reason: &str) {
        match self {
            Recipient::Socket(s) => s.close(code, reason),
            Recipient::Stream(q) => q.close(CloseFrame::new(code, reason)),
        }
    }
}

/// A message delivered to a [`Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionItem {
    offset: Option<u64>,
    frame: Frame,
}

impl SubscriptionItem {
    /// The message's offset in its room's stream; `None` for messages not
    /// sent to a room ([`Hub::send_to`], [`Hub::broadcast`]).
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The encoded frame, shared with every other recipient.
    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// Whether the message is binary (otherwise it is text).
    pub fn is_binary(&self) -> bool {
        self.frame.opcode() == OpCode::Binary
    }

    /// The message as sent.
    pub fn message(&self) -> Message {
        Message::from_frame(&self.frame)
    }
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<SubscriptionItem>,
    /// Payload bytes in `items`: what the byte budget counts.
    bytes: usize,
    /// Set when the member ends: the reason, reported by the stream.
    closed: Option<CloseFrame>,
    /// Whether `closed` came from `terminate` (queued items were dropped)
    /// rather than an orderly `close` (queued items are still delivered).
    terminated: bool,
    /// The consumer, when it is waiting for an item.
    waker: Option<Waker>,
}

/// The queue behind a [`Subscription`]: bounded by payload bytes, one
/// producer side (the hub, under its lock) and one consumer (the stream).
pub(crate) struct StreamQueue {
    /// A `std` mutex: every critical section is a push or a pop, never an
    /// `.await`, so a blocking lock is cheaper than an async one.
    state: Mutex<QueueState>,
    max_bytes: usize,
    /// The hub and id to leave once terminated, so a consumer that is no
    /// longer polled (its HTTP connection stuck) does not stay a member.
    hub: Weak<Inner>,
    id: ConnId,
}

impl fmt::Debug for StreamQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamQueue")
            .field("id", &self.id)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl StreamQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_push(&self, frame: &Frame, offset: Option<u64>) -> Result<(), Error> {
        let len = frame.payload().len();
        let waker = {
            let mut st = self.lock();
            if st.closed.is_some() {
                return Err(Error::disconnect(CloseFrame::new(
                    CloseCode::ABNORMAL,
                    "subscription is closed",
                )));
            }
            // Same rule as a socket's queue: one message larger than the
            // budget still goes through an empty queue.
            if st.bytes > 0 && st.bytes + len > self.max_bytes {
                return Err(Error::new(Kind::Capacity {
                    queued: st.bytes,
                    limit: self.max_bytes,
                }));
            }
            st.bytes += len;
            st.items.push_back(SubscriptionItem {
                offset,
                frame: frame.clone(),
            });
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    fn end(&self, close: CloseFrame, purge: bool) -> bool {
        let waker = {
            let mut st = self.lock();
            if st.closed.is_some() {
                return false;
            }
            if purge {
                st.items.clear();
                st.bytes = 0;
                st.terminated = true;
            }
            st.closed = Some(close);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    fn terminate(&self, close: CloseFrame) {
        if !self.end(close, true) {
            return;
        }
        // Called under the hub's lock: leave the hub from a task. Without a
        // runtime the member leaves when its `Subscription` is dropped.
        if let (Some(inner), Ok(rt)) = (self.hub.upgrade(), tokio::runtime::Handle::try_current()) {
            let id = self.id;
            rt.spawn(async move { Hub { inner }.disconnect(id) });
        }
    }

    fn close(&self, close: CloseFrame) {
        self.end(close, false);
    }
}

/// A hub member read as a `Stream` instead of a WebSocket: what Server-Sent
/// Events subscribers are. Join rooms through [`Subscription::member`];
/// dropping the subscription leaves every room.
///
/// The queue is bounded by payload bytes: a consumer that falls further
/// behind is a slow consumer, like a socket, and its stream ends (see
/// [`Subscription::close_reason`]).
///
/// ```
/// use futures_util::StreamExt;
/// use switchboard::hub::Hub;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let hub = Hub::new();
/// let mut sub = hub.subscribe(serde_json::Value::Null, 64 * 1024);
/// sub.member().join("news");
/// hub.broadcast_to("news", "hello");
/// let item = sub.next().await.unwrap();
/// assert_eq!(item.offset(), Some(1));
/// assert_eq!(item.message(), switchboard::Message::Text("hello".into()));
/// # }
/// ```
pub struct Subscription {
    queue: Arc<StreamQueue>,
    member: Member,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.member.id())
            .field("max_bytes", &self.queue.max_bytes)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The membership: join and leave rooms with it.
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// Why the stream ended (or is ending): a slow-consumer close, or the
    /// close frame an application broadcast. `None` while it is live.
    pub fn close_reason(&self) -> Option<CloseFrame> {
        self.queue.lock().closed.clone()
    }

    /// Whether the stream was cut as a slow consumer (or otherwise
    /// terminated) and lost what it had queued.
    pub fn was_terminated(&self) -> bool {
        self.queue.lock().terminated
    }

    /// Payload bytes queued and not yet taken.
    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().bytes
    }
}

impl Stream for Subscription {
    type Item = SubscriptionItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SubscriptionItem>> {
        let mut st = self.queue.lock();
        if let Some(item) = st.items.pop_front() {
            st.bytes -= item.frame.payload().len();
            return Poll::Ready(Some(item));
        }
        if st.closed.is_some() {
            return Poll::Ready(None);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Hub {
    /// Adds a member whose messages are read as a [`Subscription`] stream
    /// (Server-Sent Events, in-process consumers), with presence metadata
    /// and a queue of at most `max_queue_bytes` payload bytes.
    pub fn subscribe(&self, meta: serde_json::Value, max_queue_bytes: usize) -> Subscription {
        let id = self.next_conn_id();
        let queue = Arc::new(StreamQueue {
            state: Mutex::new(QueueState::default()),
            max_bytes: max_queue_bytes,
            hub: Arc::downgrade(&self.inner),
            id,
        });
        let member = self.register(id, Recipient::Stream(Arc::clone(&queue)), meta);
        Subscription { queue, member }
    }

    /// Queues `frame` on any recipient, closing a slow consumer. Returns
    /// (delivered, slow).
    pub(super) fn offer_to(
        &self,
        to: &Recipient,
        frame: &Frame,
        offset: Option<u64>,
    ) -> (usize, usize) {
        match to {
            Recipient::Socket(s) => self.offer(s, frame),
            Recipient::Stream(q) => self.offer_stream(q, frame, offset),
        }
    }

    /// Queues `frame` on a subscription, cutting it if its queue is over
    /// budget (the sockets' slow-consumer policy). Returns (delivered, slow).
    pub(super) fn offer_stream(
        &self,
        q: &StreamQueue,
        frame: &Frame,
        offset: Option<u64>,
    ) -> (usize, usize) {
        match q.try_push(frame, offset) {
            Ok(()) => (1, 0),
            Err(e) if e.is_capacity() => {
                q.terminate(super::slow_consumer_close());
                self.inner
                    .slow
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!("closing slow subscription");
                (0, 1)
            }
            // Already closed: it is about to leave the hub.
            Err(_) => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn items_carry_room_offsets_and_the_queue_is_bounded() {
        let hub = Hub::new();
        let mut sub = hub.subscribe(serde_json::Value::Null, 10);
        assert!(sub.member().join("r").added);
        assert_eq!(hub.broadcast_to("r", "12345").delivered, 1);
        assert_eq!(hub.broadcast_to("r", "67890").delivered, 1);
        assert_eq!(sub.queued_bytes(), 10);
        let a = sub.next().await.unwrap();
        assert_eq!((a.offset(), a.is_binary()), (Some(1), false));
        // Over the budget: a slow consumer, cut and removed from the room.
        hub.broadcast_to("r", "abcdef");
        let d = hub.broadcast_to("r", "x");
        assert_eq!(d.delivered, 0);
        assert!(sub.was_terminated());
        assert_eq!(sub.close_reason().unwrap().reason, "slow consumer");
        assert!(sub.next().await.is_none(), "queued items are dropped");
        for _ in 0..100 {
            if !hub.is_member(sub.member().id(), "r") {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(!hub.is_member(sub.member().id(), "r"));
        assert_eq!(hub.stats().slow_consumers, 1);
    }

    #[tokio::test]
    async fn an_orderly_close_delivers_what_was_queued_then_ends() {
        let hub = Hub::new();
        let mut sub = hub.subscribe(serde_json::Value::Null, 1024);
        sub.member().join("r");
        hub.broadcast_to("r", Message::Binary(bytes::Bytes::from_static(b"\x01")));
        hub.broadcast_to("r", Message::Close(None));
        assert!(sub.next().await.unwrap().is_binary());
        assert!(sub.next().await.is_none());
        assert!(!sub.was_terminated());
        assert_eq!(sub.close_reason().unwrap().code, CloseCode::NORMAL);
    }

    #[tokio::test]
    async fn dropping_the_subscription_leaves_the_hub() {
        let hub = Hub::new();
        let sub = hub.subscribe(serde_json::json!({"user": "ann"}), 1024);
        sub.member().join("r");
        assert_eq!(hub.stats().connections, 1);
        assert_eq!(hub.members("r")[0].meta["user"], "ann");
        drop(sub);
        assert_eq!(hub.stats().connections, 0);
        assert!(hub.stats().rooms.is_empty());
    }
}
