//! The Lua scripts run inside Redis. Each is one atomic step, which is what
//! makes the history exact: the offset increment, the stream append and
//! the PUBLISH happen together or not at all, and recovery reads the
//! offset and the stream in one step.
//!
//! Only the script texts and their argument order live here; `writer`,
//! `presence` and `backplane` call them.

use std::sync::LazyLock;

use redis::Script;

/// Publishes one message to a room.
///
/// KEYS: meta hash, stream. ARGV: channel, candidate epoch, history length
/// (0: none), retention ms, tail head (opcode, origin), payload.
/// Returns `{offset, epoch}`.
///
/// The epoch is created once per room (HSETNX): if Redis loses the room's
/// data, the next publish creates a new epoch, and the stale stream (if the
/// meta hash alone was lost) is deleted so offsets restart cleanly.
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_SRC));

/// The text of [`PUBLISH`] (the writer loads it with `SCRIPT LOAD` in the
/// same pipeline as the first batch on a new connection).
pub(crate) const PUBLISH_SRC: &str = r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[2]) == 1 then
  redis.call('DEL', KEYS[2])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local off = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local tail = ARGV[5] .. ARGV[6]
local keep = tonumber(ARGV[3])
if keep > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', keep, off .. '-0', 'm', tail)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[1], 'SB1 ' .. off .. ' ' .. epoch .. ' ' .. tail)
return {off, epoch}
";

/// A room's stream position, creating its epoch if it has none.
///
/// KEYS: meta hash, stream. ARGV: candidate epoch, retention ms.
/// Returns `{offset, epoch}`.
pub(crate) static POSITION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local off = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
return {off, epoch}
",
    )
});

/// What recovery needs, read in one step.
///
/// KEYS: meta hash, stream. ARGV: offset since, most entries to return,
/// candidate epoch, retention ms. Returns `{last, epoch, oldest, entries}`
/// where `oldest` is the first offset still in the stream (0: empty) and
/// `entries` (XRANGE replies) are filled only when the whole gap is there.
/// A room without an epoch (Redis lost it) gets a new one, so the caller
/// can tell the client where the stream now stands.
pub(crate) static RECOVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[3]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local last = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local since = tonumber(ARGV[1])
local oldest = 0
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #first > 0 then
  oldest = tonumber(string.match(first[1][1], '^(%d+)'))
end
local entries = {}
local gap = last - since
if gap > 0 and gap <= tonumber(ARGV[2]) and oldest > 0 and oldest <= since + 1 then
  entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+', 'COUNT', gap)
end
return {last, epoch, oldest, entries}
",
    )
});

/// Writes this node's members of one room and refreshes their TTL.
///
/// KEYS: presence hash (room, node), room's node set. ARGV: node, ttl ms,
/// mode (`full`: replace the hash; `delta`: apply the pairs; `touch`: only
/// refresh), then pairs `conn, meta` (empty meta: remove). Returns 1 if the
/// hash existed before (a `touch` answering 0 means Redis lost it).
pub(crate) static PRESENCE: LazyLock<Script> = LazyLock::new(|| Script::new(PRESENCE_SRC));

/// The text of [`PRESENCE`] (loaded by the presence task's pipelines).
pub(crate) const PRESENCE_SRC: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
if ARGV[3] == 'full' then
  redis.call('DEL', KEYS[1])
end
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
local ttl = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('SADD', KEYS[2], ARGV[1])
  if redis.call('PTTL', KEYS[2]) < ttl then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
return existed
";

/// Members of a room on every node, dropping nodes whose entries expired.
///
/// KEYS: room's node set. ARGV: presence key prefix. Returns a flat list
/// `node, {conn, meta, ...}, node, ...`.
pub(crate) static MEMBERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HGETALL', ARGV[1] .. n)
  if #h == 0 then
    redis.call('SREM', KEYS[1], n)
  else
    table.insert(out, n)
    table.insert(out, h)
  end
end
return out
",
    )
});

/// Nodes whose alive key still exists, forgetting the others.
///
/// KEYS: node set. ARGV: alive key prefix. Returns node ids.
pub(crate) static LIVE_NODES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local live = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. n) == 1 then
    table.insert(live, n)
  else
    redis.call('SREM', KEYS[1], n)
  end
end
return live
",
    )
});
