//! The `echo` scenario: N connections each keep `depth` messages in flight to
//! an echo endpoint; throughput is echoed messages per second, latency is the
//! time from writing a message to reading its echo.
//!
//! Echo servers answer in order, so the send instants of a connection's
//! in-flight messages sit in a FIFO and the oldest one belongs to the next
//! echo: no timestamp needs to travel in the payload, and the payload is one
//! pre-masked frame copied into the write buffer (no masking per send).
//!
//! Two engines drive the open connections: this file's tokio tasks (one per
//! connection, a `read` and a `write` per echo) and, on Linux, the io_uring
//! loop of `echo_uring.rs` (one system call per batch, no system call per
//! receive), which spends less CPU per echo. `--engine auto` picks io_uring
//! when the kernel allows it.

use std::{collections::VecDeque, sync::Arc};

use serde_json::json;
use switchboard_proto::{Decoder, Event, Limits, OpCode, Role};
use tokio::{io::AsyncReadExt, sync::watch, task::JoinSet, time::Instant};

use crate::{
    client::{close_frame, masked, Conn},
    open::open_many,
    report::{Local, Report, Shared, MEASURE, STOP},
    target::{Sources, Target},
    Common, Window,
};

/// Options of the echo scenario.
#[derive(Debug, Clone)]
pub(crate) struct EchoOpts {
    pub(crate) conns: usize,
    pub(crate) size: usize,
    pub(crate) depth: usize,
    pub(crate) binary: bool,
    /// Round trips per connection, counted from the start of the window
    /// (0: as many as the window allows).
    pub(crate) count: u64,
    /// How the connections are driven once open.
    pub(crate) engine: Engine,
}

/// How the echo connections are driven once their handshakes are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Engine {
    /// `uring` when the kernel allows it, else `tokio`.
    Auto,
    /// One thread, one io_uring: a system call per batch of completions,
    /// multishot receives (Linux only; see `echo_uring.rs`).
    Uring,
    /// A tokio task per connection: a `read` and a `write` per echo.
    Tokio,
}

impl Engine {
    /// The name in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::Uring => "uring",
            Engine::Tokio => "tokio",
        }
    }
}

/// The limits the client decoder enforces on server frames: generous, the
/// tool must not be the one refusing a big echo.
pub(crate) const CLIENT_LIMITS: Limits = Limits {
    max_frame_size: 64 << 20,
    max_message_size: 64 << 20,
    max_fragments: 1 << 16,
};

/// Free space kept in a read buffer before each read.
const MIN_READ: usize = 4096;

/// The payload every connection sends: printable ASCII, valid as text.
pub(crate) fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

// `engine` and `conns` change only where the io_uring engine exists.
#[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
pub(crate) async fn run(common: &Common, opts: &EchoOpts) -> Result<Report, String> {
    let mut engine = choose(opts.engine)?;
    let target = Arc::new(Target::parse(&common.url)?);
    let sources = Sources::new(common.sources, opts.conns, &target);
    let opened = open_many(
        &target,
        opts.conns,
        &sources,
        common.connect_concurrency,
        common.quiet,
    )
    .await;
    if opened.conns.is_empty() {
        return Err(format!(
            "no connection could be opened: {}",
            opened.first_error.unwrap_or_default()
        ));
    }
    let connections = opened.conns.len();
    let opcode = if opts.binary {
        OpCode::Binary
    } else {
        OpCode::Text
    };
    let frame: Arc<[u8]> = masked(opcode, &payload(opts.size)).into();
    let shared = Arc::new(Shared::new());
    shared
        .errors
        .fetch_add(opened.errors, std::sync::atomic::Ordering::Relaxed);
    let depth = opts.depth.max(1);
    let mut extra = serde_json::Map::new();
    let mut conns = opened.conns;
    let window = 'run: {
        #[cfg(target_os = "linux")]
        if engine == Engine::Uring {
            match crate::echo_uring::drive(common, opts, conns, &frame, &shared).await {
                Ok((window, more)) => {
                    extra.extend(more);
                    break 'run window;
                }
                Err(refused) if opts.engine == Engine::Auto => {
                    eprintln!(
                        "switchboard-bench: {}; falling back to the tokio engine",
                        refused.reason
                    );
                    engine = Engine::Tokio;
                    conns = refused.conns;
                }
                Err(refused) => return Err(refused.reason),
            }
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for conn in conns {
            tasks.spawn(echo_conn(
                conn,
                Arc::clone(&frame),
                opts.size,
                depth,
                opts.count,
                Arc::clone(&shared),
                stop_rx.clone(),
            ));
        }
        let window = crate::measure(
            common,
            &shared,
            if opts.count > 0 {
                connections as u64
            } else {
                u64::MAX
            },
        )
        .await;
        let _ = stop_tx.send(true);
        crate::drain(&mut tasks).await;
        window
    };
    Ok(report(
        common,
        opts,
        &sources,
        connections,
        window,
        &shared,
        engine,
        extra,
    ))
}

