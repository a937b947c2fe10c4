//! [`RedisConfig`]: where Redis is, who this node is, and every limit and
//! timeout of the backplane, each with the reason for its default.
//!
//! Only settings live here; nothing in this file talks to Redis.

use std::time::Duration;

use crate::Error;

/// Settings of a [`RedisBackplane`](crate::RedisBackplane).
///
/// ```
/// use std::time::Duration;
/// use switchboard_redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://127.0.0.1:6379", "node-a")
///     .history(500)
///     .publish_timeout(Duration::from_millis(250));
/// assert_eq!(config.node_id(), "node-a");
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisConfig {
    pub(crate) url: String,
    pub(crate) node_id: String,
    pub(crate) prefix: String,
    pub(crate) history: usize,
    pub(crate) retention: Duration,
    pub(crate) publish_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) queue_len: usize,
    pub(crate) queue_bytes: usize,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) presence_ttl: Duration,
    pub(crate) presence_refresh: Duration,
    pub(crate) probe_interval: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("node_id", &self.node_id)
            .field("prefix", &self.prefix)
            .field("history", &self.history)
            .field("publish_timeout", &self.publish_timeout)
            .field("presence_ttl", &self.presence_ttl)
            .finish_non_exhaustive()
    }
}

/// `url` without its password (`redis://user:secret@host` ->
/// `redis://user:***@host`), for logs and `Debug`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_owned(),
    }
}

impl RedisConfig {
    /// A node called `node_id` (letters, digits, `.`, `_`, `-`; at most 64
    /// bytes; unique in the cluster) on the Redis at `url`
    /// (`redis://host:port/db`).
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            node_id: node_id.into(),
            // Namespaces every key and channel, so several clusters (or
            // tests) can share one Redis.
            prefix: "sb".to_owned(),
            // Messages kept per room for recovery. A Redis stream entry of
            // a small message costs ~100 bytes, so 1000 rooms x 1000
            // messages is ~100 MB: the number is per deployment, this is a
            // middle ground (the seeds keep 1000 in memory).
            history: 1000,
            // A room's offset, epoch and history expire this long after
            // its last publish, so abandoned rooms do not fill Redis
            // (recovery then reports a new epoch, never a partial replay).
            retention: Duration::from_secs(24 * 3600),
            // The bound on `publish` when Redis is slow or down: a chat
            // message later than this is better reported as failed.
            publish_timeout: Duration::from_millis(500),
            // Every other command (members, position, recovery, presence
            // writes): a healthy local Redis answers in well under 1 ms.
            command_timeout: Duration::from_millis(500),
            // TCP connect plus handshake; a stalled Redis accepts TCP (the
            // kernel does) and then never answers, so this must be short
            // for the reconnect loop to keep its pace.
            connect_timeout: Duration::from_millis(1000),
            // Publishes waiting for the connection: at 20 000/s that is
            // ~0.4 s of traffic, more than one publish timeout.
            queue_len: 8192,
            // ...and at most this many payload bytes, whatever their count.
            queue_bytes: 64 << 20,
            // Reconnect backoff: doubles from 50 ms, capped at 1 s so a
            // returning Redis is noticed within a second (the cluster must
            // deliver again within 3 s) while a dead one costs ~1 attempt/s.
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(1000),
            // A killed node's members vanish from presence after this...
            presence_ttl: Duration::from_secs(10),
            // ...because live nodes refresh their entries this often (a
            // third of the TTL: two refreshes may fail before entries lapse).
            presence_refresh: Duration::from_secs(3),
            // A probe travels command connection -> Redis -> this node's
            // subscription every interval; health turns red when none has
            // come back for `probe_timeout` (a subscription that is silently
            // dead must not look green).
            probe_interval: Duration::from_millis(1000),
            probe_timeout: Duration::from_millis(3000),
            // Cross-node requests (stats, close) wait this long for answers.
            request_timeout: Duration::from_millis(1000),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The Redis URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The Redis URL with its password masked, for logs.
    pub fn url_redacted(&self) -> String {
        redact(&self.url)
    }

    /// Prefix of every key and channel (default `sb`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Messages kept per room for recovery (default 1000; 0 turns history
    /// off). The stream is trimmed approximately, so at least this many are
    /// kept; recovery of a larger gap is refused.
    pub fn history(mut self, n: usize) -> Self {
        self.history = n;
        self
    }

    /// How long a room's stream state outlives its last publish (default
    /// 24 h).
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    /// Longest a publish waits for Redis before failing (default 500 ms).
    /// A publish not sent by then is never sent; one sent but answered
    /// later is reported (and counted) as failed. A failure nobody awaits
    /// is counted at most this plus the command timeout after the call.
    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.publish_timeout = d;
        self
    }

    /// Longest any other command waits (default 500 ms).
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = d;
        self
    }

    /// Longest a connection attempt takes (default 1 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Most publishes queued for Redis (default 8192) and their most
    /// payload bytes (default 64 MiB); a publish beyond either fails at once.
    pub fn queue(mut self, len: usize, bytes: usize) -> Self {
        self.queue_len = len.max(1);
        self.queue_bytes = bytes.max(1);
        self
    }

    /// Reconnect backoff: first delay and cap (default 50 ms and 1 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// Presence entry lifetime and refresh period (default 10 s and 3 s).
    pub fn presence_ttl(mut self, ttl: Duration, refresh: Duration) -> Self {
        self.presence_ttl = ttl;
        self.presence_refresh = refresh;
        self
    }

    /// Liveness probe period and the silence after which health is red
    /// and the subscription is rebuilt (default 1 s and 3 s).
    pub fn probe(mut self, interval: Duration, timeout: Duration) -> Self {
        self.probe_interval = interval;
        self.probe_timeout = timeout;
        self
    }

    /// How long cross-node requests wait for answers (default 1 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let id = &self.node_id;
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(Error::config(format!(
                "invalid node id {id:?}: 1-64 letters, digits, '.', '_' or '-'"
            )));
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}', ' ']) {
            return Err(Error::config(format!(
                "invalid key prefix {:?}",
                self.prefix
            )));
        }
        let positive = [
            ("publish timeout", self.publish_timeout),
            ("command timeout", self.command_timeout),
            ("connect timeout", self.connect_timeout),
            ("presence ttl", self.presence_ttl),
            ("presence refresh", self.presence_refresh),
            ("probe interval", self.probe_interval),
            ("probe timeout", self.probe_timeout),
            ("request timeout", self.request_timeout),
            ("retention", self.retention),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(Error::config(format!("{name} must be positive")));
        }
        if self.presence_refresh >= self.presence_ttl {
            return Err(Error::config(
                "presence refresh must be shorter than the presence ttl",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert!(RedisConfig::new("redis://x", "node-1.a_b")
            .validate()
            .is_ok());
        for bad in ["", "a b", "a:b", "a{b}", &"x".repeat(65)] {
            let err = RedisConfig::new("redis://x", bad).validate().unwrap_err();
            assert!(err.is_config(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://secret@h"), "redis://***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        let c = RedisConfig::new("redis://:pw@h", "a");
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn refresh_must_be_shorter_than_ttl() {
        let c = RedisConfig::new("redis://x", "a")
            .presence_ttl(Duration::from_secs(1), Duration::from_secs(1));
        assert!(c.validate().is_err());
    }
}
