//! The permessage-deflate codec: [`Deflate`] compresses whole messages,
//! [`Inflate`] decompresses fragments under the message limit.
//!
//! Both allocate their `zlib-rs` state on first use. Neither knows about
//! sockets or tasks: where a compressor lives, and in what order it sees
//! messages, is the caller's business (see the framework's writer task).

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::{
    DeflateConfig, DeflateParams, INFLATE_CHUNK, MAX_WINDOW_BITS, MIN_COMPRESS_WINDOW_BITS,
    MIN_INFLATE_CHUNK, MIN_WINDOW_BITS, TAIL,
};
use crate::{decoder::PayloadExtension, error::ProtocolError, Role};

/// A permessage-deflate compressor for one direction of one connection.
///
/// With context takeover the LZ77 window carries over from message to
/// message, so messages must be compressed in the order they go on the
/// wire, and every compressed message must be sent. Without it, each
/// message stands alone and the compressor can be reused for any
/// connection with the same window size.
///
/// ```
/// use switchboard_proto::Deflate;
/// let mut d = Deflate::new(15, true, 1).threshold(16);
/// assert!(d.compress(b"short").is_none()); // below the threshold
/// let big = "hello hello hello hello hello hello".repeat(10);
/// let packed = d.compress(big.as_bytes()).unwrap();
/// assert!(packed.len() < big.len() / 4);
/// ```
#[derive(Debug)]
pub struct Deflate {
    /// Allocated on the first message that is compressed.
    compress: Option<Compress>,
    window_bits: u8,
    no_context_takeover: bool,
    level: u8,
    threshold: usize,
}

impl Deflate {
    /// A compressor with a window of `window_bits` (8 to 15), resetting
    /// after every message when `no_context_takeover`, at `level` (0 to 9).
    /// The threshold starts at 0: every message is compressed.
    pub fn new(window_bits: u8, no_context_takeover: bool, level: u8) -> Deflate {
        Deflate {
            compress: None,
            window_bits: window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS),
            no_context_takeover,
            level: level.min(9),
            threshold: 0,
        }
    }

    /// The compressor `role` uses on a connection with `params`.
    pub fn for_connection(params: &DeflateParams, role: Role, config: &DeflateConfig) -> Deflate {
        let (bits, no_takeover) = params.outgoing(role);
        Deflate::new(bits, no_takeover, config.get_level()).threshold(config.get_threshold())
    }

    /// Leaves messages shorter than `bytes` uncompressed.
    #[must_use]
    pub fn threshold(mut self, bytes: usize) -> Deflate {
        self.threshold = bytes;
        self
    }

    /// Whether the window carries over between messages.
    pub fn takes_over_context(&self) -> bool {
        !self.no_context_takeover
    }

    /// Whether this compressor ever compresses (not with an 8-bit window,
    /// which the backend cannot honour).
    pub fn is_active(&self) -> bool {
        self.window_bits >= MIN_COMPRESS_WINDOW_BITS
    }

    /// Compresses one whole message. `None` means "send it uncompressed":
    /// below the threshold, an inactive compressor, or (without context
    /// takeover, where skipping is free) no smaller than the original.
    pub fn compress(&mut self, message: &[u8]) -> Option<Bytes> {
        if message.len() < self.threshold || !self.is_active() {
            return None;
        }
        let (bits, level) = (self.window_bits, self.level);
        let c = self.compress.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(u32::from(level)), false, bits)
        });
        let mut out = Vec::with_capacity(message.len() / 2 + 64);
        let mut input = message;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(1024));
            }
            let before = c.total_in();
            if c.compress_vec(input, &mut out, FlushCompress::Sync)
                .is_err()
            {
                // Never expected. The peer has not seen any of this message,
                // and a fresh window only means fewer back-references, so
                // resetting keeps both sides consistent.
                c.reset();
                return None;
            }
            input = &input[(c.total_in() - before) as usize..];
            // Done when all input is in and the flush left room unused.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if self.no_context_takeover {
            c.reset();
            if out.len() >= message.len() {
                return None;
            }
        }
        Some(Bytes::from(out))
    }
}

