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
//! The writer task itself is spawned only when something is queued. A
//! server connection that writes directly (plain TCP, no deflate) starts
//! *dormant*: what would wake the writer task wakes a small waker instead
//! (`Dormant`), which spawns the task when the first command is queued,
//! cuts the connection when it is killed, sends close 1001 when the server
//! goes away, and half-closes the socket itself when the only command is
//! the final `Shutdown`. An echo connection that never fills its socket
//! buffer so never has a writer task: no spawn, no task cell and no future
//! per connection: about 3,400 instructions per handshake and 640 bytes
//! per idle connection (docs/BENCHMARKS.md, sixth round). Its heartbeat is
//! the app's shared timer (`heartbeat.rs`); a client's connection, which
//! has no app, keeps an eager writer task with the timer in it.
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
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    task::{Context, Poll, Wake, Waker},
    time::{Duration, Instant},
};

use bytes::Bytes;
use switchboard_proto::{CloseCode, CloseFrame, Frame, OpCode, Role};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    runtime::Handle,
    sync::Notify,
};

use crate::{
    error::{Error, Kind},
    metrics::Recorder,
    ws::{
        compress::{Compressor, Negotiated},
        heartbeat::{self, Due, Heartbeat, Liveness, Timers},
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
    /// Where the writer task is in its life.
    state: WriterState,
}

/// The writer task's life (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterState {
    /// Not spawned: `Dormant` stands in for it.
    Dormant,
    /// Spawned (or about to be): it alone ends the writer.
    Running,
    /// Ended: nothing more is written.
    Ended,
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
    /// The app's heartbeat and this connection's key in it (server
    /// connections), released on drop.
    heartbeat: Option<(Arc<Heartbeat>, usize)>,
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

    /// Records that the peer sent a frame (`data`: a data message); see
    /// `Beat::saw_peer`.
    pub(crate) fn saw_peer(&self, data: bool) {
        self.signal.beat.saw_peer(data);
    }

    /// Sets when the connection's credentials expire (see `auth`).
    pub(crate) fn set_expiry(&self, at: Option<Instant>) {
        self.signal.beat.set_expiry(at);
    }

    /// Does what a heartbeat tick found due.
    pub(crate) fn act(&self, due: Due) {
        match due {
            Due::Ping => {
                let ping = match self.role {
                    Role::Server => Frame::new(OpCode::Ping, true, false, Bytes::new()),
                    Role::Client => Frame::masked(OpCode::Ping, true, false, &[], rand::random()),
                };
                self.send_control(ping);
            }
            Due::Close(close) => {
                tracing::debug!(code = close.code.0, reason = %close.reason, "closing websocket");
                self.terminate(close);
            }
        }
    }

    /// Ends the writer (the lock `out` is released here): nothing more is
    /// accepted, what is still queued is dropped outside the lock, senders
    /// waiting for room are told. Returns the write half if it was parked
    /// (nobody was writing with it).
    fn end(&self, mut out: MutexGuard<'_, Out>) -> Option<Io> {
        out.ended = true;
        out.state = WriterState::Ended;
        let leftover = std::mem::take(&mut out.queue);
        let parked = out.io.take();
        drop(out);
        drop(leftover);
        self.writer_done.store(true, Ordering::Release);
        self.space.notify_waiters();
        if let Some(m) = &self.metrics {
            m.ws_closed();
        }
        parked
    }

    /// What the writer task would do, for a connection that has none yet
    /// (called by `Dormant`'s waker, i.e. wherever the writer is woken).
    /// Every decision is taken under the queue's lock while the writer is
    /// still dormant, so only one caller spawns or ends it, and the waker
    /// is registered again only while it is dormant (never over the task's
    /// own).
    fn poll_dormant(self: &Arc<Self>, dormant: &Arc<Dormant>) {
        loop {
            if self.out().state != WriterState::Dormant {
                // A wake-up that raced with the spawn or the end.
                return;
            }
            if self.signal.is_going_away() && !dormant.told_going_away.swap(true, Ordering::AcqRel)
            {
                // Written directly, or queued (and then spawned for below).
                self.send_close(Some(&CloseFrame::new(
                    CloseCode::GOING_AWAY,
                    "server shutting down",
                )));
            }
            let mut out = self.out();
            if out.state != WriterState::Dormant {
                return;
            }
            if self.signal.is_killed() {
                // Cut: the write half is dropped.
                drop(self.end(out));
                return;
            }
            let only_shutdown =
                out.queue.len() == 1 && matches!(out.queue.front(), Some(Command::Shutdown));
            if only_shutdown && out.io.is_some() {
                // Nothing to write before the half-close: done here.
                let io = self.end(out);
                if let Some(mut io) = io {
                    let mut cx = Context::from_waker(Waker::noop());
                    // A TCP stream half-closes at once; anything else may
                    // need to flush first, in a task of its own (bounded).
                    if Pin::new(&mut *io).poll_shutdown(&mut cx).is_pending() {
                        let grace = self.close_timeout;
                        dormant.handle.spawn(async move {
                            let _ = tokio::time::timeout(grace, io.shutdown()).await;
                        });
                    }
                }
                return;
            }
            if !out.queue.is_empty() {
                out.state = WriterState::Running;
                drop(out);
                let opts = TaskOptions {
                    write_timeout: dormant.write_timeout,
                    deflate: None,
                    own_timer: None,
                };
                let task = run_writer(Arc::clone(self), opts);
                // Boxed: see `server::spawn_http1`.
                dormant.handle.spawn(Box::pin(task));
                return;
            }
            // Wait for the next wake-up. Queue changes happen under the
            // lock held here; the flags are set without it, so look at them
            // again after registering.
            self.signal
                .writer
                .register(&Waker::from(Arc::clone(dormant)));
            drop(out);
            let told = dormant.told_going_away.load(Ordering::Acquire);
            if !self.signal.is_killed() && (told || !self.signal.is_going_away()) {
                return;
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some((heartbeat, key)) = &self.heartbeat {
            heartbeat.deregister(*key);
        }
        // A dormant writer's waker holds the connection's signal, which
        // holds the waker: released here, or neither would ever be freed.
        drop(self.signal.writer.take());
        let out = self.out.get_mut().unwrap_or_else(|p| p.into_inner());
        if out.state != WriterState::Ended {
            // Never ended (dormant to the last, or its task dropped with
            // the runtime): still counted closed.
            if let Some(m) = &self.metrics {
                m.ws_closed();
            }
        }
    }
}

/// Stands in for the writer task of a dormant connection: registered as the
/// writer's waker, its wake-up runs `Shared::poll_dormant`. Holds what the
/// task needs to start (a dormant connection has no deflate and an app's
/// heartbeat, so only the write timeout), and no strong reference to the
/// connection: it is memory every idle connection pays for.
struct Dormant {
    shared: Weak<Shared>,
    write_timeout: Duration,
    /// Where to spawn the task (a sender may wake it from any thread).
    handle: Handle,
    /// Close 1001 was sent for the server's shutdown.
    told_going_away: AtomicBool,
}

impl Wake for Dormant {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            shared.poll_dormant(self);
        }
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
    pub(crate) timers: Timers,
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
    /// The app's shared heartbeat (server connections); without one the
    /// writer task keeps the connection's timer itself.
    pub(crate) heartbeat: Option<Arc<Heartbeat>>,
}

/// Creates the shared state on `io` and the writer: dormant for a server
/// connection that writes directly, else a task spawned now.
pub(crate) fn spawn_writer(io: Io, opts: WriterOptions) -> Arc<Shared> {
    let direct = opts.plain_tcp && opts.role == Role::Server && opts.deflate.is_none();
    let lazy = direct && opts.heartbeat.is_some();
    let shared = Arc::new_cyclic(|weak: &Weak<Shared>| Shared {
        out: Mutex::new(Out {
            queue: VecDeque::new(),
            io: Some(io),
            ended: false,
            state: if lazy {
                WriterState::Dormant
            } else {
                WriterState::Running
            },
        }),
        queued: AtomicUsize::new(0),
        max_queue_bytes: opts.max_queue_bytes,
        space: Notify::new(),
        space_waiters: AtomicUsize::new(0),
        direct,
        close_sent: AtomicBool::new(false),
        writer_done: AtomicBool::new(false),
        role: opts.role,
        slot: Mutex::new(Slot::HandlerRunning),
        close_timeout: opts.close_timeout,
        signal: Arc::clone(&opts.signal),
        killed_by: Mutex::new(None),
        purge: AtomicBool::new(false),
        heartbeat: opts.heartbeat.as_ref().map(|hb| {
            let key = hb.register(Arc::clone(&opts.signal), weak.clone(), opts.timers);
            (Arc::clone(hb), key)
        }),
        deflate: opts.deflate,
        metrics: opts.metrics.clone(),
    });
    // Open from here to the writer's end (`Shared::end`).
    if let Some(m) = &opts.metrics {
        m.ws_opened();
    }
    if lazy {
        let dormant = Arc::new(Dormant {
            shared: Arc::downgrade(&shared),
            write_timeout: opts.write_timeout,
            handle: Handle::current(),
            told_going_away: AtomicBool::new(false),
        });
        shared
            .signal
            .writer
            .register(&Waker::from(Arc::clone(&dormant)));
        // A shutdown that began before this connection registered its
        // signal set the flags with nobody to wake: look at them now.
        if shared.signal.is_killed() || shared.signal.is_going_away() {
            shared.poll_dormant(&dormant);
        }
    } else {
        let task = TaskOptions {
            write_timeout: opts.write_timeout,
            deflate: opts.deflate,
            own_timer: opts.heartbeat.is_none().then_some(opts.timers),
        };
        // Boxed: see `server::spawn_http1`.
        tokio::spawn(Box::pin(run_writer(Arc::clone(&shared), task)));
    }
    shared
}

/// What the writer task needs beyond `Shared`.
struct TaskOptions {
    /// A write that makes no progress this long fails.
    write_timeout: Duration,
    /// permessage-deflate, when negotiated: the task compresses.
    deflate: Option<Negotiated>,
    /// The connection's own heartbeat timer (no app ticks for it).
    own_timer: Option<Timers>,
}

/// The writer task: drains the queue, then ends the writer and half-closes
/// (after a `Shutdown`) or cuts (killed, failed) the connection.
async fn run_writer(shared: Arc<Shared>, opts: TaskOptions) {
    let io = writer_loop(&shared, &opts).await;
    let parked = shared.end(shared.out());
    match io {
        // Done after a `Shutdown`: half-close, bounded.
        // Boxed: a timer inline would cost every idle connection's task.
        Some(mut io) => {
            let _ = Box::pin(tokio::time::timeout(shared.close_timeout, io.shutdown())).await;
        }
        // Killed or failed: the socket is dropped (cut).
        None => drop(parked),
    }
}

/// Drains the queue until a `Shutdown` (returns the write half, to be
/// half-closed) or until the connection is killed or a write fails (`None`).
async fn writer_loop(shared: &Shared, opts: &TaskOptions) -> Option<Io> {
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
    // The connection's own heartbeat timer, when no app ticks for it (a
    // client's connection); see heartbeat.rs.
    let mut timer = opts.own_timer.map(|timers| {
        let mut timer = tokio::time::interval(timers.tick());
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        (timer, Liveness::new(), timers)
    });
    loop {
        let work = tokio::select! {
            biased;
            work = std::future::poll_fn(|cx| shared.poll_work(cx, &mut cmds, &mut told_going_away)) => work,
            () = std::future::poll_fn(|cx| match &mut timer {
                Some((timer, ..)) => timer.poll_tick(cx).map(drop),
                None => Poll::Pending,
            }) => {
                if let Some((_, live, timers)) = &mut timer {
                    if let Some(due) = heartbeat::check(&shared.signal.beat, timers, live, heartbeat::now_ms()) {
                        shared.act(due);
                    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::ws::WsConfig;

    /// A server-side writer on one end of a real loopback TCP connection
    /// (so direct writes apply and it starts dormant), and the other end.
    async fn dormant_pair(heartbeat: &Arc<Heartbeat>) -> (Arc<Shared>, TcpStream) {
        let config = WsConfig::default().ping_interval(None);
        dormant_pair_with(heartbeat, config, ConnSignal::standalone()).await
    }

    async fn dormant_pair_with(
        heartbeat: &Arc<Heartbeat>,
        config: WsConfig,
        signal: Arc<ConnSignal>,
    ) -> (Arc<Shared>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let mut opts = config.writer_options(Role::Server, signal);
        opts.plain_tcp = true;
        opts.heartbeat = Some(Arc::clone(heartbeat));
        // The read half is dropped: these tests only write.
        (spawn_writer(Box::new(write), opts), client)
    }

    fn state(shared: &Shared) -> WriterState {
        shared.out().state
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    /// Reads until EOF (bounded), returning what came.
    async fn read_to_eof(client: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("the server closes its side")
            .unwrap();
        got
    }

    fn text(s: &str) -> Frame {
        Frame::new(
            OpCode::Text,
            true,
            false,
            Bytes::copy_from_slice(s.as_bytes()),
        )
    }

    #[tokio::test]
    async fn direct_writes_need_no_task_and_a_queued_frame_spawns_one() {
        let hb = Arc::new(Heartbeat::default());
        let (shared, mut client) = dormant_pair(&hb).await;
        assert_eq!(state(&shared), WriterState::Dormant);
        shared.send(text("direct")).await.unwrap();
        assert_eq!(
            state(&shared),
            WriterState::Dormant,
            "a direct write spawns nothing"
        );
        // A broadcast always queues: the writer task starts and drains it.
        shared.try_send(text("queued")).unwrap();
        assert_eq!(state(&shared), WriterState::Running);
        shared.send_close(None);
        shared.shutdown();
        let got = read_to_eof(&mut client).await;
        let mut want = Vec::new();
        for f in [text("direct"), text("queued"), Frame::close(None)] {
            want.extend_from_slice(f.header());
            want.extend_from_slice(f.payload());
        }
        assert_eq!(got, want);
        eventually("the task ends the writer", || {
            state(&shared) == WriterState::Ended
        })
        .await;
    }

    #[tokio::test]
    async fn a_dormant_writer_half_closes_kills_and_deregisters_without_a_task() {
        let hb = Arc::new(Heartbeat::default());
        // The close handshake's end: our close frame, then the half-close,
        // both done by the callers themselves.
        let (closing, mut client) = dormant_pair(&hb).await;
        assert_eq!(hb.len(), 1);
        closing.send_close(Some(&CloseFrame::new(CloseCode::NORMAL, "bye")));
        closing.shutdown();
        assert_eq!(state(&closing), WriterState::Ended);
        assert!(!closing.is_open());
        let got = read_to_eof(&mut client).await;
        let close = Frame::close(Some(&CloseFrame::new(CloseCode::NORMAL, "bye")));
        assert_eq!(&got[..close.header().len()], close.header());
        assert_eq!(&got[close.header().len()..], close.payload());
        assert!(
            closing.send(text("late")).await.is_err(),
            "nothing after the end"
        );

        // Killed: cut at once, no close frame.
        let (killed, mut client) = dormant_pair(&hb).await;
        assert_eq!(hb.len(), 2);
        killed.signal.kill();
        assert_eq!(state(&killed), WriterState::Ended);
        assert!(read_to_eof(&mut client).await.is_empty());

        // Dropped while dormant, never ended: nothing is kept alive.
        let (idle, _client) = dormant_pair(&hb).await;
        let signal = Arc::downgrade(&idle.signal);
        drop((closing, killed, idle));
        assert_eq!(hb.len(), 0, "a dropped connection leaves the heartbeat");
        assert!(
            signal.upgrade().is_none(),
            "the dormant waker does not keep the signal alive"
        );
    }

    #[tokio::test]
    async fn a_connection_that_starts_during_shutdown_still_gets_1001() {
        let hb = Arc::new(Heartbeat::default());
        let app = Arc::new(crate::ws::signal::Signals::default());
        app.go_away();
        let config = WsConfig::default().ping_interval(None);
        let (shared, mut client) = dormant_pair_with(&hb, config, app.register()).await;
        assert!(shared.close_sent(), "close 1001 went out at once");
        shared.shutdown();
        let got = read_to_eof(&mut client).await;
        let close = Frame::close(Some(&CloseFrame::new(
            CloseCode::GOING_AWAY,
            "server shutting down",
        )));
        assert_eq!(&got[..close.header().len()], close.header());
        assert_eq!(&got[close.header().len()..], close.payload());
    }

    #[tokio::test]
    async fn the_app_timer_pings_a_dormant_connection_and_closes_it_when_silent() {
        let hb = Arc::new(Heartbeat::default());
        let config = WsConfig::default()
            .ping_interval(Some(Duration::from_millis(80)))
            .pong_timeout(Duration::from_millis(80))
            .close_timeout(Duration::from_millis(200));
        let (shared, mut client) = dormant_pair_with(&hb, config, ConnSignal::standalone()).await;
        // Nobody answers: a ping, then close 1001, then the cut.
        let got = read_to_eof(&mut client).await;
        let ping = Frame::new(OpCode::Ping, true, false, Bytes::new());
        assert_eq!(&got[..2], ping.header());
        let close = Frame::close(Some(&CloseFrame::new(
            CloseCode::GOING_AWAY,
            "pong timeout",
        )));
        assert_eq!(&got[2..2 + close.header().len()], close.header());
        assert_eq!(&got[2 + close.header().len()..], close.payload());
        assert_eq!(shared.killed_by().unwrap().reason, "pong timeout");
        drop(shared);
        eventually("the ticker stops once nothing is registered", || {
            !hb.ticking()
        })
        .await;
    }

    #[tokio::test]
    async fn a_shorter_deadline_wakes_a_ticker_sleeping_for_longer_ones() {
        let hb = Arc::new(Heartbeat::default());
        // The first connection sets the ticker to its 1 s tick.
        let slow = WsConfig::default().ping_interval(Some(Duration::from_secs(30)));
        let (first, _first_client) = dormant_pair_with(&hb, slow, ConnSignal::standalone()).await;
        tokio::time::sleep(Duration::from_millis(20)).await; // the ticker is asleep
        let fast = WsConfig::default()
            .ping_interval(Some(Duration::from_millis(80)))
            .pong_timeout(Duration::from_secs(30));
        let start = Instant::now();
        let (second, mut client) = dormant_pair_with(&hb, fast, ConnSignal::standalone()).await;
        let mut ping = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut ping))
            .await
            .expect("a ping comes")
            .unwrap();
        let took = start.elapsed();
        assert_eq!(ping, [0x89, 0x00]);
        // Without the wake-up the ticker finishes its 1 s sleep first (the
        // ping came after ~980 ms); with it, the ping is due at 80 ms.
        assert!(
            took < Duration::from_millis(600),
            "the first ping took {took:?}"
        );
        drop((first, second));
    }
}
