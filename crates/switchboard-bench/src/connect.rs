//! The `connect` scenario: `concurrency` clients open connections back to
//! back; throughput is completed opening handshakes per second, latency is
//! TCP connect to a validated 101.
//!
//! Without `--close` each connection is reset (`SO_LINGER` 0) right after the
//! 101, which leaves no TIME_WAIT behind, so the ephemeral ports last for any
//! run length. With `--close` the client sends a close frame and waits (at
//! most [`CLOSE_TIMEOUT`]) for the server to answer and hang up, the polite
//! path a real client takes.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::json;
use switchboard_proto::{Decoder, Event, Role};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinSet,
    time::Instant,
};

use crate::{
    client::{close_frame, connect, Conn},
    echo::CLIENT_LIMITS,
    open::HANDSHAKE_TIMEOUT,
    report::{Local, Report, Shared, MEASURE, STOP},
    target::{Sources, Target},
    Common,
};

/// How long a client waits for the server's side of the close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed attempt, so a refusing server is not hammered in a
/// tight loop.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

pub(crate) async fn run(
    common: &Common,
    concurrency: usize,
    close: bool,
    count: u64,
) -> Result<Report, String> {
    let target = Arc::new(Target::parse(&common.url)?);
    // Size the sources for what one window can open, not for `concurrency`.
    let sources = Arc::new(Sources::new(common.sources, concurrency, &target));
    let shared = Arc::new(Shared::new());
    let counter = Arc::new(AtomicUsize::new(0));
    // Handshakes begun in the window, for `count`.
    let tickets = Arc::new(AtomicU64::new(0));
    let clients = concurrency.max(1);
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let (target, sources, shared, counter, tickets) = (
            Arc::clone(&target),
            Arc::clone(&sources),
            Arc::clone(&shared),
            Arc::clone(&counter),
            Arc::clone(&tickets),
        );
        tasks.spawn(async move {
            let mut local = Local::new();
            while shared.phase() != STOP {
                if count > 0
                    && shared.phase() == MEASURE
                    && tickets.fetch_add(1, Ordering::Relaxed) >= count
                {
                    shared.done.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                let source = sources.for_conn(counter.fetch_add(1, Ordering::Relaxed));
                let start = Instant::now();
                match connect(&target, source, HANDSHAKE_TIMEOUT).await {
                    Ok(conn) => {
                        let latency = start.elapsed();
                        let ok = finish(conn, close).await;
                        if shared.phase() == MEASURE {
                            if ok {
                                local.record(&shared, latency.as_nanos() as u64, 0);
                            } else {
                                shared.error();
                            }
                        }
                    }
                    Err(_) => {
                        if shared.phase() == MEASURE {
                            shared.error();
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            shared.flush(&mut local);
        });
    }
    let tasks_bound = if count > 0 { clients as u64 } else { u64::MAX };
    let window = crate::measure(common, &shared, tasks_bound).await;
    crate::drain(&mut tasks).await;
    let (ops, _) = shared.totals();
    let mut extra = serde_json::Map::new();
    extra.insert(
        "attempts".into(),
        json!(counter.load(Ordering::Relaxed) as u64),
    );
    Ok(Report {
        scenario: "connect",
        label: common.label.clone(),
        url: common.url.clone(),
        params: json!({
            "concurrency": concurrency, "close": close, "count": count,
            "sources": sources.count(), "warmup_s": common.warmup,
        }),
        engine: None,
        connections: concurrency,
        duration_s: window.wall.as_secs_f64(),
        unit: "handshakes/s",
        ops,
        ops_per_s: ops as f64 / window.wall.as_secs_f64(),
        bytes_per_s: 0.0,
        errors: shared.errors.load(Ordering::Relaxed),
        latency: shared.latency(),
        client_cpu: window.client_cpu,
        server_cpu: window.server_cpu,
        extra,
    })
}

/// Ends a freshly opened connection; `false` if the close handshake failed.
async fn finish(conn: Conn, close: bool) -> bool {
    let Conn {
        mut stream,
        mut buf,
    } = conn;
    if !close {
        // Reset: no TIME_WAIT on either side.
        let _ = stream.set_zero_linger();
        return true;
    }
    let done = tokio::time::timeout(CLOSE_TIMEOUT, async {
        stream.write_all(&close_frame()).await?;
        let mut dec = Decoder::new(Role::Client, CLIENT_LIMITS);
        loop {
            while let Ok(Some(ev)) = dec.decode(&mut buf) {
                if matches!(ev, Event::Close(_)) {
                    // Wait for the server to hang up (it closes TCP first).
                    let mut sink = [0u8; 256];
                    while stream.read(&mut sink).await? > 0 {}
                    return Ok::<bool, std::io::Error>(true);
                }
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(false);
            }
        }
    })
    .await;
    matches!(done, Ok(Ok(true)))
}
