//! [`RedisBackplane`]: the [`Backplane`] implementation, gluing the tasks
//! together (command link, publish writer, subscriber, presence sync,
//! request worker) and answering the hub's calls.
//!
//! Every trait method here returns without waiting on Redis (the hub calls
//! several of them under its lock); the async ones return futures bounded
//! by the configured timeouts. Nothing here calls the hub while holding a
//! lock of its own.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use redis::Value;
use switchboard::{
    hub::{
        Backplane, BackplaneError, BackplaneFuture, BackplaneHealth, ConnId, Envelope,
        HistoryEntry, NodeStats, PresenceInfo, Published, RecoveryError, RemoteSink,
        StreamPosition,
    },
    proto::Frame,
    CloseFrame,
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use crate::{
    config::RedisConfig,
    control::{self, Requests},
    keys::Keys,
    link::{unavailable, Link},
    presence::{self, Registry},
    scripts,
    subscriber::{self, SubHealth, Subscriptions},
    wire::{self, Control},
    writer::{self, Queue, Writer},
    Error,
};

/// State shared by the handle and the tasks.
pub(crate) struct Shared {
    pub(crate) config: RedisConfig,
    pub(crate) keys: Keys,
    pub(crate) client: redis::Client,
    pub(crate) link: Arc<Link>,
    pub(crate) queue: Queue,
    pub(crate) presence: Arc<Registry>,
    pub(crate) subs: Subscriptions,
    pub(crate) sub_health: SubHealth,
    /// The hub, once it attached itself.
    pub(crate) sink: OnceLock<RemoteSink>,
    pub(crate) requests: Requests,
    /// Requests from other nodes, for the worker (bounded: `JOB_QUEUE`).
    pub(crate) jobs: mpsc::Sender<control::Job>,
    /// Publishes that failed, each counted once whether or not its future
    /// was awaited (shared with the queue; see `writer` for the rule).
    pub(crate) publish_errors: Arc<AtomicU64>,
}

impl Shared {
    /// Publishes a control message; returns how many subscribers got it.
    pub(crate) async fn send_control(
        &self,
        channel: &str,
        msg: &Control,
    ) -> Result<i64, BackplaneError> {
        let body = serde_json::to_vec(msg).map_err(|e| BackplaneError(e.to_string()))?;
        self.link
            .query(redis::cmd("PUBLISH").arg(channel).arg(body))
            .await
    }

    fn health(&self) -> BackplaneHealth {
        let mut problems = Vec::new();
        if let Some(e) = self.link.last_error() {
            problems.push(format!("redis command connection down: {e}"));
        }
        if let Some(p) = self.sub_health.problem(self.config.probe_timeout) {
            problems.push(p);
        }
        BackplaneHealth {
            healthy: problems.is_empty(),
            detail: (!problems.is_empty()).then(|| problems.join("; ")),
            subscriptions: self.subs.confirmed(),
            publish_errors: self.publish_errors.load(Ordering::Relaxed),
        }
    }

    async fn cluster_stats(self: Arc<Self>) -> Result<Vec<NodeStats>, BackplaneError> {
        let me = self.config.node_id.clone();
        let live: Vec<String> = self
            .link
            .invoke(
                scripts::LIVE_NODES
                    .key(self.keys.nodes())
                    .arg(self.keys.alive_prefix()),
            )
            .await?;
        let mut expected: std::collections::BTreeSet<String> =
            live.into_iter().filter(|n| *n != me).collect();
        let mut out = vec![NodeStats {
            node: me.clone(),
            stats: self.sink.get().and_then(|s| s.local_stats()),
        }];
        if !expected.is_empty() {
            let mut pending = self.requests.register(expected.len())?;
            let request = Control::Stats {
                id: pending.id,
                from: me,
            };
            self.send_control(&self.keys.ctl_channel(), &request)
                .await?;
            let deadline = Instant::now() + self.config.request_timeout;
            while !expected.is_empty() {
                match tokio::time::timeout_at(deadline, pending.answers.recv()).await {
                    Ok(Some((from, body))) => {
                        if expected.remove(&from) {
                            out.push(NodeStats {
                                node: from,
                                stats: serde_json::from_value(body).ok().flatten(),
                            });
                        }
                    }
                    _ => break,
                }
            }
        }
        out.extend(
            expected
                .into_iter()
                .map(|node| NodeStats { node, stats: None }),
        );
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    async fn close(
        self: Arc<Self>,
        node: String,
        conn: ConnId,
        frame: CloseFrame,
    ) -> Result<bool, BackplaneError> {
        if node == self.config.node_id {
            return Ok(self.sink.get().is_some_and(|s| s.close_local(conn, &frame)));
        }
        let mut pending = self.requests.register(1)?;
        let request = Control::Close {
            id: pending.id,
            from: self.config.node_id.clone(),
            conn: conn.0,
            code: frame.code.into(),
            reason: frame.reason,
        };
        let receivers = self
            .send_control(&self.keys.node_channel(&node), &request)
            .await?;
        if receivers == 0 {
            // Nobody listens on that node's channel: no such node (now).
            return Ok(false);
        }
        match tokio::time::timeout(self.config.request_timeout, pending.answers.recv()).await {
            Ok(Some((_, body))) => Ok(body["closed"].as_bool().unwrap_or(false)),
            _ => Err(BackplaneError(format!("node {node} did not answer"))),
        }
    }
}

/// Stops the tasks when the last handle goes (dropping the sender wakes
/// every task's shutdown branch).
struct Stop(watch::Sender<bool>);

/// The Redis backplane: one per node. Cheap to clone.
///
/// Create it inside a tokio runtime; it connects in the background and
/// reconnects forever, so it is usable (publishing fails fast) while Redis
/// is down. Dropping every handle stops its tasks *without* cleaning up
/// Redis (like a crash: this node's presence expires after the TTL); call
/// [`RedisBackplane::shutdown`] for a clean exit.
///
/// ```no_run
/// use std::sync::Arc;
/// use switchboard::hub::{Hub, HubConfig};
/// use switchboard_redis::{RedisBackplane, RedisConfig};
///
/// # async fn run() -> Result<(), switchboard_redis::Error> {
/// let backplane = RedisBackplane::new(RedisConfig::new("redis://127.0.0.1:6379", "node-a"))?;
/// let hub = Hub::with_backplane(HubConfig::default(), Arc::new(backplane.clone()));
/// backplane.ready(std::time::Duration::from_secs(2)).await;
/// hub.broadcast_to("lobby", "hello from node-a");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackplane {
    shared: Arc<Shared>,
    stop: Arc<Stop>,
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("node_id", &self.shared.config.node_id)
            .field("url", &crate::config::redact(&self.shared.config.url))
            .finish_non_exhaustive()
    }
}

