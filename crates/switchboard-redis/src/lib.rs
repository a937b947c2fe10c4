//! The Redis backplane for Switchboard: hubs on several nodes act as one
//! through a real Redis — room traffic, presence, history with exact
//! recovery, cluster-wide stats and "close this connection wherever it is"
//! — with failure semantics that are stated and tested.
//!
//! ```no_run
//! use std::sync::Arc;
//! use switchboard::{hub::{Hub, HubConfig}, App};
//! use switchboard_redis::{RedisBackplane, RedisConfig};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let config = RedisConfig::new("redis://127.0.0.1:6379", "node-a");
//!     let backplane = RedisBackplane::new(config).expect("valid settings");
//!     let hub = Hub::with_backplane(HubConfig::default(), Arc::new(backplane));
//!     App::new().state(hub).serve("127.0.0.1:8000").await
//! }
//! ```
//!
//! What it promises (the full account, with numbers, is `docs/cluster.md`):
//! - a broadcast reaches every member of the room on every node exactly
//!   once while Redis is up, and a room's messages from one node arrive in
//!   the order that node sent them;
//! - `publish` resolves within `publish_timeout` (500 ms) even when Redis
//!   is down or stalled; local members get the message regardless;
//! - a queued publish is sent even if nobody awaits its future (the hub's
//!   broadcasts drop it), and every failed publish is counted exactly once
//!   in `BackplaneHealth::publish_errors`, awaited or not;
//! - nothing grows without bound: the publish queue, the request tables and
//!   the presence bookkeeping are all capped;
//! - the connections reconnect forever (backoff 50 ms to 1 s); cross-node
//!   delivery resumes within ~1-2 s of Redis returning;
//! - health is red while either connection is down or a probe sent through
//!   Redis to this node has not come back (a silently dead subscription);
//! - recovery replays exactly the missed messages or refuses (new epoch,
//!   gap beyond the history) — never a partial replay; messages published
//!   while this node could not hear them (the subscription was down) are
//!   *not* re-delivered by the backplane: clients recover them.
//!
//! # Layout
//! - `config`: [`RedisConfig`], every setting with its reason.
//! - `keys`: names of keys and channels.
//! - `wire`: the envelope and control message formats (sans-IO).
//! - `scripts`: the Lua scripts (publish + history + offset in one step,
//!   position, recovery, presence, members, live nodes).
//! - `link`: the shared command connection and its reconnect loop.
//! - `writer`: the bounded, ordered publish queue and its batching task.
//! - `subscriber`: the pub/sub connection, the subscription registry,
//!   liveness probes, dispatch to the hub.
//! - `presence`: this node's members mirrored into Redis with a TTL.
//! - `control`: cross-node requests (stats, close).
//! - `backplane`: [`RedisBackplane`], the [`switchboard::hub::Backplane`]
//!   implementation tying them together.
//!
//! # Feature flags
//! - `testing`: the `testing` module, a throwaway `redis-server` per test (free
//!   loopback port, temp dir, killed on drop, SIGKILL/SIGSTOP/restart
//!   helpers) and a TCP proxy that can silently freeze connections.

mod backplane;
mod config;
mod control;
mod keys;
mod link;
mod presence;
mod scripts;
mod subscriber;
#[cfg(feature = "testing")]
pub mod testing;
mod wire;
mod writer;

pub use backplane::RedisBackplane;
pub use config::RedisConfig;

/// Why a backplane could not be created (invalid settings, no runtime).
/// Runtime failures (Redis down, timeouts) are reported per call as
/// [`switchboard::hub::BackplaneError`] and in health, never as this.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    message: String,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
        }
    }

    /// Whether the settings were invalid (the only kind today).
    pub fn is_config(&self) -> bool {
        true
    }
}

/// A fresh random epoch candidate (16 hex digits); Redis keeps the first
/// one set for a room.
pub(crate) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}
