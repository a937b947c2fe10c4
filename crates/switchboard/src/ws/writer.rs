//! The per-connection outbound path: a byte-bounded queue, the writer task
//! that drains it with vectored writes, and direct writes that skip the
//! task when nothing is waiting.
//!
//! Every frame for a connection (data from any number of [`Sender`] clones,
//! pongs, the close frame) goes through one ordered path, so frames never
//! interleave. The queue is a `VecDeque` under a mutex, together with the
//! write half of the socket: whoever holds the write half writes. When the
//! queue is empty and the writer task is not writing, `Sender::send` writes
//! its frame itself, a non-blocking `writev` from the caller's task (one
//! echo then costs no task hop at all); anything that cannot go out at once
//! (a full socket buffer, a partial write, a frame behind others) is queued
//! and the writer task, woken through an `AtomicWaker`, drains the queue,
//! coalescing whatever piled up into one `writev`. Hub broadcasts always
//! queue: a broadcast touches many sockets, and their writers coalesce what
//! arrives in a burst into one system call each. The queue's *bytes* are
//! bounded by accounting (`queued`): async `send` waits for room, `try_send`
//! fails at once, which is what a broadcast needs (it must never wait on a
//! slow recipient). Frames are `switchboard_proto::Frame`s, whose payload is
//! a shared `Bytes`, so one encoded frame can sit in many queues.
//!
//! Small writes are copied into one buffer and written with `send` rather
//! than gathered with `writev` (`poll_write_slices`): on Linux `writev`
//! goes through the file layer (position lock, permission and notify hooks)
//! and walks an iovec array, which costs about 150–190 ns more per call on
//! loopback than `send` of the same 34 bytes, more than copying up to a few
//! KiB (measured in docs/BENCHMARKS.md, "Profiles and fixes").
//!
//! Direct writes are only used on a plain TCP stream without
//! permessage-deflate: with deflate the writer task compresses in wire order
//! (see `compress.rs`), a TLS or HTTP/2 stream may buffer a write until it
//! is flushed, and a client masks what `Sender` queued unmasked.
//!
//! Memory: an idle connection holds no queue storage (an empty `VecDeque`
//! allocates nothing), and the writer task keeps its rarely used state
//! (a stall timer, the batch) out of its future until it needs it
//! (docs/BENCHMARKS.md, idle memory).
//!
//! [`Sender`]: crate::ws::Sender

use std::{
    cell::RefCell,
    collections::VecDeque,
    future::Future,
    io::IoSlice,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::Bytes;
use switchboard_proto::{CloseCode, CloseFrame, Frame, OpCode, Role};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::Notify,
};

use crate::{
    error::{Error, Kind},
    metrics::Recorder,
    ws::{
        compress::{Compressor, Negotiated},
        signal::{unless, ConnSignal},
        socket::ReadState,
    },
};

/// Most frames gathered into one `writev` (Linux allows 1024 iovecs; two per
/// frame; 64 keeps the batch small enough to stay in cache).
const MAX_BATCH_FRAMES: usize = 64;
/// Most payload bytes gathered into one `writev` before writing.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Slices of one `writev`: header and payload per frame, plus the tail of a
/// direct write.
const MAX_SLICES: usize = 2 * MAX_BATCH_FRAMES + 1;

/// Writes of at most this many bytes in more than one piece are copied
/// into one buffer and written with `send` (see the module docs); larger
/// ones are gathered with `writev`, where the copy would cost more than the
/// system call saves.
const COALESCE_MAX: usize = 4096;
/// Writes of at most this many bytes are gathered in a buffer on the stack
/// instead (no thread-local access).
const STACK_COALESCE_MAX: usize = 256;

