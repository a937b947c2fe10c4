//! The echo scenario's `uring` engine: the connections `open_many` opened
//! (handshakes done on tokio) are handed to one thread running an io_uring
//! event loop, so that the tool costs less CPU per echo than the servers it
//! measures.
//!
//! Why: with one message in flight per connection, the tokio engine makes a
//! `recvfrom`, a `send` and epoll calls per echo, as many system calls as the
//! server, and on this VM a system call costs ~280 ns before doing anything
//! (retpolines). Here one `io_uring_enter` per batch submits every send the
//! batch produced and collects every completion; receives are multishot
//! into provided buffers, so they need no submission at all.
//!
//! The semantics are the tokio engine's (`echo.rs`): `depth` messages in
//! flight per connection, a FIFO of send instants for latency, the shared
//! histogram fed in batches, `--count` round trips per connection, a close
//! frame from the server counted as an error. The loop is bounded: it ends
//! on the STOP phase (checked at least every [`WAIT`]), when every
//! connection is done or dead, or at a deadline past the window. No
//! `unsafe` here: the ring and its buffers live in `uring`.

use std::{
    collections::VecDeque,
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use switchboard_proto::{Decoder, Event, OpCode, Role};
use tokio::sync::oneshot;

use crate::{
    client::{close_frame, masked, Conn},
    echo::{EchoOpts, CLIENT_LIMITS},
    report::{Local, Shared, MEASURE, STOP},
    uring::{Completion, Ring},
    Common, Window, DRAIN_TIMEOUT,
};

/// Longest wait for completions: how late the loop may notice the end of the
/// window.
const WAIT: Duration = Duration::from_millis(10);
/// How long cancelling the operations in flight may take at the end.
const CLOSE_BOUND: Duration = Duration::from_millis(500);
/// How far past the window the loop runs at most if nobody stops it.
const OVERRUN: Duration = Duration::from_secs(10);

/// The connections come back when io_uring cannot be set up after all, so
/// the caller can run the tokio engine on them.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) reason: String,
    pub(crate) conns: Vec<Conn>,
}

/// Runs the echo load on `conns` with the io_uring engine through warm-up
/// and the measured window; returns the window and, for the report, how
/// receives were done and the first socket error seen.
pub(crate) async fn drive(
    common: &Common,
    opts: &EchoOpts,
    conns: Vec<Conn>,
    frame: &[u8],
    shared: &Arc<Shared>,
) -> Result<(Window, serde_json::Map<String, serde_json::Value>), Refused> {
    let mut socks = Vec::with_capacity(conns.len());
    let mut bufs = Vec::with_capacity(conns.len());
    for c in conns {
        // Deregisters from tokio's reactor; io_uring polls the socket now.
        match c.stream.into_std() {
            Ok(s) => {
                socks.push(s);
                bufs.push(c.buf);
            }
            Err(_) => shared.error(),
        }
    }
    let connections = socks.len() as u64;
    let plan = Plan {
        frame: frame.to_vec(),
        size: opts.size,
        depth: opts.depth.max(1),
        count: opts.count,
        deadline: Instant::now()
            + Duration::from_secs_f64(common.warmup + common.duration)
            + OVERRUN,
    };
    let hint = frame.len() * plan.depth;
    let (ready_tx, ready_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let loop_shared = Arc::clone(shared);
    // The ring is created on the thread that drives it: it is single-issuer.
    let spawned = std::thread::Builder::new()
        .name("echo-uring".into())
        .spawn(move || match Ring::new(socks, hint) {
            Err((e, socks)) => {
                let _ = ready_tx.send(Err((e.to_string(), socks, bufs)));
            }
            Ok(ring) => {
                let _ = ready_tx.send(Ok(ring.describe()));
                let _ = done_tx.send(run_loop(ring, bufs, &plan, &loop_shared));
            }
        });
    if let Err(e) = spawned {
        return Err(Refused {
            reason: format!("cannot start the io_uring thread: {e}"),
            conns: Vec::new(),
        });
    }
    let mode = match ready_rx.await {
        Ok(Ok(mode)) => mode,
        Ok(Err((reason, socks, bufs))) => {
            return Err(Refused {
                reason: format!("io_uring setup failed: {reason}"),
                conns: back_to_tokio(socks, bufs, shared),
            })
        }
        Err(_) => {
            return Err(Refused {
                reason: "the io_uring thread ended before starting".into(),
                conns: Vec::new(),
            })
        }
    };
    let window = crate::measure(
        common,
        shared,
        if opts.count > 0 {
            connections
        } else {
            u64::MAX
        },
    )
    .await;
    // STOP is set: the loop ends within WAIT plus one batch, then closes.
    let first_error = match tokio::time::timeout(DRAIN_TIMEOUT, done_rx).await {
        Ok(Ok(e)) => e,
        _ => None,
    };
    let mut extra = serde_json::Map::new();
    extra.insert("uring".into(), mode.into());
    if let Some(e) = first_error {
        extra.insert("first_error".into(), e.into());
    }
    Ok((window, extra))
}

/// The sockets as tokio connections again, for the fallback engine.
fn back_to_tokio(socks: Vec<TcpStream>, bufs: Vec<BytesMut>, shared: &Shared) -> Vec<Conn> {
    socks
        .into_iter()
        .zip(bufs)
        .filter_map(|(s, buf)| {
            let stream = s
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpStream::from_std(s));
            match stream {
                Ok(stream) => Some(Conn { stream, buf }),
                Err(_) => {
                    shared.error();
                    None
                }
            }
        })
        .collect()
}

