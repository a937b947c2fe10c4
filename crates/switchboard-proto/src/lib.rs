//! Sans-IO engine for the WebSocket protocol (RFC 6455) and its
//! permessage-deflate extension (RFC 7692).
//!
//! This crate turns bytes into protocol events and messages into bytes; it
//! never touches a socket, a timer or an async runtime, so it can be tested
//! with byte slices and fuzzed directly. The `switchboard` framework drives
//! it from tokio.
//!
//! # Layout
//! - [`mask`](apply_mask): payload masking, eight bytes at a time.
//! - [`Utf8Validator`]: incremental UTF-8 checking across fragments.
//! - [`Utf8Bytes`]: a text message's payload, shared bytes known to be UTF-8.
//! - [`CloseCode`], [`CloseFrame`]: close codes and payloads.
//! - [`FrameHeader`], [`Frame`]: header parsing and encoded outgoing frames.
//! - [`Decoder`]: the incoming state machine enforcing every rule and [`Limits`].
//! - [`validate_request`] and friends: the opening handshake.
//! - [`DeflateParams`], [`Deflate`], [`Inflate`]: permessage-deflate (RFC 7692)
//!   negotiation, compression, and decompression bounded by the message limit.
//!
//! # Feature flags
//! - `serde` (off): `Serialize`/`Deserialize` for [`Utf8Bytes`], as a string.
//!
//! The crate is always sans-IO and dependency-light (`flate2` with its
//! pure-Rust `zlib-rs` backend is the one non-trivial dependency).

mod close;
mod decoder;
mod deflate;
mod error;
mod frame;
mod handshake;
mod limits;
mod mask;
mod text;
mod utf8;

pub use close::{CloseCode, CloseFrame, MAX_CLOSE_REASON};
pub use decoder::{Decoder, Event, PayloadExtension, Role};
pub use deflate::{
    Deflate, DeflateConfig, DeflateParams, DeflateResponseError, Inflate, PERMESSAGE_DEFLATE,
};
pub use error::ProtocolError;
pub use frame::{Frame, FrameHeader, OpCode, MAX_HEADER_LEN};
pub use handshake::{
    accept_key, client_key, header_has_token, parse_extensions, parse_protocols,
    validate_h2_request, validate_request, validate_response, ClientHandshakeError, ExtensionOffer,
    HandshakeError, UpgradeRequest, MAX_EXTENSION_PARAMS, MAX_LIST_ITEMS,
};
pub use limits::Limits;
pub use mask::apply_mask;
pub use text::Utf8Bytes;
pub use utf8::{InvalidUtf8, Utf8Validator};
