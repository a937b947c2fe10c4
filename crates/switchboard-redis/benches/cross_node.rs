//! Cross-node broadcast through a local Redis: throughput, added latency,
//! and how fast delivery resumes after a Redis restart.
//!
//! Two nodes (hub + `RedisBackplane` each) in this process, a throwaway
//! `redis-server` on a free loopback port, and one member on node B (an
//! in-process WebSocket: the path a real member's messages take, minus
//! the kernel's TCP). Node A publishes to the room; B's member receives.
//!
//! - throughput: A publishes as fast as the pipeline takes (at most 4096
//!   unacknowledged) and B's member counts; broadcasts/s delivered.
//! - latency at a fixed rate (10 000/s for 3 s): send -> receive, cross-node
//!   (published on A) and local (published on B itself); "added" is the
//!   difference at the same percentile.
//! - resubscription: Redis is killed, left down 3 s (so the reconnect
//!   backoff reaches its 1 s cap), restarted; time from "Redis answers
//!   PING again" to B's member receiving a message A publishes every 5 ms.
//!
//! Each is run `CROSS_NODE_RUNS` times (default 3); medians are reported.
//! Run: `cargo bench -p switchboard-redis --bench cross_node`.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use switchboard::{
    hub::{Hub, HubConfig},
    testing::TestClient,
    App, Error, Path, State, WebSocket,
};
use switchboard_redis::{RedisBackplane, RedisConfig};

#[path = "../src/testing.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod redis_testing;

use redis_testing::RedisServer;

const ROOM: &str = "bench";
const THROUGHPUT_MESSAGES: u64 = 100_000;
const WINDOW: u64 = 4096;
const RATE: u64 = 10_000;
const RATE_SECS: u64 = 3;

