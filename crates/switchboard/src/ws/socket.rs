//! The accepted socket: [`Socket`], and its halves [`Sender`] (cloneable,
//! usable from any task) and [`Receiver`].
//!
//! The receiver drives the sans-IO decoder on the handler's own task (no
//! extra task or channel hop per message): it reads, decodes, answers pings,
//! and completes the close handshake. Sending goes through the connection's
//! writer task (see `writer.rs`).
//!
//! Receiving comes in three shapes: [`Receiver::recv`] returns the next
//! [`Message`]; `recv_text`/`recv_bytes`/`recv_json` return `Ok(None)` once
//! the peer has closed; and the `*_stream` methods are `Stream`s that end at
//! the close. After the close, further calls fail with a disconnect error
//! carrying the close code and reason.

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http::Uri;
use serde::{de::DeserializeOwned, Serialize};
use switchboard_proto::{
    CloseCode, CloseFrame, Decoder, DeflateParams, Event, Frame, OpCode, Role, Utf8Bytes,
};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{
    error::{Error, Kind},
    ratelimit::{RateLimit, RateLimitPolicy, TokenBucket, WindowCounter},
    ws::{
        headers::StoredHeaders,
        message::Message,
        signal::unless,
        writer::{Outgoing, SendFuture, Shared, Slot},
    },
};

/// Most bytes the first read of a connection takes (through the stack, so
/// a connection that never sends holds no read buffer), and the first step
/// the buffer then grows by.
const FIRST_READ: usize = 1024;
/// The largest step the read buffer grows by: steps double each time a read
/// fills all the room it had (a busy or bulk connection), from `FIRST_READ`.
const MAX_READ_CHUNK: usize = 64 * 1024;
/// Below this much free room the buffer grows before the next read (when
/// its space cannot be reclaimed, see `next_event`).
const MIN_FREE: usize = 256;

/// The reading side's state; moved to the close path if the receiver is
/// dropped before the connection closed.
pub(crate) struct ReadState {
    /// Only ever used through `get_mut` (no locking): the mutex is what
    /// makes `Socket` `Sync`, so `&Socket` can be held across an `.await`
    /// in a `Send` future, without `unsafe`.
    io: std::sync::Mutex<Box<dyn AsyncRead + Send + Unpin>>,
    buf: BytesMut,
    /// What the buffer grows by when it runs out of room; 0 until the first
    /// read.
    chunk: usize,
    decoder: Decoder,
}

impl ReadState {
    pub(crate) fn new(
        io: Box<dyn AsyncRead + Send + Unpin>,
        decoder: Decoder,
        initial: Bytes,
    ) -> Self {
        ReadState {
            io: std::sync::Mutex::new(io),
            // Empty (no allocation) unless the handshake read ahead.
            buf: BytesMut::from(&initial[..]),
            chunk: if initial.is_empty() { 0 } else { FIRST_READ },
            decoder,
        }
    }

    /// Reads until one event is decoded. `Ok(None)` at end of stream.
    async fn next_event(&mut self) -> Result<Option<Event>, Error> {
        loop {
            if let Some(ev) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(ev));
            }
            let ReadState { io, buf, chunk, .. } = self;
            let io = io.get_mut().unwrap_or_else(|p| p.into_inner());
            if *chunk == 0 {
                // Nothing read yet: read into the stack and keep only what
                // arrived (idle connections hold no buffer, see
                // docs/BENCHMARKS.md, idle memory).
                let n = std::future::poll_fn(|cx| {
                    let mut first = [0u8; FIRST_READ];
                    let mut rb = tokio::io::ReadBuf::new(&mut first);
                    match std::pin::Pin::new(&mut **io).poll_read(cx, &mut rb) {
                        std::task::Poll::Ready(Ok(())) => {
                            buf.extend_from_slice(rb.filled());
                            std::task::Poll::Ready(Ok(rb.filled().len()))
                        }
                        std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                        std::task::Poll::Pending => std::task::Poll::Pending,
                    }
                })
                .await?;
                if n == 0 {
                    return Ok(None);
                }
                *chunk = FIRST_READ;
                continue;
            }
            // Room for a whole step if the buffer's own space can be taken
            // back without allocating (the messages handed out are gone):
            // reading into whatever was left at the end split a message
            // over two reads, one more `recv` per 512-byte echo half the
            // time (docs/BENCHMARKS.md). Only when that fails, and little
            // room is left, does the buffer grow.
            if buf.capacity() - buf.len() < *chunk
                && !buf.try_reclaim(*chunk)
                && buf.capacity() - buf.len() < MIN_FREE
            {
                buf.reserve(*chunk);
            }
            let room = buf.capacity() - buf.len();
            let n = io.read_buf(buf).await?;
            if n == 0 {
                return Ok(None);
            }
            if n >= room {
                *chunk = (*chunk * 2).min(MAX_READ_CHUNK);
            }
        }
    }
}

