//! permessage-deflate: what compression costs and saves (issue 4).
//!
//! - `deflate_codec`: one 3 KiB JSON message through the sans-IO codec —
//!   compress at level 1 (the default) and 6, with and without context
//!   takeover, and inflate. Prints the compressed sizes once.
//! - `deflate_echo`: 100 pipelined 3 KiB JSON messages echoed over one
//!   in-process connection, plain vs compressed (default parameters) vs
//!   compressed with context takeover both ways. Both ends run in this
//!   process, so a compressed round trip pays for four codec passes.
//! - `deflate_broadcast_1k`: one 3 KiB JSON broadcast to 1,000 subscribers
//!   until all have read it, plain vs compressed once and shared (default)
//!   vs compressed per recipient (server context takeover). `enqueue` is
//!   the publisher's cost alone.
//!
//! Run with `cargo bench -p switchboard --bench deflate`.

#![allow(missing_docs)] // criterion_group! generates an undocumented fn

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard::{
    hub::Hub,
    proto::{Deflate, Inflate, PayloadExtension},
    testing::TestClient,
    App, DeflateConfig, Error, State, WebSocket, WsConfig,
};

const SUBSCRIBERS: usize = 1_000;
const PIPELINE: usize = 100;

/// A realistic message: a JSON price update of ~3 KiB (2,955 bytes) whose numbers differ
/// from message to message.
fn message(seq: u64) -> String {
    let mut x = seq
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut items = Vec::new();
    for i in 0..48 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        items.push(format!(
            "{{\"symbol\":\"SYM{i:03}\",\"bid\":{}.{:02},\"ask\":{}.{:02},\"volume\":{}}}",
            100 + (x >> 40) % 50,
            (x >> 20) % 100,
            101 + (x >> 40) % 50,
            (x >> 28) % 100,
            (x >> 8) % 100_000
        ));
    }
    format!(
        "{{\"type\":\"quotes\",\"seq\":{seq},\"items\":[{}]}}",
        items.join(",")
    )
}

#[derive(Clone, Copy)]
enum Mode {
    Plain,
    Deflate,
    Takeover,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Plain, Mode::Deflate, Mode::Takeover];

    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Deflate => "deflate",
            Mode::Takeover => "deflate_takeover",
        }
    }

    fn server(self) -> Option<DeflateConfig> {
        match self {
            Mode::Plain => None,
            Mode::Deflate => Some(DeflateConfig::default()),
            Mode::Takeover => Some(DeflateConfig::default().server_no_context_takeover(false)),
        }
    }
}

fn codec(c: &mut Criterion) {
    let msg = message(7);
    let ring: Vec<String> = (0..64).map(message).collect();
    let mut group = c.benchmark_group("deflate_codec");
    group.throughput(Throughput::Bytes(msg.len() as u64));
    for (name, level, takeover) in [
        ("compress_l1", 1, false),
        ("compress_l6", 6, false),
        ("compress_l1_takeover", 1, true),
    ] {
        let mut d = Deflate::new(15, !takeover, level);
        let size = d.compress(message(1).as_bytes()).map_or(0, |b| b.len());
        println!("{name}: {} -> {size} bytes", msg.len());
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                // Varying content, as in real traffic.
                i = (i + 1) % ring.len();
                d.compress(ring[i].as_bytes())
            })
        });
    }
    let packed = Deflate::new(15, true, 1).compress(msg.as_bytes()).unwrap();
    let mut inflate = Inflate::new(true);
    group.bench_function("inflate", |b| {
        b.iter(|| {
            let mut out = BytesMut::new();
            inflate
                .decode_fragment(&packed, true, &mut out, 1 << 20)
                .unwrap();
            out
        })
    });
    group.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn wait_for(counter: &AtomicUsize, target: usize) {
    while counter.load(Ordering::Relaxed) < target {
        std::thread::sleep(Duration::from_micros(20));
    }
}

fn echo(c: &mut Criterion) {
    let rt = runtime();
    let messages: Vec<String> = (0..PIPELINE as u64).map(message).collect();
    let bytes: usize = messages.iter().map(String::len).sum();
    let mut group = c.benchmark_group("deflate_echo");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    for mode in Mode::ALL {
        let (sender, received, _client) = rt.block_on(async {
            let app = App::new().websocket_with(
                "/echo",
                WsConfig::default().compression(mode.server()),
                |ws: WebSocket| async move {
                    let mut ws = ws.accept().await?;
                    while let Some(m) = ws.recv_message().await? {
                        ws.send(m).await?;
                    }
                    Ok::<_, Error>(())
                },
            );
            let client = TestClient::new(app);
            let mut connect = client.websocket_connect("/echo");
            if let Some(cfg) = mode.server() {
                connect = connect.compression(cfg);
            }
            let ws = connect.await.expect("connect");
            assert_eq!(ws.compression().is_some(), mode.server().is_some());
            let (sender, mut receiver) = ws.split();
            let received = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&received);
            tokio::spawn(async move {
                while let Ok(Some(_)) = receiver.recv_message().await {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
            (sender, received, client)
        });
        group.bench_function(BenchmarkId::new("pipelined_100x3k", mode.name()), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let before = received.load(Ordering::Relaxed);
                    rt.block_on(async {
                        for m in &messages {
                            sender.send_text(m.clone()).await.expect("send");
                        }
                    });
                    wait_for(&received, before + PIPELINE);
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

fn broadcast(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("deflate_broadcast_1k");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    for mode in Mode::ALL {
        let (hub, received, _client) = rt.block_on(async {
            let hub = Hub::new();
            let app = App::new().state(hub.clone()).websocket_with(
                "/room",
                WsConfig::default()
                    .compression(mode.server())
                    .max_queue_bytes(8 << 20),
                |ws: WebSocket, State(hub): State<Hub>| async move {
                    let mut ws = ws.accept().await?;
                    let member = hub.connect(ws.sender());
                    member.join("bench");
                    ws.send_text("joined").await?;
                    while ws.recv_message().await?.is_some() {}
                    Ok::<_, Error>(())
                },
            );
            let client = TestClient::new(app).pipe_capacity(64 * 1024);
            let received = Arc::new(AtomicUsize::new(0));
            for _ in 0..SUBSCRIBERS {
                let mut connect = client.websocket_connect("/room");
                if let Some(cfg) = mode.server() {
                    connect = connect.compression(cfg);
                }
                let mut ws = connect.await.expect("connect");
                ws.recv_text().await.expect("joined");
                let counter = Arc::clone(&received);
                tokio::spawn(async move {
                    while let Ok(Some(_)) = ws.recv_message().await {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            (hub, received, client)
        });
        let ring: Vec<String> = (0..64).map(message).collect();
        let mut seq = 0;
        group.bench_function(BenchmarkId::new("enqueue", mode.name()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    seq += 1;
                    let msg = ring[seq % ring.len()].clone();
                    let before = received.load(Ordering::Relaxed);
                    let start = Instant::now();
                    let d = hub.broadcast_to("bench", msg);
                    total += start.elapsed();
                    assert_eq!(d.delivered, SUBSCRIBERS);
                    wait_for(&received, before + SUBSCRIBERS);
                }
                total
            })
        });
        group.bench_function(BenchmarkId::new("delivered", mode.name()), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    seq += 1;
                    let before = received.load(Ordering::Relaxed);
                    hub.broadcast_to("bench", ring[seq % ring.len()].clone());
                    wait_for(&received, before + SUBSCRIBERS);
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec, echo, broadcast);
criterion_main!(benches);
