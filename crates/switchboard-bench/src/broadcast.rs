//! The `broadcast` scenario: N subscribers join one room, one publisher
//! connection (a member of the same room) sends; throughput is deliveries per
//! second (messages read by subscribers), latency is end to end from the
//! publisher's timestamp in the payload to a subscriber decoding it.
//!
//! The room endpoint must relay what a member sends to the other members
//! (`/ws/rooms/{room}` on the demo server and on every peer of `bench/run`).
//! Payload layout (binary, little endian): 8 bytes send time in nanoseconds
//! since the run started, 8 bytes sequence number, padding to `--size`.
//!
//! Two publisher modes:
//! - fixed rate (`--rate R`): R messages per second whatever happens (open
//!   loop), for latency at a given load;
//! - closed loop (`--rate 0`, the default): at most `--window` messages not
//!   yet delivered to every live subscriber, which measures the most a
//!   server can deliver without letting its queues grow without bound.
//!
//! Before measuring, the publisher sends "join probes" until every subscriber
//! has received one, so no subscriber is counted before the server has
//! registered it in the room (a bounded wait).

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use serde_json::json;
use switchboard_proto::{Decoder, Event, OpCode, Role};
use tokio::{
    io::AsyncReadExt,
    sync::{watch, Notify},
    task::JoinSet,
    time::Instant,
};

use crate::{
    client::{close_frame, connect, masked, Conn},
    echo::CLIENT_LIMITS,
    open::{open_many, HANDSHAKE_TIMEOUT},
    report::{Local, Report, Shared, MEASURE, STOP},
    target::{Sources, Target},
    Common,
};

/// Options of the broadcast scenario.
#[derive(Debug, Clone)]
pub(crate) struct BroadcastOpts {
    pub(crate) subscribers: usize,
    pub(crate) size: usize,
    pub(crate) rate: f64,
    pub(crate) window: usize,
}

/// The sequence number of a join probe.
const PROBE: u64 = u64::MAX;
/// Slots in the delivery ring: more than any window, so a slot is only
/// reused once every subscriber is past its previous message.
const RING: usize = 4096;
/// Largest closed-loop window accepted (must stay below [`RING`]).
const MAX_WINDOW: usize = 1024;
/// How long the publisher waits for every subscriber to get a join probe.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between join probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Closed loop: how long the publisher waits for a window slot before it
/// gives up on the stragglers of that message and sends anyway (counted as
/// a stall).
const STALL_TIMEOUT: Duration = Duration::from_secs(1);

/// The run's time origin for payload timestamps.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Encodes a payload of `size` bytes (at least 16).
pub(crate) fn encode(size: usize, ts_ns: u64, seq: u64) -> Vec<u8> {
    let mut p = vec![b'.'; size.max(16)];
    p[..8].copy_from_slice(&ts_ns.to_le_bytes());
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    p
}

/// Decodes `(timestamp, sequence)` from a payload.
pub(crate) fn decode(p: &[u8]) -> Option<(u64, u64)> {
    let ts = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(p.get(8..16)?.try_into().ok()?);
    Some((ts, seq))
}

/// State the publisher and the subscribers share.
#[derive(Debug)]
struct Room {
    /// Deliveries per in-flight message, indexed by `seq % RING`.
    acks: Vec<AtomicUsize>,
    /// Subscribers that received a join probe.
    joined: AtomicUsize,
    /// Subscribers whose connection ended.
    dead: AtomicUsize,
    /// Subscribers alive at the start (the number a message must reach).
    live: usize,
    /// Poked by the subscriber that completes a message's deliveries.
    done: Notify,
    /// Messages the publisher gave up waiting for (closed loop).
    stalls: AtomicU64,
}

impl Room {
    fn expected(&self) -> usize {
        self.live.saturating_sub(self.dead.load(Ordering::Relaxed))
    }
}