/// Finishes a close handshake on a parked reader: sends our close frame if
/// none was sent, waits (bounded) for the peer's, then half-closes.
pub(crate) async fn linger(mut state: Box<ReadState>, shared: Arc<Shared>, close: CloseFrame) {
    shared.send_close(Some(&close));
    let drain = async {
        while let Ok(Some(ev)) = state.next_event().await {
            if matches!(ev, Event::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(shared.close_timeout, drain).await;
    shared.shutdown();
}

/// Reads and discards until the peer closes its side or `timeout` passes.
async fn drain_raw(mut state: Box<ReadState>, timeout: Duration) {
    let drain = async {
        loop {
            state.buf.clear();
            let ReadState { io, buf, .. } = &mut *state;
            match io
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .read_buf(buf)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
}

fn wrong_type(expected: &'static str, got: &Message) -> Error {
    Error::new(Kind::WrongType {
        expected,
        got: got.kind(),
    })
}

/// The sending half of a socket. Cheap to clone; every clone feeds the same
/// ordered outgoing queue.
#[derive(Debug, Clone)]
pub struct Sender {
    pub(crate) shared: Arc<Shared>,
}

impl Sender {
    /// A plain frame: the writer task compresses it (permessage-deflate)
    /// and, for a client, masks it, in wire order.
    fn frame(&self, opcode: OpCode, payload: Bytes) -> Frame {
        Frame::new(opcode, true, false, payload)
    }

    /// Sends a text message.
    pub fn send_text(
        &self,
        text: impl Into<Utf8Bytes>,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.shared
            .send(self.frame(OpCode::Text, text.into().into_bytes()))
    }

    /// Sends a binary message.
    pub fn send_bytes(
        &self,
        bytes: impl Into<Bytes>,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.shared.send(self.frame(OpCode::Binary, bytes.into()))
    }

    /// Serializes `value` as JSON and sends it as a text message.
    pub fn send_json<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        let item = match serde_json::to_vec(value) {
            Ok(json) => Outgoing::Frame(self.frame(OpCode::Text, json.into())),
            Err(e) => Outgoing::Failed(e.into()),
        };
        SendFuture::new(&self.shared, item)
    }

    /// Sends a message (`Message::Close` sends a close frame).
    pub fn send(
        &self,
        message: impl Into<Message>,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        let item = match message.into() {
            Message::Text(t) => Outgoing::Frame(self.frame(OpCode::Text, t.into_bytes())),
            Message::Binary(b) => Outgoing::Frame(self.frame(OpCode::Binary, b)),
            Message::Close(c) => Outgoing::Close(c),
        };
        SendFuture::new(&self.shared, item)
    }

    /// Queues an already encoded frame without waiting: the building block
    /// of frame-once broadcast (encode one [`Frame`], queue a clone on every
    /// socket). Fails with [`Error::is_capacity`] when the queue is full.
    pub fn try_send_frame(&self, frame: Frame) -> Result<(), Error> {
        self.shared.try_send(frame)
    }

    /// Queues an already encoded frame, waiting for room in the queue.
    pub fn send_frame(&self, frame: Frame) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.shared.send(frame)
    }

    /// Sends a ping (the pong is consumed by the receiver).
    pub fn ping(&self, payload: impl Into<Bytes>) {
        let mut payload: Bytes = payload.into();
        payload.truncate(125);
        self.shared.send_control(self.frame(OpCode::Ping, payload));
    }

    /// Starts the close handshake with `code` and `reason` (truncated to 123
    /// bytes). The receiver completes it when the peer answers; a handler
    /// that wants to wait for that uses [`Socket::close`].
    pub fn close(&self, code: impl Into<CloseCode>, reason: &str) {
        self.shared.send_close(Some(&CloseFrame::new(code, reason)));
    }

    /// Whether messages can still be sent (no close sent, connection up).
    pub fn is_open(&self) -> bool {
        self.shared.is_open()
    }

    /// The permessage-deflate parameters in force, if it was negotiated.
    pub fn compression(&self) -> Option<DeflateParams> {
        self.shared.deflate.map(|n| n.params)
    }
}

/// Per-connection receive policies (from the route's `WsConfig`).
#[derive(Debug)]
pub(crate) struct RecvPolicy {
    rate: Option<(TokenBucket, RateLimitPolicy)>,
    control: WindowCounter,
}

impl RecvPolicy {
    pub(crate) fn new(rate: Option<RateLimit>, max_control_per_sec: u32) -> Self {
        let now = Instant::now();
        RecvPolicy {
            rate: rate.map(|r| (TokenBucket::new(r.per_second, r.burst, now), r.policy)),
            control: WindowCounter::new(max_control_per_sec, now),
        }
    }

    pub(crate) fn unlimited() -> Self {
        RecvPolicy::new(None, u32::MAX)
    }
}

/// The receiving half of a socket.
pub struct Receiver {
    state: Option<Box<ReadState>>,
    shared: Arc<Shared>,
    /// Set once the connection is over: what later calls report.
    ended: Option<CloseFrame>,
    policy: RecvPolicy,
    /// The waker registered for the killed signal (see `signal::unless`).
    registered: Option<std::task::Waker>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    pub(crate) fn new(state: ReadState, shared: Arc<Shared>, policy: RecvPolicy) -> Self {
        Receiver {
            state: Some(Box::new(state)),
            shared,
            ended: None,
            policy,
            registered: None,
        }
    }

    /// Fails the connection for a policy breach: close frame, then cut.
    fn breach(&mut self, reason: &str) -> Error {
        let frame = CloseFrame::new(CloseCode::POLICY_VIOLATION, reason);
        self.shared.terminate(frame.clone());
        self.ended = Some(frame.clone());
        if let Some(state) = self.state.take() {
            tokio::spawn(drain_raw(state, self.shared.close_timeout));
        }
        Error::disconnect(frame)
    }

    fn end(&mut self, frame: CloseFrame) {
        self.ended = Some(frame);
        self.state = None;
        self.shared.shutdown();
    }

    /// Receives the next message. Returns `Message::Close` once when the
    /// peer closes (the handshake is already answered), then disconnect
    /// errors. A protocol violation fails the connection with the right
    /// close code (1002, 1007, 1009) and returns the error.
    pub async fn recv(&mut self) -> Result<Message, Error> {
        loop {
            let Some(state) = self.state.as_mut() else {
                let ended = self
                    .ended
                    .clone()
                    .unwrap_or_else(|| CloseFrame::new(CloseCode::ABNORMAL, ""));
                return Err(Error::disconnect(ended));
            };
            // Killed (slow consumer, dead peer, forced shutdown) wins over
            // reading; the check is a load, plus a waker registration when
            // the read must wait (see signal.rs for why not a cancellation
            // token).
            let signal = &self.shared.signal;
            let event = unless(
                state.next_event(),
                signal.killed(),
                Some(&mut self.registered),
            )
            .await;
            let Some(event) = event else {
                let frame = self
                    .shared
                    .killed_by()
                    .unwrap_or_else(|| CloseFrame::new(CloseCode::ABNORMAL, "connection closed"));
                self.ended = Some(frame.clone());
                self.state = None;
                return Err(Error::disconnect(frame));
            };
            let event = match event {
                Ok(ev) => ev,
                Err(e) => {
                    let Some(code) = e.close_code() else {
                        // The transport failed (reset, broken pipe): nothing
                        // more can be read or sent. The error itself goes to
                        // the caller; later calls report a fixed reason
                        // (formatting the I/O error for them cost more than
                        // the rest of a reset connection's teardown).
                        self.ended = Some(CloseFrame::new(CloseCode::ABNORMAL, "connection lost"));
                        if self.state.take().is_some() {
                            self.shared.shutdown();
                        }
                        return Err(e);
                    };
                    // Fail the connection: our close frame, then keep
                    // reading (and discarding) until the peer closes, so
                    // unread bytes do not turn our FIN into a RST that could
                    // destroy the close frame in flight.
                    let frame = CloseFrame::new(code, e.to_string());
                    self.shared.send_close(Some(&frame));
                    self.ended = Some(frame);
                    if let Some(state) = self.state.take() {
                        self.shared.shutdown();
                        tokio::spawn(drain_raw(state, self.shared.close_timeout));
                    }
                    return Err(e);
                }
            };
            match event {
                None => {
                    let frame = CloseFrame::new(
                        CloseCode::ABNORMAL,
                        "connection closed without a close frame",
                    );
                    if let Some(m) = &self.shared.metrics {
                        m.close_frame(false, CloseCode::ABNORMAL);
                    }
                    self.end(frame.clone());
                    return Err(Error::disconnect(frame));
                }
                Some(Event::Text(_) | Event::Binary(_)) if !self.admit() => {
                    if self.state.is_none() {
                        return Err(self.breach_error());
                    }
                    return Err(Error::new(Kind::RateLimited));
                }
                Some(Event::Ping(_) | Event::Pong(_))
                    if !self.policy.control.hit(Instant::now()) =>
                {
                    return Err(self.breach("control frame flood"));
                }
                Some(Event::Text(bytes)) => {
                    if let Some(m) = &self.shared.metrics {
                        m.received(bytes.len());
                    }
                    // Validated by the decoder: no copy, no second check.
                    return Ok(Message::Text(bytes));
                }
                Some(Event::Binary(bytes)) => {
                    if let Some(m) = &self.shared.metrics {
                        m.received(bytes.len());
                    }
                    return Ok(Message::Binary(bytes));
                }
                Some(Event::Ping(payload)) => {
                    self.shared.saw_peer(false);
                    let pong = match self.shared.role {
                        Role::Server => Frame::new(OpCode::Pong, true, false, payload),
                        Role::Client => {
                            Frame::masked(OpCode::Pong, true, false, &payload, rand::random())
                        }
                    };
                    self.shared.send_control(pong);
                }
                Some(Event::Pong(_)) => self.shared.saw_peer(false),
                Some(Event::Close(frame)) => {
                    // Echo the peer's code if we have not closed yet.
                    self.shared.send_close(frame.as_ref());
                    let reported = frame
                        .clone()
                        .unwrap_or_else(|| CloseFrame::new(CloseCode::NO_STATUS, ""));
                    if let Some(m) = &self.shared.metrics {
                        m.close_frame(false, reported.code);
                    }
                    self.end(reported);
                    return Ok(Message::Close(frame));
                }
            }
        }
    }

    /// Applies the rate limit to one data message; false when it is over
    /// (and, under the close policy, the connection is being failed).
    fn admit(&mut self) -> bool {
        self.shared.saw_peer(true);
        let Some((bucket, policy)) = self.policy.rate.as_mut() else {
            return true;
        };
        if bucket.try_take(Instant::now()) {
            return true;
        }
        let close = *policy == RateLimitPolicy::Close;
        if let Some(m) = &self.shared.metrics {
            m.rate_limited(close);
        }
        if close {
            let _ = self.breach("rate limit exceeded");
        }
        false
    }

    fn breach_error(&self) -> Error {
        Error::disconnect(
            self.ended
                .clone()
                .unwrap_or_else(|| CloseFrame::new(CloseCode::POLICY_VIOLATION, "")),
        )
    }

    /// Receives the next data message; `Ok(None)` when the peer closed.
    pub async fn recv_message(&mut self) -> Result<Option<Message>, Error> {
        match self.recv().await? {
            Message::Close(_) => Ok(None),
            m => Ok(Some(m)),
        }
    }

    /// Receives a text message as an owned `String` (a copy; [`recv`]'s
    /// [`Message::Text`] holds the received bytes without one); `Ok(None)`
    /// when the peer closed. A binary message is an error
    /// ([`Error::is_wrong_type`]) and the socket stays usable.
    ///
    /// [`recv`]: Receiver::recv
    pub async fn recv_text(&mut self) -> Result<Option<String>, Error> {
        match self.recv_message().await? {
            Some(Message::Text(t)) => Ok(Some(t.into())),
            Some(other) => Err(wrong_type("text", &other)),
            None => Ok(None),
        }
    }

    /// Receives a binary message; `Ok(None)` when the peer closed. A text
    /// message is an error ([`Error::is_wrong_type`]).
    pub async fn recv_bytes(&mut self) -> Result<Option<Bytes>, Error> {
        match self.recv_message().await? {
            Some(Message::Binary(b)) => Ok(Some(b)),
            Some(other) => Err(wrong_type("binary", &other)),
            None => Ok(None),
        }
    }

    /// Receives a message (text or binary) and parses it as JSON;
    /// `Ok(None)` when the peer closed. Invalid JSON is an error
    /// ([`Error::is_json`]) and the socket stays usable.
    pub async fn recv_json<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        match self.recv_message().await? {
            Some(Message::Text(t)) => Ok(Some(serde_json::from_str(&t)?)),
            Some(Message::Binary(b)) => Ok(Some(serde_json::from_slice(&b)?)),
            _ => Ok(None),
        }
    }

    /// The peer's close frame once the connection has ended.
    pub fn close_frame(&self) -> Option<&CloseFrame> {
        self.ended.as_ref()
    }

    /// Whether the connection is still readable.
    pub fn is_open(&self) -> bool {
        self.state.is_some()
    }

    /// Waits (up to the route's close timeout) for the peer's close frame
    /// after ours was sent, discarding data messages.
    pub(crate) async fn finish_close(&mut self) {
        let timeout = self.shared.close_timeout;
        let drain = async {
            while self.state.is_some() {
                if let Err(e) = self.recv().await {
                    if !e.is_recoverable() {
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(timeout, drain).await.is_err() {
            self.end(CloseFrame::new(
                CloseCode::ABNORMAL,
                "close handshake timed out",
            ));
        }
    }

    /// A stream of data messages that ends when the peer closes. A fatal
    /// error is yielded once and ends the stream.
    pub fn messages(&mut self) -> impl Stream<Item = Result<Message, Error>> + Send + Unpin + '_ {
        stream_of(self, |r| Box::pin(r.recv_message()))
    }

    /// A stream of text messages (see [`Receiver::recv_text`]).
    pub fn text_stream(&mut self) -> impl Stream<Item = Result<String, Error>> + Send + Unpin + '_ {
        stream_of(self, |r| Box::pin(r.recv_text()))
    }

    /// A stream of binary messages (see [`Receiver::recv_bytes`]).
    pub fn bytes_stream(&mut self) -> impl Stream<Item = Result<Bytes, Error>> + Send + Unpin + '_ {
        stream_of(self, |r| Box::pin(r.recv_bytes()))
    }

    /// A stream of JSON messages parsed as `T` (see [`Receiver::recv_json`]).
    /// A message that fails to parse yields an error and the stream goes on.
    pub fn json_stream<T: DeserializeOwned + Send + 'static>(
        &mut self,
    ) -> impl Stream<Item = Result<T, Error>> + Send + Unpin + '_ {
        stream_of(self, |r| Box::pin(r.recv_json::<T>()))
    }
}

type RecvFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<T>, Error>> + Send + 'a>>;

fn stream_of<'a, T: Send + 'a>(
    rx: &'a mut Receiver,
    next: for<'b> fn(&'b mut Receiver) -> RecvFuture<'b, T>,
) -> impl Stream<Item = Result<T, Error>> + Send + Unpin + 'a {
    // Boxed so callers can use `.next()` without pinning.
    Box::pin(futures_util::stream::unfold(
        Some(rx),
        move |rx| async move {
            let rx = rx?;
            match next(rx).await {
                Ok(Some(v)) => Some((Ok(v), Some(rx))),
                Ok(None) => None,
                Err(e) if e.is_recoverable() => Some((Err(e), Some(rx))),
                Err(e) => Some((Err(e), None)),
            }
        },
    ))
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        let mut slot = match self.shared.slot.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        match &*slot {
            Slot::HandlerRunning => *slot = Slot::Parked(state),
            Slot::Parked(_) | Slot::HandlerDone => {
                drop(slot);
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let shared = Arc::clone(&self.shared);
                    rt.spawn(linger(
                        state,
                        shared,
                        CloseFrame::new(CloseCode::NORMAL, ""),
                    ));
                }
            }
        }
    }
}

