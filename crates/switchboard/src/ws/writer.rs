//! The per-connection outbound path: a byte-bounded queue and the single
//! writer task that drains it with vectored writes.
//!
//! Every frame for a connection (data from any number of [`Sender`] clones,
//! pongs, the close frame) goes through one queue to one task, so frames
//! never interleave and the task can coalesce whatever is queued into a
//! single `writev`. The queue is an unbounded channel whose *bytes* are
//! bounded by accounting (`queued`): async `send` waits for room, `try_send`
//! fails at once, which is what a broadcast needs (it must never wait on a
//! slow recipient). Frames are `switchboard_proto::Frame`s, whose payload is a
//! shared `Bytes`, so one encoded frame can sit in many queues. With
//! permessage-deflate the task also compresses eligible messages as it
//! takes them off the queue (see `compress.rs` for why here), and for a
//! client it masks whatever `Sender` queued unmasked.
//!
//! [`Sender`]: crate::ws::Sender

use std::{
    io::IoSlice,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use switchboard_proto::{CloseCode, CloseFrame, Frame, OpCode, Role};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::{mpsc, Notify},
};
use tokio_util::sync::CancellationToken;

use crate::{
    error::{Error, Kind},
    metrics::Recorder,
    ws::{
        compress::{Compressor, Negotiated},
        socket::ReadState,
    },
};

/// Most frames gathered into one `writev` (Linux allows 1024 iovecs; two per
/// frame; 64 keeps the batch small enough to stay in cache).
const MAX_BATCH_FRAMES: usize = 64;
/// Most payload bytes gathered into one `writev` before writing.
const MAX_BATCH_BYTES: usize = 256 * 1024;

pub(crate) enum Command {
    Frame(Frame),
    /// A frame already in its compressed-or-not final form (a shared
    /// broadcast frame): never compressed again.
    Ready(Frame),
    /// Flush, half-close the TCP stream and stop.
    Shutdown,
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
    tx: mpsc::UnboundedSender<Command>,
    /// Bytes queued but not yet written.
    queued: AtomicUsize,
    pub(crate) max_queue_bytes: usize,
    /// Woken by the writer after each write, for senders waiting for room.
    space: Notify,
    /// A close frame has been queued: no data may follow it.
    close_sent: AtomicBool,
    /// The writer has stopped (peer gone or shutdown done).
    writer_done: AtomicBool,
    pub(crate) role: Role,
    pub(crate) slot: Mutex<Slot>,
    pub(crate) close_timeout: Duration,
    /// Cancelled to end the connection at once (slow consumer, dead peer,
    /// write timeout): the writer stops and the receiver returns `killed_by`.
    pub(crate) killed: CancellationToken,
    pub(crate) killed_by: Mutex<Option<CloseFrame>>,
    /// Set by `terminate`: queued data frames are dropped, only the close
    /// frame still goes out.
    purge: AtomicBool,
    /// Milliseconds since `epoch` when the peer last sent any frame
    /// (liveness, for the heartbeat).
    last_seen: AtomicU64,
    /// Milliseconds since `epoch` of the last data message (idle timeout).
    last_data: AtomicU64,
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

    fn push(&self, frame: Frame) -> Result<(), Error> {
        self.push_command(frame, Command::Frame)
    }

    fn push_command(&self, frame: Frame, command: fn(Frame) -> Command) -> Result<(), Error> {
        self.queued.fetch_add(frame.wire_len(), Ordering::AcqRel);
        self.tx
            .send(command(frame))
            .map_err(|_| self.closed_error())
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
        self.push_command(frame, command)
    }

