//! The `idle` scenario: open N connections, hold them for `--duration`
//! seconds without traffic, and report the server's resident memory growth
//! per connection (`VmRSS` from `/proc/PID/status`, needs `--pid`).
//!
//! RSS is read before the first connection and, after all are open, a few
//! times over the hold (the highest reading counts, so memory the server
//! frees lazily is not missed). Kernel socket buffers are not in RSS: the
//! number is what the server process itself keeps per connection. Held
//! connections answer pings, so a server with a heartbeat keeps them.

use std::{sync::Arc, time::Duration};

use serde_json::json;
use switchboard_proto::{Decoder, Event, OpCode, Role};
use tokio::{io::AsyncReadExt, sync::watch, task::JoinSet, time::Instant};

use crate::{
    client::{masked, Conn},
    echo::CLIENT_LIMITS,
    open::open_many,
    report::{rss_kib, CpuMark, Report, Shared},
    target::{Sources, Target},
    Common,
};

/// RSS readings taken over the hold.
const SAMPLES: u32 = 5;
/// Pause after the last connection opened before the first reading.
const SETTLE: Duration = Duration::from_secs(1);

/// Bytes per connection from two RSS readings in KiB.
pub(crate) fn per_conn_bytes(before_kib: u64, after_kib: u64, conns: usize) -> f64 {
    (after_kib.saturating_sub(before_kib) * 1024) as f64 / conns.max(1) as f64
}

pub(crate) async fn run(common: &Common, conns: usize) -> Result<Report, String> {
    let target = Arc::new(Target::parse(&common.url)?);
    let sources = Sources::new(common.sources, conns, &target);
    let rss_before = common.pid.and_then(rss_kib);
    if common.pid.is_some() && rss_before.is_none() {
        return Err("cannot read VmRSS from /proc/PID/status".into());
    }
    let opened = open_many(
        &target,
        conns,
        &sources,
        common.connect_concurrency,
        common.quiet,
    )
    .await;
    let open = opened.conns.len();
    let shared = Arc::new(Shared::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for conn in opened.conns {
        tasks.spawn(hold(conn, Arc::clone(&shared), stop_rx.clone()));
    }
    tokio::time::sleep(SETTLE).await;
    let start = Instant::now();
    let cpu = CpuMark::now(common.pid);
    let hold_for = Duration::from_secs_f64(common.duration);
    let mut rss_after = None::<u64>;
    for i in 0..SAMPLES {
        if let Some(kib) = common.pid.and_then(rss_kib) {
            rss_after = Some(rss_after.map_or(kib, |m| m.max(kib)));
        }
        let next = hold_for * (i + 1) / SAMPLES;
        tokio::time::sleep(next.saturating_sub(start.elapsed())).await;
    }
    let wall = start.elapsed();
    let (client_cpu, server_cpu) = cpu.usage(common.pid, wall);
    // Connections that ended during the hold count as errors.
    let ended = shared.errors.load(std::sync::atomic::Ordering::Relaxed);
    let still_open = open.saturating_sub(ended as usize);
    let _ = stop_tx.send(true);
    crate::drain(&mut tasks).await;
    let mut extra = serde_json::Map::new();
    extra.insert("open_s".into(), json!(opened.elapsed.as_secs_f64()));
    extra.insert("held".into(), json!(still_open));
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        extra.insert("rss_before_kib".into(), json!(b));
        extra.insert("rss_after_kib".into(), json!(a));
        extra.insert(
            "rss_per_conn_b".into(),
            json!(per_conn_bytes(b, a, open).round()),
        );
    }
    let errors = opened.errors + ended;
    Ok(Report {
        scenario: "idle",
        label: common.label.clone(),
        url: common.url.clone(),
        params: json!({ "conns": conns, "sources": sources.count(), "hold_s": common.duration }),
        engine: None,
        connections: open,
        duration_s: wall.as_secs_f64(),
        unit: "conns/s opened",
        ops: open as u64,
        ops_per_s: open as f64 / opened.elapsed.as_secs_f64().max(1e-9),
        bytes_per_s: 0.0,
        errors,
        latency: None,
        client_cpu,
        server_cpu,
        extra,
    })
}

/// Holds one connection open, answering pings, until told to stop.
async fn hold(conn: Conn, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Conn {
        mut stream,
        mut buf,
    } = conn;
    let mut dec = Decoder::new(Role::Client, CLIENT_LIMITS);
    loop {
        let mut closed = false;
        while let Ok(Some(ev)) = dec.decode(&mut buf) {
            match ev {
                Event::Ping(p) => {
                    let _ = stream.try_write(&masked(OpCode::Pong, &p));
                }
                Event::Close(_) => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        if closed {
            shared.error();
            return;
        }
        tokio::select! {
            _ = stop.changed() => return,
            r = stream.read_buf(&mut buf) => if !matches!(r, Ok(n) if n > 0) {
                if !*stop.borrow() {
                    shared.error();
                }
                return;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_arithmetic() {
        assert_eq!(per_conn_bytes(10_000, 50_000, 10_000), 4096.0);
        assert_eq!(per_conn_bytes(50_000, 10_000, 10), 0.0, "shrinking is 0");
        assert_eq!(per_conn_bytes(0, 1, 0), 1024.0, "no division by zero");
    }
}
