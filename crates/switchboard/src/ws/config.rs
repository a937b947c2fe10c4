//! Per-route WebSocket settings: subprotocols, origin policy, limits, queue
//! size and close timeout.

use std::{fmt, sync::Arc, time::Duration};

use switchboard_proto::Limits;

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
#[derive(Debug, Clone)]
#[must_use]
pub struct WsConfig {
    pub(crate) protocols: Vec<String>,
    pub(crate) origin: OriginPolicy,
    pub(crate) limits: Limits,
    pub(crate) max_queue_bytes: usize,
    pub(crate) close_timeout: Duration,
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
}
