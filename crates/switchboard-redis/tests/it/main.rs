//! The Redis backplane against a real `redis-server` (started per test on a
//! free loopback port; a missing binary fails the test with instructions).
//!
//! - `cluster`: nodes in one process acting as one — exactly-once ordered
//!   delivery, presence, stats, cross-node close, history and recovery,
//!   killed nodes' presence expiring.
//! - `faults`: Redis killed (with and without its data), stalled, down at
//!   startup; a silently dead subscription; the bounded publish queue.

#[path = "../../src/testing.rs"]
#[allow(dead_code, unreachable_pub)]
mod redis_testing;

mod cluster;
mod faults;
mod support;
