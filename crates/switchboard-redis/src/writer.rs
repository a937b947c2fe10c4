//! The publish path: one bounded, ordered queue and the one task that
//! drains it into Redis.
//!
//! `enqueue` runs under the hub lock, so it only checks limits and pushes:
//! a message takes its place in the order when `publish` is called. The
//! writer takes everything queued (up to `BATCH`), and hands it as one
//! pipeline of EVALSHA calls to the command connection before it builds
//! the next one; a multiplexed connection writes requests in the order it
//! receives them and Redis runs them in that order, so every room's
//! messages from this node keep their order with up to `MAX_IN_FLIGHT`
//! pipelines unanswered. Batching is what makes it fast (one write per
//! batch, not per message); several pipelines in flight hide the round
//! trip.
//!
//! Limits: the queue holds at most `queue_len` messages and `queue_bytes`
//! payload bytes; a publish beyond either fails at once ("queue full").
//! When the link is down, publishes fail at once without queueing.
//!
//! A queued message is sent whether or not anyone still waits for its
//! answer: dropping the future `publish` returned only discards the
//! acknowledgement (the hub's fire-and-forget broadcasts rely on it). The
//! one exception is a message whose deadline passed before the writer
//! reached it: it is never sent, because its caller was already told it
//! timed out (a publish reported as failed before it was sent is never
//! sent later).
//!
//! # Counting failures: the rule
//!
//! A publish that failed is counted in `publish_errors` exactly once, one
//! that succeeded never, whether or not its future is awaited:
//!
//! - before a [`Job`] exists (the link is known down) the backplane's
//!   `publish` counts the failure itself;
//! - from the moment a `Job` exists, its [`Reply`] is the only counter:
//!   [`Reply::send`] counts an error it delivers (the queue's refusal
//!   included), and a `Reply` dropped without answering (the writer
//!   stopped with it queued or in flight) counts in its `Drop`. A reply
//!   answers once (`send` consumes it), so it cannot count twice;
//! - an answer that comes after the job's deadline is delivered as a
//!   timeout, and counted, even when Redis did run the script: the caller
//!   who awaited it already got a timeout from its future's own timer,
//!   which counts nothing (the job is still held here and will be
//!   answered). So the count always equals the number of failed results a
//!   caller awaiting every future would see.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::Poll,
    time::Duration,
};

use futures_util::{stream::FuturesOrdered, StreamExt};

use bytes::Bytes;
use redis::Value;
use switchboard::hub::{BackplaneError, Published};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

use crate::{keys::Keys, link::Link, scripts, RedisConfig};

/// Most messages per pipeline: large enough to amortize the round trip at
/// tens of thousands of messages per second, small enough that one batch's
/// replies arrive well within the publish timeout.
const BATCH: usize = 512;

/// What a publish's future waits on.
pub(crate) type Answer = oneshot::Receiver<Result<Published, BackplaneError>>;

/// One queued publish.
pub(crate) struct Job {
    pub(crate) room: String,
    pub(crate) head: Vec<u8>,
    pub(crate) payload: Bytes,
    pub(crate) reply: Reply,
}

impl Job {
    fn deadline(&self) -> Instant {
        self.reply.deadline
    }
}

/// Where a job's outcome goes, and the one place a queued job's failure
/// is counted (see the module docs for the rule).
pub(crate) struct Reply {
    /// `None` once answered.
    tx: Option<oneshot::Sender<Result<Published, BackplaneError>>>,
    deadline: Instant,
    errors: Arc<AtomicU64>,
}