/// What every connection sends and how long the loop may run.
struct Plan {
    frame: Vec<u8>,
    size: usize,
    depth: usize,
    count: u64,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Live,
    /// Did its `--count` round trips (its close frame is on the way).
    Done,
    /// Failed or closed by the server.
    Dead,
}

/// One connection's protocol state (its bytes in flight are in the ring).
struct Peer {
    buf: BytesMut,
    dec: Decoder,
    /// Send instants of the messages in flight, oldest first.
    sent: VecDeque<Instant>,
    counted: u64,
    state: State,
}

/// The loop's state apart from the ring.
struct Echo<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    peers: Vec<Peer>,
    local: Local,
    close: Vec<u8>,
    /// Connections still `Live`.
    live: usize,
    /// The first socket error, for the report.
    first_error: Option<String>,
}

impl Echo<'_> {
    /// Decodes what `conn` received, answers every echo with the next
    /// message, and starts the send.
    fn on_bytes(&mut self, ring: &mut Ring, conn: usize, now: Instant, phase: u8) {
        let plan = self.plan;
        let peer = &mut self.peers[conn];
        let out = ring.out(conn);
        let mut next = State::Live;
        loop {
            match peer.dec.decode(&mut peer.buf) {
                Ok(Some(ev @ (Event::Text(_) | Event::Binary(_)))) => {
                    let len = ev.data().map_or(0, <[u8]>::len);
                    match peer.sent.pop_front() {
                        Some(at) if len == plan.size => {
                            if phase == MEASURE {
                                let ns = now.saturating_duration_since(at).as_nanos() as u64;
                                self.local.record(self.shared, ns, len);
                                peer.counted += 1;
                                if peer.counted == plan.count {
                                    self.shared
                                        .done
                                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    out.extend_from_slice(&self.close);
                                    next = State::Done;
                                    break;
                                }
                            }
                        }
                        _ => self.shared.error(),
                    }
                    if phase == STOP {
                        break;
                    }
                    out.extend_from_slice(&plan.frame);
                    peer.sent.push_back(now);
                }
                Ok(Some(Event::Ping(p))) => out.extend_from_slice(&masked(OpCode::Pong, &p)),
                Ok(Some(Event::Pong(_))) => {}
                Ok(Some(Event::Close(_))) | Err(_) => {
                    self.shared.error();
                    next = State::Dead;
                    break;
                }
                Ok(None) => break,
            }
        }
        if next == State::Live && ring.flush(conn).is_err() {
            self.shared.error();
            next = State::Dead;
        }
        match next {
            State::Live => {}
            State::Done => {
                let _ = ring.flush(conn);
                self.end(conn, State::Done);
            }
            State::Dead => {
                ring.kill(conn);
                self.end(conn, State::Dead);
            }
        }
    }

    fn end(&mut self, conn: usize, state: State) {
        let peer = &mut self.peers[conn];
        if peer.state == State::Live {
            self.live -= 1;
        }
        peer.state = state;
        peer.sent.clear();
    }

    fn fail(&mut self, ring: &mut Ring, conn: usize, phase: u8) {
        if self.peers[conn].state == State::Live {
            // An end of stream after the window is the server closing, not
            // a failure (as in the tokio engine).
            if phase != STOP {
                self.shared.error();
            }
            ring.kill(conn);
            self.end(conn, State::Dead);
        }
    }
}