fn main() {
    let runs: usize = std::env::var("CROSS_NODE_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(runs));
}

struct Bench {
    base: Instant,
    a: Hub,
    b: Hub,
    bps: Vec<RedisBackplane>,
    /// Messages B's member received.
    received: Arc<AtomicU64>,
    /// Latencies (ns) recorded while `recording`.
    latencies: Arc<Mutex<Vec<u64>>>,
    _client: TestClient,
}

fn room_app(hub: Hub) -> App {
    App::new().state(hub).websocket(
        "/rooms/{room}",
        |ws: WebSocket, Path(room): Path<String>, State(hub): State<Hub>| async move {
            let mut ws = ws.accept().await?;
            let member = hub.connect(ws.sender());
            member.join(&room);
            ws.send_text("joined").await?;
            while ws.recv_message().await?.is_some() {}
            Ok::<_, Error>(())
        },
    )
}

async fn node(url: &str, id: &str) -> (Hub, RedisBackplane) {
    let bp = RedisBackplane::new(RedisConfig::new(url, id).history(1000)).expect("config");
    assert!(
        bp.ready(Duration::from_secs(5)).await,
        "node {id} not ready"
    );
    let hub = Hub::with_backplane(HubConfig::default(), Arc::new(bp.clone()));
    (hub, bp)
}

impl Bench {
    async fn start(url: &str) -> Bench {
        let base = Instant::now();
        let (a, bp_a) = node(url, "a").await;
        let (b, bp_b) = node(url, "b").await;
        let client = TestClient::new(room_app(b.clone())).pipe_capacity(1 << 20);
        let mut ws = client
            .websocket_connect(&format!("/rooms/{ROOM}"))
            .await
            .expect("connect");
        ws.recv_text().await.expect("joined");
        let received = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
        {
            let (received, latencies) = (Arc::clone(&received), Arc::clone(&latencies));
            tokio::spawn(async move {
                while let Ok(Some(text)) = ws.recv_text().await {
                    let now = base.elapsed().as_nanos() as u64;
                    if let Some(sent) = text.split(' ').next().and_then(|s| s.parse::<u64>().ok()) {
                        if sent > 0 {
                            latencies.lock().unwrap().push(now.saturating_sub(sent));
                        }
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !bp_b.is_subscribed(ROOM) {
            assert!(Instant::now() < deadline, "B never subscribed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Bench {
            base,
            a,
            b,
            bps: vec![bp_a, bp_b],
            received,
            latencies,
            _client: client,
        }
    }

    /// A 64-byte message: send time (ns since `base`, 0 = untimed), filler.
    fn payload(&self, timed: bool) -> String {
        let t = if timed {
            self.base.elapsed().as_nanos() as u64
        } else {
            0
        };
        let mut s = format!("{t} ");
        s.extend(std::iter::repeat_n('x', 64usize.saturating_sub(s.len())));
        s
    }

    async fn wait_received(&self, target: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.received.load(Ordering::Relaxed) < target {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        true
    }

    /// Waits for `sent` messages after `start` (at most 10 s) and reports
    /// any shortfall with the publish errors that explain it; returns how
    /// many arrived.
    async fn settle(&self, start: u64, sent: u64) -> u64 {
        let errors_before = self.publish_errors();
        if !self
            .wait_received(start + sent, Duration::from_secs(10))
            .await
        {
            let got = self.received.load(Ordering::Relaxed) - start;
            println!(
                "  LOST {} of {sent} (publish errors so far: {}, before: {errors_before})",
                sent - got,
                self.publish_errors()
            );
        }
        self.received.load(Ordering::Relaxed) - start
    }

    fn publish_errors(&self) -> u64 {
        self.bps
            .iter()
            .map(|bp| switchboard::hub::Backplane::health(bp).publish_errors)
            .sum()
    }

    /// Cross-node broadcasts per second delivered to B's member.
    async fn throughput(&self) -> f64 {
        let start_count = self.received.load(Ordering::Relaxed);
        let payload = self.payload(false);
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < THROUGHPUT_MESSAGES {
            let got = self.received.load(Ordering::Relaxed) - start_count;
            if sent - got >= WINDOW {
                tokio::task::yield_now().await;
                continue;
            }
            for _ in 0..256.min(THROUGHPUT_MESSAGES - sent) {
                self.a.broadcast_to(ROOM, payload.as_str());
                sent += 1;
            }
            tokio::task::yield_now().await;
        }
        let delivered = self.settle(start_count, sent).await;
        delivered as f64 / start.elapsed().as_secs_f64()
    }

    /// p50 and p99 (µs) of send -> receive at `RATE` for `RATE_SECS`,
    /// publishing on `hub`.
    async fn latency(&self, hub: &Hub) -> (f64, f64) {
        self.latencies.lock().unwrap().clear();
        let start_count = self.received.load(Ordering::Relaxed);
        let total = RATE * RATE_SECS;
        // 10 messages every millisecond.
        let per_tick = RATE / 1000;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sent = 0;
        while sent < total {
            tick.tick().await;
            for _ in 0..per_tick {
                hub.broadcast_to(ROOM, self.payload(true));
                sent += 1;
            }
        }
        self.settle(start_count, sent).await;
        let mut l = std::mem::take(&mut *self.latencies.lock().unwrap());
        l.sort_unstable();
        let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1000.0;
        (pct(0.50), pct(0.99))
    }

    /// Seconds from Redis answering again to B receiving A's messages.
    async fn resubscription(&self, redis: &mut RedisServer) -> f64 {
        redis.kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        redis.restart(); // returns once PING answers
        let back = Instant::now();
        let before = self.received.load(Ordering::Relaxed);
        loop {
            self.a.broadcast_to(ROOM, self.payload(false));
            tokio::time::sleep(Duration::from_millis(5)).await;
            if self.received.load(Ordering::Relaxed) > before {
                return back.elapsed().as_secs_f64();
            }
            assert!(back.elapsed() < Duration::from_secs(30), "never resumed");
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn bench(runs: usize) {
    let mut redis = RedisServer::start();
    let b = Bench::start(&redis.url()).await;
    // Warm up: connections, script cache, allocator.
    b.throughput().await;

    let mut tput = Vec::new();
    let mut remote = (Vec::new(), Vec::new());
    let mut local = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let t = b.throughput().await;
        let (r50, r99) = b.latency(&b.a).await;
        let (l50, l99) = b.latency(&b.b).await;
        println!(
            "run {run}: {t:>9.0} broadcasts/s | cross-node p50 {r50:>7.1} us p99 {r99:>7.1} us \
             | local p50 {l50:>7.1} us p99 {l99:>7.1} us"
        );
        tput.push(t);
        remote.0.push(r50);
        remote.1.push(r99);
        local.0.push(l50);
        local.1.push(l99);
    }
    let mut resub = Vec::new();
    for run in 1..=runs {
        let s = b.resubscription(&mut redis).await;
        println!(
            "run {run}: delivery resumed {:.0} ms after Redis restarted",
            s * 1000.0
        );
        resub.push(s);
    }
    let (r50, r99) = (median(remote.0), median(remote.1));
    let (l50, l99) = (median(local.0), median(local.1));
    println!();
    println!("medians over {runs} runs (2 worker threads, Redis on loopback):");
    println!(
        "  cross-node throughput      {:>9.0} broadcasts/s  (target >= 20000)",
        median(tput)
    );
    println!("  latency at {RATE}/s, cross-node  p50 {r50:>7.1} us  p99 {r99:>7.1} us");
    println!("  latency at {RATE}/s, local       p50 {l50:>7.1} us  p99 {l99:>7.1} us");
    println!(
        "  added by Redis              p50 {:>7.1} us  p99 {:>7.1} us  (target p99 < 2000)",
        r50 - l50,
        r99 - l99
    );
    println!(
        "  resumed after Redis restart {:>7.0} ms  (target < 3000)",
        median(resub) * 1000.0
    );
    let errors: u64 = b
        .bps
        .iter()
        .map(|bp| switchboard::hub::Backplane::health(bp).publish_errors)
        .sum();
    println!("  publish errors (outages excluded from the figures above): {errors}");
}
