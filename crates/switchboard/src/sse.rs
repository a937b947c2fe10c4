//! Server-Sent Events: the [`Sse`] response and its [`Event`]s, and (in
//! `sse::room`) the bridge that lets a client that cannot use WebSockets
//! follow a hub room over SSE.
//!
//! ```no_run
//! use std::time::Duration;
//! use futures_util::{stream, StreamExt};
//! use switchboard::{sse::{Event, Sse}, App};
//!
//! # async fn run() -> std::io::Result<()> {
//! App::new()
//!     .get("/ticks", || async {
//!         let ticks = stream::iter(1..=3).map(|n| Event::new().id(n.to_string()).data(format!("tick {n}")));
//!         Sse::new(ticks).keep_alive(Duration::from_secs(15))
//!     })
//!     .serve("127.0.0.1:8000")
//!     .await
//! # }
//! ```
//!
//! The wire format follows the WHATWG HTML "server-sent events" section:
//! data with line breaks (`\n`, `\r\n` or `\r`) becomes one `data:` line per
//! line, so it arrives intact (a browser reassembles it with `\n`); event
//! names and ids cannot hold line breaks, so those are removed (and NUL from
//! ids, which browsers would ignore). Responses carry
//! `Content-Type: text/event-stream`, `Cache-Control: no-cache` and
//! `X-Accel-Buffering: no` (nginx would otherwise buffer the stream).
//!
//! The body is pulled: the event stream is polled only when hyper can take
//! more bytes, so a client that stops reading stalls the stream instead of
//! filling memory; what sits in between is bounded by hyper's write buffer
//! and one chunk (at most [`MAX_CHUNK`] bytes of events that were ready at
//! once). A client that goes away is noticed by hyper when its read side
//! ends, which drops the body and with it the event stream: nothing of the
//! subscriber is left behind. On graceful shutdown every SSE response ends,
//! so it cannot hold the server past its drain.
//!
//! This module must not know the hub's internals: the bridge uses the
//! public [`Subscription`](crate::hub::Subscription).

mod room;

use std::{
    fmt::Write as _,
    future::Future as _,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use futures_core::Stream;
use http::{header, HeaderValue};
use serde::Serialize;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pub use room::{LastEventId, RoomEvents, SseRequest, DEFAULT_SSE_QUEUE_BYTES, MAX_SSE_QUERY_BYTES};

use crate::{
    metrics::Recorder,
    response::{Body, IntoResponse, Response},
};

/// Most bytes of ready events gathered into one body chunk: enough to
/// coalesce a burst into one write, small next to hyper's write buffer.
pub const MAX_CHUNK: usize = 64 * 1024;

/// How often a keep-alive comment goes out on an idle stream by default:
/// under the 30–60 s idle cut of common proxies and load balancers (axum
/// and Mercure also use 15 s).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One server-sent event: any of an event name, data, an id, a reconnect
/// delay and a comment.
///
/// ```
/// use switchboard::sse::Event;
/// let e = Event::new().event("update").id("7").data("line one\nline two");
/// assert_eq!(
///     e.to_bytes(),
///     "event: update\nid: 7\ndata: line one\ndata: line two\n\n"
/// );
/// assert_eq!(Event::new().comment("hi").to_bytes(), ": hi\n\n");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Event {
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry: Option<Duration>,
    comment: Option<String>,
}

/// Removes what a single-line field cannot carry.
fn one_line(s: &str, also_nul: bool) -> String {
    s.chars()
        .filter(|&c| c != '\n' && c != '\r' && !(also_nul && c == '\0'))
        .collect()
}

/// Splits on every SSE line terminator: `\r\n`, `\n` and a lone `\r`.
fn lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

impl Event {
    /// An empty event; add fields with the setters.
    pub fn new() -> Event {
        Event::default()
    }

    /// The event name (`event:`); browsers dispatch unnamed events as
    /// `message`. Line breaks are removed.
    pub fn event(mut self, name: impl AsRef<str>) -> Event {
        self.event = Some(one_line(name.as_ref(), false));
        self
    }

    /// The data. Any text: line breaks are sent as several `data:` lines
    /// and arrive as `\n`.
    pub fn data(mut self, data: impl Into<String>) -> Event {
        self.data = Some(data.into());
        self
    }

