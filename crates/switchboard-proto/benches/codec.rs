//! Codec micro-benchmarks: frame decode and encode, unmasking, UTF-8
//! validation, and broadcast encode (one frame shared by many recipients).
//!
//! Message sizes match the end-to-end benchmarks (32 B, 512 B, 16 KiB; see
//! docs/BENCHMARKS.md). Throughput is reported in payload bytes, so the
//! numbers compare across sizes. Run with
//! `cargo bench -p switchboard-proto --bench codec`; these measure the
//! sans-IO crate alone, never a socket.

#![allow(missing_docs)] // criterion_group! generates an undocumented fn

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard_proto::{apply_mask, Decoder, Frame, Limits, OpCode, Role, Utf8Validator};

const SIZES: [usize; 3] = [32, 512, 16 * 1024];
/// Frames decoded per iteration, so per-call overhead is amortised the way a
/// read buffer holding several frames amortises it.
const FRAMES: usize = 64;
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn text(size: usize) -> Vec<u8> {
    // Mostly ASCII with a two-byte character every 64 bytes: realistic chat
    // text, and it keeps the UTF-8 check off its pure-ASCII shortcut.
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        if v.len() % 64 == 63 && v.len() + 2 <= size {
            v.extend_from_slice("é".as_bytes());
        } else {
            v.push(b'a' + (v.len() % 26) as u8);
        }
    }
    v.truncate(size);
    while std::str::from_utf8(&v).is_err() {
        v.pop();
        v.push(b'x');
    }
    v
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for size in SIZES {
        let payload = text(size);
        for (name, op, role, masked) in [
            ("server_text_masked", OpCode::Text, Role::Server, true),
            ("server_binary_masked", OpCode::Binary, Role::Server, true),
            ("client_text", OpCode::Text, Role::Client, false),
        ] {
            let frame = if masked {
                Frame::masked(op, true, false, &payload, KEY)
            } else {
                Frame::new(op, true, false, Bytes::from(payload.clone()))
            }
            .to_vec();
            let mut wire = Vec::with_capacity(frame.len() * FRAMES);
            for _ in 0..FRAMES {
                wire.extend_from_slice(&frame);
            }
            g.throughput(Throughput::Bytes((size * FRAMES) as u64));
            g.bench_with_input(BenchmarkId::new(name, size), &wire, |b, wire| {
                let mut dec = Decoder::new(role, Limits::default());
                b.iter(|| {
                    let mut buf = BytesMut::from(&wire[..]);
                    let mut n = 0;
                    while let Some(ev) = dec.decode(&mut buf).unwrap() {
                        n += ev.data().map_or(0, <[u8]>::len);
                    }
                    black_box(n)
                });
            });
        }
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for size in SIZES {
        let payload = Bytes::from(text(size));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("server", size), &payload, |b, p| {
            b.iter(|| black_box(Frame::new(OpCode::Text, true, false, p.clone())));
        });
        g.bench_with_input(BenchmarkId::new("client_masked", size), &payload, |b, p| {
            b.iter(|| black_box(Frame::masked(OpCode::Text, true, false, p, KEY)));
        });
    }
    g.finish();
}

fn unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for size in SIZES {
        let mut data = text(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("aligned", size), |b| {
            b.iter(|| apply_mask(black_box(&mut data), KEY, 0));
        });
        g.bench_function(BenchmarkId::new("offset_3", size), |b| {
            b.iter(|| apply_mask(black_box(&mut data[1..]), KEY, 3));
        });
    }
    g.finish();
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    for size in SIZES {
        let data = text(size);
        let ascii: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("whole_mixed", size), &data, |b, d| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                v.feed(black_box(d)).unwrap();
                v.finish().unwrap();
            });
        });
        g.bench_with_input(BenchmarkId::new("whole_ascii", size), &ascii, |b, d| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                v.feed(black_box(d)).unwrap();
                v.finish().unwrap();
            });
        });
        // Arriving in 7-byte reads: code points split across calls.
        g.bench_with_input(BenchmarkId::new("split_7", size), &data, |b, d| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                for chunk in d.chunks(7) {
                    v.feed(black_box(chunk)).unwrap();
                }
                v.finish().unwrap();
            });
        });
    }
    g.finish();
}

fn broadcast_encode(c: &mut Criterion) {
    // Frame-once broadcast: one encode, then a reference-counted clone per
    // recipient (what the hub queues), for a 10,000-member room.
    const RECIPIENTS: usize = 10_000;
    let mut g = c.benchmark_group("broadcast_encode");
    for size in SIZES {
        let payload = Bytes::from(text(size));
        g.throughput(Throughput::Elements(RECIPIENTS as u64));
        g.bench_with_input(
            BenchmarkId::new("10k_recipients", size),
            &payload,
            |b, p| {
                let mut queues: Vec<Frame> = Vec::with_capacity(RECIPIENTS);
                b.iter(|| {
                    let frame = Frame::new(OpCode::Text, true, false, p.clone());
                    for _ in 0..RECIPIENTS {
                        queues.push(frame.clone());
                    }
                    black_box(&queues);
                    queues.clear();
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, decode, encode, unmask, utf8, broadcast_encode);
criterion_main!(benches);
