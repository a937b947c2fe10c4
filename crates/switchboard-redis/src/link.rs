//! The command connection: one multiplexed Redis connection shared by
//! every command this node sends, and the task that keeps it up.
//!
//! The supervisor connects, hands the connection out, and waits to be told
//! it broke; then it drops it and reconnects with capped backoff, forever.
//! A user that sees an I/O error or a timeout reports it with the
//! connection's generation, so a stale report cannot tear down a fresh
//! connection. While there is no connection, callers fail at once instead
//! of queueing (see `unavailable`). This file does not decide *what* is
//! sent; it never retries a command.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, RedisError};
use switchboard::hub::BackplaneError;
use tokio::sync::{watch, Notify};

use crate::config::RedisConfig;

/// Capped exponential backoff with jitter (so a fleet of nodes does not
/// reconnect in lockstep after an outage).
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay before the next attempt: 75-100 % of the current step,
    /// which then doubles up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step.mul_f64(0.75 + rand::random::<f64>() * 0.25)
    }
}

/// Whether an error means the connection itself is gone or stuck (as
/// opposed to Redis refusing one command).
pub(crate) fn is_fatal(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

pub(crate) fn unavailable(detail: &str) -> BackplaneError {
    BackplaneError(format!("redis unavailable: {detail}"))
}

struct Current {
    generation: u64,
    conn: Option<MultiplexedConnection>,
    last_error: Option<String>,
}

/// The shared command connection.
pub(crate) struct Link {
    client: redis::Client,
    config: RedisConfig,
    current: Mutex<Current>,
    /// Set while a connection is installed; read on every publish to fail
    /// fast when Redis is known to be down.
    up: AtomicBool,
    /// Wakes the supervisor when a user reports the connection broken.
    broken: Notify,
    /// Bumped on every new connection; tasks that must redo work after a
    /// reconnect (resync presence, reload scripts) watch it.
    generation: watch::Sender<u64>,
}

impl Link {
    pub(crate) fn new(client: redis::Client, config: RedisConfig) -> Link {
        Link {
            client,
            config,
            current: Mutex::new(Current {
                generation: 0,
                conn: None,
                last_error: Some("not connected yet".into()),
            }),
            up: AtomicBool::new(false),
            broken: Notify::new(),
            generation: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Why the link is down (`None` while up).
    pub(crate) fn last_error(&self) -> Option<String> {
        let cur = self.lock();
        match cur.conn {
            Some(_) => None,
            None => cur.last_error.clone(),
        }
    }

    /// The connection and its generation, or why there is none.
    pub(crate) fn get(&self) -> Result<(u64, MultiplexedConnection), BackplaneError> {
        let cur = self.lock();
        match &cur.conn {
            Some(c) => Ok((cur.generation, c.clone())),
            None => Err(unavailable(
                cur.last_error.as_deref().unwrap_or("not connected"),
            )),
        }
    }

    pub(crate) fn generations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reports that generation `generation` failed with `why`; the
    /// supervisor replaces it (if it is still the current one).
    pub(crate) fn report(&self, generation: u64, why: &str) {
        let mut cur = self.lock();
        if cur.generation == generation && cur.conn.is_some() {
            tracing::warn!(error = why, "redis command connection lost");
            cur.conn = None;
            cur.last_error = Some(why.to_owned());
            self.up.store(false, Ordering::Release);
            drop(cur);
            self.broken.notify_one();
        }
    }

    /// Drops the connection for good (the supervisor has stopped).
    pub(crate) fn close(&self, why: &str) {
        let mut cur = self.lock();
        cur.conn = None;
        cur.last_error = Some(why.to_owned());
        self.up.store(false, Ordering::Release);
    }

    /// Runs one command with the command timeout; reports the connection
    /// on I/O errors and timeouts.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, BackplaneError> {
        let (generation, mut conn) = self.get()?;
        self.settle(
            generation,
            tokio::time::timeout(self.config.command_timeout, cmd.query_async(&mut conn)).await,
        )
    }

    /// Runs a script (EVALSHA, loading it if Redis lacks it) like `query`.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BackplaneError> {
        let (generation, mut conn) = self.get()?;
        self.settle(
            generation,
            tokio::time::timeout(
                self.config.command_timeout,
                invocation.invoke_async(&mut conn),
            )
            .await,
        )
    }

    /// Turns a timed command result into the backplane's error, reporting
    /// a broken connection.
    pub(crate) fn settle<T>(
        &self,
        generation: u64,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, BackplaneError> {
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if is_fatal(&e) {
                    self.report(generation, &e.to_string());
                }
                Err(BackplaneError(format!("redis: {e}")))
            }
            Err(_) => {
                self.report(generation, "command timed out");
                Err(BackplaneError("redis: command timed out".into()))
            }
        }
    }

    /// The supervisor: connect, wait for a report, reconnect; until
    /// `shutdown` flips (then the connection is dropped for good).
    pub(crate) async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        Arc::clone(&self).supervise(shutdown).await;
        self.close("backplane stopped");
    }

    async fn supervise(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.config.connect_timeout)
            .set_response_timeout(self.config.command_timeout);
        loop {
            let attempt = tokio::time::timeout(
                self.config.connect_timeout,
                self.client
                    .get_multiplexed_async_connection_with_config(&config),
            );
            let result = tokio::select! {
                r = attempt => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(Ok(conn)) => {
                    backoff.reset();
                    {
                        let mut cur = self.lock();
                        cur.generation += 1;
                        cur.conn = Some(conn);
                        cur.last_error = None;
                        self.generation.send_replace(cur.generation);
                    }
                    self.up.store(true, Ordering::Release);
                    tracing::info!("redis command connection up");
                    tokio::select! {
                        _ = self.broken.notified() => {}
                        _ = shutdown.changed() => return,
                    }
                }
                Ok(Err(e)) => self.down(e.to_string()),
                Err(_) => self.down("connect timed out".into()),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn down(&self, why: String) {
        tracing::debug!(error = %why, "redis connect failed");
        let mut cur = self.lock();
        cur.conn = None;
        cur.last_error = Some(why);
        self.up.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(1000));
        let steps: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (d, nominal) in steps
            .iter()
            .zip([50u64, 100, 200, 400, 800, 1000, 1000, 1000])
        {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *d <= nominal && *d >= nominal.mul_f64(0.75),
                "{d:?} vs {nominal:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(50));
    }
}
