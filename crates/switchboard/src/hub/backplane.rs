//! The backplane: how hubs on several nodes act as one.
//!
//! A [`Backplane`] carries [`Envelope`]s between nodes, one channel per
//! room, subscribed only while the node has local members. The hub calls it
//! on join, leave and publish; remote envelopes come back through the
//! [`RemoteSink`] the hub attaches. Every envelope carries its origin node
//! id and a node drops its own, so nothing is delivered twice. The trait is
//! small on purpose (a NATS backplane would implement the same calls: room
//! traffic, presence, history, and two cross-node requests, stats and
//! close); the Redis one lives in the `switchboard-redis` crate, and
//! [`MemoryBus`] connects hubs in one process (tests, examples).
//!
//! The [`RemoteSink`] is the hub as a backplane sees it: deliver a remote
//! envelope, report this node's stats, close one of this node's
//! connections. It holds the hub weakly, so a backplane never keeps a
//! dropped hub alive, and a backplane must not call it while holding a lock
//! of its own (the hub calls the backplane under the hub lock).
//!
//! Contract for implementors, for [`Backplane::publish`]:
//!
//! - **Order.** The envelope takes its place in the outgoing order *when
//!   `publish` is called* (not when its future is polled), so a room's
//!   messages from one node stay in order.
//! - **Fire and forget.** An accepted envelope is sent even if the returned
//!   future is dropped, unpolled or not: dropping it only discards the
//!   acknowledgement. The hub relies on this: its broadcasts
//!   ([`Hub::broadcast_to`], [`Hub::publish_frame`], ...) drop the future
//!   at once. The only envelopes not sent are those whose failure is
//!   reported (or would be, to a caller awaiting it): refused at once
//!   (transport known down, queue full), or still unsent when their bounded
//!   time ran out — a publish reported as failed before it was sent is
//!   never sent later.
//! - **Failures are counted by the backplane.** Every failure of a publish
//!   (transport down, queue full, timeout before it was sent or before it
//!   was confirmed, script or server error) is counted in
//!   [`BackplaneHealth::publish_errors`] exactly once, whether or not anyone
//!   awaits the future: the count equals the number of `Err` results that
//!   awaiting every future would have seen. Callers never count them again
//!   (the hub's [`HubStats::backplane_errors`] is this number).
//! - **Bounded.** The future resolves within a bounded time even when the
//!   transport is down, and a failure is counted within a bounded time of
//!   the call even when nobody polls the future; nothing may buffer without
//!   bound.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard_proto::{CloseFrame, OpCode};

use super::{
    ConnId, HistoryEntry, Hub, HubStats, Inner, PresenceInfo, RecoveryError, StreamPosition,
};

/// A boxed future returned by backplane calls.
pub type BackplaneFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A message crossing nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node that published it.
    pub origin: Arc<str>,
    /// The room.
    pub room: String,
    /// `Text` or `Binary`.
    pub opcode: OpCode,
    /// The message payload (not framed).
    pub payload: Bytes,
    /// Its offset in the room's cluster-wide stream, when the backplane
    /// keeps history.
    pub offset: Option<u64>,
}

/// Where a published message landed in the room's cluster-wide stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    /// The message's offset.
    pub offset: u64,
    /// The room's epoch.
    pub epoch: String,
}

/// A backplane failure (transport down, timeout).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("backplane: {0}")]
pub struct BackplaneError(pub String);

/// A backplane's view of its own health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackplaneHealth {
    /// Connected and its subscriptions confirmed live.
    pub healthy: bool,
    /// What is wrong, when not healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Rooms this node is subscribed to.
    pub subscriptions: usize,
    /// Publishes that failed since start, each counted once by the
    /// backplane whether or not its future was awaited (see
    /// [`Backplane::publish`]).
    pub publish_errors: u64,
}

/// One node's answer to a cluster-wide stats request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// The node's id.
    pub node: String,
    /// Its hub's stats; `None` when the node is registered as alive but did
    /// not answer in time.
    pub stats: Option<HubStats>,
}

/// The hub that attached a backplane, as the backplane sees it: where
/// remote envelopes go, and the local side of cross-node requests.
#[derive(Clone)]
pub struct RemoteSink {
    hub: Weak<Inner>,
}

impl fmt::Debug for RemoteSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RemoteSink")
    }
}

impl RemoteSink {
    /// Delivers an envelope from another node to this node's local members.
    /// Envelopes whose origin is this node are ignored by the hub.
    pub fn deliver(&self, envelope: Envelope) {
        if let Some(hub) = self.hub() {
            hub.deliver_remote(envelope);
        }
    }

    /// This node's stats (`None` once the hub is gone).
    pub fn local_stats(&self) -> Option<HubStats> {
        self.hub().map(|hub| hub.stats())
    }

    /// Closes this node's connection `conn` with `frame`; false if there
    /// is no such connection.
    pub fn close_local(&self, conn: ConnId, frame: &CloseFrame) -> bool {
        self.hub().is_some_and(|hub| hub.close(conn, frame))
    }