/// The bounded permessage-deflate decompressor (see the module docs).
///
/// ```
/// use bytes::BytesMut;
/// use switchboard_proto::{Deflate, Inflate, PayloadExtension, ProtocolError};
/// let bomb = Deflate::new(15, true, 9).compress(&vec![0u8; 64 * 1024]).unwrap();
/// assert!(bomb.len() < 300);
/// let mut out = BytesMut::new();
/// let err = Inflate::new(false).decode_fragment(&bomb, true, &mut out, 16 * 1024).unwrap_err();
/// assert!(matches!(err, ProtocolError::MessageTooBig { .. }));
/// assert!(out.len() <= 16 * 1024 + 1);
/// ```
#[derive(Debug)]
pub struct Inflate {
    /// Allocated on the first compressed message.
    decompress: Option<Decompress>,
    /// The peer resets its window after every message, so we do too (and
    /// a message cannot lean on an earlier one).
    no_context_takeover: bool,
    /// The current message's deflate stream ended with a BFINAL block.
    ended: bool,
}

impl Inflate {
    /// An inflater; `no_context_takeover`: the peer compresses every
    /// message on its own.
    pub fn new(no_context_takeover: bool) -> Inflate {
        Inflate {
            decompress: None,
            no_context_takeover,
            ended: false,
        }
    }

    /// The inflater `role` uses on a connection with `params`.
    pub fn for_connection(params: &DeflateParams, role: Role) -> Inflate {
        Inflate::new(params.incoming_no_context_takeover(role))
    }

    fn corrupt(e: impl std::fmt::Display) -> ProtocolError {
        ProtocolError::Extension(format!("invalid deflate data: {e}"))
    }

    /// Inflates `input` onto `out`, never letting `out` pass `limit + 1`.
    fn inflate(
        &mut self,
        mut input: &[u8],
        out: &mut BytesMut,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        if self.ended {
            // The stream ended with a final block; RFC 7692 §7.2.3.4 has the
            // sender pad it with an empty header byte, and the TAIL follows.
            // Nothing after a final block is data: it is ignored.
            return Ok(());
        }
        // The window is always 32 KiB: it decodes streams made with any
        // smaller window, including the 8-bit one zlib-rs cannot open.
        let d = self
            .decompress
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
        let mut chunk = (input.len().saturating_mul(4)).clamp(MIN_INFLATE_CHUNK, INFLATE_CHUNK);
        loop {
            // One byte past the limit is room enough to learn it is passed.
            let room = limit.saturating_sub(out.len()).saturating_add(1).min(chunk);
            chunk = INFLATE_CHUNK;
            let start = out.len();
            out.resize(start + room, 0);
            let (in_before, out_before) = (d.total_in(), d.total_out());
            let status = d.decompress(input, &mut out[start..], FlushDecompress::Sync);
            let consumed = (d.total_in() - in_before) as usize;
            let produced = (d.total_out() - out_before) as usize;
            out.truncate(start + produced);
            input = &input[consumed..];
            let status = status.map_err(Self::corrupt)?;
            if out.len() > limit {
                return Err(ProtocolError::MessageTooBig {
                    size: out.len() as u64,
                    limit,
                });
            }
            match status {
                Status::StreamEnd => {
                    self.ended = true;
                    return Ok(());
                }
                Status::Ok | Status::BufError => {}
            }
            if input.is_empty() && produced < room {
                return Ok(());
            }
            if consumed == 0 && produced == 0 {
                return Err(Self::corrupt("the stream makes no progress"));
            }
        }
    }
}

