//! Per-route WebSocket settings: subprotocols, origin policy, limits, queue
//! size, close timeout and permessage-deflate.

use std::{fmt, sync::Arc, time::Duration};

use switchboard_proto::{DeflateConfig, Limits};

use crate::{middleware::Middleware, ratelimit::RateLimit};

/// A custom origin check: receives the `Origin` value (`None` when absent).
pub type OriginCheck = Arc<dyn Fn(Option<&str>) -> bool + Send + Sync>;

/// Which `Origin` headers a WebSocket route accepts.
///
/// The default is [`OriginPolicy::Any`], like most frameworks, because
/// non-browser clients send no `Origin` and same-origin deployments need no
/// check. Browser-facing apps that rely on cookies should set an allowlist:
/// without one, any web page can open a socket with the user's cookies
/// (cross-site WebSocket hijacking). A refused origin gets `403`.
#[derive(Clone, Default)]
pub enum OriginPolicy {
    /// Accept any origin, or none.
    #[default]
    Any,
    /// Accept requests without `Origin` and those whose origin is listed
    /// (exact, case-insensitive match such as `https://example.com`).
    AllowList(Vec<String>),
    /// Decide with a function of the `Origin` value (`None` when absent).
    Custom(OriginCheck),
}

impl fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginPolicy::Any => f.write_str("Any"),
            OriginPolicy::AllowList(l) => f.debug_tuple("AllowList").field(l).finish(),
            OriginPolicy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl OriginPolicy {
    pub(crate) fn allows(&self, origin: Option<&str>) -> bool {
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::AllowList(list) => {
                origin.is_none_or(|o| list.iter().any(|a| a.eq_ignore_ascii_case(o)))
            }
            OriginPolicy::Custom(f) => f(origin),
        }
    }
}

/// Settings for one WebSocket route (or the app-wide default).
///
/// ```
/// use std::time::Duration;
/// use switchboard::WsConfig;
/// let cfg = WsConfig::default()
///     .protocols(["mqtt", "mqttv5"])
///     .allowed_origins(["https://example.com"])
///     .max_message_size(64 * 1024)
///     .close_timeout(Duration::from_secs(2));
/// ```
#[derive(Clone)]
#[must_use]
pub struct WsConfig {
    pub(crate) protocols: Vec<String>,
    pub(crate) origin: OriginPolicy,
    pub(crate) limits: Limits,
    pub(crate) max_queue_bytes: usize,
    pub(crate) close_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) pong_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) max_control_per_sec: u32,
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    pub(crate) compression: Option<DeflateConfig>,
}

impl fmt::Debug for WsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConfig")
            .field("protocols", &self.protocols)
            .field("origin", &self.origin)
            .field("limits", &self.limits)
            .field("max_queue_bytes", &self.max_queue_bytes)
            .field("ping_interval", &self.ping_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("rate_limit", &self.rate_limit)
            .field("middleware", &self.middleware.len())
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            protocols: Vec::new(),
            origin: OriginPolicy::Any,
            limits: Limits::DEFAULT,
            // Bounded outbound memory per socket; one message larger than
            // this is still sent when the queue is empty.
            max_queue_bytes: 1 << 20,
            // How long to wait for the peer's close frame after sending ours
            // (tungstenite and ws wait indefinitely or 30 s; 5 s frees
            // resources sooner while covering slow mobile links).
            close_timeout: Duration::from_secs(5),
            // A write stuck this long means the peer stopped reading.
            write_timeout: Duration::from_secs(10),
            // Under the 60 s idle cut of common proxies (nginx
            // proxy_read_timeout, AWS ALB), like socket.io's 25 s.
            ping_interval: Some(Duration::from_secs(25)),
            pong_timeout: Duration::from_secs(20),
            idle_timeout: None,
            rate_limit: None,
            // Far above any legitimate keep-alive, low enough that a ping
            // flood cannot make us spend our time writing pongs.
            max_control_per_sec: 100,
            middleware: Vec::new(),
            // Off: compression costs CPU per message and memory per
            // connection; apps opt in (see `compression`).
            compression: None,
        }
    }
}

