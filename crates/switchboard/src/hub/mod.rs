//! The hub: connections, rooms, frame-once broadcast, presence, history.
//!
//! The seeds hand-write a `ConnectionManager` in every app; this is that,
//! done once. A socket joins the hub with [`Hub::connect`], which returns a
//! [`Member`] guard: dropping it (normal return, error, panic, timeout)
//! removes the connection from every room, so membership never leaks.
//!
//! Broadcast encodes the message into one [`Frame`] *before* taking the
//! lock, then queues a clone (a reference-count bump) on every recipient
//! with the non-blocking `try_send_frame`: it never waits on a slow
//! recipient and never holds the lock across an `.await` (there is none).
//! A recipient whose queue is over its byte limit is a slow consumer: it is
//! closed with 1008 "slow consumer" and counted; the rest of the room is
//! unaffected. One `std::sync::Mutex` guards the tables; it also serializes
//! broadcasts to a room, which is what keeps every member's copy in the same
//! order.
//!
//! permessage-deflate keeps this frame-once where the parameters allow:
//! recipients that compress every message on its own (server no context
//! takeover, the default) share one compressed frame per window size and
//! level, compressed once per broadcast; recipients with context takeover
//! get the plain frame and their writer compresses it in their own stream.

mod backplane;
mod room;
mod subscription;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use serde::Serialize;
use switchboard_proto::{CloseCode, CloseFrame, Frame, OpCode};
use tokio::sync::broadcast;

pub use backplane::{
    Backplane, BackplaneError, BackplaneFuture, BackplaneHealth, Envelope, MemoryBus, MemoryNode,
    NodeStats, Published, RemoteSink,
};
pub use room::HistoryEntry;
use room::{Room, RoomMember};
use subscription::Recipient;
pub use subscription::{Subscription, SubscriptionItem};

use crate::{
    error::Error,
    ws::{compress::BroadcastFrames, Message, Sender},
};

/// A connection's id in the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Hub settings.
#[derive(Debug, Clone)]
#[must_use]
pub struct HubConfig {
    history_len: usize,
    max_history_rooms: usize,
    presence_buffer: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history_len: 0,
            // Rooms kept only for their history (no members) are evicted
            // oldest-first beyond this, so history memory stays bounded.
            max_history_rooms: 10_000,
            // Presence events buffered per subscriber; a subscriber that
            // falls further behind skips events (tokio broadcast "lagged").
            presence_buffer: 1024,
        }
    }
}

impl HubConfig {
    /// Keeps the last `n` messages per room for late joiners and
    /// recovery (default 0: off; the seeds keep 1000 and replay 50).
    pub fn history(mut self, n: usize) -> Self {
        self.history_len = n;
        self
    }

    /// Most member-less rooms kept for their history (default 10 000).
    pub fn max_history_rooms(mut self, n: usize) -> Self {
        self.max_history_rooms = n;
        self
    }

    /// Presence events buffered per subscriber (default 1024).
    pub fn presence_buffer(mut self, n: usize) -> Self {
        self.presence_buffer = n.max(1);
        self
    }
}

/// The result of a broadcast.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Recipients the message was queued for.
    pub delivered: usize,
    /// Recipients closed as slow consumers instead.
    pub slow: usize,
    /// The message's offset in the room's history (room broadcasts only).
    pub offset: Option<u64>,
}

/// A change in a room's membership.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresenceEvent {
    /// The room.
    pub room: String,
    /// The connection.
    pub conn: ConnId,
    /// The member's metadata (e.g. the user id from its token).
    pub meta: Arc<serde_json::Value>,
    /// Joined or left.
    pub kind: PresenceKind,
}

/// Whether a member joined or left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceKind {
    /// The member joined the room.
    Joined,
    /// The member left the room (or disconnected).
    Left,
}

/// A member of a room, as presence reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresenceInfo {
    /// The connection.
    pub conn: ConnId,
    /// The node it is connected to, when clustered (connection ids are
    /// per node: `(node, conn)` names a connection in the cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Arc<str>>,
    /// Its metadata.
    pub meta: Arc<serde_json::Value>,
}

