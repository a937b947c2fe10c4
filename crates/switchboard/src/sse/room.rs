//! The hub bridge: a hub room followed over Server-Sent Events, for clients
//! that cannot use WebSockets (the seeds' "Combining with SSE").
//!
//! An SSE subscriber is a hub member like a socket (a
//! [`Subscription`](crate::hub::Subscription)): it gets every message sent
//! to the room, with the same byte-bounded queue and slow-consumer policy.
//! A text message becomes an unnamed (`message`) event whose data is the
//! text unchanged; a binary message becomes an event named `binary` whose
//! data is the payload in standard base64 (RFC 4648, with padding).
//!
//! # Ids and recovery
//! Each event's `id` is `<epoch>:<offset>`: the room offset of the message
//! and the epoch of the room's history it belongs to. The epoch is what
//! makes an id unambiguous: offsets start again at 1 when a room's history
//! is reset (a restart, an evicted room), and a bare offset from before
//! would silently replay the wrong messages. A browser's `EventSource`
//! sends the last id back as `Last-Event-ID` when it reconnects; then the
//! response first replays exactly the messages after it from the room's
//! history, or, when that is impossible, sends one `gap` event saying why
//! (data: JSON with `reason` = `epoch_changed`, `too_old` or `ahead`, and
//! the room's `epoch` and `offset`), then continues live. Never a silent or
//! partial replay. A bare `<offset>` is accepted too (for hand-written
//! clients) and read in the room's current epoch.
//!
//! The response says how it resumed, for clients that read headers:
//! `Switchboard-Epoch` (the room's epoch), `Switchboard-Recovery` (`full`:
//! everything missed is replayed; `gap`: it could not be; `none`: no
//! `Last-Event-ID` was sent) and `Switchboard-Replay-From` (the offset of
//! the first message this response delivers: the one after
//! `Last-Event-ID` on a full recovery, the first live one otherwise).
//!
//! A malformed `Last-Event-ID` answers 400 with the reason; a query string
//! over [`MAX_SSE_QUERY_BYTES`] answers 414. Middleware (e.g.
//! [`JwtAuth`](crate::auth::JwtAuth), with the token in an
//! `Authorization: Bearer` header or a `token` query parameter) runs first,
//! as on every route; the subscriber holds one of the server's connection
//! slots (`App::max_connections`, `App::max_connections_per_ip`: 503 and
//! 429 as for sockets), and its stream ends with a `close` event when its
//! token expires, as a socket closes with 1008.
//!
//! Clustered hubs: ids come from this node's copy of the room, so a client
//! that reconnects to another node gets a `gap` event (`epoch_changed`)
//! rather than a wrong replay.

use std::{
    collections::VecDeque,
    future::Future as _,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use base64::Engine as _;
use futures_core::Stream;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;
use switchboard_proto::{CloseCode, CloseFrame};
use tokio::time::Sleep;

use super::{offset_id, Event, Sse, DEFAULT_KEEP_ALIVE};
use crate::{
    auth::{TokenExpiry, VerifiedClaims},
    connlimit::ConnSlot,
    extract::{FromRequestParts, Rejection, RequestContext},
    hub::{HistoryEntry, Hub, StreamPosition, Subscription, SubscriptionItem},
    response::{IntoResponse, Response},
};

/// Longest query string an SSE subscription accepts (414 above): room
/// options and a token fit many times over (a JWT is 200–1500 bytes), and
/// it is the request-line size nginx accepts by default (8 KiB).
pub const MAX_SSE_QUERY_BYTES: usize = 8 * 1024;

/// Payload bytes an SSE subscriber may have queued before it is cut as a
/// slow consumer: the same default as a socket's outgoing queue.
pub const DEFAULT_SSE_QUEUE_BYTES: usize = 1 << 20;

/// Longest `Last-Event-ID` accepted: an epoch and a `u64` fit with room to
/// spare; anything longer is not an id this server sent.
const MAX_LAST_EVENT_ID: usize = 128;

/// A parsed `Last-Event-ID`: where a reconnecting client was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastEventId {
    epoch: Option<String>,
    offset: u64,
}

