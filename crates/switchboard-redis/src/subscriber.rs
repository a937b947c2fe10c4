//! The subscription side: one dedicated pub/sub connection, the node's own
//! registry of rooms it must receive, and the task that keeps the two in
//! step and hands incoming messages to the hub.
//!
//! The registry (`Subscriptions::desired`) is the truth; the connection's
//! subscriptions follow it. The hub changes the registry under its lock
//! (no I/O there); the task reconciles — SUBSCRIBE what is missing,
//! UNSUBSCRIBE what is extra — and after a reconnect it starts from an
//! empty set, so every room is subscribed again from the registry.
//!
//! Liveness: every `probe_interval` the task PINGs the connection and
//! publishes a probe to this node's own channel through the *command*
//! connection. A probe that has not come back within `probe_timeout` means
//! the subscription is silently dead (a green health check while nothing is
//! delivered is a bug): health turns red and the connection is rebuilt.
//! Reconnects use the capped backoff, forever. Messages are handled in
//! arrival order by this one task, which keeps each publisher's order.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use switchboard::{hub::Envelope, CloseFrame};
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

use crate::{
    backplane::Shared,
    control::Job,
    link::Backoff,
    wire::{self, Control},
};

/// Channels per batch of concurrent SUBSCRIBE/UNSUBSCRIBE commands (each
/// command names one channel: the client library matches one reply per
/// command).
const SUBSCRIBE_BATCH: usize = 256;

/// Distinct origin ids remembered to avoid one allocation per message.
const ORIGIN_CACHE: usize = 1024;

/// The rooms this node must receive, and what the connection has confirmed.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    desired: Mutex<HashSet<String>>,
    confirmed: Mutex<HashSet<String>>,
    /// Wakes the task when `desired` changes.
    changed: Notify,
}

impl Subscriptions {
    pub(crate) fn add(&self, room: &str) {
        self.desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(room.to_owned());
        self.changed.notify_one();
    }

    pub(crate) fn remove(&self, room: &str) {
        self.desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(room);
        self.changed.notify_one();
    }

