//! io_uring plumbing for the echo scenario's `uring` engine: one ring, the
//! connected sockets registered with it, a ring of provided receive buffers,
//! and per connection a send buffer in flight plus a queue behind it.
//!
//! It moves bytes and knows nothing of WebSocket (`echo_uring` decodes and
//! decides what to send). It is the crate's only module with `unsafe`: an
//! operation handed to the kernel carries raw pointers, so every buffer the
//! kernel may read or write is owned here and never moved, resized or freed
//! while an operation on it is in flight. The rules that make that hold:
//! - a send reads `Slot::sending`, which is only touched again after the
//!   send's completion; new bytes go to `Slot::queued`, swapped in once the
//!   send in flight is done (one send in flight per connection, so bytes
//!   stay in order);
//! - a receive writes into a provided buffer, which is read only after its
//!   completion and handed back to the kernel only when the caller is done
//!   with it (the next call to [`Ring::next`]); or, without provided
//!   buffers, into `Slot::recv_buf`, with one receive in flight;
//! - the ring counts operations in flight; [`Ring::close`] cancels them all
//!   and waits for their completions, and if some are still pending when its
//!   time bound ends the buffers are leaked rather than freed.
//!
//! Everything is driven from one thread: the ring is created single-issuer
//! with deferred task running, so the kernel does receive work only inside
//! this thread's `io_uring_enter`, once per batch.

#![allow(unsafe_code)]

use std::{
    alloc::{self, Layout},
    io::{self, Write},
    net::{Shutdown, TcpStream},
    os::fd::AsRawFd,
    ptr::NonNull,
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// The provided-buffer group every multishot receive draws from.
const BGID: u16 = 0;
/// Operation kinds, in the low byte of `user_data` (the connection index is
/// above it).
const RECV: u64 = 1;
const SEND: u64 = 2;
const CANCEL: u64 = 3;
/// Consecutive `EAGAIN`/`EINTR` completions tolerated on one connection
/// before it counts as failed: io_uring polls sockets itself and should
/// never return them, so a few are retried and a stream of them is an error
/// rather than a spin.
const MAX_RETRIES: u8 = 8;
/// How long a wait may hold out for more completions than one, in
/// microseconds (Linux 6.12's minimum wait): a wake-up per batch instead of
/// one per completion. Short against a round trip under load (hundreds of
/// microseconds at 100 connections), so the server always has work queued;
/// it adds at most this much to a measured latency.
const BATCH_US: u32 = 50;
/// Memory the provided buffers may take, all connections together.
const POOL_BUDGET: usize = 64 << 20;

fn user_data(conn: usize, kind: u64) -> u64 {
    (conn as u64) << 8 | kind
}

/// Creates a ring, preferring single issuer with deferred task running
/// (Linux 6.1): completions are then produced only when this thread waits
/// for them, never by interrupting it. Older kernels get a plain ring.
fn build(sq: u32, cq: u32) -> io::Result<IoUring> {
    let preferred = IoUring::builder()
        .setup_cqsize(cq)
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(sq);
    match preferred {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::builder().setup_cqsize(cq).build(sq)
        }
        r => r,
    }
}

/// Whether this process may use io_uring for the echo engine; the error
/// says why not (seccomp, `kernel.io_uring_disabled`, an old kernel).
pub(crate) fn probe() -> Result<(), String> {
    let ring = build(8, 16).map_err(|e| format!("io_uring_setup refused: {e}"))?;
    if !ring.params().is_feature_ext_arg() {
        return Err("the kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11)".into());
    }
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe refused: {e}"))?;
    for (code, name) in [
        (opcode::Send::CODE, "SEND"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("the kernel lacks IORING_OP_{name}"));
        }
    }
    Ok(())
}

/// One entry of a provided-buffer ring, laid out as the kernel's
/// `struct io_uring_buf`; entry 0's `resv` is the ring's tail.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<RawBuf>() == 16);

/// A ring of provided receive buffers (Linux 5.19): the kernel picks a free
/// buffer when data arrives, so a multishot receive needs no buffer of its
/// own and no system call per receive.
struct Pool {
    /// The entries, page-aligned as the kernel requires.
    ring: NonNull<RawBuf>,
    ring_layout: Layout,
    /// `entries` buffers of `size` bytes each, buffer `i` at `i * size`.
    data: NonNull<u8>,
    data_layout: Layout,
    entries: u16,
    size: usize,
    /// Our tail: entries before it are the kernel's to fill.
    tail: u16,
}