thread_local! {
    /// Where `poll_write_slices` copies small writes: one buffer per worker
    /// thread, not per connection (idle connections hold none).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The write half of the connection.
type Io = Box<dyn AsyncWrite + Send + Unpin>;

pub(crate) enum Command {
    Frame(Frame),
    /// A frame already in its compressed-or-not final form (a shared
    /// broadcast frame): never compressed again.
    Ready(Frame),
    /// The unwritten tail of a frame a sender wrote directly; first in the
    /// queue by construction (direct writes need an empty queue).
    Raw(Bytes),
    /// Flush, half-close the TCP stream and stop.
    Shutdown,
}

/// What the writer task woke up for.
enum Work {
    Killed,
    GoingAway,
    /// Commands were taken; the write half, to write them with.
    Batch(Option<Io>),
}

impl Command {
    /// The bytes it is accounted for in `queued`.
    fn accounted(&self) -> usize {
        match self {
            Command::Frame(f) | Command::Ready(f) => f.wire_len(),
            Command::Raw(b) => b.len(),
            Command::Shutdown => 0,
        }
    }
}

/// The queue and the write half, under one lock.
struct Out {
    queue: VecDeque<Command>,
    /// The write half while nobody is writing with it: the writer task
    /// takes it out for a batch; a direct write uses it in place, under the
    /// lock. So `io.is_some()` means the writer task is idle.
    io: Option<Io>,
    /// The writer has stopped: nothing more is accepted.
    ended: bool,
}

/// Where the receiving half goes when it is dropped while the handler runs,
/// so the handler's wrapper can finish the close handshake with the right
/// code (1000 after a normal return, 1011 after an error or panic).
pub(crate) enum Slot {
    HandlerRunning,
    Parked(Box<ReadState>),
    HandlerDone,
}

/// State shared by the senders, the receiver and the writer task.
pub(crate) struct Shared {
    out: Mutex<Out>,
    /// Bytes queued but not yet written.
    queued: AtomicUsize,
    pub(crate) max_queue_bytes: usize,
    /// Woken by the writer after each write, for senders waiting for room.
    space: Notify,
    /// Senders waiting on `space` (the writer skips the notification, which
    /// takes `Notify`'s lock, when there are none).
    space_waiters: AtomicUsize,
    /// Senders may write directly (plain TCP, no compression, server side).
    direct: bool,
    /// A close frame has been queued: no data may follow it.
    close_sent: AtomicBool,
    /// The writer has stopped (peer gone or shutdown done).
    writer_done: AtomicBool,
    pub(crate) role: Role,
    pub(crate) slot: Mutex<Slot>,
    pub(crate) close_timeout: Duration,
    /// Cancelled to end the connection at once (slow consumer, dead peer,
    /// write timeout, the app's forced shutdown): the writer stops and the
    /// receiver returns `killed_by`. Also where the writer task's waker is
    /// (woken when work arrives while it is idle).
    pub(crate) signal: Arc<ConnSignal>,
    pub(crate) killed_by: Mutex<Option<CloseFrame>>,
    /// Set by `terminate`: queued data frames are dropped, only the close
    /// frame still goes out.
    purge: AtomicBool,
    /// What the peer sent since the writer's last tick (`HEARD_*` bits):
    /// the receiver sets them, the tick takes them and turns them into
    /// times (see `saw_peer`).
    heard: AtomicU8,
    epoch: Instant,
    /// Milliseconds since `epoch` after which the connection's credentials
    /// expire (`u64::MAX`: never).
    expires_at: AtomicU64,
    /// The negotiated permessage-deflate parameters (read by the hub to
    /// share one compressed broadcast frame among equal recipients).
    pub(crate) deflate: Option<Negotiated>,
    /// Where the connection records metrics (`None`: off).
    pub(crate) metrics: Option<Arc<Recorder>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("queued", &self.queued)
            .field("close_sent", &self.close_sent)
            .field("writer_done", &self.writer_done)
            .finish_non_exhaustive()
    }
}