    /// Queues a data frame, waiting while the queue is over its byte limit.
    pub(crate) async fn send(&self, frame: Frame) -> Result<(), Error> {
        // Fast path, the usual case: room in the queue. Registering a
        // `Notify` waiter takes its lock, so only do that when we may wait.
        if !self.is_open() {
            return Err(self.closed_error());
        }
        let queued = self.queued.load(Ordering::Acquire);
        if queued == 0 || queued + frame.wire_len() <= self.max_queue_bytes {
            return self.push(frame);
        }
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_open() {
                return Err(self.closed_error());
            }
            let queued = self.queued.load(Ordering::Acquire);
            if queued == 0 || queued + frame.wire_len() <= self.max_queue_bytes {
                return self.push(frame);
            }
            notified.await;
        }
    }

    /// Queues a control frame (ping/pong), ignoring the byte limit: they are
    /// tiny and bounded by the rate the peer can send pings.
    pub(crate) fn send_control(&self, frame: Frame) {
        if !self.close_sent() {
            let _ = self.push(frame);
        }
    }

    /// Queues our close frame unless one was already queued; returns whether
    /// this call queued it.
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
        let _ = self.tx.send(Command::Shutdown);
    }

    /// Ends the connection for cause: queued data is dropped, `close` goes
    /// out if the peer still reads, and after the close timeout (or at once
    /// if the writer is stuck) the connection is cut. The receiver reports
    /// `close` as the disconnect reason.
    pub(crate) fn terminate(&self, close: CloseFrame) {
        {
            let mut by = self.killed_by.lock().unwrap_or_else(|p| p.into_inner());
            if by.is_some() || self.killed.is_cancelled() {
                return;
            }
            *by = Some(close.clone());
        }
        self.purge.store(true, Ordering::Release);
        if !self.send_close(Some(&close)) {
            // Our close was already queued; still make sure the writer ends.
        }
        self.shutdown();
        let killed = self.killed.clone();
        let grace = self.close_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            killed.cancel();
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
    pub(crate) fn saw_peer(&self, data: bool) {
        let now = self.now_ms();
        self.last_seen.store(now, Ordering::Relaxed);
        if data {
            self.last_data.store(now, Ordering::Relaxed);
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
    pub(crate) going_away: CancellationToken,
    pub(crate) force: CancellationToken,
    /// permessage-deflate, when negotiated: the writer compresses.
    pub(crate) deflate: Option<Negotiated>,
    /// Where this connection records metrics (server sockets of an app
    /// with metrics on).
    pub(crate) metrics: Option<Arc<Recorder>>,
}

/// Creates the shared state and spawns the writer task on `io`.
pub(crate) fn spawn_writer(
    io: Box<dyn AsyncWrite + Send + Unpin>,
    opts: WriterOptions,
) -> Arc<Shared> {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        tx,
        queued: AtomicUsize::new(0),
        max_queue_bytes: opts.max_queue_bytes,
        space: Notify::new(),
        close_sent: AtomicBool::new(false),
        writer_done: AtomicBool::new(false),
        role: opts.role,
        slot: Mutex::new(Slot::HandlerRunning),
        close_timeout: opts.close_timeout,
        killed: opts.force.child_token(),
        killed_by: Mutex::new(None),
        purge: AtomicBool::new(false),
        last_seen: AtomicU64::new(0),
        last_data: AtomicU64::new(0),
        epoch: Instant::now(),
        expires_at: AtomicU64::new(u64::MAX),
        deflate: opts.deflate,
        metrics: opts.metrics.clone(),
    });
    let task_shared = Arc::clone(&shared);
    tokio::spawn(async move {
        // Open from the first frame to the last write: the writer's life.
        if let Some(m) = &opts.metrics {
            m.ws_opened();
        }
        writer_loop(io, rx, &task_shared, &opts).await;
        if let Some(m) = &opts.metrics {
            m.ws_closed();
        }
        task_shared.writer_done.store(true, Ordering::Release);
        task_shared.space.notify_waiters();
    });
    shared
}

/// What the once-a-tick timer found.
fn check_timers(
    shared: &Shared,
    opts: &WriterOptions,
    last_ping: &mut Option<u64>,
) -> Option<CloseFrame> {
    let now = shared.now_ms();
    if now >= shared.expires_at.load(Ordering::Acquire) {
        return Some(CloseFrame::new(
            CloseCode::POLICY_VIOLATION,
            "token expired",
        ));
    }
    if let Some(idle) = opts.idle_timeout {
        if now.saturating_sub(shared.last_data.load(Ordering::Relaxed)) >= idle.as_millis() as u64 {
            return Some(CloseFrame::new(CloseCode::GOING_AWAY, "idle timeout"));
        }
    }
    if let Some(interval) = opts.ping_interval {
        let seen = shared.last_seen.load(Ordering::Relaxed);
        let silent = now.saturating_sub(seen);
        if silent >= (interval + opts.pong_timeout).as_millis() as u64 {
            return Some(CloseFrame::new(CloseCode::GOING_AWAY, "pong timeout"));
        }
        // Ping once per silence: after `interval` without a frame from the
        // peer, and not again until the peer has been heard from.
        // `last_ping` holds what `last_seen` was when we pinged.
        if silent >= interval.as_millis() as u64 && last_ping.is_none_or(|at| seen > at) {
            *last_ping = Some(seen);
            {
                let ping = match shared.role {
                    Role::Server => Frame::new(OpCode::Ping, true, false, Bytes::new()),
                    Role::Client => Frame::masked(OpCode::Ping, true, false, &[], rand::random()),
                };
                shared.send_control(ping);
            }
        }
    }
    None
}