impl RedisBackplane {
    /// Starts the backplane's tasks on the current tokio runtime. Fails
    /// only on invalid settings or outside a runtime, never because Redis
    /// is down.
    pub fn new(config: RedisConfig) -> Result<RedisBackplane, Error> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::config(format!("invalid redis url: {e}")))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::config("RedisBackplane::new must run inside a tokio runtime"))?;
        let (stop, stopped) = watch::channel(false);
        let link = Arc::new(Link::new(client.clone(), config.clone()));
        let publish_errors = Arc::new(AtomicU64::new(0));
        let (queue, rx, queued_bytes) = Queue::new(&config, Arc::clone(&publish_errors));
        let (jobs, jobs_rx) = mpsc::channel(control::JOB_QUEUE);
        let shared = Arc::new(Shared {
            keys: Keys::new(&config.prefix),
            client,
            link: Arc::clone(&link),
            queue,
            presence: Arc::new(Registry::default()),
            subs: Subscriptions::default(),
            sub_health: SubHealth::default(),
            sink: OnceLock::new(),
            requests: Requests::default(),
            jobs,
            publish_errors,
            config,
        });
        runtime.spawn(Arc::clone(&link).run(stopped.clone()));
        runtime.spawn(
            Writer::new(
                Arc::clone(&link),
                shared.keys.clone(),
                shared.config.clone(),
                rx,
                queued_bytes,
            )
            .run(stopped.clone()),
        );
        runtime.spawn(subscriber::run(Arc::clone(&shared), stopped.clone()));
        runtime.spawn(shared.presence_sync().run(stopped.clone()));
        runtime.spawn(control::worker(Arc::clone(&shared), jobs_rx, stopped));
        Ok(RedisBackplane {
            shared,
            stop: Arc::new(Stop(stop)),
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &RedisConfig {
        &self.shared.config
    }

    /// Waits until the backplane is healthy (both connections up and a
    /// probe came back), at most `timeout`; returns whether it is.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.health().healthy {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether Redis confirmed this node's subscription to `room`.
    pub fn is_subscribed(&self, room: &str) -> bool {
        self.shared.subs.is_confirmed(room)
    }

    /// Stops every task of this backplane at once, cleaning up nothing —
    /// what a crash does (tests use it to play a killed node). Publishing
    /// fails from then on; this node's presence expires after the TTL.
    pub fn abort(&self) {
        self.stop.0.send_replace(true);
        self.shared.link.close("backplane stopped");
    }

    /// Leaves the cluster cleanly: removes this node's presence entries and
    /// alive key (best effort, bounded by the command timeout), then stops
    /// the tasks of every clone of this handle.
    pub async fn shutdown(&self) {
        if let Err(e) = self.shared.presence_sync().remove_all().await {
            tracing::warn!(error = %e, "could not remove presence on shutdown");
        }
        self.abort();
    }
}

impl Shared {
    fn presence_sync(self: &Arc<Self>) -> presence::Sync {
        presence::Sync {
            registry: Arc::clone(&self.presence),
            link: Arc::clone(&self.link),
            keys: self.keys.clone(),
            config: self.config.clone(),
        }
    }
}

fn ready<T: Send + 'static>(value: T) -> BackplaneFuture<T> {
    Box::pin(std::future::ready(value))
}