impl LastEventId {
    /// Parses `<epoch>:<offset>` or a bare `<offset>`.
    ///
    /// ```
    /// use switchboard::sse::LastEventId;
    /// let id = LastEventId::parse("3fa9:12").unwrap();
    /// assert_eq!((id.epoch(), id.offset()), (Some("3fa9"), 12));
    /// assert_eq!(LastEventId::parse("7").unwrap().epoch(), None);
    /// assert!(LastEventId::parse("3fa9:x").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<LastEventId, String> {
        let expected =
            "expected `<epoch>:<offset>` as sent in this stream's event ids, or a bare offset";
        if s.len() > MAX_LAST_EVENT_ID {
            return Err(format!(
                "malformed Last-Event-ID ({} bytes, at most {MAX_LAST_EVENT_ID}): {expected}",
                s.len()
            ));
        }
        let bad = || format!("malformed Last-Event-ID {s:?}: {expected}");
        let (epoch, offset) = match s.split_once(':') {
            Some((e, o)) => (Some(e), o),
            None => (None, s),
        };
        if epoch.is_some_and(|e| {
            e.is_empty()
                || !e
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }) {
            return Err(bad());
        }
        if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let offset = offset.parse::<u64>().map_err(|_| bad())?;
        Ok(LastEventId {
            epoch: epoch.map(str::to_owned),
            offset,
        })
    }

    /// The epoch, when the id had one.
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// The last offset the client received.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// An SSE subscription request: the extractor for a route that serves a
/// hub room over SSE. It reads `Last-Event-ID`, takes a connection slot and
/// notes the token's expiry; [`SseRequest::room`] then makes the response.
///
/// ```no_run
/// use switchboard::{hub::{Hub, HubConfig}, sse::SseRequest, App, Path, State};
///
/// # async fn run() -> std::io::Result<()> {
/// let hub = Hub::with_config(HubConfig::default().history(100));
/// App::new()
///     .state(hub)
///     .get("/events/{room}", |sse: SseRequest, Path(room): Path<String>, State(hub): State<Hub>| async move {
///         sse.room(&hub, &room)
///     })
///     .serve("127.0.0.1:8000")
///     .await
/// # }
/// ```
#[derive(Debug)]
pub struct SseRequest {
    last_event_id: Option<LastEventId>,
    slot: ConnSlot,
    expiry: Option<Instant>,
    user: Option<String>,
}

impl FromRequestParts for SseRequest {
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, Rejection> {
        if cx.shared.is_draining() {
            return Err(Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server is shutting down",
            ));
        }
        if let Some(q) = cx.parts.uri.query() {
            if q.len() > MAX_SSE_QUERY_BYTES {
                return Err(Rejection::new(
                    StatusCode::URI_TOO_LONG,
                    format!(
                        "query string too long ({} bytes, at most {MAX_SSE_QUERY_BYTES})",
                        q.len()
                    ),
                ));
            }
        }
        let last_event_id = match cx.parts.headers.get("last-event-id") {
            None => None,
            Some(v) => {
                let s = v.to_str().map_err(|_| {
                    Rejection::new(
                        StatusCode::BAD_REQUEST,
                        "malformed Last-Event-ID: not visible ASCII",
                    )
                })?;
                let s = s.trim();
                if s.is_empty() {
                    None
                } else {
                    Some(
                        LastEventId::parse(s)
                            .map_err(|e| Rejection::new(StatusCode::BAD_REQUEST, e))?,
                    )
                }
            }
        };
        let slot = cx.shared.connections.acquire(cx.remote.ip())?;
        let expiry = cx.extensions().get::<TokenExpiry>().map(|e| e.0);
        let user = cx
            .extensions()
            .get::<VerifiedClaims>()
            .and_then(|c| c.0.get("sub"))
            .and_then(|s| s.as_str())
            .map(str::to_owned);
        Ok(SseRequest {
            last_event_id,
            slot,
            expiry,
            user,
        })
    }
}

impl SseRequest {
    /// The client's `Last-Event-ID`, when it sent one.
    pub fn last_event_id(&self) -> Option<&LastEventId> {
        self.last_event_id.as_ref()
    }

    /// Follows `room` of `hub` (see the module docs for the events, ids and
    /// recovery). Set options on the returned value; return it from the
    /// handler.
    pub fn room(self, hub: &Hub, room: &str) -> RoomEvents {
        RoomEvents {
            request: self,
            hub: hub.clone(),
            room: room.to_owned(),
            max_queue_bytes: DEFAULT_SSE_QUEUE_BYTES,
            keep_alive: Some(DEFAULT_KEEP_ALIVE),
            retry: None,
            meta: None,
            announce_position: false,
            epoch_in_ids: true,
        }
    }
}