    fn hub(&self) -> Option<Hub> {
        self.hub.upgrade().map(|inner| Hub { inner })
    }

    pub(super) fn new(hub: Weak<Inner>) -> Self {
        RemoteSink { hub }
    }
}

/// Carries room traffic, presence and history between nodes.
pub trait Backplane: Send + Sync + 'static {
    /// This node's id (stamped on every envelope it publishes).
    fn node_id(&self) -> &str;

    /// Called once by the hub: where remote envelopes go.
    fn attach(&self, sink: RemoteSink);

    /// Start receiving `room` (its first local member joined).
    fn subscribe(&self, room: &str);

    /// Stop receiving `room` (its last local member left).
    fn unsubscribe(&self, room: &str);

    /// Sends `envelope` to the other nodes (and records it in the room's
    /// history). The envelope takes its place in the outgoing order now,
    /// and is sent even if the returned future is dropped: the future only
    /// carries the acknowledgement (where the message landed, or why it
    /// failed), and resolves within a bounded time. Every failure is
    /// counted once in [`BackplaneHealth::publish_errors`] by the
    /// backplane itself, awaited or not. See the module docs.
    fn publish(&self, envelope: Envelope) -> BackplaneFuture<Result<Published, BackplaneError>>;

    /// Records a member in the room's cluster-wide presence.
    fn presence_join(&self, room: &str, conn: ConnId, meta: Arc<serde_json::Value>);

    /// Removes a member from the room's cluster-wide presence.
    fn presence_leave(&self, room: &str, conn: ConnId);

    /// Members of `room` on every node.
    fn members(&self, room: &str) -> BackplaneFuture<Result<Vec<PresenceInfo>, BackplaneError>>;

    /// The room's current stream position (for joiners).
    fn position(&self, room: &str) -> BackplaneFuture<Result<StreamPosition, BackplaneError>>;

    /// Exactly the messages after `since`, or why not.
    fn recover(
        &self,
        room: &str,
        since: StreamPosition,
    ) -> BackplaneFuture<Result<Result<Vec<HistoryEntry>, RecoveryError>, BackplaneError>>;

    /// Current health.
    fn health(&self) -> BackplaneHealth;

    /// Every live node's stats, this node's included (through the sink).
    fn cluster_stats(&self) -> BackplaneFuture<Result<Vec<NodeStats>, BackplaneError>>;

    /// Closes connection `conn` on node `node` with `frame`, wherever that
    /// node is; `Ok(false)` when there is no such node or connection.
    fn close(
        &self,
        node: &str,
        conn: ConnId,
        frame: CloseFrame,
    ) -> BackplaneFuture<Result<bool, BackplaneError>>;
}

/// An in-process backplane: hubs attached to the same bus behave as nodes
/// of one cluster. Useful in tests and to try cluster semantics without
/// Redis; history is kept per room (last `history` messages). A publish is
/// delivered during the `publish` call itself (its future is already
/// resolved), so it never fails and dropping the future loses nothing.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Mutex<BusState>>,
    history: usize,
}

impl fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBus")
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct BusState {
    nodes: Vec<Weak<MemoryNodeInner>>,
    rooms: HashMap<String, BusRoom>,
}

struct BusRoom {
    epoch: String,
    offset: u64,
    history: VecDeque<HistoryEntry>,
    presence: HashMap<(String, ConnId), Arc<serde_json::Value>>,
}

impl BusRoom {
    fn new() -> BusRoom {
        BusRoom {
            epoch: format!("{:016x}", rand::random::<u64>()),
            offset: 0,
            history: VecDeque::new(),
            presence: HashMap::new(),
        }
    }
}

struct MemoryNodeInner {
    id: Arc<str>,
    sink: Mutex<Option<RemoteSink>>,
    subscriptions: Mutex<HashMap<String, usize>>,
}

/// One node's handle on a [`MemoryBus`].
#[derive(Clone)]
pub struct MemoryNode {
    bus: MemoryBus,
    inner: Arc<MemoryNodeInner>,
}

