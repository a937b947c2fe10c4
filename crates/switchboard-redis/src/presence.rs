//! Presence across nodes: this node's own members, kept here, and the task
//! that mirrors them into Redis with a TTL.
//!
//! Layout in Redis: per room and node a hash `conn -> meta` that expires
//! `presence_ttl` after its last refresh, and per room a set of the nodes
//! with such a hash. A node killed with SIGKILL stops refreshing, so its
//! hashes expire and its members disappear from every other node's view
//! within the TTL; `members` also drops nodes whose hash is gone.
//!
//! The hub calls `join`/`leave` under its lock, so they only update the
//! local table and mark the room dirty; the sync task writes dirty rooms
//! (the changed members, or the whole room after an error, a reconnect or a
//! lost hash) and refreshes TTLs every `presence_refresh`. Dirty state is
//! bounded: at most `MAX_DELTA` changed members per room, beyond that the
//! room is rewritten whole. The same task keeps this node's alive key,
//! which cluster-wide requests use to know whom to wait for.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use redis::Value;
use switchboard::hub::{BackplaneError, ConnId, PresenceInfo};
use tokio::sync::{watch, Notify};

use crate::{keys::Keys, link::Link, scripts, RedisConfig};

/// Changed members remembered per room before falling back to a full
/// rewrite (bounds memory while Redis is down and members churn).
const MAX_DELTA: usize = 1024;

/// Rooms written per pipeline.
const ROOMS_PER_PIPELINE: usize = 256;

#[derive(Debug, Default)]
enum Pending {
    #[default]
    Clean,
    Delta(HashSet<u64>),
    Full,
}

#[derive(Debug, Default)]
struct RoomPresence {
    members: HashMap<u64, Arc<serde_json::Value>>,
    pending: Pending,
}

impl RoomPresence {
    fn mark(&mut self, conn: u64) {
        match &mut self.pending {
            Pending::Full => {}
            Pending::Clean => self.pending = Pending::Delta(HashSet::from([conn])),
            Pending::Delta(set) => {
                set.insert(conn);
                if set.len() > MAX_DELTA {
                    self.pending = Pending::Full;
                }
            }
        }
    }
}