/// Counts, as in the seeds' `get_stats()`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HubStats {
    /// Connected sockets.
    pub connections: usize,
    /// Members per room.
    pub rooms: BTreeMap<String, usize>,
    /// Sockets closed as slow consumers since start.
    pub slow_consumers: u64,
    /// Broadcast calls since start.
    pub broadcasts: u64,
    /// Messages queued to recipients by broadcasts since start.
    pub deliveries: u64,
    /// The backplane's health, when clustered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backplane: Option<BackplaneHealth>,
    /// Backplane publishes that failed since start: the backplane's own
    /// count ([`BackplaneHealth::publish_errors`], each failure once,
    /// awaited or not); 0 when not clustered.
    pub backplane_errors: u64,
}

/// The cluster's counts: every node's [`HubStats`] and their sums.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterStats {
    /// Connected sockets on all nodes that answered.
    pub connections: usize,
    /// Members per room, summed over those nodes.
    pub rooms: BTreeMap<String, usize>,
    /// Each answering node's own stats, by node id.
    pub nodes: BTreeMap<String, HubStats>,
    /// Nodes registered as alive that did not answer in time.
    pub unanswered: Vec<String>,
}

/// Where a client was in a room's stream: the last offset it saw and the
/// room epoch that offset belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StreamPosition {
    /// Last offset received.
    pub offset: u64,
    /// The epoch reported at join.
    pub epoch: String,
}

/// Why missed messages cannot be replayed. Never a partial replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RecoveryError {
    /// The room's history was reset (server restart, room evicted).
    #[error("history epoch changed (now {current})")]
    EpochChanged {
        /// The room's current epoch.
        current: String,
    },
    /// More messages were missed than the history keeps.
    #[error("messages after offset {requested} are no longer available (oldest kept: {oldest})")]
    TooOld {
        /// The offset asked for.
        requested: u64,
        /// The oldest offset still kept.
        oldest: u64,
    },
    /// The offset is ahead of the room's stream.
    #[error("offset {requested} is ahead of the stream (last: {last})")]
    Ahead {
        /// The offset asked for.
        requested: u64,
        /// The room's last offset.
        last: u64,
    },
}

/// Where a room's stream stands, reported when joining.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Joined {
    /// The room's epoch.
    pub epoch: String,
    /// The room's last offset.
    pub offset: u64,
    /// Whether this call added the member (false if already a member).
    pub added: bool,
}

struct Conn {
    /// A socket's sender or a [`Subscription`]'s queue.
    sender: Recipient,
    rooms: Vec<Arc<str>>,
    meta: Arc<serde_json::Value>,
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Conn>,
    rooms: HashMap<Arc<str>, Room>,
    /// Increments on every publish; rooms remember it for eviction order.
    clock: u64,
}

struct Inner {
    state: Mutex<State>,
    /// Other nodes, when clustered (`None`: single node, in memory).
    backplane: Option<Arc<dyn Backplane>>,
    config: HubConfig,
    presence: broadcast::Sender<PresenceEvent>,
    next_id: AtomicU64,
    slow: AtomicU64,
    broadcasts: AtomicU64,
    deliveries: AtomicU64,
}

/// Connections, rooms and broadcast. Cheap to clone (shared); put it in
/// app state and extract it with `State<Hub>`.
///
/// ```
/// use switchboard::hub::Hub;
/// let hub = Hub::new();
/// assert_eq!(hub.stats().connections, 0);
/// ```
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

/// The close frame sent to a slow consumer.
pub fn slow_consumer_close() -> CloseFrame {
    CloseFrame::new(CloseCode::POLICY_VIOLATION, "slow consumer")
}

fn new_epoch() -> Arc<str> {
    format!("{:016x}", rand::random::<u64>()).into()
}