impl WsConfig {
    /// Subprotocols this route speaks, in order of preference. When set,
    /// `accept()` selects the first protocol the client offered that is in
    /// this list, and a client that offers only others is refused with 400.
    pub fn protocols<I, S>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.protocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// Only accept these origins (see [`OriginPolicy::AllowList`]).
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.origin = OriginPolicy::AllowList(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the origin policy.
    pub fn origin_policy(mut self, policy: OriginPolicy) -> Self {
        self.origin = policy;
        self
    }

    /// Sets all incoming size limits at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Largest incoming message (default 4 MiB); larger ones close with 1009.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.limits.max_message_size = bytes;
        self
    }

    /// Largest incoming frame (default 4 MiB); larger ones close with 1009.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.limits.max_frame_size = bytes;
        self
    }

    /// Most fragments per incoming message (default 1024).
    pub fn max_fragments(mut self, n: usize) -> Self {
        self.limits.max_fragments = n;
        self
    }

    /// Bytes the outgoing queue may hold (default 1 MiB). `send` waits for
    /// room above this; `try_send` fails.
    pub fn max_queue_bytes(mut self, bytes: usize) -> Self {
        self.max_queue_bytes = bytes;
        self
    }

    /// How long to wait for the peer's close frame (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// How long a write may make no progress before the connection is
    /// closed (default 10 s).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Server pings after this much silence from the peer (default 25 s;
    /// `None` disables the heartbeat). A peer silent for
    /// `ping_interval + pong_timeout` is closed with 1001 "pong timeout".
    /// The peer's pongs are read by the handler's receive calls, so a
    /// handler must keep receiving for the heartbeat to see them.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    /// How long after a ping the pong may take (default 20 s).
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = timeout;
        self
    }

    /// Closes with 1001 "idle timeout" when no data message arrives for
    /// this long (default: none).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Limits incoming data messages per connection (default: none).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Most pings/pongs a peer may send per second before the connection
    /// closes with 1008 "control frame flood" (default 100).
    pub fn max_control_frames_per_sec(mut self, n: u32) -> Self {
        self.max_control_per_sec = n;
        self
    }

    /// Adds middleware for this route (after the app's).
    pub fn middleware(mut self, m: impl Middleware) -> Self {
        self.middleware.push(Arc::new(m));
        self
    }

    /// Negotiates permessage-deflate (RFC 7692) with clients that offer it
    /// (default: `None`, off). Browsers and most client libraries offer it.
    ///
    /// With [`DeflateConfig::default()`]: the server compresses messages of
    /// 1024 bytes or more at level 1, each on its own
    /// (`server_no_context_takeover`), so a hub broadcast is compressed once
    /// and the same frame goes to every recipient with equal parameters,
    /// and no compressor is held per connection (one per thread and window
    /// size instead, ~370 KiB each). Clients may keep their window (context
    /// takeover), which costs an inflater of ~46 KiB per connection that
    /// sends a compressed message. Incoming messages are inflated under
    /// `max_message_size`: a decompression bomb closes with 1009 before it
    /// grows; corrupt deflate data closes with 1007. See
    /// `docs/compression.md`.
    ///
    /// ```
    /// use switchboard::{proto::DeflateConfig, WsConfig};
    /// let cfg = WsConfig::default().compression(Some(DeflateConfig::default().threshold(256)));
    /// ```
    pub fn compression(mut self, config: Option<DeflateConfig>) -> Self {
        self.compression = config;
        self
    }

    pub(crate) fn writer_options(
        &self,
        role: switchboard_proto::Role,
        signal: std::sync::Arc<crate::ws::signal::ConnSignal>,
    ) -> crate::ws::writer::WriterOptions {
        crate::ws::writer::WriterOptions {
            role,
            max_queue_bytes: self.max_queue_bytes,
            close_timeout: self.close_timeout,
            write_timeout: self.write_timeout,
            timers: crate::ws::heartbeat::Timers {
                ping_interval: self.ping_interval,
                pong_timeout: self.pong_timeout,
                idle_timeout: self.idle_timeout,
            },
            signal,
            deflate: None,
            metrics: None,
            plain_tcp: false,
            heartbeat: None,
        }
    }
}
