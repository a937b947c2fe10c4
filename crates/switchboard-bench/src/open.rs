//! Opening many connections with a bounded number of handshakes in flight.
//!
//! Every scenario that holds connections (echo, broadcast, idle) opens them
//! here before it starts measuring, so handshake cost never leaks into the
//! measured window. Bounded in count (`n`), in concurrency, and in time (each
//! handshake has its own timeout and the whole phase a deadline).

use std::{sync::Arc, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::{task::JoinSet, time::Instant};

use crate::{
    client::{connect, Conn},
    target::{Sources, Target},
};

/// One handshake may take this long before it counts as an error.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole opening phase may take this long; connections not open by then
/// count as errors (a server that accepts 10,000 connections at 50/s is
/// broken for this purpose, and the run must stop by itself).
pub(crate) const OPEN_DEADLINE: Duration = Duration::from_secs(300);

/// A progress bar on stderr, hidden when `quiet` (indicatif also hides it
/// when stderr is not a terminal).
pub(crate) fn progress(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({elapsed})")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// The result of [`open_many`].
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) conns: Vec<Conn>,
    pub(crate) errors: u64,
    /// The first error seen, to tell the user why.
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
}

/// Opens `n` connections to `target`, at most `concurrency` handshakes at a
/// time, spreading them over `sources`.
pub(crate) async fn open_many(
    target: &Arc<Target>,
    n: usize,
    sources: &Sources,
    concurrency: usize,
    quiet: bool,
) -> Opened {
    let start = Instant::now();
    let deadline = start + OPEN_DEADLINE;
    let bar = progress(n as u64, "connecting", quiet || n < 1000);
    let mut set = JoinSet::new();
    let mut conns = Vec::with_capacity(n);
    let mut errors = 0u64;
    let mut first_error = None;
    let mut next = 0usize;
    let concurrency = concurrency.max(1);
    while next < n || !set.is_empty() {
        while next < n && set.len() < concurrency && Instant::now() < deadline {
            let target = Arc::clone(target);
            let source = sources.for_conn(next);
            set.spawn(async move { connect(&target, source, HANDSHAKE_TIMEOUT).await });
            next += 1;
        }
        if Instant::now() >= deadline && next < n {
            errors += (n - next) as u64;
            next = n;
        }
        match set.join_next().await {
            Some(Ok(Ok(conn))) => conns.push(conn),
            Some(Ok(Err(e))) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Some(Err(e)) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            None => {}
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Opened {
        conns,
        errors,
        first_error,
        elapsed: start.elapsed(),
    }
}
