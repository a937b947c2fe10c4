//! permessage-deflate (RFC 7692): negotiation, the compressor, and an
//! inflater that cannot be turned into a decompression bomb.
//!
//! Three pieces, all sans-IO:
//! - **Negotiation.** [`DeflateParams::negotiate`] picks the first acceptable
//!   `permessage-deflate` offer of a client (RFC 7692 §7: every parameter at
//!   most once, known names only, window bits `8..=15` in plain decimal);
//!   a malformed offer is declined and the next one is tried, never an error.
//!   [`DeflateParams::header_value`] is the `Sec-WebSocket-Extensions`
//!   answer. The client side is [`DeflateConfig::offer`] and
//!   [`DeflateParams::from_response`].
//! - **[`Deflate`]**, the compressor: one message in, one compressed payload
//!   out (the trailing `00 00 ff ff` of the sync flush stripped, §7.2.1),
//!   or `None` when the message should go uncompressed (below the size
//!   threshold, or no smaller without context takeover).
//! - **[`Inflate`]**, the decompressor, a [`PayloadExtension`] for the
//!   [`Decoder`](crate::Decoder): it inflates into bounded chunks and fails
//!   with [`ProtocolError::MessageTooBig`] (close 1009) the moment the
//!   output would pass the message limit, so a few hundred compressed bytes
//!   never become more than `limit + 1` bytes of memory, whether the bomb
//!   sits in one frame, is spread over fragments, or leans on the window of
//!   earlier messages (context takeover). Corrupt deflate data fails with
//!   [`ProtocolError::Extension`] (close **1007**, invalid payload data: the
//!   frames were well formed, their content was not — the choice of `ws` for
//!   Node; RFC 7692 only says "fail the connection").
//!
//! # Why flate2 with the `zlib-rs` backend
//! `flate2` is the ecosystem's deflate front end. Of its backends,
//! `miniz_oxide` (the default) cannot compress with a window smaller than
//! 32 KiB, so it could not honour a client's `server_max_window_bits`;
//! `zlib`/`zlib-ng` need a C toolchain and bring C's memory-safety record to
//! the path that parses hostile input. `zlib-rs` is pure Rust, benchmarked by its
//! authors against zlib-ng, and supports window bits 9 to 15 (our own
//! throughput figures are in `docs/compression.md`). Like
//! zlib since 1.2.9 it refuses a 256-byte window (8 bits) for raw deflate:
//! when a peer asks us to compress with 8 bits, we accept and send every
//! message uncompressed (always allowed, §6), and we inflate with a 32 KiB
//! window whatever was negotiated (a larger window decodes any stream made
//! with a smaller one; `zlib-rs` allocates the same memory either way).
//!
//! # Memory (zlib-rs, measured)
//! A compressor is about 370 KiB with a 15-bit window (245 KiB with 9 bits);
//! an inflater about 46 KiB. Both are allocated lazily, on the first message
//! that needs them. With no context takeover on our side a compressor holds
//! nothing between messages, which is what lets the framework share one per
//! thread instead of one per connection.
//!
//! This module never touches a socket; it must not grow any I/O or timers.

mod codec;
mod negotiate;

pub use codec::{Deflate, Inflate};
pub use negotiate::{DeflateConfig, DeflateParams, DeflateResponseError};

/// The extension token.
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// The empty stored block a sync flush ends with; stripped by the sender and
/// put back by the receiver (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Largest piece of output inflated in one step. Each step makes room for
/// at most this much and never more than what is left under the message
/// limit (plus one byte, to see it passed), so a bomb costs at most the
/// limit; large enough that a big legitimate message takes few steps.
const INFLATE_CHUNK: usize = 64 * 1024;

/// Smallest first output chunk: most messages inflate in one step.
const MIN_INFLATE_CHUNK: usize = 1024;

/// The largest LZ77 window, and the default.
const MAX_WINDOW_BITS: u8 = 15;

/// The smallest window RFC 7692 allows.
const MIN_WINDOW_BITS: u8 = 8;

/// The smallest window `zlib-rs` can compress with (see the module docs).
const MIN_COMPRESS_WINDOW_BITS: u8 = 9;