/// Counts a sender waiting for room while it lives (also when its future is
/// dropped mid-wait).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    pub(crate) fn is_open(&self) -> bool {
        !self.close_sent.load(Ordering::Acquire) && !self.writer_done.load(Ordering::Acquire)
    }

    pub(crate) fn close_sent(&self) -> bool {
        self.close_sent.load(Ordering::Acquire)
    }

    fn closed_error(&self) -> Error {
        Error::disconnect(CloseFrame::new(CloseCode::ABNORMAL, "connection is closed"))
    }

    fn out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `cmd` to the queue (the lock is released on return) and wakes
    /// the writer if it is idle; a busy writer looks at the queue again
    /// after its batch.
    fn enqueue(&self, mut out: MutexGuard<'_, Out>, cmd: Command) -> Result<(), Error> {
        if out.ended {
            return Err(self.closed_error());
        }
        let wake = out.queue.is_empty() && out.io.is_some();
        self.queued.fetch_add(cmd.accounted(), Ordering::SeqCst);
        out.queue.push_back(cmd);
        drop(out);
        if wake {
            self.signal.writer.wake();
        }
        Ok(())
    }

    /// Writes `frame` at once when nothing is queued and the writer is idle
    /// (and direct writes apply), else queues it. The non-blocking `writev`
    /// happens under the lock, so nothing can overtake it; what the socket
    /// does not take is queued first, for the writer task.
    fn push(&self, frame: Frame) -> Result<(), Error> {
        let mut out = self.out();
        if self.direct && out.queue.is_empty() && !out.ended {
            if let Some(io) = out.io.as_mut() {
                let mut cx = Context::from_waker(Waker::noop());
                let slices = [IoSlice::new(frame.header()), IoSlice::new(frame.payload())];
                // A `Pending` registers the no-op waker with the socket; the
                // writer task registers its own when it next writes.
                if let Poll::Ready(Ok(n @ 1..)) = poll_write_slices(&mut **io, &mut cx, &slices) {
                    if let Some(m) = &self.metrics {
                        m.sent_batch(std::slice::from_ref(&frame));
                    }
                    if n >= frame.wire_len() {
                        return Ok(());
                    }
                    return self.enqueue(out, Command::Raw(tail(&frame, n)));
                }
                // Nothing written (socket full, or an error the writer task
                // meets too and ends on): queue it.
            }
        }
        self.enqueue(out, Command::Frame(frame))
    }

    /// Queues a data frame without waiting; fails when the queue is over its
    /// byte limit (the caller decides what a slow consumer deserves).
    pub(crate) fn try_send(&self, frame: Frame) -> Result<(), Error> {
        self.try_send_as(frame, Command::Frame)
    }

    /// As `try_send`, for a frame the writer must not compress again.
    pub(crate) fn try_send_ready(&self, frame: Frame) -> Result<(), Error> {
        self.try_send_as(frame, Command::Ready)
    }

    fn try_send_as(&self, frame: Frame, command: fn(Frame) -> Command) -> Result<(), Error> {
        if !self.is_open() {
            return Err(self.closed_error());
        }
        let queued = self.queued.load(Ordering::Acquire);
        if queued > 0 && queued + frame.wire_len() > self.max_queue_bytes {
            return Err(Error::new(Kind::Capacity {
                queued,
                limit: self.max_queue_bytes,
            }));
        }
        // Always queued, never written directly: a broadcast offers one
        // frame to many sockets, and each writer coalesces what piles up.
        self.enqueue(self.out(), command(frame))
    }

    /// Sends a data frame, waiting while the queue is over its byte limit.
    pub(crate) fn send(&self, frame: Frame) -> SendFuture<'_> {
        SendFuture::new(self, Outgoing::Frame(frame))
    }

    /// The fast path of a send, the usual case: room in the queue (or the
    /// connection closed). `Err(frame)`: it must wait for room.
    fn send_now(&self, frame: Frame) -> Result<Result<(), Error>, Frame> {
        if !self.is_open() {
            return Ok(Err(self.closed_error()));
        }
        let queued = self.queued.load(Ordering::Acquire);
        if queued == 0 || queued + frame.wire_len() <= self.max_queue_bytes {
            return Ok(self.push(frame));
        }
        Err(frame)
    }

    /// The slow path: waits until the queue has room for `frame`.
    async fn send_when_room(&self, frame: Frame) -> Result<(), Error> {
        loop {
            // Created before we count ourselves: a `notify_waiters` after
            // this point completes it even before it is polled.
            let notified = self.space.notified();
            tokio::pin!(notified);
            let _waiting = Waiting::new(&self.space_waiters);
            notified.as_mut().enable();
            if !self.is_open() {
                return Err(self.closed_error());
            }
            let queued = self.queued.load(Ordering::SeqCst);
            if queued == 0 || queued + frame.wire_len() <= self.max_queue_bytes {
                return self.push(frame);
            }
            notified.await;
        }
    }

    /// Tells senders waiting for room that the queue shrank.
    fn notify_space(&self) {
        if self.space_waiters.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
    }

    /// Sends a control frame (ping/pong), ignoring the byte limit: they are
    /// tiny and bounded by the rate the peer can send pings.
    pub(crate) fn send_control(&self, frame: Frame) {
        if !self.close_sent() {
            let _ = self.push(frame);
        }
    }

    /// Sends our close frame unless one was already sent; returns whether
    /// this call sent it.
    pub(crate) fn send_close(&self, close: Option<&CloseFrame>) -> bool {
        if self.close_sent.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Some(m) = &self.metrics {
            m.close_frame(true, close.map_or(CloseCode::NO_STATUS, |c| c.code));
        }
        let frame = match self.role {
            Role::Server => Frame::close(close),
            Role::Client => Frame::masked(
                OpCode::Close,
                true,
                false,
                &close.map(CloseFrame::encode).unwrap_or_default(),
                rand::random(),
            ),
        };
        let _ = self.push(frame);
        self.space.notify_waiters();
        true
    }

    /// Asks the writer to flush and half-close after what is queued.
    pub(crate) fn shutdown(&self) {
        let _ = self.enqueue(self.out(), Command::Shutdown);
    }

    /// The writer task's wait: the connection killed, the server going
    /// away (once), or up to a batch of commands (moved to `cmds`) and the
    /// write half, once there is anything queued.
    fn poll_work(
        &self,
        cx: &mut Context<'_>,
        cmds: &mut Vec<Command>,
        told_going_away: &mut bool,
    ) -> Poll<Work> {
        self.signal.writer.register(cx.waker());
        if self.signal.is_killed() {
            return Poll::Ready(Work::Killed);
        }
        if self.signal.is_going_away() && !*told_going_away {
            *told_going_away = true;
            return Poll::Ready(Work::GoingAway);
        }
        let mut out = self.out();
        if out.queue.is_empty() {
            return Poll::Pending;
        }
        let mut bytes = 0;
        while cmds.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
            let Some(cmd) = out.queue.pop_front() else {
                break;
            };
            bytes += cmd.accounted();
            cmds.push(cmd);
        }
        Poll::Ready(Work::Batch(out.io.take()))
    }

    /// Ends the connection for cause: queued data is dropped, `close` goes
    /// out if the peer still reads, and after the close timeout (or at once
    /// if the writer is stuck) the connection is cut. The receiver reports
    /// `close` as the disconnect reason.
    pub(crate) fn terminate(&self, close: CloseFrame) {
        {
            let mut by = self.killed_by.lock().unwrap_or_else(|p| p.into_inner());
            if by.is_some() || self.signal.is_killed() {
                return;
            }
            *by = Some(close.clone());
        }
        self.purge.store(true, Ordering::Release);
        if !self.send_close(Some(&close)) {
            // Our close was already queued; still make sure the writer ends.
        }
        self.shutdown();
        let signal = Arc::clone(&self.signal);
        let grace = self.close_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            signal.kill();
        });
    }

    /// Why the connection was terminated, if it was.
    pub(crate) fn killed_by(&self) -> Option<CloseFrame> {
        self.killed_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Records that the peer sent a frame (`data`: a data message).
    ///
    /// Per message this is one relaxed load (a read-modify-write only for
    /// the first message of a tick): reading the clock here instead was
    /// about 3% of an echo's instructions (docs/BENCHMARKS.md). The tick
    /// stamps what it finds with its own time, so a frame counts as heard
    /// up to one tick late: timeouts never fire early, and at most one tick
    /// later than they would with exact times.
    pub(crate) fn saw_peer(&self, data: bool) {
        let bits = if data {
            HEARD_ANY | HEARD_DATA
        } else {
            HEARD_ANY
        };
        if self.heard.load(Ordering::Relaxed) & bits != bits {
            self.heard.fetch_or(bits, Ordering::Relaxed);
        }
    }

    /// Sets when the connection's credentials expire (see `auth`).
    pub(crate) fn set_expiry(&self, at: Option<Instant>) {
        let ms = match at {
            None => u64::MAX,
            Some(at) => at.saturating_duration_since(self.epoch).as_millis() as u64,
        };
        self.expires_at.store(ms, Ordering::Release);
    }
}

