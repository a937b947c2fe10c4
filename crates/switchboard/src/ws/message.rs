//! The message type handlers send and receive.

use bytes::Bytes;
use switchboard_proto::{CloseFrame, Utf8Bytes};

/// A complete WebSocket message.
///
/// Pings are answered automatically and pongs consumed, so handlers see data
/// messages and, once, the peer's close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message: shared bytes known to be UTF-8, read as a `&str`
    /// (received text is a slice of the read buffer, sent text goes out
    /// without a copy).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// The peer closed the connection (`None`: its close frame had no code).
    /// The close handshake has already been answered.
    Close(Option<CloseFrame>),
}

impl Message {
    /// A text message.
    pub fn text(s: impl Into<Utf8Bytes>) -> Message {
        Message::Text(s.into())
    }

    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Message {
        Message::Binary(b.into())
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The payload bytes of a data message.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Message::Text(s) => Some(s.as_bytes()),
            Message::Binary(b) => Some(b),
            Message::Close(_) => None,
        }
    }

    /// Whether this is the peer's close.
    pub fn is_close(&self) -> bool {
        matches!(self, Message::Close(_))
    }

    /// The data message an encoded frame carries (a text frame that is not
    /// UTF-8, which only a hand-built frame can be, is read lossily).
    pub(crate) fn from_frame(frame: &switchboard_proto::Frame) -> Message {
        let payload = frame.payload().clone();
        match frame.opcode() {
            switchboard_proto::OpCode::Text => Message::Text(
                Utf8Bytes::try_from(payload.clone())
                    .unwrap_or_else(|_| String::from_utf8_lossy(&payload).into_owned().into()),
            ),
            _ => Message::Binary(payload),
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Message::Text(_) => "text",
            Message::Binary(_) => "binary",
            Message::Close(_) => "close",
        }
    }
}

impl From<Utf8Bytes> for Message {
    fn from(s: Utf8Bytes) -> Message {
        Message::Text(s)
    }
}

impl From<String> for Message {
    fn from(s: String) -> Message {
        Message::Text(s.into())
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Message {
        Message::Text(s.into())
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Message {
        Message::Binary(b)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Message {
        Message::Binary(b.into())
    }
}