pub(crate) async fn run(common: &Common, opts: &BroadcastOpts) -> Result<Report, String> {
    if opts.window == 0 || opts.window > MAX_WINDOW {
        return Err(format!("--window must be 1..={MAX_WINDOW}"));
    }
    if !(0.0..=10_000_000.0).contains(&opts.rate) {
        return Err("--rate must be 0 (closed loop) up to 10,000,000 msg/s".into());
    }
    let _ = epoch();
    let target = Arc::new(Target::parse(&common.url)?);
    let sources = Sources::new(common.sources, opts.subscribers + 1, &target);
    let opened = open_many(
        &target,
        opts.subscribers,
        &sources,
        common.connect_concurrency,
        common.quiet,
    )
    .await;
    if opened.conns.is_empty() {
        return Err(format!(
            "no subscriber could connect: {}",
            opened.first_error.unwrap_or_default()
        ));
    }
    let publisher = connect(
        &target,
        sources.for_conn(opts.subscribers),
        HANDSHAKE_TIMEOUT,
    )
    .await
    .map_err(|e| format!("publisher could not connect: {e}"))?;
    let shared = Arc::new(Shared::new());
    shared.errors.fetch_add(opened.errors, Ordering::Relaxed);
    let room = Arc::new(Room {
        acks: (0..RING).map(|_| AtomicUsize::new(0)).collect(),
        joined: AtomicUsize::new(0),
        dead: AtomicUsize::new(0),
        live: opened.conns.len(),
        done: Notify::new(),
        stalls: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for conn in opened.conns {
        tasks.spawn(subscriber(
            conn,
            Arc::clone(&shared),
            Arc::clone(&room),
            stop_rx.clone(),
        ));
    }
    let Conn { stream, buf: _ } = publisher;
    let (mut rd, mut wr) = stream.into_split();
    // The publisher's own read side: drained (a relay should send it
    // nothing) so a server that echoes to the sender cannot block it.
    tasks.spawn(async move {
        let mut sink = vec![0u8; 16 * 1024];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    });

    // Join probes until every subscriber is in the room.
    let join_start = Instant::now();
    let probe = masked(OpCode::Binary, &encode(opts.size, 0, PROBE));
    while room.joined.load(Ordering::Relaxed) < room.expected()
        && join_start.elapsed() < JOIN_TIMEOUT
    {
        use tokio::io::AsyncWriteExt;
        wr.write_all(&probe)
            .await
            .map_err(|e| format!("publisher: {e}"))?;
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    let joined = room.joined.load(Ordering::Relaxed);
    if joined < room.expected() {
        eprintln!(
            "warning: only {joined} of {} subscribers saw a join probe within {JOIN_TIMEOUT:?}",
            room.expected()
        );
    }
    let join_time = join_start.elapsed();

    let publisher = {
        let (shared, room, opts) = (Arc::clone(&shared), Arc::clone(&room), opts.clone());
        tokio::spawn(async move { publish(wr, &opts, &shared, &room).await })
    };
    let window = crate::measure(common, &shared, u64::MAX).await;
    let sent_in_window = publisher.await.unwrap_or(0);
    let _ = stop_tx.send(true);
    crate::drain(&mut tasks).await;
    let (ops, bytes) = shared.totals();
    let mut extra = serde_json::Map::new();
    extra.insert("published".into(), json!(sent_in_window));
    extra.insert(
        "delivery_ratio".into(),
        json!(if sent_in_window == 0 {
            0.0
        } else {
            ops as f64 / (sent_in_window as f64 * room.live as f64)
        }),
    );
    extra.insert("stalls".into(), json!(room.stalls.load(Ordering::Relaxed)));
    extra.insert(
        "dropped_subs".into(),
        json!(room.dead.load(Ordering::Relaxed)),
    );
    extra.insert("join_s".into(), json!(join_time.as_secs_f64()));
    Ok(Report {
        scenario: "broadcast",
        label: common.label.clone(),
        url: common.url.clone(),
        params: json!({
            "subscribers": opts.subscribers, "size": opts.size.max(16),
            "rate": opts.rate, "window": opts.window,
            "sources": sources.count(), "warmup_s": common.warmup,
        }),
        engine: None,
        connections: room.live + 1,
        duration_s: window.wall.as_secs_f64(),
        unit: "deliveries/s",
        ops,
        ops_per_s: ops as f64 / window.wall.as_secs_f64(),
        bytes_per_s: bytes as f64 / window.wall.as_secs_f64(),
        errors: shared.errors.load(Ordering::Relaxed),
        latency: shared.latency(),
        client_cpu: window.client_cpu,
        server_cpu: window.server_cpu,
        extra,
    })
}

/// Sends until the STOP phase; returns how many messages went out while
/// measuring.
async fn publish(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    opts: &BroadcastOpts,
    shared: &Shared,
    room: &Room,
) -> u64 {
    use tokio::io::AsyncWriteExt;
    let mut seq = 0u64;
    let mut in_window = 0u64;
    let start = Instant::now();
    let mut payload = encode(opts.size, 0, 0);
    let key: [u8; 4] = rand::random();
    while shared.phase() != STOP {
        if opts.rate > 0.0 {
            // Open loop: catch up with the schedule, then sleep a tick.
            let due = (start.elapsed().as_secs_f64() * opts.rate) as u64;
            if seq >= due {
                tokio::time::sleep(Duration::from_micros(500)).await;
                continue;
            }
        } else if seq >= opts.window as u64 {
            // Closed loop: wait until message seq - window reached everyone.
            let slot = &room.acks[((seq - opts.window as u64) % RING as u64) as usize];
            let waited = Instant::now();
            while slot.load(Ordering::Acquire) < room.expected() && shared.phase() != STOP {
                if waited.elapsed() > STALL_TIMEOUT {
                    room.stalls.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(10), room.done.notified()).await;
            }
        }
        // The slot this message uses was last used RING messages ago, long
        // delivered or given up on.
        room.acks[(seq % RING as u64) as usize].store(0, Ordering::Release);
        payload[..8].copy_from_slice(&now_ns().to_le_bytes());
        payload[8..16].copy_from_slice(&seq.to_le_bytes());
        let frame = switchboard_proto::Frame::masked(OpCode::Binary, true, false, &payload, key);
        if wr.write_all(&frame.to_vec()).await.is_err() {
            shared.error();
            break;
        }
        if shared.phase() == MEASURE {
            in_window += 1;
        }
        seq += 1;
    }
    let _ = wr.write_all(&close_frame()).await;
    in_window
}

async fn subscriber(
    conn: Conn,
    shared: Arc<Shared>,
    room: Arc<Room>,
    mut stop: watch::Receiver<bool>,
) {
    let Conn {
        mut stream,
        mut buf,
    } = conn;
    let mut dec = Decoder::new(Role::Client, CLIENT_LIMITS);
    let mut local = Local::new();
    let mut joined = false;
    buf.reserve(4096);
    'run: loop {
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(ev @ (Event::Binary(_) | Event::Text(_)))) => {
                    let p = ev.data().unwrap_or_default();
                    let Some((ts, seq)) = decode(p) else {
                        shared.error();
                        continue;
                    };
                    if seq == PROBE {
                        if !joined {
                            joined = true;
                            room.joined.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    if shared.phase() == MEASURE {
                        local.record(&shared, now_ns().saturating_sub(ts), p.len());
                    }
                    let slot = &room.acks[(seq % RING as u64) as usize];
                    if slot.fetch_add(1, Ordering::AcqRel) + 1 >= room.expected() {
                        room.done.notify_one();
                    }
                }
                Ok(Some(Event::Ping(p))) => {
                    let _ = stream.try_write(&masked(OpCode::Pong, &p));
                }
                Ok(Some(Event::Pong(_))) => {}
                Ok(Some(Event::Close(_))) | Err(_) => {
                    if shared.phase() != STOP {
                        shared.error();
                    }
                    break 'run;
                }
                Ok(None) => break,
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = stream.read_buf(&mut buf) => if !matches!(r, Ok(n) if n > 0) {
                if shared.phase() != STOP {
                    shared.error();
                }
                break;
            },
        }
    }
    shared.flush(&mut local);
    if shared.phase() != STOP {
        room.dead.fetch_add(1, Ordering::Relaxed);
        room.done.notify_one();
    }
    let _ = stream.try_write(&close_frame());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let p = encode(32, 123_456_789, 42);
        assert_eq!(p.len(), 32);
        assert_eq!(decode(&p), Some((123_456_789, 42)));
        assert_eq!(encode(4, 1, 2).len(), 16, "never shorter than the header");
        assert_eq!(decode(&p[..15]), None);
    }
}
