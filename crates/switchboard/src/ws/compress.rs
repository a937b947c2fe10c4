//! Outgoing permessage-deflate: which messages are compressed, and where
//! the compressor lives.
//!
//! Compression happens in the connection's writer task, the single place
//! frames are serialized. Context takeover needs exactly that: the
//! compressor must see messages in wire order and every message it
//! compressed must reach the wire (a purged frame is dropped *before* it is
//! compressed). `Sender` clones on any number of tasks only queue plain
//! frames, so they take no lock and never wait on each other's compression;
//! a mutex in `Shared` would serialize them and still have to keep
//! compression order equal to queue order.
//!
//! Without context takeover on our side (the default) a compressor holds
//! nothing between messages, so none is kept per connection: each thread
//! keeps one per (window, level) in a small pool, borrowed for one
//! synchronous call. The hub uses the same pool to compress a broadcast
//! once per parameter set and share the frame among recipients.
//!
//! Must not: hold a pooled compressor across an `.await`, or touch a frame
//! that is already compressed, masked, a control frame, or one fragment of
//! a longer message.

use std::cell::RefCell;

use bytes::Bytes;
use switchboard_proto::{Deflate, DeflateConfig, DeflateParams, Frame, OpCode, Role};

/// What one connection negotiated, as its writer and the hub need it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated {
    pub(crate) params: DeflateParams,
    /// Our role: which direction's parameters we compress with.
    role: Role,
    level: u8,
    threshold: usize,
    /// Computed once: the hub asks for it per recipient per broadcast.
    shared: Option<SharedKey>,
}

/// A compressor configuration whose output any connection with the same
/// key can decode: no context takeover, same window and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedKey {
    window_bits: u8,
    level: u8,
}

impl Negotiated {
    pub(crate) fn new(params: DeflateParams, role: Role, config: &DeflateConfig) -> Self {
        let level = config.get_level();
        let (window_bits, no_takeover) = params.outgoing(role);
        let shared = (no_takeover && Deflate::new(window_bits, true, level).is_active())
            .then_some(SharedKey { window_bits, level });
        Negotiated {
            params,
            role,
            level,
            threshold: config.get_threshold(),
            shared,
        }
    }

    /// Whether a message of `len` bytes is worth compressing.
    pub(crate) fn wants(&self, len: usize) -> bool {
        len >= self.threshold
    }

    /// `Some` when every message is compressed on its own, so one
    /// compressed frame can be shared with other connections of the same
    /// key (`None` with context takeover, or a window we cannot use).
    pub(crate) fn shared_key(&self) -> Option<SharedKey> {
        self.shared
    }
}

/// Distinct keys kept per thread. Routes rarely differ in window or
/// level, so a handful covers every combination in use; beyond it the
/// oldest is dropped (about 370 KiB each with a 15-bit window).
const MAX_POOLED: usize = 4;

thread_local! {
    /// Compressors without context takeover, reset after every message.
    static POOL: RefCell<Vec<(SharedKey, Deflate)>> = const { RefCell::new(Vec::new()) };
}

/// Compresses one message on its own with a pooled compressor; `None`:
/// send it uncompressed (no smaller).
pub(crate) fn compress_shared(key: SharedKey, payload: &[u8]) -> Option<Bytes> {
    POOL.with(|pool| {
        // Not re-entrant in practice; a nested call just gets its own.
        let Ok(mut pool) = pool.try_borrow_mut() else {
            return Deflate::new(key.window_bits, true, key.level).compress(payload);
        };
        let i = match pool.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                if pool.len() == MAX_POOLED {
                    pool.remove(0);
                }
                pool.push((key, Deflate::new(key.window_bits, true, key.level)));
                pool.len() - 1
            }
        };
        pool[i].1.compress(payload)
    })
}

/// Whether `frame` is a whole, plain, unmasked data message.
pub(crate) fn is_compressible(frame: &Frame) -> bool {
    matches!(frame.opcode(), OpCode::Text | OpCode::Binary)
        && frame.fin()
        && !frame.rsv1()
        && !frame.is_masked()
}

/// One broadcast's frames: the plain frame, and one compressed frame per
/// distinct [`SharedKey`] among its recipients, made on first need. With
/// the default parameters every compressing recipient has the same key, so
/// a broadcast is compressed once however many receive it.
#[derive(Debug)]
pub(crate) struct BroadcastFrames<'a> {
    plain: &'a Frame,
    eligible: bool,
    /// Tiny: one entry per key seen in this broadcast (usually one).
    made: Vec<(SharedKey, Frame)>,
}

impl<'a> BroadcastFrames<'a> {
    pub(crate) fn new(plain: &'a Frame) -> Self {
        BroadcastFrames {
            plain,
            eligible: is_compressible(plain),
            made: Vec::new(),
        }
    }