/// The engine to run for `requested`: `auto` becomes `uring` when the
/// kernel allows it, else `tokio` with one line on stderr saying why.
fn choose(requested: Engine) -> Result<Engine, String> {
    if requested == Engine::Tokio {
        return Ok(Engine::Tokio);
    }
    #[cfg(target_os = "linux")]
    let uring = crate::uring::probe();
    #[cfg(not(target_os = "linux"))]
    let uring: Result<(), String> = Err("io_uring is Linux only".into());
    match (requested, uring) {
        (_, Ok(())) => Ok(Engine::Uring),
        (Engine::Uring, Err(why)) => Err(format!("--engine uring: {why}")),
        (_, Err(why)) => {
            eprintln!("switchboard-bench: {why}; falling back to the tokio engine");
            Ok(Engine::Tokio)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    common: &Common,
    opts: &EchoOpts,
    sources: &Sources,
    connections: usize,
    window: Window,
    shared: &Shared,
    engine: Engine,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Report {
    let (ops, bytes) = shared.totals();
    Report {
        scenario: "echo",
        label: common.label.clone(),
        url: common.url.clone(),
        params: json!({
            "conns": opts.conns, "size": opts.size, "depth": opts.depth.max(1),
            "binary": opts.binary, "count": opts.count, "sources": sources.count(),
            "warmup_s": common.warmup,
        }),
        engine: Some(engine.name()),
        connections,
        duration_s: window.wall.as_secs_f64(),
        unit: "msg/s",
        ops,
        ops_per_s: ops as f64 / window.wall.as_secs_f64(),
        bytes_per_s: bytes as f64 / window.wall.as_secs_f64(),
        errors: shared.errors.load(std::sync::atomic::Ordering::Relaxed),
        latency: shared.latency(),
        client_cpu: window.client_cpu,
        server_cpu: window.server_cpu,
        extra,
    }
}

async fn echo_conn(
    conn: Conn,
    frame: Arc<[u8]>,
    size: usize,
    depth: usize,
    count: u64,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut counted = 0u64;
    let Conn {
        mut stream,
        mut buf,
    } = conn;
    let (mut rd, wr) = stream.split();
    let mut dec = Decoder::new(Role::Client, CLIENT_LIMITS);
    let read_cap = (frame.len() * depth + MIN_READ).clamp(16 * 1024, 256 * 1024);
    buf.reserve(read_cap);
    let mut inflight: VecDeque<Instant> = VecDeque::with_capacity(depth);
    let mut out: Vec<u8> = Vec::with_capacity(frame.len() * depth);
    let mut written = 0usize;
    let mut local = Local::new();
    let start = Instant::now();
    for _ in 0..depth {
        out.extend_from_slice(&frame);
        inflight.push_back(start);
    }
    'run: loop {
        // Everything already read: one echo in, one message out.
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(ev @ (Event::Text(_) | Event::Binary(_)))) => {
                    let p = ev.data().unwrap_or_default();
                    let phase = shared.phase();
                    match inflight.pop_front() {
                        Some(sent) if p.len() == size => {
                            if phase == MEASURE {
                                local.record(&shared, sent.elapsed().as_nanos() as u64, p.len());
                                counted += 1;
                                if counted == count {
                                    shared
                                        .done
                                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    break 'run;
                                }
                            }
                        }
                        _ => shared.error(),
                    }
                    if phase == STOP {
                        break 'run;
                    }
                    out.extend_from_slice(&frame);
                    inflight.push_back(Instant::now());
                }
                Ok(Some(Event::Ping(p))) => out.extend_from_slice(&masked(OpCode::Pong, &p)),
                Ok(Some(Event::Pong(_))) => {}
                Ok(Some(Event::Close(_))) | Err(_) => {
                    shared.error();
                    break 'run;
                }
                Ok(None) => break,
            }
        }
        // Write what is pending without a poll round trip when the socket
        // has room (the usual case).
        while written < out.len() {
            match wr.try_write(&out[written..]) {
                Ok(0) => {
                    shared.error();
                    break 'run;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    shared.error();
                    break 'run;
                }
            }
        }
        if written == out.len() {
            out.clear();
            written = 0;
        }
        if buf.capacity() - buf.len() < MIN_READ {
            buf.reserve(read_cap);
        }
        let pending = written < out.len();
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    if shared.phase() != STOP {
                        shared.error();
                    }
                    break;
                }
                Ok(_) => {}
            },
            w = wr.writable(), if pending => if w.is_err() {
                shared.error();
                break;
            },
        }
    }
    shared.flush(&mut local);
    // A polite close, best effort and never waiting: the socket is dropped
    // right after.
    let _ = wr.try_write(&close_frame());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_ascii_of_the_right_size() {
        for size in [0, 1, 32, 512, 16384] {
            let p = payload(size);
            assert_eq!(p.len(), size);
            assert!(std::str::from_utf8(&p).is_ok());
        }
    }
}
