//! Measurements and their report: the shared latency histogram, CPU and
//! memory readings from `/proc`, and the output as a table and as JSON.
//!
//! Latency goes into one HDR histogram (nanoseconds, 3 significant digits)
//! behind a mutex; connection tasks record into a small local batch and merge
//! it every [`BATCH`] samples, so the lock is taken rarely and no task keeps a
//! histogram of its own (10,000 of those would cost gigabytes).

use std::{
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Mutex,
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Samples a task collects before merging them into the shared histogram.
pub(crate) const BATCH: usize = 256;

/// Warming up: traffic flows but is not counted.
pub(crate) const WARMUP: u8 = 0;
/// Measuring: traffic is counted.
pub(crate) const MEASURE: u8 = 1;
/// Done: tasks stop sending and flush what they counted.
pub(crate) const STOP: u8 = 2;

/// Counters and the histogram every task of a scenario shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) phase: AtomicU8,
    pub(crate) ops: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Tasks that finished their bounded work (echo `--count`).
    pub(crate) done: AtomicU64,
    hist: Mutex<Histogram<u64>>,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            phase: AtomicU8::new(WARMUP),
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            done: AtomicU64::new(0),
            // 1 ns to 100 s: any latency a loopback run can see.
            hist: Mutex::new(Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("bounds")),
        }
    }

    pub(crate) fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Merges a task's batch of latencies (nanoseconds) and counts.
    pub(crate) fn flush(&self, local: &mut Local) {
        if local.ops > 0 {
            self.ops.fetch_add(local.ops, Ordering::Relaxed);
            self.bytes.fetch_add(local.bytes, Ordering::Relaxed);
        }
        if !local.latencies.is_empty() {
            let mut h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
            for &ns in &local.latencies {
                h.saturating_record(ns.max(1));
            }
        }
        local.ops = 0;
        local.bytes = 0;
        local.latencies.clear();
    }

    /// Operations and payload bytes counted so far.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.ops.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn latency(&self) -> Option<Latency> {
        let h = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        Latency::from_histogram(&h)
    }
}

/// A task's unmerged counts.
#[derive(Debug, Default)]
pub(crate) struct Local {
    pub(crate) ops: u64,
    pub(crate) bytes: u64,
    pub(crate) latencies: Vec<u64>,
}

impl Local {
    pub(crate) fn new() -> Local {
        Local {
            latencies: Vec::with_capacity(BATCH),
            ..Local::default()
        }
    }

    /// Counts one operation; merges into `shared` when the batch is full.
    #[inline]
    pub(crate) fn record(&mut self, shared: &Shared, latency_ns: u64, bytes: usize) {
        self.ops += 1;
        self.bytes += bytes as u64;
        self.latencies.push(latency_ns);
        if self.latencies.len() >= BATCH {
            shared.flush(self);
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Latency {
    pub(crate) samples: u64,
    pub(crate) mean_us: f64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
}

impl Latency {
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Latency {
            samples: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        })
    }
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
///
/// Fields 14 and 15 after the parenthesised command name, in clock ticks of
/// 1/100 s (`USER_HZ` is 100 on every Linux this runs on).
pub(crate) fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_stat_cpu(&std::fs::read_to_string(path).ok()?)
}

fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    // The command name may contain spaces and parentheses: split at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Resident set size of `pid` in KiB, from `VmRSS` in `/proc/PID/status`.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    parse_vmrss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_vmrss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// CPU readings at the start of the measured window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMark {
    client: Option<Duration>,
    server: Option<Duration>,
}

impl CpuMark {
    pub(crate) fn now(server_pid: Option<u32>) -> CpuMark {
        CpuMark {
            client: cpu_time(None),
            server: server_pid.and_then(|p| cpu_time(Some(p))),
        }
    }

    /// Cores used by the client and the server since `self` over `wall`.
    pub(crate) fn usage(
        &self,
        server_pid: Option<u32>,
        wall: Duration,
    ) -> (Option<f64>, Option<f64>) {
        let later = CpuMark::now(server_pid);
        let frac = |a: Option<Duration>, b: Option<Duration>| {
            Some((b?.saturating_sub(a?)).as_secs_f64() / wall.as_secs_f64().max(1e-9))
        };
        (
            frac(self.client, later.client),
            frac(self.server, later.server),
        )
    }
}

