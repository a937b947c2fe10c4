//! The one public error type for WebSocket operations.
//!
//! Following hyper, [`Error`] is opaque: callers ask it questions
//! (`is_disconnect`, `is_json`, …) instead of matching a public enum that
//! could never grow. The kinds that matter for control flow each have a
//! predicate; the rest is in the `Display` text.

use std::fmt;

use switchboard_proto::{CloseCode, CloseFrame, ProtocolError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error from a WebSocket operation.
pub struct Error {
    kind: Kind,
}

#[derive(Debug)]
pub(crate) enum Kind {
    /// The connection is closed; carries the close code and reason.
    Disconnect(CloseFrame),
    /// The peer broke the protocol; the connection was failed with a close code.
    Protocol(ProtocolError),
    /// Reading or writing the socket failed.
    Io(std::io::Error),
    /// A message was not valid JSON for the requested type (socket still usable).
    Json(serde_json::Error),
    /// A text message arrived where bytes were expected, or the reverse.
    WrongType {
        expected: &'static str,
        got: &'static str,
    },
    /// The handshake could not be completed (accept called twice, bad subprotocol, …).
    Handshake(String),
    /// The outgoing queue is over its byte limit.
    Capacity { queued: usize, limit: usize },
    /// A message was dropped by the rate limit (socket still usable).
    RateLimited,
    /// An error returned by application code.
    App(BoxError),
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Error { kind }
    }

    pub(crate) fn disconnect(frame: CloseFrame) -> Self {
        Error::new(Kind::Disconnect(frame))
    }

    pub(crate) fn handshake(msg: impl Into<String>) -> Self {
        Error::new(Kind::Handshake(msg.into()))
    }

    /// Wraps an application error, for handlers that mix their own errors
    /// with socket errors.
    pub fn app(err: impl Into<BoxError>) -> Self {
        Error::new(Kind::App(err.into()))
    }

    /// The connection is closed (by either side, or dropped). See
    /// [`Error::close_code`] and [`Error::close_reason`].
    pub fn is_disconnect(&self) -> bool {
        matches!(self.kind, Kind::Disconnect(_))
    }

    /// The close code of a disconnect: the peer's code, 1005 when its close
    /// frame had none, or 1006 when the connection dropped without one.
    pub fn close_code(&self) -> Option<CloseCode> {
        match &self.kind {
            Kind::Disconnect(f) => Some(f.code),
            Kind::Protocol(p) => Some(p.close_code()),
            _ => None,
        }
    }

    /// The close reason of a disconnect.
    pub fn close_reason(&self) -> Option<&str> {
        match &self.kind {
            Kind::Disconnect(f) => Some(&f.reason),
            _ => None,
        }
    }

    /// The peer violated RFC 6455 or a size limit; the connection was failed.
    pub fn is_protocol(&self) -> bool {
        matches!(self.kind, Kind::Protocol(_))
    }

    /// A received message was not valid JSON for the requested type. The
    /// socket is still open and usable.
    pub fn is_json(&self) -> bool {
        matches!(self.kind, Kind::Json(_))
    }

    /// A received message had the other data type (text vs binary). The
    /// socket is still open and usable.
    pub fn is_wrong_type(&self) -> bool {
        matches!(self.kind, Kind::WrongType { .. })
    }

    /// An I/O error on the underlying connection.
    pub fn is_io(&self) -> bool {
        matches!(self.kind, Kind::Io(_))
    }

    /// The handshake could not be completed as asked.
    pub fn is_handshake(&self) -> bool {
        matches!(self.kind, Kind::Handshake(_))
    }

    /// The outgoing queue is full (see `WsConfig::max_queue_bytes`).
    pub fn is_capacity(&self) -> bool {
        matches!(self.kind, Kind::Capacity { .. })
    }

    /// Whether the socket can still be used after this error.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self.kind,
            Kind::Json(_) | Kind::WrongType { .. } | Kind::Capacity { .. } | Kind::RateLimited
        )
    }

    /// A message was dropped by the route's rate limit
    /// ([`RateLimitPolicy::Drop`](crate::RateLimitPolicy::Drop)).
    pub fn is_rate_limited(&self) -> bool {
        matches!(self.kind, Kind::RateLimited)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Error").field(&self.kind).finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Disconnect(c) if c.reason.is_empty() => {
                write!(f, "websocket disconnected (code {})", c.code)
            }
            Kind::Disconnect(c) => {
                write!(f, "websocket disconnected (code {}: {})", c.code, c.reason)
            }
            Kind::Protocol(e) => write!(f, "websocket protocol error: {e}"),
            Kind::Io(e) => write!(f, "websocket I/O error: {e}"),
            Kind::Json(e) => write!(f, "invalid JSON message: {e}"),
            Kind::WrongType { expected, got } => {
                write!(f, "expected a {expected} message, got {got}")
            }
            Kind::Handshake(m) => write!(f, "websocket handshake: {m}"),
            Kind::Capacity { queued, limit } => write!(
                f,
                "outgoing queue full ({queued} bytes queued, limit {limit})"
            ),
            Kind::RateLimited => f.write_str("message dropped: rate limit exceeded"),
            Kind::App(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Protocol(e) => Some(e),
            Kind::Io(e) => Some(e),
            Kind::Json(e) => Some(e),
            Kind::App(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(Kind::Io(e))
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::new(Kind::Protocol(e))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::new(Kind::Json(e))
    }
}

impl From<CloseCode> for Error {
    fn from(code: CloseCode) -> Self {
        Error::disconnect(CloseFrame::new(code, ""))
    }
}