    /// The frame to queue as is for a recipient with `deflate`: `Some`
    /// (compressed, or plain when compression does not pay) for a
    /// recipient whose messages are compressed on their own, `None` when
    /// its own writer decides (no deflate, below its threshold, or context
    /// takeover, which must see every message).
    pub(crate) fn for_recipient(&mut self, deflate: Option<&Negotiated>) -> Option<&Frame> {
        let n = deflate?;
        if !self.eligible || !n.wants(self.plain.payload().len()) {
            return None;
        }
        let key = n.shared_key()?;
        let i = match self.made.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let frame = match compress_shared(key, self.plain.payload()) {
                    Some(p) => Frame::new(self.plain.opcode(), true, true, p),
                    None => self.plain.clone(),
                };
                self.made.push((key, frame));
                self.made.len() - 1
            }
        };
        Some(&self.made[i].1)
    }
}

/// The writer task's compression state.
#[derive(Debug)]
pub(crate) struct Compressor {
    negotiated: Negotiated,
    /// The connection's own compressor, with context takeover only.
    own: Option<Deflate>,
    shared: Option<SharedKey>,
}

impl Compressor {
    pub(crate) fn new(negotiated: Negotiated) -> Self {
        let (bits, no_takeover) = negotiated.params.outgoing(negotiated.role);
        Compressor {
            negotiated,
            // Allocates its zlib state on the first message it compresses.
            own: (!no_takeover).then(|| Deflate::new(bits, false, negotiated.level)),
            shared: negotiated.shared_key(),
        }
    }

    /// The frame to write for a queued `frame`: compressed with RSV1 when
    /// it is an eligible message above the threshold, else unchanged.
    pub(crate) fn apply(&mut self, frame: Frame) -> Frame {
        if !is_compressible(&frame) || !self.negotiated.wants(frame.payload().len()) {
            return frame;
        }
        let packed = match (&mut self.own, self.shared) {
            (Some(own), _) => own.compress(frame.payload()),
            (None, Some(key)) => compress_shared(key, frame.payload()),
            (None, None) => None,
        };
        match packed {
            Some(p) => Frame::new(frame.opcode(), true, true, p),
            None => frame,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiated(offer: &str, config: DeflateConfig) -> Negotiated {
        let offers = vec![switchboard_proto::ExtensionOffer {
            name: "permessage-deflate".into(),
            params: offer
                .split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (p.to_owned(), None),
                })
                .collect(),
        }];
        let params = DeflateParams::negotiate(&offers, &config).unwrap();
        Negotiated::new(params, Role::Server, &config)
    }

    #[test]
    fn shared_key_only_without_context_takeover() {
        let cfg = DeflateConfig::default();
        assert!(negotiated("", cfg).shared_key().is_some());
        let keep = cfg.server_no_context_takeover(false);
        assert!(negotiated("", keep).shared_key().is_none());
        // The client can still ask for it.
        assert!(negotiated("server_no_context_takeover", keep)
            .shared_key()
            .is_some());
        // 8 bits: accepted, never compressed.
        assert!(negotiated("server_max_window_bits=8", cfg)
            .shared_key()
            .is_none());
    }

    #[test]
    fn applies_to_whole_plain_messages_above_the_threshold() {
        let mut c = Compressor::new(negotiated("", DeflateConfig::default()));
        let big = Bytes::from("x".repeat(4096));
        let f = c.apply(Frame::new(OpCode::Text, true, false, big.clone()));
        assert!(f.rsv1() && f.payload().len() < 100);
        // Below the threshold, fragments, control frames: unchanged.
        for frame in [
            Frame::new(OpCode::Text, true, false, "x".repeat(100).into()),
            Frame::new(OpCode::Binary, false, false, big.clone()),
            Frame::new(OpCode::Continuation, true, false, big.clone()),
            Frame::new(OpCode::Ping, true, false, "p".into()),
            f.clone(),
        ] {
            assert_eq!(c.apply(frame.clone()), frame);
        }
    }

    #[test]
    fn broadcast_is_compressed_once_per_key() {
        let plain = Frame::new(OpCode::Text, true, false, "y".repeat(4096).into());
        let default = negotiated("", DeflateConfig::default());
        let small = negotiated("server_max_window_bits=10", DeflateConfig::default());
        let keep = negotiated(
            "",
            DeflateConfig::default().server_no_context_takeover(false),
        );
        let mut frames = BroadcastFrames::new(&plain);
        let a = frames.for_recipient(Some(&default)).unwrap().clone();
        let b = frames.for_recipient(Some(&default)).unwrap().clone();
        // Same allocation: shared, not recompressed.
        assert!(a.rsv1() && a.payload().as_ptr() == b.payload().as_ptr());
        let c = frames.for_recipient(Some(&small)).unwrap().clone();
        assert!(c.rsv1() && c.payload().as_ptr() != a.payload().as_ptr());
        assert_eq!(frames.made.len(), 2);
        assert!(frames.for_recipient(Some(&keep)).is_none());
        assert!(frames.for_recipient(None).is_none());
    }
}
