//! Heartbeat, idle timeout and credential expiry: what each connection's
//! peer was last heard to send, and one timer per app that looks at every
//! server connection.
//!
//! A connection's receiver marks what it hears in [`Beat`] (a relaxed
//! load per message, see [`Beat::saw_peer`]); a tick stamps those marks
//! with its own time in the connection's [`Liveness`] and decides with
//! [`check`] whether the peer is due a ping or the connection a close.
//!
//! Server connections share one ticking task per app ([`Heartbeat`]): a
//! timer per connection was a task-owned `Interval` (a boxed `Sleep` of 112
//! bytes in the timer wheel, re-armed every tick) that also kept the
//! connection's writer task alive just to tick; with one shared timer an
//! idle connection needs no task of its own for writing (see `writer.rs`).
//! The registry is a slab (an index and a free list) under a mutex, touched
//! once when a connection starts and once when it ends; the ticker walks it
//! once per tick, under the lock only to read the marks, and pings or
//! closes after releasing it. It ticks at the shortest tick among its
//! connections: one that registers with a shorter tick than the ticker's
//! wakes it to shorten its current sleep, so its first check is as early as
//! its own timer's would be. Client connections (no app) keep the timer in
//! their writer task.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, Weak,
    },
    time::{Duration, Instant},
};

use slab::Slab;
use switchboard_proto::{CloseCode, CloseFrame};
use tokio::sync::Notify;

use crate::ws::{signal::ConnSignal, writer::Shared};

/// The peer sent some frame.
const HEARD_ANY: u8 = 1;
/// The peer sent a data message.
const HEARD_DATA: u8 = 2;

/// Milliseconds since a process-wide epoch (the first call): the time every
/// mark, deadline and tick is kept in.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What the peer sent since the last tick, and when credentials expire:
/// written by the connection, read by whoever ticks for it.
#[derive(Debug)]
pub(crate) struct Beat {
    /// `HEARD_*` bits, taken by the tick.
    heard: AtomicU8,
    /// `now_ms` after which the credentials expire (`u64::MAX`: never).
    expires_at: AtomicU64,
}

impl Default for Beat {
    fn default() -> Self {
        Beat {
            heard: AtomicU8::new(0),
            expires_at: AtomicU64::new(u64::MAX),
        }
    }
}

impl Beat {
    /// Records that the peer sent a frame (`data`: a data message).
    ///
    /// Per message this is one relaxed load (a read-modify-write only for
    /// the first message of a tick): reading the clock here instead was
    /// about 3% of an echo's instructions (docs/BENCHMARKS.md). The tick
    /// stamps what it finds with its own time, so a frame counts as heard
    /// up to one tick late: timeouts never fire early, and at most one tick
    /// later than they would with exact times.
    pub(crate) fn saw_peer(&self, data: bool) {
        let bits = if data {
            HEARD_ANY | HEARD_DATA
        } else {
            HEARD_ANY
        };
        if self.heard.load(Ordering::Relaxed) & bits != bits {
            self.heard.fetch_or(bits, Ordering::Relaxed);
        }
    }

    /// Sets when the connection's credentials expire (see `auth`).
    pub(crate) fn set_expiry(&self, at: Option<Instant>) {
        let ms = match at {
            None => u64::MAX,
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now()).as_millis() as u64;
                now_ms().saturating_add(left)
            }
        };
        self.expires_at.store(ms, Ordering::Release);
    }
}

/// A connection's timeouts (from its `WsConfig`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timers {
    /// Ping after this much silence from the peer (`None`: never).
    pub(crate) ping_interval: Option<Duration>,
    /// Close when a ping goes unanswered this long.
    pub(crate) pong_timeout: Duration,
    /// Close after this long without a data message (`None`: never).
    pub(crate) idle_timeout: Option<Duration>,
}