impl fmt::Debug for MemoryNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryNode")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl MemoryBus {
    /// A bus keeping the last `history` messages per room.
    pub fn new(history: usize) -> MemoryBus {
        MemoryBus {
            inner: Arc::new(Mutex::new(BusState::default())),
            history,
        }
    }

    /// A node with id `id` on this bus.
    pub fn node(&self, id: &str) -> MemoryNode {
        let inner = Arc::new(MemoryNodeInner {
            id: id.into(),
            sink: Mutex::new(None),
            subscriptions: Mutex::new(HashMap::new()),
        });
        self.lock().nodes.push(Arc::downgrade(&inner));
        MemoryNode {
            bus: self.clone(),
            inner,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BusState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every live node with its sink (if attached).
    fn sinks(&self) -> Vec<(Arc<str>, Option<RemoteSink>)> {
        self.lock()
            .nodes
            .iter()
            .filter_map(Weak::upgrade)
            .map(|n| {
                let sink = n.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
                (Arc::clone(&n.id), sink)
            })
            .collect()
    }
}

impl Backplane for MemoryNode {
    fn node_id(&self) -> &str {
        &self.inner.id
    }

    fn attach(&self, sink: RemoteSink) {
        *self.inner.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    fn subscribe(&self, room: &str) {
        *self
            .inner
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(room.to_owned())
            .or_insert(0) += 1;
    }

    fn unsubscribe(&self, room: &str) {
        self.inner
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(room);
    }

    fn publish(
        &self,
        mut envelope: Envelope,
    ) -> BackplaneFuture<Result<Published, BackplaneError>> {
        let mut st = self.bus.lock();
        let keep = self.bus.history;
        let room = st
            .rooms
            .entry(envelope.room.clone())
            .or_insert_with(BusRoom::new);
        room.offset += 1;
        envelope.offset = Some(room.offset);
        if keep > 0 {
            if room.history.len() == keep {
                room.history.pop_front();
            }
            room.history.push_back(HistoryEntry {
                offset: room.offset,
                frame: switchboard_proto::Frame::new(
                    envelope.opcode,
                    true,
                    false,
                    envelope.payload.clone(),
                ),
            });
        }
        let published = Published {
            offset: room.offset,
            epoch: room.epoch.clone(),
        };
        let targets: Vec<RemoteSink> = st
            .nodes
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|n| {
                n.subscriptions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&envelope.room)
            })
            .filter_map(|n| n.sink.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        // Delivered under the bus lock, so every node sees one order. All
        // of it happens here, in the call: dropping the future loses
        // nothing, and a publish cannot fail (`publish_errors` stays 0).
        for sink in targets {
            sink.deliver(envelope.clone());
        }
        drop(st);
        Box::pin(async move { Ok(published) })
    }

    fn presence_join(&self, room: &str, conn: ConnId, meta: Arc<serde_json::Value>) {
        let mut st = self.bus.lock();
        let r = st.rooms.entry(room.to_owned()).or_insert_with(BusRoom::new);
        r.presence.insert((self.inner.id.to_string(), conn), meta);
    }

    fn presence_leave(&self, room: &str, conn: ConnId) {
        let mut st = self.bus.lock();
        if let Some(r) = st.rooms.get_mut(room) {
            r.presence.remove(&(self.inner.id.to_string(), conn));
        }
    }

    fn members(&self, room: &str) -> BackplaneFuture<Result<Vec<PresenceInfo>, BackplaneError>> {
        let st = self.bus.lock();
        let list = st
            .rooms
            .get(room)
            .map(|r| {
                r.presence
                    .iter()
                    .map(|((node, conn), meta)| PresenceInfo {
                        conn: *conn,
                        node: Some(node.as_str().into()),
                        meta: Arc::clone(meta),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(async move { Ok(list) })
    }

    fn position(&self, room: &str) -> BackplaneFuture<Result<StreamPosition, BackplaneError>> {
        let mut st = self.bus.lock();
        let r = st.rooms.entry(room.to_owned()).or_insert_with(BusRoom::new);
        let pos = StreamPosition {
            offset: r.offset,
            epoch: r.epoch.clone(),
        };
        Box::pin(async move { Ok(pos) })
    }

    fn recover(
        &self,
        room: &str,
        since: StreamPosition,
    ) -> BackplaneFuture<Result<Result<Vec<HistoryEntry>, RecoveryError>, BackplaneError>> {
        let st = self.bus.lock();
        let result = match st.rooms.get(room) {
            None => Err(RecoveryError::EpochChanged {
                current: String::new(),
            }),
            Some(r) => super::recover_from(&r.epoch, r.offset, &r.history, &since),
        };
        Box::pin(async move { Ok(result) })
    }

    fn health(&self) -> BackplaneHealth {
        BackplaneHealth {
            healthy: true,
            detail: None,
            subscriptions: self
                .inner
                .subscriptions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
            // Nothing can fail: delivery is a function call.
            publish_errors: 0,
        }
    }

    fn cluster_stats(&self) -> BackplaneFuture<Result<Vec<NodeStats>, BackplaneError>> {
        // Sinks are collected first: a hub's stats take its own lock, never
        // while the bus lock is held.
        let stats = self
            .bus
            .sinks()
            .into_iter()
            .map(|(node, sink)| NodeStats {
                node: node.to_string(),
                stats: sink.and_then(|s| s.local_stats()),
            })
            .collect();
        Box::pin(async move { Ok(stats) })
    }

    fn close(
        &self,
        node: &str,
        conn: ConnId,
        frame: CloseFrame,
    ) -> BackplaneFuture<Result<bool, BackplaneError>> {
        let closed = self
            .bus
            .sinks()
            .into_iter()
            .find(|(id, _)| **id == *node)
            .and_then(|(_, sink)| sink)
            .is_some_and(|sink| sink.close_local(conn, &frame));
        Box::pin(async move { Ok(closed) })
    }
}
