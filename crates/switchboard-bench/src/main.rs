//! `switchboard-bench`: a load generator for any RFC 6455 WebSocket server.
//!
//! ```text
//! switchboard-bench echo      --url ws://127.0.0.1:8000/ws/echo --conns 100 --size 32
//! switchboard-bench connect   --url ws://127.0.0.1:8000/ws/echo --concurrency 64 --close
//! switchboard-bench broadcast --url ws://127.0.0.1:8000/ws/rooms/bench --subscribers 10000
//! switchboard-bench idle      --url ws://127.0.0.1:8000/ws/echo --conns 10000 --pid PID
//! switchboard-bench sink      --bind 127.0.0.1:9100   # a trivial echo server (tool check)
//! ```
//!
//! Every scenario opens its connections first, warms up (`--warmup`), then
//! measures for `--duration` seconds and prints a table (and one JSON object
//! on stdout with `--json`). Every loop is bounded in count and in time: the
//! run stops by itself. `docs/BENCHMARKS.md` describes the method and
//! `bench/run` runs the side-by-side comparison with the peers.
//!
//! # Layout
//! - `target`: URL parsing and source addresses over 127.0.0.0/8.
//! - `client`: TCP connect, the opening handshake, masked frames (the
//!   sans-IO `switchboard-proto` crate does the protocol work).
//! - `open`: opening many connections with bounded concurrency.
//! - `report`: counters, the HDR histogram, `/proc` readings, table and JSON.
//! - `echo`, `connect`, `broadcast`, `idle`: the scenarios.
//! - `echo_uring`, `uring` (Linux): the echo scenario's io_uring engine, its
//!   event loop and the ring with its buffers (the crate's only `unsafe`).
//! - `sink`: a minimal echo server used to show the tool is not the bottleneck.
//!
//! A crate of its own rather than a `switchboard bench` subcommand: the
//! server binary stays free of the tool's dependencies, and the tool is a
//! client of any server, not of ours only.

mod broadcast;
mod client;
mod connect;
mod echo;
#[cfg(target_os = "linux")]
mod echo_uring;
mod idle;
mod open;
mod report;
mod sink;
mod target;
#[cfg(target_os = "linux")]
mod uring;

use std::{sync::atomic::Ordering, time::Duration};

use clap::{Args, Parser, Subcommand};
use tokio::{task::JoinSet, time::Instant};

use report::{CpuMark, Shared, MEASURE, STOP};

/// Longest warm-up or measurement window accepted, in seconds: a bound on
/// every load loop.
const MAX_WINDOW_S: f64 = 3600.0;
/// Most connections one run may open.
const MAX_CONNS: usize = 1_000_000;
/// How long tasks get to flush after the window before they are aborted.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Parser, Debug)]
#[command(
    name = "switchboard-bench",
    version,
    about = "Load generator for RFC 6455 WebSocket servers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// N connections echo messages: throughput and round-trip latency.
    Echo {
        #[command(flatten)]
        common: Common,
        /// Connections.
        #[arg(long, default_value_t = 100)]
        conns: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Messages in flight per connection (pipelining depth).
        #[arg(long, default_value_t = 1)]
        depth: usize,
        /// Send binary messages (default: text).
        #[arg(long)]
        binary: bool,
        /// Stop each connection after this many round trips in the window
        /// (0: run for the whole window). With `--warmup 0` this makes a
        /// fixed workload, e.g. for instruction counts under callgrind.
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// How connections are driven: `uring` (one io_uring loop, a system
        /// call per batch; Linux), `tokio` (a task per connection), or
        /// `auto` (uring when the kernel allows it).
        #[arg(long, value_enum, default_value_t = echo::Engine::Auto)]
        engine: echo::Engine,
    },
    /// Handshakes per second from `concurrency` parallel clients.
    Connect {
        #[command(flatten)]
        common: Common,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Finish each connection with a close handshake (default: reset the
        /// TCP connection right after the 101).
        #[arg(long)]
        close: bool,
        /// Stop after this many handshakes, counted from the start of the
        /// window over all clients (0: run for the whole window). With
        /// `--warmup 0` this makes a fixed workload, e.g. for instruction
        /// counts under callgrind (`attempts` in the report counts every
        /// handshake the server saw, warm-up included).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// N subscribers in one room, one publisher: deliveries/s and end-to-end
    /// latency from the timestamp in each payload.
    Broadcast {
        #[command(flatten)]
        common: Common,
        /// Subscriber connections.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Payload bytes per message (at least 16: timestamp and sequence).
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Messages per second the publisher sends (fixed rate, open loop);
        /// 0 = closed loop: as fast as `--window` allows.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Closed loop: messages in flight, i.e. not yet delivered to every
        /// subscriber, before the publisher waits.
        #[arg(long, default_value_t = 8)]
        window: usize,
    },
    /// Open and hold N connections; with --pid, the server's RSS growth per
    /// connection.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Connections to hold.
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
    },
    /// A minimal echo server on raw tokio and the proto crate: the ceiling
    /// any server can reach under this tool (run it on the server's core).
    Sink {
        /// Address to listen on (loopback).
        #[arg(long, default_value = "127.0.0.1:9100")]
        bind: String,
        /// Seconds after which the sink exits by itself.
        #[arg(long, default_value_t = 3600)]
        max_seconds: u64,
        /// Worker threads (default: the CPUs this process may run on).
        #[arg(long)]
        threads: Option<usize>,
    },
}