/// One room's pending write: the mode of the presence script and its
/// `(conn, meta)` pairs (`None`: remove).
type Write = (String, &'static str, Vec<(u64, Option<String>)>);

/// This node's members, room by room.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    rooms: Mutex<HashMap<String, RoomPresence>>,
    /// Wakes the sync task when a room turns dirty.
    changed: Notify,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomPresence>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn join(&self, room: &str, conn: ConnId, meta: Arc<serde_json::Value>) {
        let mut rooms = self.lock();
        let r = rooms.entry(room.to_owned()).or_default();
        r.members.insert(conn.0, meta);
        r.mark(conn.0);
        drop(rooms);
        self.changed.notify_one();
    }

    pub(crate) fn leave(&self, room: &str, conn: ConnId) {
        let mut rooms = self.lock();
        if let Some(r) = rooms.get_mut(room) {
            r.members.remove(&conn.0);
            r.mark(conn.0);
            drop(rooms);
            self.changed.notify_one();
        }
    }

    /// This node's members of `room`.
    pub(crate) fn members(&self, room: &str, node: &str) -> Vec<PresenceInfo> {
        let node: Arc<str> = node.into();
        self.lock()
            .get(room)
            .map(|r| {
                r.members
                    .iter()
                    .map(|(conn, meta)| PresenceInfo {
                        conn: ConnId(*conn),
                        node: Some(Arc::clone(&node)),
                        meta: Arc::clone(meta),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn mark_all_full(&self) {
        for r in self.lock().values_mut() {
            r.pending = Pending::Full;
        }
    }

    fn mark_full(&self, room: &str) {
        if let Some(r) = self.lock().get_mut(room) {
            r.pending = Pending::Full;
        }
    }

    /// Takes the dirty rooms' writes: `(room, mode, pairs)`, and forgets
    /// rooms with no members left once their removal is being written.
    fn take_dirty(&self) -> Vec<Write> {
        let mut rooms = self.lock();
        let mut out = Vec::new();
        for (name, r) in rooms.iter_mut() {
            let pending = std::mem::take(&mut r.pending);
            let meta = |m: &Arc<serde_json::Value>| m.to_string();
            match pending {
                Pending::Clean => {}
                Pending::Full => out.push((
                    name.clone(),
                    "full",
                    r.members.iter().map(|(c, m)| (*c, Some(meta(m)))).collect(),
                )),
                Pending::Delta(set) => out.push((
                    name.clone(),
                    "delta",
                    set.into_iter()
                        .map(|c| (c, r.members.get(&c).map(meta)))
                        .collect(),
                )),
            }
        }
        rooms.retain(|_, r| !r.members.is_empty() || !matches!(r.pending, Pending::Clean));
        out
    }

    fn live_rooms(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, r)| !r.members.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn all_rooms(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

/// The sync task.
pub(crate) struct Sync {
    pub(crate) registry: Arc<Registry>,
    pub(crate) link: Arc<Link>,
    pub(crate) keys: Keys,
    pub(crate) config: RedisConfig,
}

impl Sync {
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.presence_refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut generations = self.link.generations();
        loop {
            let refresh = tokio::select! {
                _ = tick.tick() => true,
                _ = self.registry.changed.notified() => false,
                r = generations.changed() => {
                    if r.is_err() {
                        return;
                    }
                    // A new connection may be a new Redis: rewrite it all.
                    self.registry.mark_all_full();
                    true
                }
                _ = shutdown.changed() => return,
            };
            if refresh {
                self.refresh().await;
            }
            self.flush().await;
        }
    }

    fn ttl_ms(&self) -> String {
        self.config.presence_ttl.as_millis().to_string()
    }

    /// Keeps this node alive in the node set and refreshes every room's
    /// TTL; a room whose hash is gone is marked for a full rewrite.
    async fn refresh(&self) {
        let node = &self.config.node_id;
        let ttl = self.ttl_ms();
        let mut heartbeat = redis::pipe();
        heartbeat
            .cmd("SET")
            .arg(self.keys.alive(node))
            .arg(1)
            .arg("PX")
            .arg(&ttl)
            .ignore()
            .cmd("SADD")
            .arg(self.keys.nodes())
            .arg(node)
            .ignore();
        if self.run_pipe(&heartbeat).await.is_err() {
            return;
        }
        for chunk in self.registry.live_rooms().chunks(ROOMS_PER_PIPELINE) {
            let mut pipe = redis::pipe();
            for room in chunk {
                self.presence_cmd(&mut pipe, room, "touch", &ttl, &[]);
            }
            let Ok(values) = self.run_pipe(&pipe).await else {
                self.registry.mark_all_full();
                return;
            };
            for (room, v) in chunk.iter().zip(values) {
                if !matches!(v, Value::Int(1)) {
                    self.registry.mark_full(room);
                }
            }
        }
    }

    async fn flush(&self) {
        let dirty = self.registry.take_dirty();
        let ttl = self.ttl_ms();
        for chunk in dirty.chunks(ROOMS_PER_PIPELINE) {
            let mut pipe = redis::pipe();
            for (room, mode, pairs) in chunk {
                self.presence_cmd(&mut pipe, room, mode, &ttl, pairs);
            }
            let failed = match self.run_pipe(&pipe).await {
                Ok(values) => values.iter().any(|v| matches!(v, Value::ServerError(_))),
                Err(_) => true,
            };
            if failed {
                // Unknown how much was applied: rewrite these rooms whole
                // on the next pass (a refresh tick or a reconnect).
                for (room, _, _) in chunk {
                    self.registry.mark_full(room);
                }
            }
        }
    }

    fn presence_cmd(
        &self,
        pipe: &mut redis::Pipeline,
        room: &str,
        mode: &str,
        ttl: &str,
        pairs: &[(u64, Option<String>)],
    ) {
        let node = &self.config.node_id;
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(scripts::PRESENCE.get_hash())
            .arg(2)
            .arg(self.keys.presence(room, node))
            .arg(self.keys.room_nodes(room))
            .arg(node)
            .arg(ttl)
            .arg(mode);
        for (conn, meta) in pairs {
            cmd.arg(conn).arg(meta.as_deref().unwrap_or(""));
        }
    }

    /// Sends a pipeline (loading the presence script first if Redis lacks
    /// it), with the command timeout.
    async fn run_pipe(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, BackplaneError> {
        let (generation, mut conn) = self.link.get()?;
        let count = pipe.len();
        let result = tokio::time::timeout(
            self.config.command_timeout,
            conn.send_packed_commands(pipe, 0, count),
        )
        .await;
        let values = self.link.settle(generation, result)?;
        let noscript = values
            .iter()
            .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"));
        if !noscript {
            return Ok(values);
        }
        let load = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(scripts::PRESENCE_SRC)
            .clone();
        self.link.query::<String>(&load).await?;
        let result = tokio::time::timeout(
            self.config.command_timeout,
            conn.send_packed_commands(pipe, 0, count),
        )
        .await;
        self.link.settle(generation, result)
    }

    /// Removes this node's presence and alive key (graceful shutdown).
    pub(crate) async fn remove_all(&self) -> Result<(), BackplaneError> {
        let node = &self.config.node_id;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(self.keys.alive(node)).ignore();
        pipe.cmd("SREM").arg(self.keys.nodes()).arg(node).ignore();
        for room in self.registry.all_rooms() {
            pipe.cmd("DEL")
                .arg(self.keys.presence(&room, node))
                .ignore();
            pipe.cmd("SREM")
                .arg(self.keys.room_nodes(&room))
                .arg(node)
                .ignore();
        }
        let (generation, mut conn) = self.link.get()?;
        let result =
            tokio::time::timeout(self.config.command_timeout, pipe.exec_async(&mut conn)).await;
        self.link.settle(generation, result)
    }
}

/// Parses the members script's reply into presence entries.
pub(crate) fn parse_members(value: Value) -> Result<Vec<PresenceInfo>, BackplaneError> {
    let bad = || BackplaneError("redis: unexpected members reply".into());
    let Value::Array(items) = value else {
        return Err(bad());
    };
    let mut out = Vec::new();
    let mut items = items.into_iter();
    while let (Some(node), Some(Value::Array(fields))) = (items.next(), items.next()) {
        let node: String = redis::from_owned_redis_value(node).map_err(|_| bad())?;
        let node: Arc<str> = node.into();
        let mut fields = fields.into_iter();
        while let (Some(conn), Some(meta)) = (fields.next(), fields.next()) {
            let conn: u64 = redis::from_owned_redis_value(conn).map_err(|_| bad())?;
            let meta: Vec<u8> = redis::from_owned_redis_value(meta).map_err(|_| bad())?;
            out.push(PresenceInfo {
                conn: ConnId(conn),
                node: Some(Arc::clone(&node)),
                meta: Arc::new(serde_json::from_slice(&meta).unwrap_or(serde_json::Value::Null)),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_leaves_become_deltas_then_full_when_too_many() {
        let reg = Registry::default();
        let meta = Arc::new(serde_json::json!({"user": "ann"}));
        reg.join("r", ConnId(1), Arc::clone(&meta));
        reg.join("r", ConnId(2), Arc::clone(&meta));
        reg.leave("r", ConnId(1));
        let mut dirty = reg.take_dirty();
        assert_eq!(dirty.len(), 1);
        let (room, mode, mut pairs) = dirty.pop().unwrap();
        pairs.sort();
        assert_eq!((room.as_str(), mode), ("r", "delta"));
        assert_eq!(pairs, [(1, None), (2, Some(r#"{"user":"ann"}"#.into()))]);
        assert!(reg.take_dirty().is_empty());
        for i in 0..=MAX_DELTA as u64 + 1 {
            reg.join("big", ConnId(100 + i), Arc::clone(&meta));
        }
        let dirty = reg.take_dirty();
        assert_eq!(dirty[0].1, "full");
        assert_eq!(dirty[0].2.len(), MAX_DELTA + 2);
    }

    #[test]
    fn empty_rooms_are_forgotten_once_written() {
        let reg = Registry::default();
        reg.join("r", ConnId(1), Arc::new(serde_json::Value::Null));
        reg.leave("r", ConnId(1));
        assert_eq!(reg.all_rooms(), ["r"]);
        assert_eq!(reg.take_dirty().len(), 1);
        assert!(reg.all_rooms().is_empty());
    }
}