/// Encodes a message once for every recipient.
fn encode(msg: Message) -> Result<Frame, CloseFrame> {
    match msg {
        Message::Text(t) => Ok(Frame::new(OpCode::Text, true, false, t.into())),
        Message::Binary(b) => Ok(Frame::new(OpCode::Binary, true, false, b)),
        Message::Close(c) => Err(c.unwrap_or_else(|| CloseFrame::new(CloseCode::NORMAL, ""))),
    }
}

impl Hub {
    /// A hub with default settings (no history).
    pub fn new() -> Hub {
        Hub::with_config(HubConfig::default())
    }

    /// A hub with `config`.
    pub fn with_config(config: HubConfig) -> Hub {
        let (presence, _) = broadcast::channel(config.presence_buffer);
        Hub {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                backplane: None,
                config,
                presence,
                next_id: AtomicU64::new(1),
                slow: AtomicU64::new(0),
                broadcasts: AtomicU64::new(0),
                deliveries: AtomicU64::new(0),
            }),
        }
    }

    /// A hub that is one node of a cluster joined through `backplane`.
    pub fn with_backplane(config: HubConfig, backplane: Arc<dyn Backplane>) -> Hub {
        let (presence, _) = broadcast::channel(config.presence_buffer);
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            backplane: Some(Arc::clone(&backplane)),
            config,
            presence,
            next_id: AtomicU64::new(1),
            slow: AtomicU64::new(0),
            broadcasts: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
        });
        backplane.attach(RemoteSink::new(Arc::downgrade(&inner)));
        Hub { inner }
    }

    /// The backplane, when clustered.
    pub fn backplane(&self) -> Option<&Arc<dyn Backplane>> {
        self.inner.backplane.as_ref()
    }

    /// Fans a message from another node out to this node's members.
    fn deliver_remote(&self, envelope: Envelope) {
        let Some(bp) = &self.inner.backplane else {
            return;
        };
        if *envelope.origin == *bp.node_id() {
            return;
        }
        let frame = Frame::new(envelope.opcode, true, false, envelope.payload);
        let keep = self.inner.config.history_len;
        let mut st = self.lock();
        st.clock += 1;
        let clock = st.clock;
        let Some(r) = st.rooms.get_mut(envelope.room.as_str()) else {
            return;
        };
        r.last_used = clock;
        if let Some(offset) = envelope.offset {
            // Follow the cluster's numbering for the local copy.
            r.offset = offset.saturating_sub(1);
        }
        let offset = r.record(&frame, keep);
        self.fan_out(&frame, Some(offset), r.members.iter().map(|m| &m.sender));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the tables half
        // updated in a way that matters more than losing the server.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a socket (by its sender) with no metadata.
    pub fn connect(&self, sender: Sender) -> Member {
        self.connect_with_meta(sender, serde_json::Value::Null)
    }

    /// Registers a socket with presence metadata (e.g. `{"user": "ann"}`).
    pub fn connect_with_meta(&self, sender: Sender, meta: serde_json::Value) -> Member {
        self.register(self.next_conn_id(), Recipient::Socket(sender), meta)
    }

    fn next_conn_id(&self) -> ConnId {
        ConnId(self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn register(&self, id: ConnId, sender: Recipient, meta: serde_json::Value) -> Member {
        self.lock().conns.insert(
            id,
            Conn {
                sender,
                rooms: Vec::new(),
                meta: Arc::new(meta),
            },
        );
        Member {
            id,
            hub: self.clone(),
        }
    }

    fn emit(&self, room: &str, conn: ConnId, meta: Arc<serde_json::Value>, kind: PresenceKind) {
        // No receivers is fine: nobody is watching presence.
        let _ = self.inner.presence.send(PresenceEvent {
            room: room.to_owned(),
            conn,
            meta,
            kind,
        });
    }

    /// Adds connection `id` to `room` (creating the room).
    pub fn join(&self, id: ConnId, room: &str) -> Option<Joined> {
        let mut st = self.lock();
        let State {
            conns,
            rooms,
            clock,
        } = &mut *st;
        let conn = conns.get_mut(&id)?;
        let (key, r) = match rooms.get_key_value(room) {
            Some((k, _)) => {
                let k = Arc::clone(k);
                let r = rooms.get_mut(&k)?;
                (k, r)
            }
            None => {
                let k: Arc<str> = room.into();
                let r = rooms
                    .entry(Arc::clone(&k))
                    .or_insert_with(|| Room::new(new_epoch(), *clock));
                (k, r)
            }
        };
        let added = r.insert(RoomMember {
            id,
            sender: conn.sender.clone(),
            meta: Arc::clone(&conn.meta),
        });
        if let (true, Some(bp)) = (added, &self.inner.backplane) {
            if r.members.len() == 1 {
                bp.subscribe(room);
            }
            bp.presence_join(room, id, Arc::clone(&conn.meta));
        }
        if added {
            conn.rooms.push(Arc::clone(&key));
        }
        let joined = Joined {
            epoch: r.epoch.to_string(),
            offset: r.offset,
            added,
        };
        let meta = Arc::clone(&conn.meta);
        drop(st);
        if added {
            self.emit(room, id, meta, PresenceKind::Joined);
        }
        Some(joined)
    }

    /// Removes connection `id` from `room`; false if it was not a member.
    pub fn leave(&self, id: ConnId, room: &str) -> bool {
        let mut st = self.lock();
        let Some(conn) = st.conns.get_mut(&id) else {
            return false;
        };
        conn.rooms.retain(|r| &**r != room);
        let left = self.remove_from_room(&mut st, id, room);
        drop(st);
        if let Some(meta) = left {
            self.emit(room, id, meta, PresenceKind::Left);
            true
        } else {
            false
        }
    }

    fn remove_from_room(
        &self,
        st: &mut State,
        id: ConnId,
        room: &str,
    ) -> Option<Arc<serde_json::Value>> {
        let config = &self.inner.config;
        let r = st.rooms.get_mut(room)?;
        let removed = r.remove(id)?;
        if let Some(bp) = &self.inner.backplane {
            bp.presence_leave(room, id);
            if r.members.is_empty() {
                bp.unsubscribe(room);
            }
        }
        if r.members.is_empty() {
            if r.history.is_empty() {
                st.rooms.remove(room);
            } else {
                Self::evict_history_rooms(st, config);
            }
        }
        Some(removed.meta)
    }

    /// Keeps the number of member-less rooms within `max_history_rooms`.
    fn evict_history_rooms(st: &mut State, config: &HubConfig) {
        loop {
            let empty: Vec<(&Arc<str>, u64)> = st
                .rooms
                .iter()
                .filter(|(_, r)| r.members.is_empty())
                .map(|(k, r)| (k, r.last_used))
                .collect();
            if empty.len() <= config.max_history_rooms {
                return;
            }
            let Some(oldest) = empty
                .iter()
                .min_by_key(|(_, t)| *t)
                .map(|(k, _)| Arc::clone(k))
            else {
                return;
            };
            st.rooms.remove(&oldest);
        }
    }

    /// Removes connection `id` from the hub and every room it joined.
    /// Called by [`Member`]'s `Drop`; calling it twice is harmless.
    pub fn disconnect(&self, id: ConnId) {
        let mut st = self.lock();
        let Some(conn) = st.conns.remove(&id) else {
            return;
        };
        let mut left = Vec::with_capacity(conn.rooms.len());
        for room in &conn.rooms {
            if self.remove_from_room(&mut st, id, room).is_some() {
                left.push(Arc::clone(room));
            }
        }
        drop(st);
        for room in left {
            self.emit(&room, id, Arc::clone(&conn.meta), PresenceKind::Left);
        }
    }

    /// Queues `frame` on `sender`, closing it as a slow consumer if its
    /// queue is full. Returns (delivered, slow).
    fn offer(&self, sender: &Sender, frame: &Frame) -> (usize, usize) {
        self.settle(sender, sender.try_send_frame(frame.clone()))
    }

    /// Counts one queue attempt, closing a slow consumer.
    fn settle(&self, sender: &Sender, queued: Result<(), Error>) -> (usize, usize) {
        match queued {
            Ok(()) => (1, 0),
            Err(e) if e.is_capacity() => {
                sender.shared.terminate(slow_consumer_close());
                self.inner.slow.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("closing slow consumer");
                (0, 1)
            }
            // Already closing: it is about to leave the hub.
            Err(_) => (0, 0),
        }
    }

    fn fan_out<'a>(
        &self,
        frame: &Frame,
        offset: Option<u64>,
        recipients: impl Iterator<Item = &'a Recipient>,
    ) -> Delivery {
        let mut d = Delivery::default();
        // permessage-deflate stays frame-once: recipients that compress each
        // message on its own share one compressed frame per parameter set
        // (made here, under the lock, at most once per set); the others get
        // the plain frame and their writer decides.
        let mut frames = BroadcastFrames::new(frame);
        for r in recipients {
            let s = match r {
                Recipient::Socket(s) => s,
                Recipient::Stream(q) => {
                    let (ok, slow) = self.offer_stream(q, frame, offset);
                    d.delivered += ok;
                    d.slow += slow;
                    continue;
                }
            };
            let (ok, slow) = match frames.for_recipient(s.shared.deflate.as_ref()) {
                Some(ready) => self.settle(s, s.shared.try_send_ready(ready.clone())),
                None => self.offer(s, frame),
            };
            d.delivered += ok;
            d.slow += slow;
        }
        self.inner.broadcasts.fetch_add(1, Ordering::Relaxed);
        self.inner
            .deliveries
            .fetch_add(d.delivered as u64, Ordering::Relaxed);
        d
    }

    /// Sends to every connection in the hub.
    pub fn broadcast(&self, msg: impl Into<Message>) -> Delivery {
        let frame = match encode(msg.into()) {
            Ok(f) => f,
            Err(close) => {
                let st = self.lock();
                for c in st.conns.values() {
                    c.sender.close(close.code, &close.reason);
                }
                return Delivery::default();
            }
        };
        let st = self.lock();
        self.fan_out(&frame, None, st.conns.values().map(|c| &c.sender))
    }

    /// Sends to every member of `room`.
    pub fn broadcast_to(&self, room: &str, msg: impl Into<Message>) -> Delivery {
        self.publish_message(room, msg.into(), None)
    }

    /// Sends to every member of `room` except `except` (the sender).
    pub fn broadcast_except(
        &self,
        room: &str,
        msg: impl Into<Message>,
        except: ConnId,
    ) -> Delivery {
        self.publish_message(room, msg.into(), Some(except))
    }

    /// Serializes `value` once and sends it to every member of `room`.
    pub fn broadcast_json<T: Serialize + ?Sized>(
        &self,
        room: &str,
        value: &T,
    ) -> Result<Delivery, Error> {
        let text = serde_json::to_string(value)?;
        Ok(self.publish_message(room, Message::Text(text.into()), None))
    }

    /// Publishes an already encoded frame to `room` (recorded in history,
    /// and sent to the other nodes when clustered; a backplane failure is
    /// counted in stats — use [`Hub::publish`] to see it).
    pub fn publish_frame(&self, room: &str, frame: Frame, except: Option<ConnId>) -> Delivery {
        let (delivery, remote) = self.publish_local(room, frame, except);
        // Fire and forget: the backplane took the message when called and
        // sends it without anyone awaiting this, and counts a failure
        // itself (the `Backplane::publish` contract). Only the
        // acknowledgement is dropped.
        drop(remote);
        delivery
    }

    /// Publishes to `room` on this node and, when clustered, on every other
    /// node; resolves once the backplane accepted the message (within its
    /// bounded timeout). Local members get the message even when the
    /// backplane fails; the failure is counted by the backplane (in
    /// [`HubStats::backplane_errors`]), once. A close message is refused
    /// before anything is published (not a backplane failure, not counted).
    pub async fn publish(
        &self,
        room: &str,
        msg: impl Into<Message>,
    ) -> Result<Delivery, BackplaneError> {
        let frame = encode(msg.into())
            .map_err(|_| BackplaneError("close frames are not published".into()))?;
        let (mut delivery, remote) = self.publish_local(room, frame, None);
        if let Some(ack) = remote {
            // A failure is already counted by the backplane.
            delivery.offset = Some(ack.await?.offset);
        }
        Ok(delivery)
    }

    fn publish_local(
        &self,
        room: &str,
        frame: Frame,
        except: Option<ConnId>,
    ) -> (
        Delivery,
        Option<BackplaneFuture<Result<Published, BackplaneError>>>,
    ) {
        let mut st = self.lock();
        // Handed to the backplane under the lock, so the cluster sees this
        // node's messages to a room in the order its members got them.
        let remote = self.inner.backplane.as_ref().map(|bp| {
            bp.publish(Envelope {
                origin: bp.node_id().into(),
                room: room.to_owned(),
                opcode: frame.opcode(),
                payload: frame.payload().clone(),
                offset: None,
            })
        });
        st.clock += 1;
        let clock = st.clock;
        let keep = self.inner.config.history_len;
        let Some(r) = st.rooms.get_mut(room) else {
            if keep == 0 {
                return (Delivery::default(), remote);
            }
            // History is on: a message to an empty room is still recorded.
            let mut r = Room::new(new_epoch(), clock);
            let offset = r.record(&frame, keep);
            st.rooms.insert(room.into(), r);
            Self::evict_history_rooms(&mut st, &self.inner.config);
            let d = Delivery {
                offset: Some(offset),
                ..Delivery::default()
            };
            return (d, remote);
        };
        r.last_used = clock;
        let offset = r.record(&frame, keep);
        let mut d = self.fan_out(
            &frame,
            Some(offset),
            r.members
                .iter()
                .filter(|m| Some(m.id) != except)
                .map(|m| &m.sender),
        );
        d.offset = Some(offset);
        (d, remote)
    }

    /// Members of `room` across the cluster (this node only when not
    /// clustered).
    pub async fn cluster_members(&self, room: &str) -> Result<Vec<PresenceInfo>, BackplaneError> {
        match &self.inner.backplane {
            Some(bp) => bp.members(room).await,
            None => Ok(self.members(room)),
        }
    }

    /// The room's stream position across the cluster, for a client to
    /// store and later pass to [`Hub::cluster_recover`].
    pub async fn position(&self, room: &str) -> Result<StreamPosition, BackplaneError> {
        match &self.inner.backplane {
            Some(bp) => bp.position(room).await,
            None => {
                let st = self.lock();
                Ok(st
                    .rooms
                    .get(room)
                    .map(|r| StreamPosition {
                        offset: r.offset,
                        epoch: r.epoch.to_string(),
                    })
                    .unwrap_or(StreamPosition {
                        offset: 0,
                        epoch: String::new(),
                    }))
            }
        }
    }

    /// Exactly the messages missed since `since` across the cluster, or why
    /// that is impossible (this node's history when not clustered).
    pub async fn cluster_recover(
        &self,
        room: &str,
        since: &StreamPosition,
    ) -> Result<Result<Vec<HistoryEntry>, RecoveryError>, BackplaneError> {
        match &self.inner.backplane {
            Some(bp) => bp.recover(room, since.clone()).await,
            None => Ok(self.recover(room, since)),
        }
    }

    /// Closes this node's connection `id` with `frame` (the close handshake
    /// starts; the connection leaves its rooms when its handler returns).
    /// False if there is no such connection.
    pub fn close(&self, id: ConnId, frame: &CloseFrame) -> bool {
        let st = self.lock();
        match st.conns.get(&id) {
            Some(c) => {
                c.sender.close(frame.code, &frame.reason);
                true
            }
            None => false,
        }
    }

    /// Closes connection `conn` on node `node`, wherever it is in the
    /// cluster (on this node when not clustered or when `node` is this
    /// node). `Ok(false)`: no such node or connection.
    pub async fn cluster_close(
        &self,
        node: &str,
        conn: ConnId,
        frame: CloseFrame,
    ) -> Result<bool, BackplaneError> {
        match &self.inner.backplane {
            Some(bp) if bp.node_id() != node => bp.close(node, conn, frame).await,
            _ => Ok(self.close(conn, &frame)),
        }
    }

    /// Stats of every node in the cluster, and their sums (this node's
    /// alone when not clustered).
    pub async fn cluster_stats(&self) -> Result<ClusterStats, BackplaneError> {
        let nodes = match &self.inner.backplane {
            Some(bp) => bp.cluster_stats().await?,
            None => vec![NodeStats {
                node: String::new(),
                stats: Some(self.stats()),
            }],
        };
        let mut total = ClusterStats::default();
        for n in nodes {
            match n.stats {
                Some(s) => {
                    total.connections += s.connections;
                    for (room, count) in &s.rooms {
                        *total.rooms.entry(room.clone()).or_insert(0) += count;
                    }
                    total.nodes.insert(n.node, s);
                }
                None => total.unanswered.push(n.node),
            }
        }
        Ok(total)
    }

    fn publish_message(&self, room: &str, msg: Message, except: Option<ConnId>) -> Delivery {
        match encode(msg) {
            Ok(frame) => self.publish_frame(room, frame, except),
            Err(close) => {
                let st = self.lock();
                if let Some(r) = st.rooms.get(room) {
                    for m in r.members.iter().filter(|m| Some(m.id) != except) {
                        m.sender.close(close.code, &close.reason);
                    }
                }
                Delivery::default()
            }
        }
    }

    /// Sends to one connection; false if it is not connected (or closing).
    pub fn send_to(&self, id: ConnId, msg: impl Into<Message>) -> bool {
        let Ok(frame) = encode(msg.into()) else {
            return false;
        };
        let st = self.lock();
        match st.conns.get(&id) {
            Some(c) => self.offer_to(&c.sender, &frame, None).0 == 1,
            None => false,
        }
    }

    /// Members of `room` with their metadata.
    pub fn members(&self, room: &str) -> Vec<PresenceInfo> {
        let node: Option<Arc<str>> = self.inner.backplane.as_ref().map(|bp| bp.node_id().into());
        let st = self.lock();
        st.rooms
            .get(room)
            .map(|r| {
                r.members
                    .iter()
                    .map(|m| PresenceInfo {
                        conn: m.id,
                        node: node.clone(),
                        meta: Arc::clone(&m.meta),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Rooms connection `id` is in.
    pub fn rooms_of(&self, id: ConnId) -> Vec<String> {
        let st = self.lock();
        st.conns
            .get(&id)
            .map(|c| c.rooms.iter().map(|r| r.to_string()).collect())
            .unwrap_or_default()
    }

    /// Whether `id` is a member of `room`.
    pub fn is_member(&self, id: ConnId, room: &str) -> bool {
        self.lock().rooms.get(room).is_some_and(|r| r.contains(id))
    }

    /// Connection and room counts.
    pub fn stats(&self) -> HubStats {
        // One reading of the backplane's health, so its error count and
        // `backplane_errors` agree.
        let backplane = self.inner.backplane.as_ref().map(|bp| bp.health());
        let st = self.lock();
        HubStats {
            connections: st.conns.len(),
            rooms: st
                .rooms
                .iter()
                .filter(|(_, r)| !r.members.is_empty())
                .map(|(k, r)| (k.to_string(), r.members.len()))
                .collect(),
            slow_consumers: self.inner.slow.load(Ordering::Relaxed),
            broadcasts: self.inner.broadcasts.load(Ordering::Relaxed),
            deliveries: self.inner.deliveries.load(Ordering::Relaxed),
            backplane_errors: backplane.as_ref().map_or(0, |h| h.publish_errors),
            backplane,
        }
    }

    /// The last `n` messages of `room`, oldest first.
    pub fn history_last(&self, room: &str, n: usize) -> Vec<HistoryEntry> {
        let st = self.lock();
        st.rooms
            .get(room)
            .map(|r| {
                let skip = r.history.len().saturating_sub(n);
                r.history.iter().skip(skip).cloned().collect()
            })
            .unwrap_or_default()
    }

    /// Everything after `since` in `room`, or why that is impossible.
    /// Exactly the missed messages, or an error: never a partial replay.
    pub fn recover(
        &self,
        room: &str,
        since: &StreamPosition,
    ) -> Result<Vec<HistoryEntry>, RecoveryError> {
        let st = self.lock();
        let Some(r) = st.rooms.get(room) else {
            return Err(RecoveryError::EpochChanged {
                current: String::new(),
            });
        };
        recover_from(&r.epoch, r.offset, &r.history, since)
    }

    /// Subscribes to join/leave events of every room.
    pub fn presence_events(&self) -> broadcast::Receiver<PresenceEvent> {
        self.inner.presence.subscribe()
    }
}

/// The recovery rules, shared by the local history and backplanes: the
/// same epoch, an offset not ahead of the stream, and nothing missing.
pub(crate) fn recover_from(
    epoch: &str,
    last: u64,
    history: &std::collections::VecDeque<HistoryEntry>,
    since: &StreamPosition,
) -> Result<Vec<HistoryEntry>, RecoveryError> {
    if epoch != since.epoch {
        return Err(RecoveryError::EpochChanged {
            current: epoch.to_owned(),
        });
    }
    if since.offset > last {
        return Err(RecoveryError::Ahead {
            requested: since.offset,
            last,
        });
    }
    if since.offset == last {
        return Ok(Vec::new());
    }
    let oldest = history.front().map_or(last + 1, |e| e.offset);
    if oldest > since.offset + 1 {
        return Err(RecoveryError::TooOld {
            requested: since.offset,
            oldest,
        });
    }
    Ok(history
        .iter()
        .filter(|e| e.offset > since.offset)
        .cloned()
        .collect())
}

/// A connection's membership in the hub. Dropping it leaves every room.
pub struct Member {
    id: ConnId,
    hub: Hub,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member").field("id", &self.id).finish()
    }
}

impl Member {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Joins `room`; reports the room's epoch and last offset.
    pub fn join(&self, room: &str) -> Joined {
        self.hub.join(self.id, room).unwrap_or_else(|| Joined {
            epoch: String::new(),
            offset: 0,
            added: false,
        })
    }

    /// Leaves `room`.
    pub fn leave(&self, room: &str) -> bool {
        self.hub.leave(self.id, room)
    }

    /// Rooms this connection is in.
    pub fn rooms(&self) -> Vec<String> {
        self.hub.rooms_of(self.id)
    }

    /// Sends to every other member of `room`.
    pub fn broadcast_others(&self, room: &str, msg: impl Into<Message>) -> Delivery {
        self.hub.broadcast_except(room, msg, self.id)
    }

    /// Queues the last `n` messages of `room` on this connection (the
    /// seeds' replay for late joiners); returns how many.
    pub fn replay_last(&self, room: &str, n: usize) -> usize {
        let entries = self.hub.history_last(room, n);
        self.queue(&entries)
    }

    /// Queues exactly the messages missed since `since`, or returns why
    /// that is impossible (then nothing is queued).
    pub fn recover(&self, room: &str, since: &StreamPosition) -> Result<usize, RecoveryError> {
        let entries = self.hub.recover(room, since)?;
        Ok(self.queue(&entries))
    }

    fn queue(&self, entries: &[HistoryEntry]) -> usize {
        let st = self.hub.lock();
        let Some(conn) = st.conns.get(&self.id) else {
            return 0;
        };
        entries
            .iter()
            .map(|e| self.hub.offer_to(&conn.sender, &e.frame, Some(e.offset)).0)
            .sum()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.hub.disconnect(self.id);
    }
}