/// A room followed over SSE; a response (see [`SseRequest::room`]).
#[derive(Debug)]
#[must_use]
pub struct RoomEvents {
    request: SseRequest,
    hub: Hub,
    room: String,
    max_queue_bytes: usize,
    keep_alive: Option<Duration>,
    retry: Option<Duration>,
    meta: Option<serde_json::Value>,
    announce_position: bool,
    epoch_in_ids: bool,
}

impl RoomEvents {
    /// Whether event ids carry the epoch (`<epoch>:<offset>`, the default)
    /// or are the bare room offset. Bare offsets are what plain SSE
    /// clients expect, but after a room's history is reset (new epoch) a
    /// client's old offset is read in the new epoch: it gets a `gap`
    /// event when the new stream is shorter, and wrong messages when it is
    /// longer. The `Switchboard-Epoch` header still names the epoch.
    pub fn epoch_in_ids(mut self, yes: bool) -> RoomEvents {
        self.epoch_in_ids = yes;
        self
    }

    /// Payload bytes the subscriber may have queued before it is cut as a
    /// slow consumer (default [`DEFAULT_SSE_QUEUE_BYTES`]).
    pub fn max_queue_bytes(mut self, bytes: usize) -> RoomEvents {
        self.max_queue_bytes = bytes;
        self
    }

    /// Keep-alive comment interval (default [`DEFAULT_KEEP_ALIVE`]).
    pub fn keep_alive(mut self, every: Duration) -> RoomEvents {
        self.keep_alive = Some(every);
        self
    }

    /// No keep-alive comments.
    pub fn no_keep_alive(mut self) -> RoomEvents {
        self.keep_alive = None;
        self
    }

    /// Tells the client how long to wait before reconnecting (`retry:`,
    /// sent first).
    pub fn retry(mut self, delay: Duration) -> RoomEvents {
        self.retry = Some(delay);
        self
    }

    /// Presence metadata of the subscriber (default
    /// `{"transport": "sse"}`, plus `"user"`: the token's `sub` when
    /// authenticated).
    pub fn meta(mut self, meta: serde_json::Value) -> RoomEvents {
        self.meta = Some(meta);
        self
    }

    /// Starts the stream with an id-only event naming the room's current
    /// position (default off). Browsers dispatch nothing for it but
    /// remember the id, so one that reconnects before the first message
    /// still resumes exactly; some SSE client libraries, though, report it
    /// as an empty event.
    pub fn announce_position(mut self, yes: bool) -> RoomEvents {
        self.announce_position = yes;
        self
    }
}

impl IntoResponse for RoomEvents {
    fn into_response(self) -> Response {
        let RoomEvents {
            request,
            hub,
            room,
            max_queue_bytes,
            keep_alive,
            retry,
            meta,
            announce_position,
            epoch_in_ids,
        } = self;
        let meta = meta.unwrap_or_else(|| match &request.user {
            Some(user) => json!({"transport": "sse", "user": user}),
            None => json!({"transport": "sse"}),
        });
        let sub = hub.subscribe(meta, max_queue_bytes);
        // Join first, then read history: a message published in between
        // is both queued and recovered, and is skipped by offset below;
        // nothing can fall between the two.
        let joined = sub.member().join(&room);
        let epoch: Arc<str> = joined.epoch.as_str().into();
        // The epoch written into ids; empty means bare offsets.
        let id_epoch: Arc<str> = if epoch_in_ids {
            Arc::clone(&epoch)
        } else {
            "".into()
        };
        let mut first = VecDeque::new();
        if let Some(r) = retry {
            first.push_back(Event::new().retry(r));
        }
        let mut replay = Vec::new();
        let mut skip_through = joined.offset;
        let (recovery, replay_from) = match &request.last_event_id {
            None => ("none", joined.offset + 1),
            Some(last) => {
                let since = StreamPosition {
                    offset: last.offset,
                    epoch: last.epoch.clone().unwrap_or_else(|| epoch.to_string()),
                };
                match hub.recover(&room, &since) {
                    Ok(entries) => {
                        skip_through = entries.last().map_or(since.offset, |e| e.offset);
                        replay = entries;
                        ("full", since.offset + 1)
                    }
                    Err(why) => {
                        let mut data = serde_json::to_value(&why).unwrap_or_default();
                        if let Some(obj) = data.as_object_mut() {
                            obj.insert("epoch".into(), json!(&*epoch));
                            obj.insert("offset".into(), json!(joined.offset));
                            obj.insert("last_event_id".into(), json!(last_id_text(last)));
                        }
                        first.push_back(
                            Event::new()
                                .event("gap")
                                .id(offset_id(&id_epoch, joined.offset))
                                .data(data.to_string()),
                        );
                        ("gap", joined.offset + 1)
                    }
                }
            }
        };
        if announce_position && replay.is_empty() && recovery != "gap" {
            first.push_back(Event::new().id(offset_id(&id_epoch, skip_through)));
        }
        let stream = RoomStream {
            sub,
            epoch: Arc::clone(&id_epoch),
            first,
            replay: replay.into_iter(),
            skip_through,
            expiry: request
                .expiry
                .map(|at| Box::pin(tokio::time::sleep_until(at.into()))),
            finished: false,
            _slot: request.slot,
        };
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&epoch) {
            headers.insert("switchboard-epoch", v);
        }
        headers.insert("switchboard-recovery", HeaderValue::from_static(recovery));
        headers.insert("switchboard-replay-from", HeaderValue::from(replay_from));
        let sse = Sse::new(stream);
        let sse = match keep_alive {
            Some(every) => sse.keep_alive(every),
            None => sse.no_keep_alive(),
        };
        (headers, sse).into_response()
    }
}