/// The event loop: one `io_uring_enter` per batch, then every completion of
/// the batch processed and every send it produced queued for the next one.
/// Returns the first socket error seen.
fn run_loop(mut ring: Ring, bufs: Vec<BytesMut>, plan: &Plan, shared: &Shared) -> Option<String> {
    let start = Instant::now();
    let mut echo = Echo {
        plan,
        shared,
        live: bufs.len(),
        peers: bufs
            .into_iter()
            .map(|buf| Peer {
                buf,
                dec: Decoder::new(Role::Client, CLIENT_LIMITS),
                sent: VecDeque::with_capacity(plan.depth),
                counted: 0,
                state: State::Live,
            })
            .collect(),
        local: Local::new(),
        close: close_frame(),
        first_error: None,
    };
    for conn in 0..echo.peers.len() {
        for _ in 0..plan.depth {
            ring.out(conn).extend_from_slice(&plan.frame);
            echo.peers[conn].sent.push_back(start);
        }
        if ring.arm_recv(conn).is_err() {
            echo.fail(&mut ring, conn, shared.phase());
            continue;
        }
        // Frames the server sent right after its 101 come first.
        echo.on_bytes(&mut ring, conn, start, shared.phase());
    }
    // Completions looked at per batch before the phase is checked again.
    let max_batch = echo.peers.len() * 4 + 1024;
    while echo.live > 0 {
        let phase = shared.phase();
        if phase == STOP || Instant::now() >= plan.deadline {
            break;
        }
        if ring.wait(WAIT, echo.live).is_err() {
            // The ring itself failed: every live connection is lost.
            for conn in 0..echo.peers.len() {
                echo.fail(&mut ring, conn, phase);
            }
            break;
        }
        let now = Instant::now();
        for _ in 0..max_batch {
            let Some(c) = ring.next() else { break };
            match c {
                Completion::Data { conn, bytes } => {
                    if echo.peers[conn].state == State::Live {
                        echo.peers[conn].buf.extend_from_slice(bytes);
                        echo.on_bytes(&mut ring, conn, now, phase);
                    }
                }
                Completion::Eof { conn } => echo.fail(&mut ring, conn, phase),
                Completion::Failed { conn, errno } => {
                    if echo.peers[conn].state == State::Live && phase != STOP {
                        echo.first_error.get_or_insert_with(|| {
                            std::io::Error::from_raw_os_error(errno).to_string()
                        });
                    }
                    echo.fail(&mut ring, conn, phase);
                }
            }
        }
    }
    shared.flush(&mut echo.local);
    // A polite close for connections still running, as the tokio engine
    // does: best effort, never waiting.
    let close = std::mem::take(&mut echo.close);
    ring.close(
        |conn| echo.peers[conn].state == State::Live,
        &close,
        CLOSE_BOUND,
    );
    echo.first_error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{echo, echo::Engine, sink, uring};
    use switchboard_proto::{accept_key, Frame, Limits};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    fn common(url: String) -> Common {
        Common {
            url,
            warmup: 0.0,
            duration: 30.0,
            sources: 0,
            connect_concurrency: 16,
            pid: None,
            json: false,
            label: None,
            threads: None,
            quiet: true,
        }
    }

    /// The engine a run with `--engine auto` is expected to report here.
    fn expected_engine() -> &'static str {
        match uring::probe() {
            Ok(()) => "uring",
            Err(why) => {
                eprintln!("note: io_uring refused here ({why}); testing the tokio fallback");
                "tokio"
            }
        }
    }

    /// Exactly `--count` round trips per connection against the sink, for
    /// text and binary, small and large messages, one and four in flight:
    /// the sink checks every frame it gets (a byte out of order would be a
    /// protocol error and a counted error here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uring_echoes_exact_counts_against_the_sink() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws/echo", listener.local_addr().unwrap());
        let server = tokio::spawn(sink::serve_on(listener, Duration::from_secs(120)));
        let engine = expected_engine();
        for binary in [false, true] {
            for size in [32, 16 * 1024] {
                for depth in [1, 4] {
                    let opts = echo::EchoOpts {
                        conns: 6,
                        size,
                        depth,
                        binary,
                        count: if size > 1024 { 40 } else { 300 },
                        engine: Engine::Auto,
                    };
                    let r = echo::run(&common(url.clone()), &opts).await.unwrap();
                    let what = format!("binary {binary} size {size} depth {depth}\n{}", r.table());
                    assert_eq!(r.engine, Some(engine), "{what}");
                    assert_eq!((r.ops, r.errors), (6 * opts.count, 0), "{what}");
                    assert_eq!(r.latency.unwrap().samples, 6 * opts.count, "{what}");
                    let bytes = r.bytes_per_s * r.duration_s;
                    let want = (6 * opts.count * size as u64) as f64;
                    assert!((bytes - want).abs() < want * 1e-9, "{what}");
                    assert!(r.duration_s < 20.0, "{what}");
                }
            }
        }
        // A timed run (warm-up, window) with the engine named explicitly.
        if engine == "uring" {
            let mut c = common(url.clone());
            c.warmup = 0.1;
            c.duration = 0.4;
            let opts = echo::EchoOpts {
                conns: 8,
                size: 100,
                depth: 2,
                binary: false,
                count: 0,
                engine: Engine::Uring,
            };
            let r = echo::run(&c, &opts).await.unwrap();
            assert_eq!((r.connections, r.errors), (8, 0), "{}", r.table());
            assert!(r.ops > 0 && r.latency.is_some(), "{}", r.table());
            assert_eq!(r.engine, Some("uring"));
        }
        server.abort();
    }

    /// A server that echoes `echoes` messages per connection, then either
    /// sends a close frame or resets the connection.
    async fn flaky_server(listener: TcpListener, echoes: usize, reset: bool) {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = BytesMut::with_capacity(4096);
                let key = loop {
                    if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some((key, n)) = sink::request_key(&buf) {
                        let _ = buf.split_to(n);
                        break key;
                    }
                };
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_key(key.as_bytes())
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                let mut dec = Decoder::new(Role::Server, Limits::default());
                let mut done = 0;
                while done < echoes {
                    match dec.decode(&mut buf) {
                        Ok(Some(Event::Text(t))) => {
                            let f = Frame::new(OpCode::Text, true, false, t.into_bytes());
                            let _ = stream.write_all(&f.to_vec()).await;
                            done += 1;
                        }
                        Ok(None) => {
                            if stream.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
                if reset {
                    let _ = stream.set_zero_linger();
                } else {
                    let _ = stream.write_all(&Frame::close(None).to_vec()).await;
                }
                drop(stream);
            });
        }
    }

    /// A server closing or resetting every connection in the middle of the
    /// window: one counted error per connection, and the run ends at the
    /// end of its window, not later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_closing_or_resetting_mid_run_is_counted() {
        let engine = expected_engine();
        for reset in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("ws://{}/ws/echo", listener.local_addr().unwrap());
            let server = tokio::spawn(flaky_server(listener, 50, reset));
            let mut c = common(url);
            c.duration = 1.0;
            let opts = echo::EchoOpts {
                conns: 5,
                size: 32,
                depth: 2,
                binary: false,
                count: 0,
                engine: Engine::Auto,
            };
            let began = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(15), echo::run(&c, &opts))
                .await
                .expect("the run ends by itself")
                .unwrap();
            let what = format!("reset {reset}\n{}", r.table());
            assert_eq!(r.engine, Some(engine), "{what}");
            assert_eq!(r.errors, 5, "{what}");
            assert!(r.ops <= 5 * 50, "{what}");
            assert!(began.elapsed() < Duration::from_secs(6), "{what}");
            server.abort();
        }
    }
}