    /// Serializes `value` as JSON into the data.
    pub fn json_data<T: Serialize + ?Sized>(self, value: &T) -> Result<Event, serde_json::Error> {
        Ok(self.data(serde_json::to_string(value)?))
    }

    /// The id (`id:`), which a reconnecting browser sends back in
    /// `Last-Event-ID`. Line breaks and NUL are removed.
    pub fn id(mut self, id: impl AsRef<str>) -> Event {
        self.id = Some(one_line(id.as_ref(), true));
        self
    }

    /// How long the client waits before reconnecting (`retry:`, whole
    /// milliseconds).
    pub fn retry(mut self, delay: Duration) -> Event {
        self.retry = Some(delay);
        self
    }

    /// A comment (`: text`), ignored by clients; each line gets its own.
    pub fn comment(mut self, text: impl Into<String>) -> Event {
        self.comment = Some(text.into());
        self
    }

    /// The event name, if set.
    pub fn event_name(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The data, if set.
    pub fn data_str(&self) -> Option<&str> {
        self.data.as_deref()
    }

    /// The id, if set.
    pub fn id_str(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Appends the wire form of this event, blank line included.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut field = |name: &str, value: &str| {
            out.reserve(name.len() + value.len() + 3);
            out.put_slice(name.as_bytes());
            if value.is_empty() {
                out.put_u8(b':');
            } else {
                out.put_slice(b": ");
                out.put_slice(value.as_bytes());
            }
            out.put_u8(b'\n');
        };
        if let Some(c) = &self.comment {
            for line in lines(c) {
                field("", line);
            }
        }
        if let Some(e) = &self.event {
            field("event", e);
        }
        if let Some(id) = &self.id {
            field("id", id);
        }
        if let Some(r) = self.retry {
            field("retry", &r.as_millis().to_string());
        }
        if let Some(d) = &self.data {
            for line in lines(d) {
                field("data", line);
            }
        }
        out.put_u8(b'\n');
    }

    /// The wire form of this event.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

/// A Server-Sent Events response from a `Stream` of [`Event`]s.
///
/// The response ends when the stream does (the browser then reconnects
/// after its retry delay), when the client goes away (the stream is
/// dropped), or on server shutdown. While the stream is idle a comment line
/// goes out every [`DEFAULT_KEEP_ALIVE`] (see [`Sse::keep_alive`]), so
/// proxies do not cut the connection and a dead client is found out by the
/// failed write.
#[must_use]
pub struct Sse<S> {
    stream: S,
    keep_alive: Option<Duration>,
}

impl<S> std::fmt::Debug for Sse<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sse")
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl<S> Sse<S>
where
    S: Stream<Item = Event> + Send + 'static,
{
    /// An SSE response from `stream`, with keep-alive comments every
    /// [`DEFAULT_KEEP_ALIVE`].
    pub fn new(stream: S) -> Sse<S> {
        Sse {
            stream,
            keep_alive: Some(DEFAULT_KEEP_ALIVE),
        }
    }

    /// Sends a keep-alive comment after `every` without an event.
    pub fn keep_alive(mut self, every: Duration) -> Sse<S> {
        self.keep_alive = Some(every.max(Duration::from_millis(1)));
        self
    }

    /// Sends no keep-alive comments.
    pub fn no_keep_alive(mut self) -> Sse<S> {
        self.keep_alive = None;
        self
    }
}

/// Marks a response as an event stream, so the app can end it on shutdown
/// and count it; holds the token the app fills in.
#[derive(Clone, Default)]
pub(crate) struct SseMarker(Arc<OnceLock<CancellationToken>>);

impl<S> IntoResponse for Sse<S>
where
    S: Stream<Item = Event> + Send + 'static,
{
    fn into_response(self) -> Response {
        let marker = SseMarker::default();
        let body = SseBody {
            stream: Box::pin(self.stream),
            keep_alive: self
                .keep_alive
                .map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            shutdown: Arc::clone(&marker.0),
            cancelled: None,
            done: false,
        };
        let mut res = http::Response::new(Body::new(body));
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        res.extensions_mut().insert(marker);
        res
    }
}

/// The body of an [`Sse`] response.
struct SseBody<S: ?Sized> {
    keep_alive: Option<(Duration, Pin<Box<Sleep>>)>,
    /// Filled by the app before the body is first polled.
    shutdown: Arc<OnceLock<CancellationToken>>,
    cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    done: bool,
    stream: Pin<Box<S>>,
}

impl<S> http_body::Body for SseBody<S>
where
    S: Stream<Item = Event> + Send + ?Sized,
{
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        // Gather every event that is ready, up to one chunk.
        let mut out = BytesMut::new();
        while out.len() < MAX_CHUNK {
            match this.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(ev)) => ev.encode(&mut out),
                Poll::Ready(None) => {
                    this.done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !out.is_empty() {
            if let Some((every, sleep)) = &mut this.keep_alive {
                sleep.as_mut().reset(tokio::time::Instant::now() + *every);
            }
            return Poll::Ready(Some(Ok(http_body::Frame::data(out.freeze()))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if this.cancelled.is_none() {
            if let Some(token) = this.shutdown.get() {
                this.cancelled = Some(Box::pin(token.clone().cancelled_owned()));
            }
        }
        if let Some(c) = &mut this.cancelled {
            if c.as_mut().poll(cx).is_ready() {
                this.done = true;
                return Poll::Ready(None);
            }
        }
        if let Some((every, sleep)) = &mut this.keep_alive {
            if sleep.as_mut().poll(cx).is_ready() {
                sleep.as_mut().reset(tokio::time::Instant::now() + *every);
                return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                    b": keep-alive\n\n",
                )))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Counts an open event stream while it lives.
struct OpenGuard(Option<Arc<Recorder>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.sse_closed();
        }
    }
}

/// Wraps a handler's response: an event stream learns the shutdown token
/// and is counted while open. Other responses pass through untouched.
pub(crate) fn prepare_response(
    res: Response,
    going_away: &CancellationToken,
    metrics: Option<&Arc<Recorder>>,
) -> Response {
    let Some(marker) = res.extensions().get::<SseMarker>() else {
        return res;
    };
    let _ = marker.0.set(going_away.clone());
    let Some(m) = metrics else {
        return res;
    };
    m.sse_opened();
    let guard = OpenGuard(Some(Arc::clone(m)));
    res.map(|body| {
        Body::new(Counted {
            inner: body,
            _guard: guard,
        })
    })
}

/// A body that holds a guard until it is dropped.
struct Counted {
    inner: Body,
    _guard: OpenGuard,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }
}

/// Formats `n` into a short string without the `format!` machinery.
pub(crate) fn offset_id(epoch: &str, offset: u64) -> String {
    if epoch.is_empty() {
        return offset.to_string();
    }
    let mut s = String::with_capacity(epoch.len() + 21);
    s.push_str(epoch);
    s.push(':');
    let _ = write!(s, "{offset}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(e: &Event) -> String {
        String::from_utf8(e.to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn data_lines_split_on_every_terminator() {
        assert_eq!(wire(&Event::new().data("a\nb")), "data: a\ndata: b\n\n");
        assert_eq!(wire(&Event::new().data("a\r\nb")), "data: a\ndata: b\n\n");
        assert_eq!(wire(&Event::new().data("a\rb")), "data: a\ndata: b\n\n");
        // A trailing break survives as an empty last line.
        assert_eq!(wire(&Event::new().data("a\n")), "data: a\ndata:\n\n");
        assert_eq!(wire(&Event::new().data("")), "data:\n\n");
        assert_eq!(
            wire(&Event::new().data("\n\nx")),
            "data:\ndata:\ndata: x\n\n"
        );
        // Leading spaces are kept: the parser strips only the one after ':'.
        assert_eq!(wire(&Event::new().data(" x")), "data:  x\n\n");
    }

    #[test]
    fn single_line_fields_lose_line_breaks() {
        let e = Event::new().event("a\nb").id("1\r\n2\0");
        assert_eq!(wire(&e), "event: ab\nid: 12\n\n");
        assert_eq!(
            wire(&Event::new().retry(Duration::from_millis(2500))),
            "retry: 2500\n\n"
        );
        assert_eq!(wire(&Event::new().comment("one\ntwo")), ": one\n: two\n\n");
        assert_eq!(
            wire(
                &Event::new()
                    .json_data(&serde_json::json!({"a": 1}))
                    .unwrap()
            ),
            "data: {\"a\":1}\n\n"
        );
    }

    #[test]
    fn ids_name_epoch_and_offset() {
        assert_eq!(offset_id("00ff", 17), "00ff:17");
    }
}