fn last_id_text(last: &LastEventId) -> String {
    match &last.epoch {
        Some(e) => offset_id(e, last.offset),
        None => last.offset.to_string(),
    }
}

/// The event stream of one SSE subscriber.
struct RoomStream {
    sub: Subscription,
    epoch: Arc<str>,
    /// Sent before anything else: `retry`, the `gap` event, the position.
    first: VecDeque<Event>,
    replay: std::vec::IntoIter<HistoryEntry>,
    /// Live messages at or below this offset were replayed already.
    skip_through: u64,
    /// When the subscriber's token expires.
    expiry: Option<Pin<Box<Sleep>>>,
    finished: bool,
    /// Held for the subscriber's lifetime (connection limits).
    _slot: ConnSlot,
}

fn close_event(close: &CloseFrame) -> Event {
    Event::new()
        .event("close")
        .data(json!({"code": close.code.0, "reason": close.reason}).to_string())
}

impl RoomStream {
    fn message_event(&self, offset: Option<u64>, binary: bool, payload: &[u8]) -> Event {
        let mut ev = if binary {
            Event::new()
                .event("binary")
                .data(base64::engine::general_purpose::STANDARD.encode(payload))
        } else {
            Event::new().data(String::from_utf8_lossy(payload))
        };
        if let Some(o) = offset {
            ev = ev.id(offset_id(&self.epoch, o));
        }
        ev
    }

    fn live_event(&self, item: &SubscriptionItem) -> Event {
        self.message_event(item.offset(), item.is_binary(), item.frame().payload())
    }
}

impl Stream for RoomStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(ev) = this.first.pop_front() {
            return Poll::Ready(Some(ev));
        }
        if let Some(e) = this.replay.next() {
            let binary = e.frame().opcode() == switchboard_proto::OpCode::Binary;
            let ev = this.message_event(Some(e.offset), binary, e.frame().payload());
            return Poll::Ready(Some(ev));
        }
        if let Some(expiry) = &mut this.expiry {
            if expiry.as_mut().poll(cx).is_ready() {
                this.finished = true;
                let close = CloseFrame::new(CloseCode::POLICY_VIOLATION, "token expired");
                return Poll::Ready(Some(close_event(&close)));
            }
        }
        loop {
            match Pin::new(&mut this.sub).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    if item.offset().is_some_and(|o| o <= this.skip_through) {
                        continue;
                    }
                    return Poll::Ready(Some(this.live_event(&item)));
                }
                Poll::Ready(None) => {
                    this.finished = true;
                    return Poll::Ready(this.sub.close_reason().map(|c| close_event(&c)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_forms() {
        assert_eq!(
            LastEventId::parse("ab-_9:0").unwrap(),
            LastEventId {
                epoch: Some("ab-_9".into()),
                offset: 0
            }
        );
        assert_eq!(LastEventId::parse("42").unwrap().offset(), 42);
        for bad in [
            "",
            ":",
            "a:",
            ":1",
            "a:b",
            "a:-1",
            "-1",
            "+1",
            "1.5",
            "a:1:2",
            "a b:1",
            "99999999999999999999999",
        ] {
            assert!(LastEventId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}:1", "a".repeat(200));
        assert!(LastEventId::parse(&long).unwrap_err().contains("bytes"));
    }
}