impl PayloadExtension for Inflate {
    fn decode_fragment(
        &mut self,
        fragment: &[u8],
        fin: bool,
        out: &mut BytesMut,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        self.inflate(fragment, out, limit)?;
        if fin {
            self.inflate(&TAIL, out, limit)?;
            if self.no_context_takeover || self.ended {
                // After a final block the stream cannot continue; a peer
                // that ended it cannot expect its window to survive.
                if let Some(d) = self.decompress.as_mut() {
                    d.reset(false);
                }
            }
            self.ended = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decoder, Event, Frame, Limits, OpCode};

    const KEY: [u8; 4] = [1, 2, 3, 4];

    #[test]
    fn round_trip_with_and_without_context_takeover() {
        let msgs: Vec<Vec<u8>> = (0..20)
            .map(|i| format!("{{\"n\":{i},\"text\":\"{}\"}}", "abc".repeat(i * 50)).into_bytes())
            .collect();
        for (takeover, bits) in [(true, 15), (false, 15), (true, 9), (false, 12)] {
            let mut d = Deflate::new(bits, !takeover, 6);
            let mut i = Inflate::new(!takeover);
            let mut total = 0;
            for m in &msgs {
                let packed = d.compress(m);
                if let Some(packed) = packed {
                    total += packed.len();
                    let mut out = BytesMut::new();
                    i.decode_fragment(&packed, true, &mut out, 1 << 20).unwrap();
                    assert_eq!(&out[..], &m[..]);
                } else {
                    assert!(!takeover, "with takeover every message is compressed");
                }
            }
            assert!(total > 0);
        }
    }

    #[test]
    fn context_takeover_shrinks_repeats() {
        let msg =
            b"{\"type\":\"price\",\"symbol\":\"ACME\",\"bid\":101.25,\"ask\":101.5}".repeat(4);
        let mut keep = Deflate::new(15, false, 6);
        let mut reset = Deflate::new(15, true, 6);
        let first = keep.compress(&msg).unwrap().len();
        let second = keep.compress(&msg).unwrap().len();
        assert!(second < first / 4, "{second} vs {first}");
        assert_eq!(reset.compress(&msg).unwrap().len(), first);
        assert_eq!(reset.compress(&msg).unwrap().len(), first);
    }

    #[test]
    fn tail_is_stripped() {
        let packed = Deflate::new(15, true, 1).compress(&[b'x'; 2000]).unwrap();
        assert!(!packed.ends_with(&TAIL));
    }

    fn server_decoder(limit: usize, client_no_context_takeover: bool) -> Decoder {
        let mut dec = Decoder::new(
            Role::Server,
            Limits {
                max_message_size: limit,
                ..Limits::DEFAULT
            },
        );
        dec.set_extension(Box::new(Inflate::new(client_no_context_takeover)));
        dec
    }

    fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Result<Vec<Event>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(ev) = dec.decode(&mut buf)? {
            out.push(ev);
        }
        Ok(out)
    }

    #[test]
    fn bomb_in_one_frame_closes_1009() {
        let bomb = Deflate::new(15, true, 9)
            .compress(&[0u8; 64 * 1024])
            .unwrap();
        assert!(bomb.len() < 400, "{}", bomb.len());
        let frame = Frame::masked(OpCode::Binary, true, true, &bomb, KEY).to_vec();
        let err = decode_all(&mut server_decoder(16 * 1024, false), &frame).unwrap_err();
        assert!(
            matches!(err, ProtocolError::MessageTooBig { size, limit: 16384 } if size == 16385)
        );
        assert_eq!(err.close_code(), crate::CloseCode::MESSAGE_TOO_BIG);
        // At the limit exactly is fine.
        let ok = Deflate::new(15, true, 9)
            .compress(&[0u8; 16 * 1024])
            .unwrap();
        let frame = Frame::masked(OpCode::Binary, true, true, &ok, KEY).to_vec();
        let evs = decode_all(&mut server_decoder(16 * 1024, false), &frame).unwrap();
        assert_eq!(evs, [Event::Binary(vec![0u8; 16 * 1024].into())]);
    }

    #[test]
    fn inflater_memory_stays_near_the_limit() {
        // A 4 MiB bomb (about 4 KiB compressed) against a 16 KiB limit.
        let bomb = Deflate::new(15, true, 9)
            .compress(&vec![0u8; 4 << 20])
            .unwrap();
        let mut out = BytesMut::new();
        let err = Inflate::new(true).decode_fragment(&bomb, true, &mut out, 16 * 1024);
        assert!(err.is_err());
        assert!(
            out.capacity() <= 16 * 1024 + 1 + INFLATE_CHUNK,
            "{}",
            out.capacity()
        );
    }

