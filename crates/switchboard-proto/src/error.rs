//! Protocol errors, each mapped to the close code the RFC prescribes.

use crate::close::CloseCode;

/// A violation of RFC 6455 (or of a configured limit) by the peer.
///
/// Every variant knows the close code to fail the connection with
/// ([`ProtocolError::close_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// An opcode from the reserved ranges (3–7, 11–15).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// RSV bits set that no negotiated extension defines.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// A client frame without a mask, or a server frame with one.
    #[error("{}", if *.0 { "client frame is not masked" } else { "server frame is masked" })]
    Masking(bool),
    /// A control frame with FIN clear.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    #[error("control frame payload longer than 125 bytes")]
    ControlTooLong,
    /// A continuation frame with no message in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message is in progress.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// A 64-bit length with the most significant bit set.
    #[error("invalid 64-bit payload length")]
    InvalidLength,
    /// A text message or close reason that is not UTF-8.
    #[error("invalid UTF-8 in text payload")]
    InvalidUtf8,
    /// A close payload of exactly one byte.
    #[error("close frame payload of one byte")]
    InvalidClosePayload,
    /// A close code that may not be sent on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A frame after the peer's close frame.
    #[error("frame received after close")]
    FrameAfterClose,
    /// A frame larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    FrameTooBig {
        /// Declared frame payload size.
        size: u64,
        /// Configured limit.
        limit: usize,
    },
    /// A message larger than the configured maximum.
    #[error("message of at least {size} bytes exceeds the limit of {limit}")]
    MessageTooBig {
        /// Size reached so far.
        size: u64,
        /// Configured limit.
        limit: usize,
    },
    /// A message split into more fragments than allowed.
    #[error("message has more than {0} fragments")]
    TooManyFragments(usize),
    /// An extension failed to transform a payload (e.g. corrupt deflate
    /// data): close 1007, the payload is inconsistent with its message.
    #[error("extension error: {0}")]
    Extension(String),
}

impl ProtocolError {
    /// The close code to fail the connection with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::Extension(_) => CloseCode::INVALID_PAYLOAD,
            ProtocolError::FrameTooBig { .. }
            | ProtocolError::MessageTooBig { .. }
            | ProtocolError::TooManyFragments(_) => CloseCode::MESSAGE_TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}