/// What a [`SendFuture`] sends.
pub(crate) enum Outgoing {
    /// A data frame, subject to the queue's byte limit.
    Frame(Frame),
    /// Our close frame (once per connection; never waits).
    Close(Option<CloseFrame>),
    /// Nothing: building the message failed (e.g. JSON serialization).
    Failed(Error),
}

/// A send waiting for room in the queue (boxed: rare).
type WaitForRoom<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// The future of a send (`Sender::send` and friends).
///
/// A struct rather than layers of `async fn`: a handler keeps room for the
/// largest future it awaits for the connection's whole life, and nested
/// `async fn`s (message, then frame, then the wait for room with its
/// `Notify` future) each stored their arguments again, 408 bytes in all.
/// Here the wait for room, which only a full queue needs, is boxed.
pub(crate) struct SendFuture<'a> {
    shared: &'a Shared,
    item: Option<Outgoing>,
    waiting: Option<WaitForRoom<'a>>,
}

impl<'a> SendFuture<'a> {
    pub(crate) fn new(shared: &'a Shared, item: Outgoing) -> Self {
        SendFuture {
            shared,
            item: Some(item),
            waiting: None,
        }
    }
}

impl Future for SendFuture<'_> {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(waiting) = &mut this.waiting {
            return waiting.as_mut().poll(cx);
        }
        let frame = match this.item.take() {
            Some(Outgoing::Frame(frame)) => frame,
            Some(Outgoing::Close(close)) => {
                this.shared.send_close(close.as_ref());
                return Poll::Ready(Ok(()));
            }
            Some(Outgoing::Failed(e)) => return Poll::Ready(Err(e)),
            // Polled again after it finished: it already sent.
            None => return Poll::Ready(Ok(())),
        };
        match this.shared.send_now(frame) {
            Ok(done) => Poll::Ready(done),
            Err(frame) => {
                let mut waiting = Box::pin(this.shared.send_when_room(frame));
                let poll = waiting.as_mut().poll(cx);
                this.waiting = Some(waiting);
                poll
            }
        }
    }
}