/// The result of one scenario run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: &'static str,
    pub(crate) label: Option<String>,
    pub(crate) url: String,
    /// The scenario's parameters as given.
    pub(crate) params: serde_json::Value,
    /// What drove the connections (echo: `uring` or `tokio`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) engine: Option<&'static str>,
    /// Connections open during the measurement.
    pub(crate) connections: usize,
    /// Length of the measured window in seconds.
    pub(crate) duration_s: f64,
    /// What `ops` counts: echoed messages, handshakes, deliveries.
    pub(crate) unit: &'static str,
    pub(crate) ops: u64,
    pub(crate) ops_per_s: f64,
    /// Payload bytes received per second.
    pub(crate) bytes_per_s: f64,
    pub(crate) errors: u64,
    pub(crate) latency: Option<Latency>,
    /// Cores the load tool used during the window (1.0 = one core busy).
    pub(crate) client_cpu: Option<f64>,
    /// Cores the server used during the window (needs `--pid`).
    pub(crate) server_cpu: Option<f64>,
    /// Scenario-specific numbers (memory, loss).
    pub(crate) extra: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// Server CPU time per operation in microseconds: what one message (or
    /// handshake, or delivery) costs the server, user plus kernel time. Unlike
    /// throughput it does not depend on how much CPU the server was given,
    /// so it stays comparable on a machine shared with other work.
    pub(crate) fn server_cpu_us_per_op(&self) -> Option<f64> {
        let cores = self.server_cpu?;
        (self.ops > 0).then(|| cores * self.duration_s * 1e6 / self.ops as f64)
    }

    /// The human-readable table.
    pub(crate) fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let label = self.label.as_deref().unwrap_or("");
        let _ = writeln!(s, "{} {} {}", self.scenario, label, self.url);
        let _ = writeln!(s, "  params       {}", self.params);
        if let Some(engine) = self.engine {
            let _ = writeln!(s, "  engine       {engine}");
        }
        let _ = writeln!(s, "  connections  {}", self.connections);
        let _ = writeln!(s, "  window       {:.2} s", self.duration_s);
        let _ = writeln!(
            s,
            "  throughput   {} {} ({} total)",
            group(self.ops_per_s),
            self.unit,
            self.ops
        );
        if self.bytes_per_s > 0.0 {
            let _ = writeln!(
                s,
                "  payload      {:.1} MiB/s",
                self.bytes_per_s / 1048576.0
            );
        }
        let _ = writeln!(s, "  errors       {}", self.errors);
        if let Some(l) = &self.latency {
            let _ = writeln!(
                s,
                "  latency µs   p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1}, {} samples)",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, l.samples
            );
        }
        let pct = |c: Option<f64>| c.map_or("-".to_owned(), |c| format!("{:.0}%", c * 100.0));
        let _ = writeln!(
            s,
            "  cpu          client {}  server {}{}",
            pct(self.client_cpu),
            pct(self.server_cpu),
            self.server_cpu_us_per_op()
                .map_or(String::new(), |us| format!(
                    "  ({us:.2} µs of server CPU per op)"
                ))
        );
        for (k, v) in &self.extra {
            let _ = writeln!(s, "  {k:<12} {v}");
        }
        s
    }

    /// Prints the table (stdout, or stderr when `json`) and the JSON object.
    pub(crate) fn emit(&self, json: bool) {
        if json {
            eprint!("{}", self.table());
            let mut v = serde_json::to_value(self).expect("report serializes");
            v["server_cpu_us_per_op"] = serde_json::json!(self.server_cpu_us_per_op());
            println!("{v}");
        } else {
            print!("{}", self.table());
        }
    }
}

/// `1234567.8` as `1,234,568`.
pub(crate) fn group(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        // Field 14 (utime) = 250 ticks, 15 (stime) = 50 ticks: 3 s.
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_secs(3)));
        assert!(cpu_time(None).is_some());
    }

    #[test]
    fn parses_vmrss() {
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss(status), Some(5120));
        assert_eq!(parse_vmrss("Name:\tx\n"), None);
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }

    #[test]
    fn batches_merge_into_percentiles() {
        let shared = Shared::new();
        let mut local = Local::new();
        for us in 1..=1000u64 {
            local.record(&shared, us * 1000, 10);
        }
        shared.flush(&mut local);
        assert_eq!(shared.ops.load(Ordering::Relaxed), 1000);
        assert_eq!(shared.bytes.load(Ordering::Relaxed), 10_000);
        let l = shared.latency().unwrap();
        assert_eq!(l.samples, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.4), "999");
        assert_eq!(group(1234567.8), "1,234,568");
    }
}