/// Options every client scenario shares.
#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
    /// Server URL, `ws://host:port/path`.
    #[arg(long)]
    pub(crate) url: String,
    /// Seconds of traffic before measuring (not counted).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Seconds to measure (idle: seconds to hold the connections).
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Source addresses: connections are spread round-robin over 127.0.0.1,
    /// 127.0.0.2, ... (0 = one per 25,000 connections; 1 = no bind).
    #[arg(long, default_value_t = 0)]
    pub(crate) sources: u32,
    /// Handshakes in flight while opening connections.
    #[arg(long, default_value_t = 128)]
    pub(crate) connect_concurrency: usize,
    /// The server's PID: report its CPU use (and, for idle, its RSS).
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// Print one JSON object on stdout (the table goes to stderr).
    #[arg(long)]
    pub(crate) json: bool,
    /// Label for the report (e.g. the server's name).
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    pub(crate) quiet: bool,
}

impl Common {
    fn check(&self) -> Result<(), String> {
        for (name, v) in [("warmup", self.warmup), ("duration", self.duration)] {
            if !(0.0..=MAX_WINDOW_S).contains(&v) {
                return Err(format!("--{name} must be between 0 and {MAX_WINDOW_S} s"));
            }
        }
        if self.duration <= 0.0 {
            return Err("--duration must be positive".into());
        }
        Ok(())
    }
}

/// The measured window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) wall: Duration,
    pub(crate) client_cpu: Option<f64>,
    pub(crate) server_cpu: Option<f64>,
}

/// Warm-up, then the measured window; leaves `shared` in the STOP phase.
/// The window ends early once `tasks` tasks reported their work done
/// (`shared.done`), for runs bounded by a message count.
pub(crate) async fn measure(common: &Common, shared: &Shared, tasks: u64) -> Window {
    tokio::time::sleep(Duration::from_secs_f64(common.warmup)).await;
    shared.phase.store(MEASURE, Ordering::Relaxed);
    let start = Instant::now();
    let cpu = CpuMark::now(common.pid);
    let total = Duration::from_secs_f64(common.duration);
    let bar = open::progress(
        total.as_secs(),
        "measuring",
        common.quiet || total < Duration::from_secs(10),
    );
    while start.elapsed() < total && shared.done.load(Ordering::Relaxed) < tasks {
        let left = total.saturating_sub(start.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        bar.set_position(start.elapsed().as_secs());
    }
    shared.phase.store(STOP, Ordering::Relaxed);
    let wall = start.elapsed();
    let (client_cpu, server_cpu) = cpu.usage(common.pid, wall);
    bar.finish_and_clear();
    Window {
        wall,
        client_cpu,
        server_cpu,
    }
}

/// Waits for the scenario's tasks to finish, aborting stragglers after
/// [`DRAIN_TIMEOUT`].
pub(crate) async fn drain(tasks: &mut JoinSet<()>) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Raises the open-file limit to fit `conns` sockets: the soft limit up to
/// the hard one, and the hard one too when allowed (root).
fn raise_nofile(conns: usize) {
    let want = conns as u64 + 1024;
    let _ = rlimit::increase_nofile_limit(want);
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        if soft < want && rlimit::Resource::NOFILE.set(want, want.max(hard)).is_err() {
            eprintln!(
                "warning: open-file limit is {soft}, below the {want} needed \
                 (raise it with `ulimit -n {want}`)"
            );
        }
    }
}

fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    b.enable_all().build()
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Sink {
            bind,
            max_seconds,
            threads,
        } => {
            raise_nofile(MAX_CONNS);
            runtime(threads)
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(sink::run(&bind, Duration::from_secs(max_seconds))))
                .map(|()| None)
        }
        scenario => run_client(scenario).map(Some),
    };
    match result {
        Ok(_) => {}
        Err(e) => {
            eprintln!("switchboard-bench: {e}");
            std::process::exit(1);
        }
    }
}

fn run_client(scenario: Scenario) -> Result<(), String> {
    let (common, conns) = match &scenario {
        Scenario::Echo { common, conns, .. } | Scenario::Idle { common, conns } => (common, *conns),
        Scenario::Broadcast {
            common,
            subscribers,
            ..
        } => (common, subscribers + 1),
        Scenario::Connect {
            common,
            concurrency,
            ..
        } => (common, *concurrency),
        Scenario::Sink { .. } => unreachable!("handled in main"),
    };
    common.check()?;
    if conns == 0 || conns > MAX_CONNS {
        return Err(format!("connection count must be 1..={MAX_CONNS}"));
    }
    raise_nofile(conns);
    let rt = runtime(common.threads).map_err(|e| e.to_string())?;
    let json = common.json;
    let report = rt.block_on(async {
        match &scenario {
            Scenario::Echo {
                common,
                conns,
                size,
                depth,
                binary,
                count,
                engine,
            } => {
                echo::run(
                    common,
                    &echo::EchoOpts {
                        conns: *conns,
                        size: *size,
                        depth: *depth,
                        binary: *binary,
                        count: *count,
                        engine: *engine,
                    },
                )
                .await
            }
            Scenario::Connect {
                common,
                concurrency,
                close,
                count,
            } => connect::run(common, *concurrency, *close, *count).await,
            Scenario::Broadcast {
                common,
                subscribers,
                size,
                rate,
                window,
            } => {
                broadcast::run(
                    common,
                    &broadcast::BroadcastOpts {
                        subscribers: *subscribers,
                        size: *size,
                        rate: *rate,
                        window: *window,
                    },
                )
                .await
            }
            Scenario::Idle { common, conns } => idle::run(common, *conns).await,
            Scenario::Sink { .. } => unreachable!("handled in main"),
        }
    })?;
    // Connections still closing must not hold the process up.
    rt.shutdown_timeout(Duration::from_millis(200));
    report.emit(json);
    Ok(())
}