/// Accessors for the handshake request, shared by [`WebSocket`] (before
/// accepting) and [`Socket`] (after): both keep it in a `ConnInfo` field
/// named `info`.
///
/// [`WebSocket`]: crate::WebSocket
macro_rules! request_accessors {
    () => {
        /// A path parameter by name.
        pub fn path_param(&self, name: &str) -> Option<&str> {
            $crate::ws::socket::lookup(&self.info.params, name)
        }

        /// All path parameters, in route order.
        pub fn path_params(&self) -> &[(String, String)] {
            &self.info.params
        }

        /// A query parameter by name (first occurrence, percent-decoded).
        pub fn query_param(&self, name: &str) -> Option<&str> {
            $crate::ws::socket::lookup(&self.info.query, name)
        }

        /// All query parameters.
        pub fn query_params(&self) -> &[(String, String)] {
            &self.info.query
        }

        /// The request headers of the handshake.
        pub fn headers(&self) -> &http::HeaderMap {
            self.info.headers.map()
        }

        /// The request URI of the handshake.
        pub fn uri(&self) -> &http::Uri {
            &self.info.uri
        }

        /// The client's address.
        pub fn client_addr(&self) -> std::net::SocketAddr {
            self.info.remote
        }
    };
}
pub(crate) use request_accessors;