impl Backplane for RedisBackplane {
    fn node_id(&self) -> &str {
        &self.shared.config.node_id
    }

    fn attach(&self, sink: RemoteSink) {
        if self.shared.sink.set(sink).is_err() {
            tracing::warn!("a RedisBackplane serves one hub; ignoring a second attach");
        }
    }

    fn subscribe(&self, room: &str) {
        self.shared.subs.add(room);
    }

    fn unsubscribe(&self, room: &str) {
        self.shared.subs.remove(room);
    }

    /// Queued now, in this node's order; sent even if the future is
    /// dropped. Each failure is counted once in `publish_errors`: here
    /// when the link is known down (no job is made), otherwise by the
    /// job's reply in the writer (the queue refusing it included). The
    /// future itself never counts: its timeout fires only for a job the
    /// writer still holds and will answer, late, as a counted timeout.
    fn publish(&self, envelope: Envelope) -> BackplaneFuture<Result<Published, BackplaneError>> {
        let shared = &self.shared;
        if !shared.link.is_up() {
            let why = shared.link.last_error().unwrap_or_default();
            shared.publish_errors.fetch_add(1, Ordering::Relaxed);
            return ready(Err(unavailable(&why)));
        }
        let deadline = Instant::now() + shared.config.publish_timeout;
        let answer = match shared.queue.enqueue(
            envelope.room,
            wire::head(envelope.opcode, &envelope.origin),
            envelope.payload,
            deadline,
        ) {
            Ok(answer) => answer,
            // Counted by the refused job's reply.
            Err(e) => return ready(Err(e)),
        };
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(result)) => result,
                // The reply was dropped unanswered (the writer stopped);
                // its drop counted it.
                Ok(Err(_)) => Err(BackplaneError("redis backplane shut down".into())),
                // The writer still holds the job: it will answer it with a
                // timeout and count it then (`writer::Reply::send`).
                Err(_) => Err(writer::timed_out()),
            }
        })
    }

    fn presence_join(&self, room: &str, conn: ConnId, meta: Arc<serde_json::Value>) {
        self.shared.presence.join(room, conn, meta);
    }

    fn presence_leave(&self, room: &str, conn: ConnId) {
        self.shared.presence.leave(room, conn);
    }

    fn members(&self, room: &str) -> BackplaneFuture<Result<Vec<PresenceInfo>, BackplaneError>> {
        let shared = Arc::clone(&self.shared);
        let room = room.to_owned();
        Box::pin(async move {
            let value: Value = shared
                .link
                .invoke(
                    scripts::MEMBERS
                        .key(shared.keys.room_nodes(&room))
                        .arg(shared.keys.presence_prefix(&room)),
                )
                .await?;
            // This node's own members come from its registry, which is
            // exact and never behind (Redis gets them a moment later).
            let me = shared.config.node_id.as_str();
            let mut members = presence::parse_members(value)?;
            members.retain(|m| m.node.as_deref() != Some(me));
            members.extend(shared.presence.members(&room, me));
            Ok(members)
        })
    }

    fn position(&self, room: &str) -> BackplaneFuture<Result<StreamPosition, BackplaneError>> {
        let shared = Arc::clone(&self.shared);
        let room = room.to_owned();
        Box::pin(async move {
            let (offset, epoch): (u64, String) = shared
                .link
                .invoke(
                    scripts::POSITION
                        .key(shared.keys.meta(&room))
                        .key(shared.keys.log(&room))
                        .arg(crate::new_epoch())
                        .arg(shared.config.retention.as_millis().to_string()),
                )
                .await?;
            Ok(StreamPosition { offset, epoch })
        })
    }

    fn recover(
        &self,
        room: &str,
        since: StreamPosition,
    ) -> BackplaneFuture<Result<Result<Vec<HistoryEntry>, RecoveryError>, BackplaneError>> {
        let shared = Arc::clone(&self.shared);
        let room = room.to_owned();
        Box::pin(async move {
            let max = shared.config.history as u64;
            let value: Value = shared
                .link
                .invoke(
                    scripts::RECOVER
                        .key(shared.keys.meta(&room))
                        .key(shared.keys.log(&room))
                        .arg(since.offset)
                        .arg(max)
                        .arg(crate::new_epoch())
                        .arg(shared.config.retention.as_millis().to_string()),
                )
                .await?;
            recovery(value, &since, max)
        })
    }

    fn health(&self) -> BackplaneHealth {
        self.shared.health()
    }

    fn cluster_stats(&self) -> BackplaneFuture<Result<Vec<NodeStats>, BackplaneError>> {
        Box::pin(Arc::clone(&self.shared).cluster_stats())
    }

    fn close(
        &self,
        node: &str,
        conn: ConnId,
        frame: CloseFrame,
    ) -> BackplaneFuture<Result<bool, BackplaneError>> {
        Box::pin(Arc::clone(&self.shared).close(node.to_owned(), conn, frame))
    }
}

