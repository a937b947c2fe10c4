//! Broadcast fan-out: one message to 10,000 local subscribers.
//!
//! `enqueue`: the cost of `Hub::broadcast_to` itself — encode once, queue a
//! shared frame on every subscriber (what the publisher's task pays).
//! `delivered`: until every subscriber's client has read the message
//! (end to end through the writer tasks, the in-process pipes and the
//! client decoders). Run with `cargo bench -p switchboard --bench fanout`.

#![allow(missing_docs)] // criterion_group! generates an undocumented fn

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchboard::{hub::Hub, testing::TestClient, App, Error, Path, State, WebSocket};

const SUBSCRIBERS: usize = 10_000;

fn setup(rt: &tokio::runtime::Runtime) -> (Hub, Arc<AtomicUsize>, TestClient) {
    rt.block_on(async {
        let hub = Hub::new();
        let app = App::new().state(hub.clone()).websocket(
            "/rooms/{room}",
            |ws: WebSocket, Path(room): Path<String>, State(hub): State<Hub>| async move {
                let mut ws = ws.accept().await?;
                let member = hub.connect(ws.sender());
                member.join(&room);
                ws.send_text("joined").await?;
                while ws.recv_message().await?.is_some() {}
                Ok::<_, Error>(())
            },
        );
        let client = TestClient::new(app).pipe_capacity(64 * 1024);
        let received = Arc::new(AtomicUsize::new(0));
        for _ in 0..SUBSCRIBERS {
            let mut ws = client
                .websocket_connect("/rooms/bench")
                .await
                .expect("connect");
            ws.recv_text().await.expect("joined");
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                while let Ok(Some(_)) = ws.recv_message().await {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        assert_eq!(hub.stats().rooms["bench"], SUBSCRIBERS);
        (hub, received, client)
    })
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (hub, received, _client) = setup(&rt);
    let payload = "x".repeat(64);
    let mut group = c.benchmark_group("fanout_10k");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(10));
    let wait_all = |target: usize| {
        while received.load(Ordering::Relaxed) < target {
            std::thread::sleep(Duration::from_micros(50));
        }
    };
    group.bench_function("enqueue", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let before = received.load(Ordering::Relaxed);
                let start = Instant::now();
                let d = hub.broadcast_to("bench", payload.clone());
                total += start.elapsed();
                assert_eq!(d.delivered, SUBSCRIBERS);
                // Let the queues drain before the next sample.
                wait_all(before + SUBSCRIBERS);
            }
            total
        })
    });
    group.bench_function("delivered", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let before = received.load(Ordering::Relaxed);
                hub.broadcast_to("bench", payload.clone());
                wait_all(before + SUBSCRIBERS);
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