/// Facts about the request that opened the socket.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) uri: Uri,
    pub(crate) headers: StoredHeaders,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) remote: SocketAddr,
    pub(crate) protocol: Option<String>,
}

/// An accepted WebSocket connection.
///
/// ```no_run
/// # async fn demo(mut ws: switchboard::Socket) -> Result<(), switchboard::Error> {
/// ws.send_json(&serde_json::json!({"message": "Connected"})).await?;
/// while let Some(text) = ws.recv_text().await? {
///     ws.send_text(format!("Echo: {text}")).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Socket {
    sender: Sender,
    receiver: Receiver,
    info: Arc<ConnInfo>,
    extensions: http::Extensions,
}

impl Socket {
    pub(crate) fn new(sender: Sender, receiver: Receiver, info: Arc<ConnInfo>) -> Self {
        Socket {
            sender,
            receiver,
            info,
            extensions: http::Extensions::new(),
        }
    }

    /// Splits into a cloneable [`Sender`] and the [`Receiver`].
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }

    /// A clone of the sending half, for other tasks.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// Sends a text message.
    pub fn send_text(
        &self,
        text: impl Into<Utf8Bytes>,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.sender.send_text(text)
    }

    /// Sends a binary message.
    pub fn send_bytes(
        &self,
        bytes: impl Into<Bytes>,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.sender.send_bytes(bytes)
    }

    /// Sends `value` as a JSON text message.
    pub fn send_json<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.sender.send_json(value)
    }

    /// Sends a message.
    pub fn send(
        &self,
        message: impl Into<Message>,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.sender.send(message)
    }

    /// Sends a ping.
    pub fn ping(&self, payload: impl Into<Bytes>) {
        self.sender.ping(payload)
    }

    /// See [`Receiver::recv`].
    pub async fn recv(&mut self) -> Result<Message, Error> {
        self.receiver.recv().await
    }

    /// See [`Receiver::recv_message`].
    pub async fn recv_message(&mut self) -> Result<Option<Message>, Error> {
        self.receiver.recv_message().await
    }

    /// See [`Receiver::recv_text`].
    pub async fn recv_text(&mut self) -> Result<Option<String>, Error> {
        self.receiver.recv_text().await
    }

    /// See [`Receiver::recv_bytes`].
    pub async fn recv_bytes(&mut self) -> Result<Option<Bytes>, Error> {
        self.receiver.recv_bytes().await
    }

    /// See [`Receiver::recv_json`].
    pub async fn recv_json<T: DeserializeOwned>(&mut self) -> Result<Option<T>, Error> {
        self.receiver.recv_json().await
    }

    /// See [`Receiver::messages`].
    pub fn messages(&mut self) -> impl Stream<Item = Result<Message, Error>> + Send + Unpin + '_ {
        self.receiver.messages()
    }

    /// See [`Receiver::text_stream`].
    pub fn text_stream(&mut self) -> impl Stream<Item = Result<String, Error>> + Send + Unpin + '_ {
        self.receiver.text_stream()
    }

    /// See [`Receiver::bytes_stream`].
    pub fn bytes_stream(&mut self) -> impl Stream<Item = Result<Bytes, Error>> + Send + Unpin + '_ {
        self.receiver.bytes_stream()
    }

    /// See [`Receiver::json_stream`].
    pub fn json_stream<T: DeserializeOwned + Send + 'static>(
        &mut self,
    ) -> impl Stream<Item = Result<T, Error>> + Send + Unpin + '_ {
        self.receiver.json_stream()
    }

    /// Closes with `code` and `reason` and waits (up to the close timeout)
    /// for the peer to answer, so the handshake completes cleanly.
    pub async fn close(&mut self, code: impl Into<CloseCode>, reason: &str) -> Result<(), Error> {
        self.sender.close(code, reason);
        self.receiver.finish_close().await;
        Ok(())
    }

    /// Whether the socket is open in both directions.
    pub fn is_open(&self) -> bool {
        self.sender.is_open() && self.receiver.is_open()
    }

    /// The peer's close frame once the connection ended (code 1005 when it
    /// sent none, 1006 when the connection dropped).
    pub fn close_frame(&self) -> Option<&CloseFrame> {
        self.receiver.close_frame()
    }

    /// The negotiated subprotocol.
    pub fn protocol(&self) -> Option<&str> {
        self.info.protocol.as_deref()
    }

    /// The negotiated permessage-deflate parameters (`None`: messages go
    /// uncompressed). Outgoing messages are compressed by the connection's
    /// writer; incoming ones are inflated before `recv` returns them.
    pub fn compression(&self) -> Option<DeflateParams> {
        self.sender.compression()
    }

    request_accessors!();

    /// Typed per-connection state: insert with `extensions_mut().insert(v)`,
    /// read with `extensions().get::<T>()`.
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    /// Mutable per-connection state.
    pub fn extensions_mut(&mut self) -> &mut http::Extensions {
        &mut self.extensions
    }

    /// How long [`Socket::close`] waits for the peer's close frame.
    pub fn close_timeout(&self) -> Duration {
        self.receiver.shared.close_timeout
    }
}

pub(crate) fn lookup<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