/// Everything the writer task needs to know.
#[derive(Debug, Clone)]
pub(crate) struct WriterOptions {
    pub(crate) role: Role,
    pub(crate) max_queue_bytes: usize,
    pub(crate) close_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) pong_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    /// The connection's kill and going-away signals (registered with the
    /// app, so that its shutdown reaches this connection).
    pub(crate) signal: Arc<ConnSignal>,
    /// permessage-deflate, when negotiated: the writer compresses.
    pub(crate) deflate: Option<Negotiated>,
    /// Where this connection records metrics (server sockets of an app
    /// with metrics on).
    pub(crate) metrics: Option<Arc<Recorder>>,
    /// The write half is a plain TCP stream: a write that returns has
    /// reached the kernel (no TLS or HTTP/2 layer that buffers until a
    /// flush), so senders may write directly (see the module docs).
    pub(crate) plain_tcp: bool,
}

/// Creates the shared state and spawns the writer task on `io`.
pub(crate) fn spawn_writer(io: Io, opts: WriterOptions) -> Arc<Shared> {
    let shared = Arc::new(Shared {
        out: Mutex::new(Out {
            queue: VecDeque::new(),
            io: Some(io),
            ended: false,
        }),
        queued: AtomicUsize::new(0),
        max_queue_bytes: opts.max_queue_bytes,
        space: Notify::new(),
        space_waiters: AtomicUsize::new(0),
        direct: opts.plain_tcp && opts.role == Role::Server && opts.deflate.is_none(),
        close_sent: AtomicBool::new(false),
        writer_done: AtomicBool::new(false),
        role: opts.role,
        slot: Mutex::new(Slot::HandlerRunning),
        close_timeout: opts.close_timeout,
        signal: Arc::clone(&opts.signal),
        killed_by: Mutex::new(None),
        purge: AtomicBool::new(false),
        heard: AtomicU8::new(0),
        epoch: Instant::now(),
        expires_at: AtomicU64::new(u64::MAX),
        deflate: opts.deflate,
        metrics: opts.metrics.clone(),
    });
    let task_shared = Arc::clone(&shared);
    // Boxed: see `server::spawn_http1`.
    tokio::spawn(Box::pin(async move {
        // Open from the first frame to the last write: the writer's life.
        if let Some(m) = &opts.metrics {
            m.ws_opened();
        }
        let io = writer_loop(&task_shared, &opts).await;
        // Nothing is accepted from here on; what is still queued is dropped
        // outside the lock.
        let (leftover, parked) = {
            let mut out = task_shared.out();
            out.ended = true;
            (std::mem::take(&mut out.queue), out.io.take())
        };
        drop(leftover);
        task_shared.writer_done.store(true, Ordering::Release);
        task_shared.space.notify_waiters();
        match io {
            // Done after a `Shutdown`: half-close, bounded.
            // Boxed: a timer inline would cost every idle connection's task.
            Some(mut io) => {
                let _ = Box::pin(tokio::time::timeout(
                    task_shared.close_timeout,
                    io.shutdown(),
                ))
                .await;
            }
            // Killed or failed: the socket is dropped (cut).
            None => drop(parked),
        }
        if let Some(m) = &opts.metrics {
            m.ws_closed();
        }
    }));
    shared
}