    fn desired(&self) -> HashSet<String> {
        self.desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_confirmed(&self, rooms: &HashSet<String>) {
        *self.confirmed.lock().unwrap_or_else(|p| p.into_inner()) = rooms.clone();
    }

    /// Rooms Redis confirmed this node is subscribed to.
    pub(crate) fn confirmed(&self) -> usize {
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub(crate) fn is_confirmed(&self, room: &str) -> bool {
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(room)
    }
}

/// The subscription connection's health, read by `health()`.
#[derive(Debug, Default)]
pub(crate) struct SubHealth {
    up: AtomicBool,
    error: Mutex<Option<String>>,
    /// Highest probe sequence number received since the last (re)connect.
    received: AtomicU64,
    /// Sequence number handed to the last probe sent.
    next_seq: AtomicU64,
    /// The oldest probe Redis accepted that has not come back: its
    /// sequence number and when it was sent.
    waiting: Mutex<Option<(u64, Instant)>>,
}

impl SubHealth {
    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Option<(u64, Instant)>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_down(&self, why: String) {
        self.up.store(false, Ordering::Release);
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    fn set_up(&self) {
        self.received.store(0, Ordering::Release);
        *self.lock_waiting() = None;
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.up.store(true, Ordering::Release);
    }

    fn probe_sent(&self, seq: u64, at: Instant) {
        let mut waiting = self.lock_waiting();
        if waiting.is_none() && self.received.load(Ordering::Acquire) < seq {
            *waiting = Some((seq, at));
        }
    }

    fn probe_received(&self, seq: u64) {
        self.received.fetch_max(seq, Ordering::AcqRel);
        let mut waiting = self.lock_waiting();
        if waiting.is_some_and(|(s, _)| s <= seq) {
            *waiting = None;
        }
    }

    /// How long the oldest unanswered probe has been waiting.
    fn silent_for(&self) -> Duration {
        self.lock_waiting()
            .map_or(Duration::ZERO, |(_, at)| at.elapsed())
    }

    /// `None` when healthy, else why not.
    pub(crate) fn problem(&self, probe_timeout: Duration) -> Option<String> {
        if !self.up.load(Ordering::Acquire) {
            let why = self.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Some(format!(
                "redis subscription down: {}",
                why.as_deref().unwrap_or("connecting")
            ));
        }
        if self.received.load(Ordering::Acquire) == 0 {
            return Some("redis subscription not yet confirmed by a probe".into());
        }
        let silent = self.silent_for();
        if silent > probe_timeout {
            return Some(format!(
                "redis subscription silent: no probe back for {} ms",
                silent.as_millis()
            ));
        }
        None
    }
}

/// The subscriber task.
pub(crate) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let node_channel = shared.keys.node_channel(&config.node_id);
    let ctl_channel = shared.keys.ctl_channel();
    let mut origins: HashMap<Bytes, Arc<str>> = HashMap::new();
    loop {
        let attempt =
            tokio::time::timeout(config.connect_timeout, shared.client.get_async_pubsub());
        let pubsub = tokio::select! {
            r = attempt => r,
            _ = shutdown.changed() => return,
        };
        let why = match pubsub {
            Ok(Ok(pubsub)) => {
                let (mut sink, mut stream) = pubsub.split();
                let mut actual = HashSet::new();
                let setup = async {
                    subscribe_all(&mut sink, vec![node_channel.clone(), ctl_channel.clone()])
                        .await?;
                    reconcile(&shared, &mut sink, &mut actual).await
                };
                match tokio::time::timeout(config.command_timeout * 4, setup).await {
                    Ok(Ok(())) => {
                        backoff.reset();
                        shared.sub_health.set_up();
                        tracing::info!(rooms = actual.len(), "redis subscription up");
                        send_probe(&shared);
                        let mut tick = tokio::time::interval(config.probe_interval);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        tick.reset();
                        let why = loop {
                            tokio::select! {
                                msg = stream.next() => match msg {
                                    Some(msg) => dispatch(&shared, &msg, &mut origins),
                                    None => break "connection closed".to_owned(),
                                },
                                _ = shared.subs.changed.notified() => {
                                    let r = tokio::time::timeout(
                                        config.command_timeout * 4,
                                        reconcile(&shared, &mut sink, &mut actual),
                                    ).await;
                                    match r {
                                        Ok(Ok(())) => {}
                                        Ok(Err(e)) => break e,
                                        Err(_) => break "subscribe timed out".to_owned(),
                                    }
                                }
                                _ = tick.tick() => {
                                    let ping = tokio::time::timeout(
                                        config.command_timeout,
                                        sink.ping::<redis::Value>(),
                                    ).await;
                                    match ping {
                                        Ok(Ok(_)) => {}
                                        Ok(Err(e)) => break format!("ping failed: {e}"),
                                        Err(_) => break "ping timed out".to_owned(),
                                    }
                                    let silent = shared.sub_health.silent_for();
                                    if silent > config.probe_timeout {
                                        break format!(
                                            "no probe back for {} ms",
                                            silent.as_millis()
                                        );
                                    }
                                    send_probe(&shared);
                                }
                                _ = shutdown.changed() => return,
                            }
                        };
                        why
                    }
                    Ok(Err(e)) => e,
                    Err(_) => "subscribe timed out".to_owned(),
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_owned(),
        };
        tracing::warn!(error = %why, "redis subscription lost; reconnecting");
        shared.subs.set_confirmed(&HashSet::new());
        shared.sub_health.set_down(why);
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Subscribes every channel, one command each, a batch at a time.
async fn subscribe_all(sink: &mut PubSubSink, channels: Vec<String>) -> Result<(), String> {
    for chunk in channels.chunks(SUBSCRIBE_BATCH) {
        let calls = chunk.iter().map(|ch| {
            let mut sink = sink.clone();
            async move { sink.subscribe(ch).await }
        });
        for r in futures_util::future::join_all(calls).await {
            r.map_err(|e| format!("subscribe failed: {e}"))?;
        }
    }
    Ok(())
}

async fn unsubscribe_all(sink: &mut PubSubSink, channels: Vec<String>) -> Result<(), String> {
    for chunk in channels.chunks(SUBSCRIBE_BATCH) {
        let calls = chunk.iter().map(|ch| {
            let mut sink = sink.clone();
            async move { sink.unsubscribe(ch).await }
        });
        for r in futures_util::future::join_all(calls).await {
            r.map_err(|e| format!("unsubscribe failed: {e}"))?;
        }
    }
    Ok(())
}

/// Brings the connection's room subscriptions in line with the registry.
async fn reconcile(
    shared: &Shared,
    sink: &mut PubSubSink,
    actual: &mut HashSet<String>,
) -> Result<(), String> {
    // Loop until no change slipped in while we were talking to Redis.
    loop {
        let desired = shared.subs.desired();
        let add: Vec<String> = desired.difference(actual).cloned().collect();
        let drop: Vec<String> = actual.difference(&desired).cloned().collect();
        if add.is_empty() && drop.is_empty() {
            shared.subs.set_confirmed(actual);
            return Ok(());
        }
        let channel = |r: &String| shared.keys.room_channel(r);
        unsubscribe_all(sink, drop.iter().map(channel).collect()).await?;
        for r in &drop {
            actual.remove(r);
        }
        subscribe_all(sink, add.iter().map(channel).collect()).await?;
        actual.extend(add);
        shared.subs.set_confirmed(actual);
    }
}

/// Publishes a probe to this node's own channel (in the background: the
/// command connection may be the slow part).
fn send_probe(shared: &Arc<Shared>) {
    let seq = shared.sub_health.next_seq.fetch_add(1, Ordering::AcqRel) + 1;
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let at = Instant::now();
        let channel = shared.keys.node_channel(&shared.config.node_id);
        if shared
            .send_control(&channel, &Control::Probe { seq })
            .await
            .is_ok()
        {
            shared.sub_health.probe_sent(seq, at);
        }
    });
}

/// Hands one incoming message to the hub or the control plane.
fn dispatch(shared: &Shared, msg: &redis::Msg, origins: &mut HashMap<Bytes, Arc<str>>) {
    let channel = msg.get_channel_name();
    if let Some(room) = shared.keys.room_of(channel) {
        let bytes = Bytes::copy_from_slice(msg.get_payload_bytes());
        let env = match wire::decode_envelope(bytes) {
            Ok(env) => env,
            Err(e) => {
                tracing::debug!(error = %e, channel, "ignoring message");
                return;
            }
        };
        // Our own messages come back on the room channel: drop them here,
        // before they reach the hub's lock.
        if env.tail.origin == shared.config.node_id.as_bytes() {
            return;
        }
        let Some(sink) = shared.sink.get() else {
            return;
        };
        if origins.len() >= ORIGIN_CACHE {
            origins.clear();
        }
        let origin = origins
            .entry(env.tail.origin.clone())
            .or_insert_with(|| String::from_utf8_lossy(&env.tail.origin).into())
            .clone();
        sink.deliver(Envelope {
            origin,
            room: room.to_owned(),
            opcode: env.tail.opcode,
            payload: env.tail.payload,
            offset: Some(env.offset),
        });
        return;
    }
    let Ok(control) = serde_json::from_slice::<Control>(msg.get_payload_bytes()) else {
        tracing::debug!(channel, "ignoring malformed control message");
        return;
    };
    let me = &shared.config.node_id;
    let job = match control {
        Control::Probe { seq } => {
            shared.sub_health.probe_received(seq);
            return;
        }
        Control::Reply { id, from, body } => {
            shared.requests.answer(id, from, body);
            return;
        }
        Control::Stats { from, .. } if from == *me => return,
        Control::Stats { id, from } => Job::Stats { id, from },
        Control::Close {
            id,
            from,
            conn,
            code,
            reason,
        } => Job::Close {
            id,
            from,
            conn,
            frame: CloseFrame::new(code, &reason),
        },
    };
    // Full queue: the requester times out; room traffic is not held up.
    if shared.jobs.try_send(job).is_err() {
        tracing::debug!("cluster request dropped: worker busy");
    }
}