async fn writer_loop(
    mut io: Box<dyn AsyncWrite + Send + Unpin>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    shared: &Shared,
    opts: &WriterOptions,
) {
    // Grows on first use: reserving MAX_BATCH_FRAMES up front cost every
    // idle connection 3 KiB (docs/BENCHMARKS.md, idle memory).
    let mut batch: Vec<Frame> = Vec::new();
    // Lives here, not in `Shared`: this task alone puts frames on the wire,
    // so compression order is wire order with no lock (see compress.rs).
    let mut compressor = opts.deflate.map(Compressor::new);
    let mut told_going_away = false;
    // One timer for heartbeat, idle and expiry checks: ticks at a fraction
    // of the shortest deadline, so a deadline is noticed within 1/4 of it.
    let tick = [
        opts.ping_interval,
        opts.idle_timeout,
        Some(opts.pong_timeout),
    ]
    .into_iter()
    .flatten()
    .min()
    .map_or(Duration::from_secs(1), |d| {
        (d / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    });
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ping = None;
    // Created once and polled in every select below: a fresh `cancelled()`
    // per iteration registers and unregisters a waiter under the token's
    // lock on every message (a fifth of the writer's instructions in the
    // echo profile, docs/BENCHMARKS.md).
    let killed = shared.killed.cancelled();
    tokio::pin!(killed);
    let going_away = opts.going_away.cancelled();
    tokio::pin!(going_away);
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut killed => return,
            _ = &mut going_away, if !told_going_away => {
                told_going_away = true;
                shared.send_close(Some(&CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down")));
                continue;
            }
            cmd = rx.recv() => cmd,
            _ = timer.tick() => {
                if let Some(close) = check_timers(shared, opts, &mut last_ping) {
                    tracing::debug!(code = close.code.0, reason = %close.reason, "closing websocket");
                    shared.terminate(close);
                }
                continue;
            }
        };
        let Some(first) = first else { break };
        let purge = shared.purge.load(Ordering::Acquire);
        let mut shutdown = false;
        let mut bytes = 0;
        let mut dropped = 0;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Frame(f) | Command::Ready(f) if purge && f.opcode() != OpCode::Close => {
                    dropped += f.wire_len()
                }
                Command::Frame(f) => {
                    // Accounted at the size it was queued with.
                    bytes += f.wire_len();
                    batch.push(wire_frame(f, compressor.as_mut(), shared.role));
                }
                Command::Ready(f) => {
                    bytes += f.wire_len();
                    batch.push(wire_frame(f, None, shared.role));
                }
                Command::Shutdown => {
                    shutdown = true;
                    break;
                }
            }
            if batch.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        let written = tokio::select! {
            biased;
            _ = &mut killed => return,
            r = write_all_vectored(&mut io, &batch, opts.write_timeout) => r,
        };
        if let (Some(m), Ok(())) = (&shared.metrics, &written) {
            m.sent_batch(&batch);
        }
        batch.clear();
        shared.queued.fetch_sub(bytes + dropped, Ordering::AcqRel);
        shared.space.notify_waiters();
        match written {
            Ok(()) => {}
            Err(e) if e.kind() != std::io::ErrorKind::TimedOut => {
                tracing::debug!(error = %e, "websocket write failed");
                shared.killed.cancel();
                return;
            }
            Err(_) => {
                tracing::debug!("websocket write made no progress; closing");
                shared.terminate(CloseFrame::new(CloseCode::GOING_AWAY, "write timeout"));
                shared.killed.cancel();
                return;
            }
        }
        if shutdown {
            break;
        }
    }
    let _ = tokio::time::timeout(shared.close_timeout, io.shutdown()).await;
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

/// Writes every frame in `batch` (header and payload slices) with as few
/// `writev` calls as the kernel allows. Fails with `TimedOut` when one
/// `writev` (or the flush) makes no progress for `stall`: a slow but
/// steady reader is never cut, a stopped one is.
async fn write_all_vectored(
    io: &mut (dyn AsyncWrite + Send + Unpin),
    batch: &[Frame],
    stall: Duration,
) -> std::io::Result<()> {
    let timed_out = |_| std::io::Error::from(std::io::ErrorKind::TimedOut);
    if batch.is_empty() {
        return Ok(());
    }
    let mut parts: Vec<&[u8]> = Vec::with_capacity(batch.len() * 2);
    for f in batch {
        parts.push(f.header());
        if !f.payload().is_empty() {
            parts.push(f.payload());
        }
    }
    let mut first = 0;
    let mut offset = 0;
    while first < parts.len() {
        let n = {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len() - first);
            slices.push(IoSlice::new(&parts[first][offset..]));
            slices.extend(parts[first + 1..].iter().map(|p| IoSlice::new(p)));
            tokio::time::timeout(stall, io.write_vectored(&slices))
                .await
                .map_err(timed_out)??
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut n = n;
        while n > 0 && first < parts.len() {
            let left = parts[first].len() - offset;
            if n >= left {
                n -= left;
                first += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
    }
    tokio::time::timeout(stall, io.flush())
        .await
        .map_err(timed_out)?
}