impl Reply {
    /// Answers the job (whether or not anyone still listens), counting a
    /// failure. An answer past the deadline is a timeout: the caller's
    /// future has given up, or would have.
    fn send(mut self, result: Result<Published, BackplaneError>) {
        // A future whose timer fired did so at or after the deadline, and
        // before this answer arrived: so this answer is an error too, and
        // the caller's timeout is counted here, once.
        let result = match result {
            Ok(_) if Instant::now() >= self.deadline => Err(timed_out()),
            other => other,
        };
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(result);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        // Never answered: the job was refused or abandoned (the writer
        // stopped). The future sees a closed channel; this is its count.
        if self.tx.take().is_some() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The error of a publish not confirmed by its deadline.
pub(crate) fn timed_out() -> BackplaneError {
    BackplaneError("redis: publish timed out".into())
}

/// The producer side of the queue.
pub(crate) struct Queue {
    tx: mpsc::Sender<Job>,
    /// Payload bytes queued and not yet sent (the byte limit's counter).
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    /// The backplane's `publish_errors`, counted by each job's [`Reply`].
    errors: Arc<AtomicU64>,
}

impl Queue {
    pub(crate) fn new(
        config: &RedisConfig,
        errors: Arc<AtomicU64>,
    ) -> (Queue, mpsc::Receiver<Job>, Arc<AtomicUsize>) {
        // Bounded: the message limit is the channel's capacity.
        let (tx, rx) = mpsc::channel(config.queue_len);
        let bytes = Arc::new(AtomicUsize::new(0));
        (
            Queue {
                tx,
                bytes: Arc::clone(&bytes),
                max_bytes: config.queue_bytes,
                errors,
            },
            rx,
            bytes,
        )
    }

    /// Queues a publish without waiting: from here on its outcome is
    /// counted by its [`Reply`] (a refusal too). Fails if the queue is
    /// full or the writer has stopped.
    pub(crate) fn enqueue(
        &self,
        room: String,
        head: Vec<u8>,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<Answer, BackplaneError> {
        let (tx, answer) = oneshot::channel();
        let job = Job {
            room,
            head,
            payload,
            reply: Reply {
                tx: Some(tx),
                deadline,
                errors: Arc::clone(&self.errors),
            },
        };
        let n = job.payload.len();
        let before = self.bytes.fetch_add(n, Ordering::AcqRel);
        if before + n > self.max_bytes && before > 0 {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            let e = BackplaneError("redis publish queue full (bytes)".into());
            job.reply.send(Err(e.clone()));
            return Err(e);
        }
        match self.tx.try_send(job) {
            Ok(()) => Ok(answer),
            Err(refused) => {
                self.bytes.fetch_sub(n, Ordering::AcqRel);
                let (job, e) = match refused {
                    mpsc::error::TrySendError::Full(job) => {
                        (job, BackplaneError("redis publish queue full".into()))
                    }
                    mpsc::error::TrySendError::Closed(job) => {
                        (job, BackplaneError("redis backplane shut down".into()))
                    }
                };
                job.reply.send(Err(e.clone()));
                Err(e)
            }
        }
    }
}

/// The writer task.
pub(crate) struct Writer {
    link: Arc<Link>,
    keys: Keys,
    config: RedisConfig,
    rx: mpsc::Receiver<Job>,
    bytes: Arc<AtomicUsize>,
    /// Script arguments, formatted once.
    history: String,
    retention: String,
}

impl Writer {
    pub(crate) fn new(
        link: Arc<Link>,
        keys: Keys,
        config: RedisConfig,
        rx: mpsc::Receiver<Job>,
        bytes: Arc<AtomicUsize>,
    ) -> Writer {
        Writer {
            history: config.history.to_string(),
            retention: config.retention.as_millis().to_string(),
            link,
            keys,
            config,
            rx,
            bytes,
        }
    }
}

/// Pipelines sent and not yet answered. Replies on one connection come
/// back in the order the pipelines were written, so several may be in
/// flight without breaking the order; more than one hides the round trip
/// (at 10 000 messages/s a message would otherwise wait for the previous
/// batch's reply before its own is even sent). Four keeps at most
/// 4 x `BATCH` messages unanswered.
const MAX_IN_FLIGHT: usize = 4;

/// A pipeline in flight: its jobs, the connection generation, whether it
/// began with `SCRIPT LOAD`, and Redis' answer.
type Flight = Pin<Box<dyn Future<Output = Landed> + Send>>;
type Landed = (
    Vec<Job>,
    u64,
    bool,
    Result<redis::RedisResult<Vec<Value>>, tokio::time::error::Elapsed>,
);

impl Writer {
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut jobs = Vec::with_capacity(BATCH);
        // The generation on which `SCRIPT LOAD` of PUBLISH was sent (Redis
        // forgets scripts on restart; a new connection may mean a new
        // Redis). Later pipelines on that connection run after it.
        let mut loaded: Option<u64> = None;
        let mut in_flight: FuturesOrdered<Flight> = FuturesOrdered::new();
        loop {
            tokio::select! {
                biased;
                Some(landed) = in_flight.next(), if !in_flight.is_empty() => {
                    self.land(landed, &mut loaded);
                }
                n = self.rx.recv_many(&mut jobs, BATCH), if in_flight.len() < MAX_IN_FLIGHT => {
                    if n == 0 {
                        return;
                    }
                    if let Some(mut flight) = self.launch(&mut jobs, &mut loaded) {
                        // The first poll hands the pipeline to the
                        // connection, which fixes its place in the order
                        // before the next batch is built.
                        let first = std::future::poll_fn(|cx| Poll::Ready(flight.as_mut().poll(cx))).await;
                        match first {
                            Poll::Ready(landed) => self.land(landed, &mut loaded),
                            Poll::Pending => in_flight.push_back(flight),
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Builds and starts a pipeline for `jobs` (emptied); `None` when
    /// nothing is left to send.
    fn launch(&self, jobs: &mut Vec<Job>, loaded: &mut Option<u64>) -> Option<Flight> {
        let bytes: usize = jobs.iter().map(|j| j.payload.len()).sum();
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        let now = Instant::now();
        // Sent whether or not the caller still waits for the answer, except
        // past the deadline: that caller was told it timed out, so the
        // message is never sent, and is counted here (by its reply).
        let mut jobs = std::mem::replace(jobs, Vec::with_capacity(BATCH));
        if jobs.iter().any(|j| j.deadline() <= now) {
            let (live, expired): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| j.deadline() > now);
            for job in expired {
                job.reply.send(Err(BackplaneError(
                    "redis: publish timed out before it was sent".into(),
                )));
            }
            jobs = live;
        }
        if jobs.is_empty() {
            return None;
        }
        let (generation, mut conn) = match self.link.get() {
            Ok(c) => c,
            Err(e) => {
                fail_all(&mut jobs, &e);
                return None;
            }
        };
        let mut pipe = redis::pipe();
        let load_first = *loaded != Some(generation);
        if load_first {
            pipe.cmd("SCRIPT").arg("LOAD").arg(scripts::PUBLISH_SRC);
            *loaded = Some(generation);
        }
        for job in &jobs {
            pipe.cmd("EVALSHA")
                .arg(scripts::PUBLISH.get_hash())
                .arg(2)
                .arg(self.keys.meta(&job.room))
                .arg(self.keys.log(&job.room))
                .arg(self.keys.room_channel(&job.room))
                .arg(crate::new_epoch())
                .arg(&self.history)
                .arg(&self.retention)
                .arg(&job.head[..])
                .arg(&job.payload[..]);
        }
        // The latest deadline bounds the wait; an answer past a job's own
        // deadline is reported to it as a timeout (`Reply::send`).
        let wait = jobs
            .iter()
            .map(Job::deadline)
            .max()
            .map_or(Duration::ZERO, |d| d.saturating_duration_since(now))
            .max(self.config.command_timeout);
        Some(Box::pin(async move {
            let count = pipe.len();
            let result =
                tokio::time::timeout(wait, conn.send_packed_commands(&pipe, 0, count)).await;
            (jobs, generation, load_first, result)
        }))
    }

    /// Answers the jobs of a pipeline that came back (or failed).
    fn land(&self, (mut jobs, generation, load_first, result): Landed, loaded: &mut Option<u64>) {
        let values = match self.link.settle(generation, result) {
            Ok(v) => v,
            Err(e) => {
                if *loaded == Some(generation) {
                    *loaded = None;
                }
                fail_all(&mut jobs, &e);
                return;
            }
        };
        let mut values = values.into_iter();
        if load_first {
            if let Some(Value::ServerError(e)) = values.next() {
                *loaded = None;
                fail_all(&mut jobs, &BackplaneError(format!("redis: {e:?}")));
                return;
            }
        }
        for (job, value) in jobs.drain(..).zip(values.by_ref()) {
            let result = parse_published(value);
            if let Err(e) = &result {
                if e.0.contains("NOSCRIPT") {
                    *loaded = None;
                }
            }
            job.reply.send(result);
        }
        // A short reply (should not happen) must still answer everyone.
        fail_all(&mut jobs, &BackplaneError("redis: missing reply".into()));
    }
}

/// Answers every job with `e` (each counted once, by its reply).
fn fail_all(jobs: &mut Vec<Job>, e: &BackplaneError) {
    for job in jobs.drain(..) {
        job.reply.send(Err(e.clone()));
    }
}

/// `{offset, epoch}` from the publish script.
pub(crate) fn parse_published(value: Value) -> Result<Published, BackplaneError> {
    match value {
        Value::Array(items) => match &items[..] {
            [Value::Int(offset), epoch] => Ok(Published {
                offset: u64::try_from(*offset)
                    .map_err(|_| BackplaneError("redis: negative offset".into()))?,
                epoch: redis::from_redis_value(epoch)
                    .map_err(|e| BackplaneError(format!("redis: bad epoch: {e}")))?,
            }),
            _ => Err(BackplaneError(format!(
                "redis: unexpected publish reply {items:?}"
            ))),
        },
        Value::ServerError(e) => Err(BackplaneError(format!(
            "redis: {} {}",
            e.code(),
            e.details().unwrap_or_default()
        ))),
        other => Err(BackplaneError(format!(
            "redis: unexpected publish reply {other:?}"
        ))),
    }
}