impl Timers {
    /// How often to look: an eighth of the shortest deadline, between 10 ms
    /// and a second. A frame from the peer is stamped by the next tick and
    /// a deadline noticed by the tick after it, so a deadline fires late by
    /// at most a quarter of it, never early.
    pub(crate) fn tick(&self) -> Duration {
        [
            self.ping_interval,
            self.idle_timeout,
            Some(self.pong_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
        .map_or(Duration::from_secs(1), |d| {
            (d / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
        })
    }
}

/// The heartbeat's view of the peer, kept by whoever ticks: `now_ms` times
/// as of the tick that noticed.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// When the peer was last heard from (any frame).
    seen: u64,
    /// When the last data message arrived (idle timeout).
    data: u64,
    /// What `seen` was when we last pinged (`None`: never pinged).
    ping: Option<u64>,
}

impl Liveness {
    /// A connection that starts now.
    pub(crate) fn new() -> Self {
        let now = now_ms();
        Liveness {
            seen: now,
            data: now,
            ping: None,
        }
    }
}

/// What a tick found due.
#[derive(Debug)]
pub(crate) enum Due {
    /// Ping the peer.
    Ping,
    /// End the connection with this close frame.
    Close(CloseFrame),
}

/// One tick for one connection at `now` (`now_ms`).
pub(crate) fn check(beat: &Beat, timers: &Timers, live: &mut Liveness, now: u64) -> Option<Due> {
    let heard = beat.heard.swap(0, Ordering::Relaxed);
    if heard & HEARD_ANY != 0 {
        live.seen = now;
    }
    if heard & HEARD_DATA != 0 {
        live.data = now;
    }
    if now >= beat.expires_at.load(Ordering::Acquire) {
        return Some(Due::Close(CloseFrame::new(
            CloseCode::POLICY_VIOLATION,
            "token expired",
        )));
    }
    if let Some(idle) = timers.idle_timeout {
        if now.saturating_sub(live.data) >= idle.as_millis() as u64 {
            return Some(Due::Close(CloseFrame::new(
                CloseCode::GOING_AWAY,
                "idle timeout",
            )));
        }
    }
    if let Some(interval) = timers.ping_interval {
        let silent = now.saturating_sub(live.seen);
        if silent >= (interval + timers.pong_timeout).as_millis() as u64 {
            return Some(Due::Close(CloseFrame::new(
                CloseCode::GOING_AWAY,
                "pong timeout",
            )));
        }
        // Ping once per silence: after `interval` without a frame from the
        // peer, and not again until the peer has been heard from.
        if silent >= interval.as_millis() as u64 && live.ping.is_none_or(|at| live.seen > at) {
            live.ping = Some(live.seen);
            return Some(Due::Ping);
        }
    }
    None
}

/// One registered connection.
struct Entry {
    /// Strong: the marks are read under the registry's lock, where dropping
    /// the last reference to a connection (which deregisters it) must not
    /// happen. A `ConnSignal` deregisters from a different lock.
    signal: Arc<ConnSignal>,
    /// Upgraded only after the lock is released, to ping or close.
    shared: Weak<Shared>,
    live: Liveness,
    timers: Timers,
}

#[derive(Default)]
struct Wheel {
    conns: Slab<Entry>,
    /// A ticker task is running for this registry.
    ticking: bool,
    /// The running ticker's period (meaningful while `ticking`).
    period: Duration,
}

/// An app's heartbeat: its server connections and the task that ticks for
/// them while there are any.
#[derive(Default)]
pub(crate) struct Heartbeat {
    wheel: Mutex<Wheel>,
    /// Wakes the ticker when `period` got shorter (a permit is kept if it
    /// is not waiting, so no shortening is missed). Shared with the ticker,
    /// which holds the heartbeat itself only weakly.
    shorter: Arc<Notify>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("conns", &self.lock().conns.len())
            .finish()
    }
}

impl Heartbeat {
    fn lock(&self) -> MutexGuard<'_, Wheel> {
        self.wheel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts ticking for a connection; returns its key (for
    /// `deregister`). Starts the ticker task if none runs (called on a
    /// Tokio runtime).
    pub(crate) fn register(
        self: &Arc<Self>,
        signal: Arc<ConnSignal>,
        shared: Weak<Shared>,
        timers: Timers,
    ) -> usize {
        let tick = timers.tick();
        let mut wheel = self.lock();
        let key = wheel.conns.insert(Entry {
            signal,
            shared,
            live: Liveness::new(),
            timers,
        });
        if !wheel.ticking {
            wheel.ticking = true;
            wheel.period = tick;
            let ticker = Ticker {
                heartbeat: Arc::downgrade(self),
                shorter: Arc::clone(&self.shorter),
                armed: true,
            };
            // Boxed: see `server::spawn_http1`.
            tokio::spawn(Box::pin(ticker.run(tick)));
        } else if tick < wheel.period {
            wheel.period = tick;
            self.shorter.notify_one();
        }
        key
    }

    /// Stops ticking for a connection (its own key, once).
    pub(crate) fn deregister(&self, key: usize) {
        // Dropped after the lock is released (it may be the connection
        // signal's last reference, whose drop takes another lock).
        let entry = self.lock().conns.try_remove(key);
        drop(entry);
    }

    /// Registered connections (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// Whether a ticker task runs (tests).
    #[cfg(test)]
    pub(crate) fn ticking(&self) -> bool {
        self.lock().ticking
    }
}

/// The ticking task's state. Dropped with its task (also when the runtime
/// shuts down), it lets the next registration start a new one.
struct Ticker {
    heartbeat: Weak<Heartbeat>,
    /// The heartbeat's `shorter`.
    shorter: Arc<Notify>,
    /// Clear once the task has given up `ticking` itself.
    armed: bool,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        if let (true, Some(hb)) = (self.armed, self.heartbeat.upgrade()) {
            hb.lock().ticking = false;
        }
    }
}

impl Ticker {
    /// Ticks at the shortest tick among the registered connections until
    /// none is left (or the app is gone).
    async fn run(mut self, period: Duration) {
        let mut due = Vec::new();
        let mut next = tokio::time::Instant::now() + period;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = self.shorter.notified() => {
                    // A connection with a shorter tick registered: tick no
                    // later than one of its periods from now.
                    if let Some(hb) = self.heartbeat.upgrade() {
                        let period = hb.lock().period;
                        next = next.min(tokio::time::Instant::now() + period);
                    }
                    continue;
                }
            }
            let Some(hb) = self.heartbeat.upgrade() else {
                return;
            };
            let now = now_ms();
            {
                let mut wheel = hb.lock();
                if wheel.conns.is_empty() {
                    wheel.ticking = false;
                    self.armed = false;
                    return;
                }
                let mut shortest = Duration::MAX;
                for (_, e) in wheel.conns.iter_mut() {
                    shortest = shortest.min(e.timers.tick());
                    if let Some(d) = check(&e.signal.beat, &e.timers, &mut e.live, now) {
                        due.push((e.shared.clone(), d));
                    }
                }
                wheel.period = shortest;
                next = tokio::time::Instant::now() + shortest;
            }
            for (shared, d) in due.drain(..) {
                if let Some(shared) = shared.upgrade() {
                    shared.act(d);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers(ping: Option<u64>, pong: u64, idle: Option<u64>) -> Timers {
        Timers {
            ping_interval: ping.map(Duration::from_millis),
            pong_timeout: Duration::from_millis(pong),
            idle_timeout: idle.map(Duration::from_millis),
        }
    }

    #[test]
    fn pings_once_per_silence_then_closes_when_no_pong_comes() {
        let beat = Beat::default();
        let t = timers(Some(100), 50, None);
        let mut live = Liveness::new();
        let start = live.seen;
        assert!(check(&beat, &t, &mut live, start + 99).is_none());
        assert!(matches!(
            check(&beat, &t, &mut live, start + 100),
            Some(Due::Ping)
        ));
        assert!(
            check(&beat, &t, &mut live, start + 120).is_none(),
            "one ping per silence"
        );
        // The pong is heard: the silence starts again.
        beat.saw_peer(false);
        assert!(check(&beat, &t, &mut live, start + 130).is_none());
        assert!(matches!(
            check(&beat, &t, &mut live, start + 230),
            Some(Due::Ping)
        ));
        match check(&beat, &t, &mut live, start + 280) {
            Some(Due::Close(c)) => {
                assert_eq!(
                    (c.code, c.reason.as_str()),
                    (CloseCode::GOING_AWAY, "pong timeout")
                )
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[test]
    fn idle_counts_data_only_and_expiry_closes_with_1008() {
        let beat = Beat::default();
        let t = timers(None, 1_000, Some(100));
        let mut live = Liveness::new();
        let start = live.seen;
        beat.saw_peer(false);
        assert!(check(&beat, &t, &mut live, start + 50).is_none());
        assert!(
            matches!(check(&beat, &t, &mut live, start + 100), Some(Due::Close(c)) if c.reason == "idle timeout"),
            "control frames do not keep a connection from idling"
        );
        let mut live = Liveness::new();
        let start = live.seen;
        beat.saw_peer(true);
        assert!(check(&beat, &t, &mut live, start + 60).is_none());
        assert!(check(&beat, &t, &mut live, start + 150).is_none());
        beat.set_expiry(Some(Instant::now()));
        assert!(matches!(
            check(&beat, &t, &mut live, now_ms() + 1),
            Some(Due::Close(c)) if c.code == CloseCode::POLICY_VIOLATION
        ));
    }

    #[test]
    fn the_tick_is_an_eighth_of_the_shortest_deadline_within_bounds() {
        assert_eq!(
            timers(Some(8_000), 16_000, None).tick(),
            Duration::from_secs(1)
        );
        assert_eq!(
            timers(Some(800), 4_000, None).tick(),
            Duration::from_millis(100)
        );
        assert_eq!(
            timers(None, 40, Some(10_000)).tick(),
            Duration::from_millis(10)
        );
    }
}