/// The peer sent some frame (`Shared::heard`).
const HEARD_ANY: u8 = 1;
/// The peer sent a data message.
const HEARD_DATA: u8 = 2;

/// The heartbeat's view of the peer, kept by the writer task: milliseconds
/// since `Shared::epoch`, as of the tick that noticed.
#[derive(Debug, Default)]
struct Liveness {
    /// When the peer was last heard from (any frame).
    seen: u64,
    /// When the last data message arrived (idle timeout).
    data: u64,
    /// What `seen` was when we last pinged (`None`: never pinged).
    ping: Option<u64>,
}

/// What the once-a-tick timer found.
fn check_timers(shared: &Shared, opts: &WriterOptions, live: &mut Liveness) -> Option<CloseFrame> {
    let now = shared.now_ms();
    let heard = shared.heard.swap(0, Ordering::Relaxed);
    if heard & HEARD_ANY != 0 {
        live.seen = now;
    }
    if heard & HEARD_DATA != 0 {
        live.data = now;
    }
    if now >= shared.expires_at.load(Ordering::Acquire) {
        return Some(CloseFrame::new(
            CloseCode::POLICY_VIOLATION,
            "token expired",
        ));
    }
    if let Some(idle) = opts.idle_timeout {
        if now.saturating_sub(live.data) >= idle.as_millis() as u64 {
            return Some(CloseFrame::new(CloseCode::GOING_AWAY, "idle timeout"));
        }
    }
    if let Some(interval) = opts.ping_interval {
        let silent = now.saturating_sub(live.seen);
        if silent >= (interval + opts.pong_timeout).as_millis() as u64 {
            return Some(CloseFrame::new(CloseCode::GOING_AWAY, "pong timeout"));
        }
        // Ping once per silence: after `interval` without a frame from the
        // peer, and not again until the peer has been heard from.
        if silent >= interval.as_millis() as u64 && live.ping.is_none_or(|at| live.seen > at) {
            live.ping = Some(live.seen);
            let ping = match shared.role {
                Role::Server => Frame::new(OpCode::Ping, true, false, Bytes::new()),
                Role::Client => Frame::masked(OpCode::Ping, true, false, &[], rand::random()),
            };
            shared.send_control(ping);
        }
    }
    None
}