impl Pool {
    fn new(entries: u16, size: usize) -> Option<Pool> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .unwrap_or(4096)
            .max(4096);
        let ring_bytes = (usize::from(entries) * 16).next_multiple_of(page);
        let ring_layout = Layout::from_size_align(ring_bytes, page).ok()?;
        let data_layout = Layout::from_size_align(usize::from(entries) * size, 64).ok()?;
        // SAFETY: both layouts have a non-zero size (entries >= 1, size >= 1).
        let ring = NonNull::new(unsafe { alloc::alloc_zeroed(ring_layout) }.cast::<RawBuf>())?;
        // SAFETY: as above.
        let Some(data) = NonNull::new(unsafe { alloc::alloc_zeroed(data_layout) }) else {
            // SAFETY: allocated just above with this layout, never shared.
            unsafe { alloc::dealloc(ring.as_ptr().cast(), ring_layout) };
            return None;
        };
        let mut pool = Pool {
            ring,
            ring_layout,
            data,
            data_layout,
            entries,
            size,
            tail: 0,
        };
        for bid in 0..entries {
            pool.push(bid);
        }
        pool.publish();
        Some(pool)
    }

    /// Registers the ring with `uring` as buffer group [`BGID`].
    fn register(&self, uring: &IoUring) -> io::Result<()> {
        // SAFETY: the entries live in `self.ring` until the pool is dropped,
        // and the pool is dropped only after the io_uring (field order of
        // `Ring`) or leaked with it (`Ring::drop`).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.entries,
                BGID,
                0,
            )
        }
    }

    /// Writes buffer `bid` at our tail (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.entries - 1));
        // SAFETY: idx < entries, so the entry is inside the allocation; the
        // kernel reads only entries between its head and the published
        // tail, and this one is past the tail. `resv` (the tail, in entry 0)
        // is not written here. The address is buffer `bid`, inside `data`.
        unsafe {
            let e = self.ring.as_ptr().add(idx);
            std::ptr::addr_of_mut!((*e).addr)
                .write(self.data.as_ptr().add(usize::from(bid) * self.size) as u64);
            std::ptr::addr_of_mut!((*e).len).write(self.size as u32);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers pushed so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: entry 0's `resv` field is the ring's tail, a u16 the kernel
        // reads concurrently; it is aligned (offset 14 of a page-aligned
        // ring) and only ever accessed atomically from this side. The
        // release store orders the entry writes before it.
        unsafe {
            let tail = std::ptr::addr_of_mut!((*self.ring.as_ptr()).resv);
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, which the kernel has filled.
    fn get(&self, bid: u16, len: usize) -> &[u8] {
        let bid = usize::from(bid).min(usize::from(self.entries) - 1);
        // SAFETY: the buffer is inside `data`; the kernel wrote `len <= size`
        // bytes and posted the completion (read with acquire ordering by the
        // io-uring crate) before we got here, and it cannot write this
        // buffer again before `push` hands it back, which happens only after
        // the returned borrow ends (`Ring::next` takes `&mut self`).
        unsafe {
            std::slice::from_raw_parts(self.data.as_ptr().add(bid * self.size), len.min(self.size))
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; a pool is dropped
        // only when no operation can use it (see `Ring::drop`).
        unsafe {
            alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            alloc::dealloc(self.data.as_ptr(), self.data_layout);
        }
    }
}

/// The per-connection state the kernel's operations point into.
#[derive(Default)]
struct Slot {
    /// Bytes of the send in flight; not touched until its completion.
    sending: Vec<u8>,
    /// How much of `sending` the kernel has sent (short sends resume here).
    sent: usize,
    send_busy: bool,
    /// Bytes waiting behind the send in flight.
    queued: Vec<u8>,
    /// Single-shot mode only: the receive buffer, one receive in flight.
    recv_buf: Vec<u8>,
    /// False once the connection failed or was shut down: its completions
    /// are ignored and nothing more is submitted for it.
    open: bool,
    retries: u8,
}

/// What [`Ring::next`] reports.
#[derive(Debug)]
pub(crate) enum Completion<'a> {
    /// Bytes received on `conn`, valid until the next call to `next`.
    Data { conn: usize, bytes: &'a [u8] },
    /// The server closed `conn` (end of stream).
    Eof { conn: usize },
    /// An operation on `conn` failed (`errno`, 0 for a send that wrote
    /// nothing); the connection is no use any more.
    Failed { conn: usize, errno: i32 },
}

/// What to hand back before the next completion is looked at.
#[derive(Debug, Default)]
struct Release {
    buf: Option<u16>,
    rearm: Option<usize>,
}

/// A completion decided inside the loop of `next`, before borrowing data.
enum Got {
    Pooled(usize, u16, usize),
    Single(usize, usize),
    Eof(usize),
    Failed(usize, i32),
}

/// Dispatches on fixed-file or plain descriptors (both are accepted by the
/// opcode builders, as different types).
macro_rules! with_fd {
    ($self:ident, $conn:expr, |$fd:ident| $e:expr) => {
        if $self.fixed {
            let $fd = types::Fixed($conn as u32);
            $e
        } else {
            let $fd = types::Fd($self.socks[$conn].as_raw_fd());
            $e
        }
    };
}

/// The ring and everything its operations point into. Fields drop in order:
/// the io_uring first, then the buffers and sockets.
pub(crate) struct Ring {
    ring: IoUring,
    slots: Vec<Slot>,
    pool: Option<Pool>,
    socks: Vec<TcpStream>,
    /// Sockets registered as fixed files (no descriptor lookup per op).
    fixed: bool,
    /// Multishot receives into provided buffers (else one receive per
    /// connection into its own buffer, re-armed after each completion).
    multishot: bool,
    /// Operations submitted whose last completion has not been seen.
    inflight: usize,
    release: Release,
    /// Failures found while handing back (a re-arm that could not be
    /// queued), reported by the next `next`.
    deferred: Vec<(usize, i32)>,
    /// Single-shot receive buffer size.
    recv_size: usize,
    /// Set by `close`: nothing new is submitted.
    closing: bool,
    /// Sends the kernel completed only in part (the rest was resubmitted).
    short_sends: u64,
    /// Microseconds a wait may hold out for more than one completion
    /// (0: the kernel cannot, before Linux 6.12).
    batch_us: u32,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("conns", &self.socks.len())
            .field("inflight", &self.inflight)
            .field("mode", &self.describe())
            .finish()
    }
}

impl Ring {
    /// A ring for `socks` (already connected; they become blocking, io_uring
    /// polls them itself). `hint` is the bytes a connection typically has
    /// in flight (frame size times depth), for sizing receive buffers. On
    /// failure the sockets come back, so the caller can use another engine.
    pub(crate) fn new(
        socks: Vec<TcpStream>,
        hint: usize,
    ) -> Result<Ring, (io::Error, Vec<TcpStream>)> {
        let n = socks.len().max(1);
        // A batch queues at most a send and a re-arm per connection; a full
        // submission queue is submitted early, so this is not a limit.
        let sq = (n * 2).next_power_of_two().clamp(64, 8192) as u32;
        // Completions of one batch: a few per connection; the kernel keeps
        // overflow (IORING_FEAT_NODROP), so this is not a limit either.
        let cq = (n * 4).next_power_of_two().clamp(1024, 65536) as u32;
        let ring = match build(sq, cq) {
            Ok(r) => r,
            Err(e) => return Err((e, socks)),
        };
        if !ring.params().is_feature_ext_arg() {
            return Err((io::Error::other("no IORING_FEAT_EXT_ARG"), socks));
        }
        for s in &socks {
            if let Err(e) = s.set_nonblocking(false) {
                return Err((e, socks));
            }
        }
        let fds: Vec<_> = socks.iter().map(|s| s.as_raw_fd()).collect();
        let fixed = ring.submitter().register_files(&fds).is_ok();
        let recv_size = hint.clamp(4096, 64 * 1024);
        let pool = Self::pool_for(n, hint).filter(|p| p.register(&ring).is_ok());
        Ok(Ring {
            slots: (0..socks.len())
                .map(|_| Slot {
                    open: true,
                    ..Slot::default()
                })
                .collect(),
            multishot: pool.is_some(),
            pool,
            socks,
            fixed,
            inflight: 0,
            release: Release::default(),
            deferred: Vec::new(),
            recv_size,
            closing: false,
            short_sends: 0,
            batch_us: if ring.params().is_feature_min_timeout() {
                BATCH_US
            } else {
                0
            },
            ring,
        })
    }

    /// Provided buffers: about two per connection (a batch usually brings
    /// one completion per connection) of twice what one has in flight, at
    /// least 1 KiB, within [`POOL_BUDGET`]. Small buffers for small echoes
    /// keep the pool, which the kernel cycles through in order, in cache.
    /// Running short is not an error: the receive ends with `ENOBUFS` and is
    /// re-armed once buffers come back; a larger message arrives in pieces.
    fn pool_for(n: usize, hint: usize) -> Option<Pool> {
        let mut size = (hint * 2).next_power_of_two().clamp(1024, 64 * 1024);
        let mut entries = (n * 2).next_power_of_two().clamp(64, 32768);
        while entries * size > POOL_BUDGET && size > 1024 {
            size /= 2;
        }
        while entries * size > POOL_BUDGET && entries > 64 {
            entries /= 2;
        }
        Pool::new(entries as u16, size)
    }

    /// How receives are done, for the report.
    pub(crate) fn describe(&self) -> String {
        let files = if self.fixed { ", fixed files" } else { "" };
        match &self.pool {
            Some(p) if self.multishot => format!(
                "multishot recv, {} provided buffers of {} B{files}",
                p.entries, p.size
            ),
            _ => format!("single-shot recv of {} B{files}", self.recv_size),
        }
    }

    /// Queues `entry`, submitting early if the submission queue is full.
    ///
    /// # Safety
    /// Every buffer `entry` points to must stay valid, unmoved and (for a
    /// receive) unread until the operation's last completion is seen.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        for attempt in 0..3 {
            // SAFETY: forwarded from the caller.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                self.inflight += 1;
                return Ok(());
            }
            if attempt == 0 {
                self.ring.submit()?;
            } else {
                // Completions may have to be reaped before the kernel takes
                // more; wait briefly for one.
                let ts = types::Timespec::from(Duration::from_millis(1));
                let args = types::SubmitArgs::new().timespec(&ts);
                match self.ring.submitter().submit_with_args(1, &args) {
                    Err(e) if e.raw_os_error() != Some(libc::ETIME) => return Err(e),
                    _ => {}
                }
            }
        }
        Err(io::Error::other("submission queue full"))
    }

    /// The bytes to send next on `conn`: append to them, then [`flush`].
    ///
    /// [`flush`]: Ring::flush
    pub(crate) fn out(&mut self, conn: usize) -> &mut Vec<u8> {
        &mut self.slots[conn].queued
    }

    /// Starts sending what [`out`](Ring::out) holds unless a send is in
    /// flight (the queue then goes when it completes).
    pub(crate) fn flush(&mut self, conn: usize) -> io::Result<()> {
        let s = &mut self.slots[conn];
        if s.send_busy || s.queued.is_empty() || !s.open || self.closing {
            return Ok(());
        }
        std::mem::swap(&mut s.sending, &mut s.queued);
        s.queued.clear();
        s.sent = 0;
        s.send_busy = true;
        self.submit_send(conn)
    }

    fn submit_send(&mut self, conn: usize) -> io::Result<()> {
        let s = &self.slots[conn];
        let rest = &s.sending[s.sent..];
        let (ptr, len) = (rest.as_ptr(), rest.len().min(u32::MAX as usize) as u32);
        let entry = with_fd!(self, conn, |fd| opcode::Send::new(fd, ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build())
        .user_data(user_data(conn, SEND));
        // SAFETY: `ptr..ptr + len` is inside `slots[conn].sending`, which is
        // neither resized nor freed while `send_busy` is set (new bytes go to
        // `queued`; `flush` swaps only when no send is in flight), and
        // `send_busy` is cleared only by this send's completion. If the ring
        // is torn down with it still pending, `Ring::drop` leaks the slots.
        unsafe { self.push(&entry) }
    }

    /// Starts receiving on `conn`.
    pub(crate) fn arm_recv(&mut self, conn: usize) -> io::Result<()> {
        if !self.slots[conn].open || self.closing {
            return Ok(());
        }
        if self.multishot {
            let entry = with_fd!(self, conn, |fd| opcode::RecvMulti::new(fd, BGID).build())
                .user_data(user_data(conn, RECV));
            // SAFETY: the receive writes only into provided buffers, owned by
            // `self.pool`, which lives until the ring is dropped (or is leaked
            // with it) and hands a buffer to the kernel only through its ring.
            unsafe { self.push(&entry) }
        } else {
            let size = self.recv_size;
            let s = &mut self.slots[conn];
            if s.recv_buf.len() != size {
                s.recv_buf = vec![0; size];
            }
            let ptr = s.recv_buf.as_mut_ptr();
            let entry = with_fd!(self, conn, |fd| opcode::Recv::new(fd, ptr, size as u32)
                .build())
            .user_data(user_data(conn, RECV));
            // SAFETY: `ptr..ptr + size` is `slots[conn].recv_buf`, which is
            // resized only above, before a receive is armed, and read only
            // after this receive's completion (one receive in flight per
            // connection: the next is armed after the caller is done with
            // the data). `Ring::drop` leaks it if the receive is pending.
            unsafe { self.push(&entry) }
        }
    }

    /// Gives up on `conn`: no more submissions, its completions are ignored,
    /// and the socket is shut down so the server sees the end (the
    /// descriptor itself closes with the ring).
    pub(crate) fn kill(&mut self, conn: usize) {
        if std::mem::replace(&mut self.slots[conn].open, false) {
            let _ = self.socks[conn].shutdown(Shutdown::Both);
        }
    }

    /// Whether `conn` has nothing in flight or queued to send.
    #[cfg(test)]
    fn sent_all(&self, conn: usize) -> bool {
        let s = &self.slots[conn];
        !s.send_busy && s.queued.is_empty()
    }

    /// Submits everything queued and waits up to `timeout` for completions:
    /// the one system call of a batch. It returns once `want` completions
    /// are there, or [`BATCH_US`] after the wait began if at least one is.
    pub(crate) fn wait(&mut self, timeout: Duration, want: usize) -> io::Result<()> {
        self.hand_back();
        if let Some(p) = &self.pool {
            p.publish();
        }
        if !self.deferred.is_empty() {
            // Failures to report: submit without waiting.
            return self.ring.submit().map(drop);
        }
        let ts = types::Timespec::from(timeout);
        let mut args = types::SubmitArgs::new().timespec(&ts);
        let mut want = want.max(1);
        if self.batch_us > 0 && want > 1 {
            args = args.min_wait_usec(self.batch_us);
        } else {
            want = 1;
        }
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Hands back the buffer of the last `Data` and re-arms a single-shot
    /// receive, now that the caller no longer holds the bytes.
    fn hand_back(&mut self) {
        let Release { buf, rearm } = std::mem::take(&mut self.release);
        if let (Some(bid), Some(pool)) = (buf, self.pool.as_mut()) {
            pool.push(bid);
        }
        if let Some(conn) = rearm {
            if let Err(e) = self.arm_recv(conn) {
                self.deferred.push((conn, e.raw_os_error().unwrap_or(0)));
            }
        }
    }

    /// The next completion worth reporting, or `None` when the completion
    /// queue is empty. Sends are followed up here: a short send resumes
    /// with the rest, a finished one starts the queue behind it.
    pub(crate) fn next(&mut self) -> Option<Completion<'_>> {
        self.hand_back();
        if let Some((conn, errno)) = self.deferred.pop() {
            return Some(Completion::Failed { conn, errno });
        }
        let got = loop {
            let cqe = self.ring.completion().next()?;
            let (conn, kind) = ((cqe.user_data() >> 8) as usize, cqe.user_data() & 0xff);
            let (res, flags) = (cqe.result(), cqe.flags());
            if !cqueue::more(flags) {
                self.inflight = self.inflight.saturating_sub(1);
            }
            let got = match kind {
                SEND if conn < self.slots.len() => self.on_send(conn, res),
                RECV if conn < self.slots.len() => self.on_recv(conn, res, flags),
                CANCEL if res < 0 && res != -libc::ENOENT => {
                    // Cancelling everything at once is Linux 5.19; without
                    // it, shutting the sockets down ends every operation.
                    for s in &self.socks {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                    None
                }
                _ => None,
            };
            if let Some(got) = got {
                break got;
            }
        };
        Some(match got {
            Got::Pooled(conn, bid, len) => {
                self.release.buf = Some(bid);
                let pool = self.pool.as_ref()?;
                Completion::Data {
                    conn,
                    bytes: pool.get(bid, len),
                }
            }
            Got::Single(conn, len) => {
                self.release.rearm = Some(conn);
                let buf = &self.slots[conn].recv_buf;
                Completion::Data {
                    conn,
                    bytes: &buf[..len.min(buf.len())],
                }
            }
            Got::Eof(conn) => Completion::Eof { conn },
            Got::Failed(conn, errno) => Completion::Failed { conn, errno },
        })
    }

    fn on_send(&mut self, conn: usize, res: i32) -> Option<Got> {
        let closing = self.closing;
        let s = &mut self.slots[conn];
        if res > 0 {
            s.retries = 0;
            s.sent += res as usize;
            if s.sent < s.sending.len() {
                // A short send: the rest goes next, still ahead of the queue.
                self.short_sends += 1;
                if !s.open || closing {
                    return None;
                }
                return self
                    .submit_send(conn)
                    .err()
                    .map(|e| Got::Failed(conn, e.raw_os_error().unwrap_or(0)));
            }
            s.sending.clear();
            s.sent = 0;
            s.send_busy = false;
            return self
                .flush(conn)
                .err()
                .map(|e| Got::Failed(conn, e.raw_os_error().unwrap_or(0)));
        }
        if !s.open || closing {
            return None;
        }
        let errno = -res;
        if matches!(errno, libc::EAGAIN | libc::EINTR) && s.retries < MAX_RETRIES {
            s.retries += 1;
            return self
                .submit_send(conn)
                .err()
                .map(|e| Got::Failed(conn, e.raw_os_error().unwrap_or(0)));
        }
        Some(Got::Failed(conn, errno))
    }

    fn on_recv(&mut self, conn: usize, res: i32, flags: u32) -> Option<Got> {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let open = self.slots[conn].open && !self.closing;
        if res > 0 {
            self.slots[conn].retries = 0;
            let Some(bid) = bid else {
                return open.then_some(Got::Single(conn, res as usize));
            };
            if !open {
                if let Some(pool) = self.pool.as_mut() {
                    pool.push(bid);
                }
                return None;
            }
            if !more {
                // The kernel ended the multishot (it may, e.g. on overflow):
                // arm a new one once this buffer is handed back.
                self.release.rearm = Some(conn);
            }
            return Some(Got::Pooled(conn, bid, res as usize));
        }
        if let (Some(bid), Some(pool)) = (bid, self.pool.as_mut()) {
            pool.push(bid);
        }
        if !open {
            return None;
        }
        if res == 0 {
            return Some(Got::Eof(conn));
        }
        let errno = -res;
        let retry = match errno {
            // Out of provided buffers: they come back as the batch is
            // processed, so the receive is simply re-armed.
            libc::ENOBUFS => true,
            // Multishot receive refused (before Linux 6.0): receive into a
            // buffer per connection from now on.
            libc::EINVAL if self.multishot => {
                self.multishot = false;
                true
            }
            libc::EAGAIN | libc::EINTR => {
                let s = &mut self.slots[conn];
                s.retries += 1;
                s.retries <= MAX_RETRIES
            }
            _ => false,
        };
        if !retry {
            return Some(Got::Failed(conn, errno));
        }
        if more {
            return None;
        }
        self.arm_recv(conn)
            .err()
            .map(|e| Got::Failed(conn, e.raw_os_error().unwrap_or(0)))
    }

    /// Ends the run: cancels every operation, waits up to `bound` for their
    /// completions, then writes `close` (a close frame), best effort and
    /// without waiting, to each connection `polite` names whose last send
    /// did not stop halfway through a frame. The sockets close when the ring
    /// is dropped.
    pub(crate) fn close(&mut self, polite: impl Fn(usize) -> bool, close: &[u8], bound: Duration) {
        self.hand_back();
        self.closing = true;
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(0, CANCEL));
        // SAFETY: a cancel request points to no buffer.
        if unsafe { self.push(&entry) }.is_err() {
            for s in &self.socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        let deadline = Instant::now() + bound;
        while self.inflight > 0 && Instant::now() < deadline {
            let _ = self.wait(Duration::from_millis(10), 1);
            while self.next().is_some() {}
        }
        self.hand_back();
        if self.inflight > 0 {
            return;
        }
        for (conn, s) in self.slots.iter().enumerate() {
            let mid_frame = s.send_busy && s.sent > 0;
            if s.open && !mid_frame && polite(conn) {
                let sock = &self.socks[conn];
                if sock.set_nonblocking(true).is_ok() {
                    let _ = (&*sock).write(close);
                }
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.inflight > 0 {
            // The kernel may still write into the provided buffers or read a
            // send buffer: leak them rather than free memory it may use.
            std::mem::forget(self.pool.take());
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Read, net::TcpListener};

    /// A pair of connected loopback sockets: (ours, the peer's).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
    }

    /// Megabytes queued behind sends in flight to a slow reader (the socket
    /// buffer fills, so sends come back short) arrive complete and in order;
    /// the reader's close is reported as the end of stream.
    #[test]
    fn short_sends_resume_and_queue_in_order() {
        if let Err(why) = probe() {
            eprintln!("note: io_uring refused here ({why}); ring test skipped");
            return;
        }
        let (ours, theirs) = pair();
        let _ = theirs.set_nodelay(true);
        let chunks: Vec<Vec<u8>> = (0..8).map(|i| pattern(1 << 20, i)).collect();
        let expected: Vec<u8> = chunks.concat();
        let want = expected.len();
        let reader = std::thread::spawn(move || {
            let mut theirs = theirs;
            theirs
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut got = Vec::with_capacity(want);
            let mut buf = vec![0; 16 * 1024];
            while got.len() < want {
                std::thread::sleep(Duration::from_micros(200));
                match theirs.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            got
            // `theirs` drops here: our receive sees the end of stream.
        });
        let mut ring = Ring::new(vec![ours], 4096).map_err(|(e, _)| e).unwrap();
        ring.arm_recv(0).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut next_chunk = 0;
        let mut eof = false;
        while !eof && Instant::now() < deadline {
            // Queue a chunk whenever the previous one left the queue, so
            // later bytes wait behind a send in flight.
            if next_chunk < chunks.len() && ring.slots[0].queued.is_empty() {
                ring.out(0).extend_from_slice(&chunks[next_chunk]);
                next_chunk += 1;
                ring.flush(0).unwrap();
            }
            ring.wait(Duration::from_millis(10), 1).unwrap();
            while let Some(c) = ring.next() {
                match c {
                    Completion::Eof { conn: 0 } => eof = true,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert!(eof, "no end of stream");
        assert_eq!(next_chunk, chunks.len());
        assert!(ring.sent_all(0));
        assert!(ring.short_sends > 0, "the socket buffer never filled");
        let got = reader.join().unwrap();
        assert!(got == expected, "bytes out of order or missing");
        ring.close(|_| false, &[], Duration::from_secs(1));
        assert_eq!(ring.inflight, 0);
    }

    /// Bytes arrive through the provided buffers, and a reset is a failure.
    #[test]
    fn receives_data_then_reports_a_reset() {
        if let Err(why) = probe() {
            eprintln!("note: io_uring refused here ({why}); ring test skipped");
            return;
        }
        let (ours, mut theirs) = pair();
        let mut ring = Ring::new(vec![ours], 32).map_err(|(e, _)| e).unwrap();
        ring.arm_recv(0).unwrap();
        let sent = pattern(100_000, 3);
        theirs.write_all(&sent).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < sent.len() && Instant::now() < deadline {
            ring.wait(Duration::from_millis(10), 1).unwrap();
            while let Some(c) = ring.next() {
                match c {
                    Completion::Data { conn: 0, bytes } => got.extend_from_slice(bytes),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert!(got == sent);
        // SO_LINGER 0: the close sends a reset.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a correctly sized option value.
        let rc = unsafe {
            libc::setsockopt(
                theirs.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                std::ptr::addr_of!(linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            )
        };
        assert_eq!(rc, 0);
        drop(theirs);
        let mut failed = None;
        while failed.is_none() && Instant::now() < deadline {
            ring.wait(Duration::from_millis(10), 1).unwrap();
            while let Some(c) = ring.next() {
                match c {
                    Completion::Failed { conn: 0, errno } => failed = Some(errno),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(failed, Some(libc::ECONNRESET));
        ring.kill(0);
        ring.close(|_| true, b"x", Duration::from_secs(1));
        assert_eq!(ring.inflight, 0);
    }
}