/// Applies the recovery rules to the recover script's reply: exactly the
/// missed messages, or why not — never a partial replay.
fn recovery(
    value: Value,
    since: &StreamPosition,
    max: u64,
) -> Result<Result<Vec<HistoryEntry>, RecoveryError>, BackplaneError> {
    let bad = |what: &str| BackplaneError(format!("redis: unexpected recover reply ({what})"));
    let Value::Array(items) = value else {
        return Err(bad("not an array"));
    };
    let [last, epoch, oldest, entries] = <[Value; 4]>::try_from(items).map_err(|_| bad("arity"))?;
    let last: u64 = redis::from_owned_redis_value(last).map_err(|_| bad("last"))?;
    let epoch: String = redis::from_owned_redis_value(epoch).map_err(|_| bad("epoch"))?;
    let oldest: u64 = redis::from_owned_redis_value(oldest).map_err(|_| bad("oldest"))?;
    if epoch != since.epoch {
        return Ok(Err(RecoveryError::EpochChanged { current: epoch }));
    }
    if since.offset > last {
        return Ok(Err(RecoveryError::Ahead {
            requested: since.offset,
            last,
        }));
    }
    let gap = last - since.offset;
    if gap == 0 {
        return Ok(Ok(Vec::new()));
    }
    let too_old = |oldest: u64| {
        Ok(Err(RecoveryError::TooOld {
            requested: since.offset,
            oldest,
        }))
    };
    if gap > max {
        return too_old(oldest.max(last + 1 - max.min(last)));
    }
    if oldest == 0 || oldest > since.offset + 1 {
        return too_old(if oldest == 0 { last + 1 } else { oldest });
    }
    let Value::Array(entries) = entries else {
        return Err(bad("entries"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let (id, fields): (String, Vec<Vec<u8>>) =
            redis::from_owned_redis_value(entry).map_err(|_| bad("entry"))?;
        let offset: u64 = id
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("entry id"))?;
        if offset != since.offset + 1 + i as u64 {
            // A hole in the stream: refuse rather than replay part of it.
            return too_old(offset);
        }
        let tail = fields
            .into_iter()
            .nth(1)
            .ok_or_else(|| bad("entry field"))?;
        let tail = wire::decode_tail(tail.into()).map_err(|e| BackplaneError(e.to_string()))?;
        out.push(HistoryEntry::new(
            offset,
            Frame::new(tail.opcode, true, false, tail.payload),
        ));
    }
    if out.len() as u64 != gap {
        return too_old(since.offset + 1 + out.len() as u64);
    }
    Ok(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard::proto::OpCode;

    fn reply(last: i64, epoch: &str, oldest: i64, entries: &[(u64, &[u8])]) -> Value {
        let entries = entries
            .iter()
            .map(|(off, payload)| {
                let mut tail = wire::head(OpCode::Text, "n");
                tail.extend_from_slice(payload);
                Value::Array(vec![
                    Value::BulkString(format!("{off}-0").into_bytes()),
                    Value::Array(vec![
                        Value::BulkString(b"m".to_vec()),
                        Value::BulkString(tail),
                    ]),
                ])
            })
            .collect();
        Value::Array(vec![
            Value::Int(last),
            Value::BulkString(epoch.as_bytes().to_vec()),
            Value::Int(oldest),
            Value::Array(entries),
        ])
    }

    fn pos(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn exact_replay() {
        let r = recovery(reply(5, "e", 1, &[(4, b"d"), (5, b"e")]), &pos(3, "e"), 100)
            .unwrap()
            .unwrap();
        assert_eq!(r.iter().map(|e| e.offset).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(r[1].message(), switchboard::Message::text("e"));
    }

    #[test]
    fn refusals() {
        let no_entries = |last, oldest| reply(last, "e", oldest, &[]);
        assert!(matches!(
            recovery(no_entries(5, 1), &pos(3, "old"), 100).unwrap(),
            Err(RecoveryError::EpochChanged { current }) if current == "e"
        ));
        assert!(matches!(
            recovery(no_entries(5, 1), &pos(6, "e"), 100).unwrap(),
            Err(RecoveryError::Ahead {
                requested: 6,
                last: 5
            })
        ));
        assert_eq!(
            recovery(no_entries(5, 1), &pos(5, "e"), 100).unwrap(),
            Ok(vec![])
        );
        assert!(matches!(
            recovery(no_entries(500, 1), &pos(3, "e"), 100).unwrap(),
            Err(RecoveryError::TooOld {
                requested: 3,
                oldest: 401
            })
        ));
        assert!(matches!(
            recovery(no_entries(5, 5), &pos(3, "e"), 100).unwrap(),
            Err(RecoveryError::TooOld {
                requested: 3,
                oldest: 5
            })
        ));
        // A hole in the middle is refused, not skipped.
        assert!(matches!(
            recovery(reply(6, "e", 1, &[(4, b"d"), (6, b"f")]), &pos(3, "e"), 100).unwrap(),
            Err(RecoveryError::TooOld { .. })
        ));
    }
}