    #[test]
    fn bomb_split_across_fragments_fails_before_the_last() {
        let bomb = Deflate::new(15, true, 9)
            .compress(&[0u8; 256 * 1024])
            .unwrap();
        let third = bomb.len() / 3;
        let (a, rest) = bomb.split_at(third);
        let (b, c) = rest.split_at(third);
        let mut dec = server_decoder(16 * 1024, false);
        // The first fragment alone already inflates past 16 KiB.
        let first = Frame::masked(OpCode::Text, false, true, a, KEY).to_vec();
        let second = Frame::masked(OpCode::Continuation, false, false, b, KEY).to_vec();
        let last = Frame::masked(OpCode::Continuation, true, false, c, KEY).to_vec();
        let mut all = first.clone();
        all.extend(&second);
        all.extend(&last);
        let mut buf = BytesMut::from(&all[..]);
        let err = dec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::MessageTooBig { .. }));
        // Failed before the last fragment was consumed.
        assert!(buf.len() >= last.len());
    }

    #[test]
    fn bomb_spread_thinly_over_fragments() {
        // Each fragment inflates to little; together they pass the limit.
        let data = vec![b'z'; 40 * 1024];
        let packed = Deflate::new(15, true, 9).compress(&data).unwrap();
        let mut bytes = Vec::new();
        let pieces: Vec<&[u8]> = packed.chunks(8).collect();
        for (i, p) in pieces.iter().enumerate() {
            let op = if i == 0 {
                OpCode::Binary
            } else {
                OpCode::Continuation
            };
            bytes.extend(Frame::masked(op, i + 1 == pieces.len(), i == 0, p, KEY).to_vec());
        }
        let err = decode_all(&mut server_decoder(16 * 1024, false), &bytes).unwrap_err();
        assert!(matches!(err, ProtocolError::MessageTooBig { .. }));
        // Under a 64 KiB limit the same fragments are one good message.
        let evs = decode_all(&mut server_decoder(64 * 1024, false), &bytes).unwrap();
        assert_eq!(evs, [Event::Binary(data.into())]);
    }

    #[test]
    fn bomb_across_messages_with_context_takeover() {
        // Message 1 fills the window with zeros (within the limit); message
        // 2 is a handful of bytes that copy from that window 32 KiB times.
        let mut d = Deflate::new(15, false, 9);
        let m1 = d.compress(&[0u8; 16 * 1024]).unwrap();
        let m2 = d.compress(&[0u8; 64 * 1024]).unwrap();
        assert!(m2.len() < 200, "{}", m2.len());
        let mut bytes = Frame::masked(OpCode::Binary, true, true, &m1, KEY).to_vec();
        bytes.extend(Frame::masked(OpCode::Binary, true, true, &m2, KEY).to_vec());
        let mut dec = server_decoder(16 * 1024, false);
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Event::Binary(vec![0u8; 16 * 1024].into()))
        );
        let err = dec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::MessageTooBig { .. }));
    }

    #[test]
    fn no_context_takeover_inflater_forgets_earlier_messages() {
        // A peer that promised no context takeover but leans on the window
        // of its previous message: the reference points nowhere, 1007.
        let mut d = Deflate::new(15, false, 6);
        let msg = b"the same sentence, twice over; the same sentence, twice over";
        let first = d.compress(msg).unwrap();
        let second = d.compress(msg).unwrap();
        let mut bytes = Frame::masked(OpCode::Text, true, true, &first, KEY).to_vec();
        bytes.extend(Frame::masked(OpCode::Text, true, true, &second, KEY).to_vec());
        let err = decode_all(&mut server_decoder(1 << 20, true), &bytes).unwrap_err();
        assert_eq!(err.close_code(), crate::CloseCode::INVALID_PAYLOAD);
        // With takeover agreed, the same bytes are two good messages.
        let evs = decode_all(&mut server_decoder(1 << 20, false), &bytes).unwrap();
        assert_eq!(evs.len(), 2);
    }

    #[test]
    fn corrupt_data_closes_1007() {
        // A reserved block type, twice, and a back-reference into a window
        // that is empty (RFC 7692 §7.2.3.2's second message, sent first).
        for junk in [
            &[0xffu8, 0xff, 0xff, 0xff][..],
            &[0x07],
            &[0xf2, 0x00, 0x11, 0x00, 0x00],
        ] {
            let frame = Frame::masked(OpCode::Binary, true, true, junk, KEY).to_vec();
            let err = decode_all(&mut server_decoder(1 << 20, false), &frame).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Extension(_)),
                "{junk:?}: {err:?}"
            );
            assert_eq!(err.close_code(), crate::CloseCode::INVALID_PAYLOAD);
        }
    }

    #[test]
    fn compressed_text_is_utf8_checked() {
        // With context takeover every message is compressed, however small.
        let packed = Deflate::new(15, false, 6)
            .compress(&[b'a', 0xff, b'b', b'c'])
            .unwrap();
        let frame = Frame::masked(OpCode::Text, true, true, &packed, KEY).to_vec();
        assert_eq!(
            decode_all(&mut server_decoder(1 << 20, false), &frame),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn final_block_is_accepted_and_resets() {
        // A peer may end a message with a BFINAL block (RFC 7692 §7.2.3.4);
        // build one with a full zlib-style finish.
        let mut c = Compress::new_with_window_bits(Compression::new(6), false, 15);
        let mut out = Vec::with_capacity(1024);
        c.compress_vec(b"hello final", &mut out, FlushCompress::Finish)
            .unwrap();
        let mut bytes = Frame::masked(OpCode::Text, true, true, &out, KEY).to_vec();
        let normal = Deflate::new(15, false, 6).compress(b"and again").unwrap();
        bytes.extend(Frame::masked(OpCode::Text, true, true, &normal, KEY).to_vec());
        let evs = decode_all(&mut server_decoder(1 << 20, false), &bytes).unwrap();
        assert_eq!(
            evs,
            [
                Event::Text("hello final".into()),
                Event::Text("and again".into())
            ]
        );
    }

    #[test]
    fn empty_compressed_message() {
        // RFC 7692 §7.2.3.6: an empty message compresses to 0x00.
        let frame = Frame::masked(OpCode::Text, true, true, &[0x00], KEY).to_vec();
        assert_eq!(
            decode_all(&mut server_decoder(1 << 20, false), &frame).unwrap(),
            [Event::Text(crate::Utf8Bytes::new())]
        );
        let frame = Frame::masked(OpCode::Text, true, true, &[], KEY).to_vec();
        assert_eq!(
            decode_all(&mut server_decoder(1 << 20, false), &frame).unwrap(),
            [Event::Text(crate::Utf8Bytes::new())]
        );
    }

    #[test]
    fn rfc_examples() {
        // RFC 7692 §7.2.3.1: "Hello" compressed, and §7.2.3.2 the same with
        // the window of the first message reused.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let again = [0xf2, 0x00, 0x11, 0x00, 0x00];
        let mut i = Inflate::new(false);
        let mut out = BytesMut::new();
        i.decode_fragment(&hello, true, &mut out, 100).unwrap();
        assert_eq!(&out[..], b"Hello");
        out.clear();
        i.decode_fragment(&again, true, &mut out, 100).unwrap();
        assert_eq!(&out[..], b"Hello");
        // §7.2.3.3: a stored (uncompressed) block.
        out.clear();
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        Inflate::new(true)
            .decode_fragment(&stored, true, &mut out, 100)
            .unwrap();
        assert_eq!(&out[..], b"Hello");
        // §7.2.3.4: a BFINAL block padded with one empty header byte.
        out.clear();
        let last = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        i.decode_fragment(&last, true, &mut out, 100).unwrap();
        assert_eq!(&out[..], b"Hello");
        // §7.2.3.5: two blocks in one message.
        out.clear();
        let two = [
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        i.decode_fragment(&two, true, &mut out, 100).unwrap();
        assert_eq!(&out[..], b"Hello");
    }
}