/// Drains the queue until a `Shutdown` (returns the write half, to be
/// half-closed) or until the connection is killed or a write fails (`None`).
async fn writer_loop(shared: &Shared, opts: &WriterOptions) -> Option<Io> {
    // Both grow on first use: an idle connection that never queued holds
    // neither (docs/BENCHMARKS.md, idle memory).
    let mut cmds: Vec<Command> = Vec::new();
    let mut batch: Vec<Frame> = Vec::new();
    // Lives here, not in `Shared`: this task alone compresses, so
    // compression order is wire order with no lock (see compress.rs).
    // Boxed: most connections never compress, and the task's future is
    // memory every idle connection pays for.
    let mut compressor = opts.deflate.map(|n| Box::new(Compressor::new(n)));
    let mut told_going_away = false;
    // One timer for heartbeat, idle and expiry checks: ticks at an eighth
    // of the shortest deadline. A frame from the peer is stamped by the
    // next tick (`saw_peer`) and the deadline noticed by the tick after it,
    // so a deadline fires late by at most a quarter of it, never early.
    let tick = [
        opts.ping_interval,
        opts.idle_timeout,
        Some(opts.pong_timeout),
    ]
    .into_iter()
    .flatten()
    .min()
    .map_or(Duration::from_secs(1), |d| {
        (d / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
    });
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live = Liveness::default();
    loop {
        let work = tokio::select! {
            biased;
            work = std::future::poll_fn(|cx| shared.poll_work(cx, &mut cmds, &mut told_going_away)) => work,
            _ = timer.tick() => {
                if let Some(close) = check_timers(shared, opts, &mut live) {
                    tracing::debug!(code = close.code.0, reason = %close.reason, "closing websocket");
                    shared.terminate(close);
                }
                continue;
            }
        };
        let taken = match work {
            Work::Killed => return None,
            Work::GoingAway => {
                shared.send_close(Some(&CloseFrame::new(
                    CloseCode::GOING_AWAY,
                    "server shutting down",
                )));
                continue;
            }
            Work::Batch(io) => io,
        };
        // Only this task takes the write half, and it always puts it back.
        let mut io = taken?;
        let purge = shared.purge.load(Ordering::Acquire);
        let mut shutdown = false;
        let mut bytes = 0;
        let mut raw = None;
        for cmd in cmds.drain(..) {
            bytes += cmd.accounted();
            match cmd {
                Command::Frame(f) | Command::Ready(f) if purge && f.opcode() != OpCode::Close => {}
                Command::Frame(f) => {
                    batch.push(wire_frame(f, compressor.as_deref_mut(), shared.role))
                }
                Command::Ready(f) => batch.push(wire_frame(f, None, shared.role)),
                Command::Raw(b) => raw = Some(b),
                Command::Shutdown => {
                    shutdown = true;
                    break;
                }
            }
        }
        let write = write_all(&mut *io, raw.as_deref(), &batch, opts.write_timeout);
        let written = unless(write, shared.signal.killed_writer(), None).await?;
        if let (Some(m), Ok(())) = (&shared.metrics, &written) {
            m.sent_batch(&batch);
        }
        batch.clear();
        shared.queued.fetch_sub(bytes, Ordering::SeqCst);
        match written {
            Ok(()) if shutdown => {
                shared.notify_space();
                return Some(io);
            }
            Ok(()) => {
                // Back where senders can write directly (and where the next
                // poll of the queue finds it).
                shared.out().io = Some(io);
                shared.notify_space();
            }
            Err(e) if e.kind() != std::io::ErrorKind::TimedOut => {
                tracing::debug!(error = %e, "websocket write failed");
                shared.signal.kill();
                return None;
            }
            Err(_) => {
                tracing::debug!("websocket write made no progress; closing");
                shared.terminate(CloseFrame::new(CloseCode::GOING_AWAY, "write timeout"));
                shared.signal.kill();
                return None;
            }
        }
    }
}

/// The frame to write for a queued one: compressed when permessage-deflate
/// applies, then masked if we are a client and it is not yet (`Sender`
/// queues plain frames so that they can still be compressed).
fn wire_frame(frame: Frame, compressor: Option<&mut Compressor>, role: Role) -> Frame {
    let frame = match compressor {
        Some(c) => c.apply(frame),
        None => frame,
    };
    if role == Role::Client && !frame.is_masked() {
        return Frame::masked(
            frame.opcode(),
            frame.fin(),
            frame.rsv1(),
            frame.payload(),
            rand::random(),
        );
    }
    frame
}

/// The part of `frame` after its first `n` wire bytes (a partial write).
fn tail(frame: &Frame, n: usize) -> Bytes {
    let header = frame.header();
    match n.checked_sub(header.len()) {
        Some(into_payload) => frame.payload().slice(into_payload..),
        None => {
            let mut rest = Vec::with_capacity(frame.wire_len() - n);
            rest.extend_from_slice(&header[n..]);
            rest.extend_from_slice(frame.payload());
            Bytes::from(rest)
        }
    }
}

/// Writes `raw`, then every frame in `batch` (header and payload slices),
/// with as few `writev` calls as the kernel allows, then flushes. Fails with
/// `TimedOut` when the socket takes nothing for `stall`: a slow but steady
/// reader is never cut, a stopped one is. The stall timer is armed only when
/// the socket pushes back, so a write that goes through at once (nearly
/// all) costs no timer.
///
/// A plain function returning the `poll_fn` future, not an `async fn`: the
/// writer task keeps room for this future for the connection's life, and an
/// `async fn` would store its arguments next to the closure that captures
/// them.
fn write_all<'a>(
    io: &'a mut (dyn AsyncWrite + Send + Unpin),
    raw: Option<&'a [u8]>,
    batch: &'a [Frame],
    stall: Duration,
) -> impl Future<Output = std::io::Result<()>> + 'a {
    let total = raw.map_or(0, <[u8]>::len) + batch.iter().map(Frame::wire_len).sum::<usize>();
    let mut done = 0;
    // (bytes written when armed, the timer)
    let mut timer: Option<(usize, Pin<Box<tokio::time::Sleep>>)> = None;
    std::future::poll_fn(move |cx| loop {
        let progress = if done < total {
            poll_write_from(&mut *io, cx, raw, batch, done)
        } else {
            Pin::new(&mut *io).poll_flush(cx).map_ok(|()| usize::MAX)
        };
        match progress {
            Poll::Ready(Ok(usize::MAX)) => return Poll::Ready(Ok(())),
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                done += n;
                continue;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        // The socket is full: the stall clock runs from the last progress.
        let deadline = tokio::time::Instant::now() + stall;
        match &mut timer {
            Some((at, t)) if *at != done => {
                *at = done;
                t.as_mut().reset(deadline);
            }
            Some(_) => {}
            None => timer = Some((done, Box::pin(tokio::time::sleep_until(deadline)))),
        }
        if let Some((_, t)) = &mut timer {
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
            }
        }
        return Poll::Pending;
    })
}

/// One `writev` of what is left after the first `skip` bytes of `raw` and
/// `batch`; the slices live on this (synchronous) call's stack, not in the
/// writer task's future, in an array sized for the batch (a few frames, the
/// usual case, do not pay for initializing room for 64).
fn poll_write_from(
    io: &mut (dyn AsyncWrite + Send + Unpin),
    cx: &mut Context<'_>,
    raw: Option<&[u8]>,
    batch: &[Frame],
    skip: usize,
) -> Poll<std::io::Result<usize>> {
    const SMALL: usize = 17;
    if batch.len() * 2 < SMALL {
        let mut slices = [IoSlice::new(&[]); SMALL];
        let len = fill_slices(&mut slices, raw, batch, skip);
        poll_write_slices(io, cx, &slices[..len])
    } else {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let len = fill_slices(&mut slices, raw, batch, skip);
        poll_write_slices(io, cx, &slices[..len])
    }
}

/// One write of `slices`, in order: a single piece as it is, up to
/// `COALESCE_MAX` bytes in several pieces copied into the thread's scratch
/// buffer and written as one (`send` on TCP), larger ones gathered
/// (`writev`). Returns how many bytes the socket took.
fn poll_write_slices(
    io: &mut (dyn AsyncWrite + Send + Unpin),
    cx: &mut Context<'_>,
    slices: &[IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    match slices {
        [] => return Poll::Ready(Ok(0)),
        [one] => return Pin::new(io).poll_write(cx, one),
        _ => {}
    }
    let total: usize = slices.iter().map(|s| s.len()).sum();
    if total <= STACK_COALESCE_MAX {
        // The usual small message: gathered on the stack, cheaper than
        // reaching the thread's scratch buffer.
        let mut buf = [0u8; STACK_COALESCE_MAX];
        let mut len = 0;
        for s in slices {
            buf[len..len + s.len()].copy_from_slice(s);
            len += s.len();
        }
        return Pin::new(io).poll_write(cx, &buf[..len]);
    }
    if total <= COALESCE_MAX {
        let written = SCRATCH.with(|scratch| {
            // Busy only if a stream's own write came back here, which none
            // does; then gather instead.
            let mut buf = scratch.try_borrow_mut().ok()?;
            buf.clear();
            buf.reserve(COALESCE_MAX);
            for s in slices {
                buf.extend_from_slice(s);
            }
            Some(Pin::new(&mut *io).poll_write(cx, &buf))
        });
        if let Some(written) = written {
            return written;
        }
    }
    Pin::new(io).poll_write_vectored(cx, slices)
}

/// Fills `slices` with what is left after the first `skip` bytes of `raw`
/// and `batch` (empty pieces left out); returns how many it filled.
fn fill_slices<'a>(
    slices: &mut [IoSlice<'a>],
    raw: Option<&'a [u8]>,
    batch: &'a [Frame],
    mut skip: usize,
) -> usize {
    let mut len = 0;
    let mut add = |piece: &'a [u8]| {
        if skip >= piece.len() {
            skip -= piece.len();
            return true;
        }
        if len == slices.len() {
            return false;
        }
        slices[len] = IoSlice::new(&piece[skip..]);
        skip = 0;
        len += 1;
        true
    };
    if let Some(raw) = raw {
        add(raw);
    }
    for f in batch {
        if !add(f.header()) || !add(f.payload()) {
            break;
        }
    }
    len
}
