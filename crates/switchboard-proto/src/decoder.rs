//! The incremental frame decoder: bytes in, protocol events out.
//!
//! [`Decoder::decode`] takes the connection's read buffer, consumes what it
//! can, and returns at most one [`Event`] per call. It enforces every RFC 6455
//! rule on incoming frames (masking, reserved bits and opcodes, control-frame
//! limits, fragmentation order, UTF-8, close payloads) and every [`Limits`]
//! value *from the header*, before the payload is buffered. Payload bytes are
//! unmasked and UTF-8 checked as they arrive, so an invalid text frame fails
//! before its last byte. It does no I/O and never panics on input.
//!
//! An unfragmented message is handed out as a slice of the read buffer (no
//! copy); fragmented ones are reassembled into one buffer.

use bytes::{Buf, Bytes, BytesMut};

use crate::{
    close::CloseFrame,
    error::ProtocolError,
    frame::{FrameHeader, OpCode},
    limits::Limits,
    mask::apply_mask,
    text::Utf8Bytes,
    utf8::Utf8Validator,
};

/// Which side of the connection this decoder is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decodes client frames: masking required.
    Server,
    /// Decodes server frames: masking forbidden.
    Client,
}

/// One thing the peer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete text message.
    Text(Utf8Bytes),
    /// A complete binary message.
    Binary(Bytes),
    /// A ping with its payload (reply with a pong carrying the same bytes).
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The peer's close frame (`None` when it carried no status code).
    Close(Option<CloseFrame>),
}

impl Event {
    /// The payload of a data message (text or binary), `None` for the rest.
    pub fn data(&self) -> Option<&[u8]> {
        match self {
            Event::Text(t) => Some(t.as_bytes()),
            Event::Binary(b) => Some(b),
            _ => None,
        }
    }
}

/// A negotiated extension that transforms the payload of messages whose
/// first frame has RSV1 set (permessage-deflate is the one in use).
///
/// The decoder feeds it each fragment in order; it appends the decoded bytes
/// to `out` and must fail with [`ProtocolError::MessageTooBig`] as soon as
/// `out` would grow past `limit`, so a small compressed input cannot expand
/// without bound.
pub trait PayloadExtension: Send + Sync + std::fmt::Debug {
    /// Decodes one fragment of an RSV1 message; `fin` marks the last one.
    fn decode_fragment(
        &mut self,
        fragment: &[u8],
        fin: bool,
        out: &mut BytesMut,
        limit: usize,
    ) -> Result<(), ProtocolError>;
}

#[derive(Debug)]
struct InFrame {
    header: FrameHeader,
    /// Payload bytes at the front of the buffer already unmasked and checked.
    processed: usize,
    /// Some of those bytes went back to the caller between two `decode`
    /// calls (the frame spans reads), where safe code could change them:
    /// such a text payload is checked again as a whole (see `checked_text`).
    spanned: bool,
}

#[derive(Debug)]
struct InMessage {
    text: bool,
    compressed: bool,
    fragments: usize,
    /// Bytes received so far (before decompression).
    wire_len: u64,
    /// An uncompressed frame of this message spanned `decode` calls.
    spanned: bool,
}

/// Decodes a stream of frames into [`Event`]s.
///
/// ```
/// use bytes::BytesMut;
/// use switchboard_proto::{Decoder, Event, Frame, Limits, OpCode, Role};
/// let mut dec = Decoder::new(Role::Server, Limits::default());
/// let frame = Frame::masked(OpCode::Text, true, false, b"hi", [1, 2, 3, 4]);
/// let mut buf = BytesMut::from(&frame.to_vec()[..]);
/// assert_eq!(dec.decode(&mut buf).unwrap(), Some(Event::Text("hi".into())));
/// assert_eq!(dec.decode(&mut buf).unwrap(), None);
/// ```
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    limits: Limits,
    frame: Option<InFrame>,
    message: Option<InMessage>,
    assembled: BytesMut,
    utf8: Utf8Validator,
    closed: bool,
    extension: Option<Box<dyn PayloadExtension>>,
}

impl Decoder {
    /// A decoder for `role` with `limits`.
    pub fn new(role: Role, limits: Limits) -> Decoder {
        Decoder {
            role,
            limits,
            frame: None,
            message: None,
            assembled: BytesMut::new(),
            utf8: Utf8Validator::new(),
            closed: false,
            extension: None,
        }
    }

    /// Installs the negotiated payload extension; from now on RSV1 is allowed
    /// on the first frame of a data message.
    pub fn set_extension(&mut self, extension: Box<dyn PayloadExtension>) {
        self.extension = Some(extension);
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the peer's close frame has been decoded.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Decodes the next event from `buf`, consuming its bytes.
    ///
    /// `Ok(None)` means more input is needed. An error is final: the caller
    /// closes the connection with [`ProtocolError::close_code`]. After the
    /// peer's close frame, further input is ignored.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, ProtocolError> {
        if let Some(event) = self.decode_whole(buf) {
            return event.map(Some);
        }
        loop {
            if self.closed {
                buf.clear();
                return Ok(None);
            }
            if self.frame.is_none() {
                let Some((header, header_len)) = FrameHeader::parse(buf)? else {
                    return Ok(None);
                };
                self.check_header(&header)?;
                buf.advance(header_len);
                if matches!(header.opcode, OpCode::Text | OpCode::Binary) {
                    self.message = Some(InMessage {
                        text: header.opcode == OpCode::Text,
                        compressed: header.rsv1,
                        fragments: 0,
                        wire_len: 0,
                        spanned: false,
                    });
                    self.utf8.reset();
                }
                self.frame = Some(InFrame {
                    header,
                    processed: 0,
                    spanned: false,
                });
            }
            let Some(frame) = self.frame.as_mut() else {
                continue;
            };
            // Checked against max_frame_size (a usize) in check_header.
            let len = frame.header.payload_len as usize;
            let available = buf.len().min(len);
            if available > frame.processed {
                let fresh = &mut buf[frame.processed..available];
                if let Some(key) = frame.header.mask {
                    apply_mask(fresh, key, frame.processed);
                }
                let plain_text = !frame.header.opcode.is_control()
                    && self
                        .message
                        .as_ref()
                        .is_some_and(|m| m.text && !m.compressed);
                if plain_text {
                    self.utf8
                        .feed(fresh)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                frame.processed = available;
            }
            if buf.len() < len {
                frame.spanned |= frame.processed > 0;
                buf.reserve(len - buf.len());
                return Ok(None);
            }
            let (header, spanned) = (frame.header, frame.spanned);
            self.frame = None;
            let payload = buf.split_to(len).freeze();
            if let Some(event) = self.finish_frame(header, payload, spanned)? {
                return Ok(Some(event));
            }
        }
    }

    /// The common case in one pass: nothing in progress, and `buf` starts
    /// with the whole of an unfragmented, uncompressed text or binary frame
    /// whose length fits the limits. Unmasks and checks it, then hands out
    /// the payload as a slice of `buf`, skipping the bookkeeping of frames
    /// and messages that span calls (about a fifth of the decoder's cost per
    /// small message, docs/BENCHMARKS.md). `None` leaves `buf` untouched for
    /// the general path, which handles, and rejects, everything else.
    #[inline]
    fn decode_whole(&mut self, buf: &mut BytesMut) -> Option<Result<Event, ProtocolError>> {
        if self.closed || self.frame.is_some() || self.message.is_some() {
            return None;
        }
        let (&b0, &b1) = (buf.first()?, buf.get(1)?);
        // FIN set, RSV bits clear, text (0x1) or binary (0x2).
        let text = match b0 {
            0x81 => true,
            0x82 => false,
            _ => return None,
        };
        let masked = b1 & 0x80 != 0;
        if masked != (self.role == Role::Server) {
            return None;
        }
        let (len, mut pos) = match b1 & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
                4,
            ),
            127 => return None,
            n => (usize::from(n), 2),
        };
        let limits = &self.limits;
        if len > limits.max_frame_size || len > limits.max_message_size || limits.max_fragments == 0
        {
            return None;
        }
        let key = if masked {
            let key = buf.get(pos..pos + 4)?;
            pos += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        if buf.len() - pos < len {
            return None;
        }
        let payload = &mut buf[pos..pos + len];
        if let Some(key) = key {
            apply_mask(payload, key, 0);
        }
        if text && !payload.is_ascii() && std::str::from_utf8(payload).is_err() {
            return Some(Err(ProtocolError::InvalidUtf8));
        }
        // Header and payload leave the buffer together; skipping the header
        // in the frozen `Bytes` is pointer arithmetic.
        let mut payload = buf.split_to(pos + len).freeze();
        payload.advance(pos);
        Some(if text {
            // Checked just above, in this call; nothing wrote to it since.
            checked_text(payload, false).map(Event::Text)
        } else {
            Ok(Event::Binary(payload))
        })
    }

    fn check_header(&self, h: &FrameHeader) -> Result<(), ProtocolError> {
        if h.rsv2 || h.rsv3 {
            return Err(ProtocolError::ReservedBits);
        }
        if h.rsv1
            && !(self.extension.is_some() && matches!(h.opcode, OpCode::Text | OpCode::Binary))
        {
            return Err(ProtocolError::ReservedBits);
        }
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::Masking(true)),
            (Role::Client, true) => return Err(ProtocolError::Masking(false)),
            _ => {}
        }
        if h.opcode.is_control() {
            if !h.fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if h.payload_len > 125 {
                return Err(ProtocolError::ControlTooLong);
            }
            return Ok(());
        }
        match (h.opcode, &self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            _ => {}
        }
        if h.payload_len > self.limits.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooBig {
                size: h.payload_len,
                limit: self.limits.max_frame_size,
            });
        }
        let (so_far, fragments) = self
            .message
            .as_ref()
            .filter(|_| h.opcode == OpCode::Continuation)
            .map_or((0, 0), |m| (m.wire_len, m.fragments));
        let total = so_far.saturating_add(h.payload_len);
        if total > self.limits.max_message_size as u64 {
            return Err(ProtocolError::MessageTooBig {
                size: total,
                limit: self.limits.max_message_size,
            });
        }
        if fragments >= self.limits.max_fragments {
            return Err(ProtocolError::TooManyFragments(self.limits.max_fragments));
        }
        Ok(())
    }

    fn finish_frame(
        &mut self,
        header: FrameHeader,
        payload: Bytes,
        spanned: bool,
    ) -> Result<Option<Event>, ProtocolError> {
        match header.opcode {
            OpCode::Ping => return Ok(Some(Event::Ping(payload))),
            OpCode::Pong => return Ok(Some(Event::Pong(payload))),
            OpCode::Close => {
                let close = CloseFrame::parse(&payload)?;
                self.closed = true;
                return Ok(Some(Event::Close(close)));
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {}
        }
        let Some(message) = self.message.as_mut() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        message.fragments += 1;
        message.wire_len += payload.len() as u64;
        // Decompressed bytes are checked where they are produced, in the
        // decoder's own buffer; only plain fragments sit in the caller's.
        message.spanned |= spanned && !message.compressed;
        let text = message.text;
        if message.compressed {
            let Some(extension) = self.extension.as_mut() else {
                return Err(ProtocolError::ReservedBits);
            };
            let before = self.assembled.len();
            extension.decode_fragment(
                &payload,
                header.fin,
                &mut self.assembled,
                self.limits.max_message_size,
            )?;
            if text {
                self.utf8
                    .feed(&self.assembled[before..])
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
        } else if header.fin && message.fragments == 1 {
            // Unfragmented: hand out the read buffer's slice as is.
            self.message = None;
            return if text {
                self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                checked_text(payload, spanned).map(|t| Some(Event::Text(t)))
            } else {
                Ok(Some(Event::Binary(payload)))
            };
        } else {
            self.assembled.extend_from_slice(&payload);
        }
        if !header.fin {
            return Ok(None);
        }
        let spanned = message.spanned;
        self.message = None;
        let data = self.assembled.split().freeze();
        if text {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            checked_text(data, spanned).map(|t| Some(Event::Text(t)))
        } else {
            Ok(Some(Event::Binary(data)))
        }
    }
}

/// The payload of a complete text message whose every byte was checked.
///
/// The bytes were checked where they were unmasked: by the validator in the
/// caller's buffer for plain frames (or by `from_utf8` in `decode_whole`),
/// in the decoder's own buffer for decompressed ones. When a plain frame
/// spanned `decode` calls (`spanned`), its bytes sat in the caller's buffer
/// in between, where safe code could have changed them, so they are checked
/// once more; otherwise nothing but this decoder touched them since they
/// were checked.
#[allow(unsafe_code)] // Audited: see the SAFETY note and text.rs.
fn checked_text(payload: Bytes, spanned: bool) -> Result<Utf8Bytes, ProtocolError> {
    if spanned {
        Utf8Bytes::try_from(payload).map_err(|_| ProtocolError::InvalidUtf8)
    } else {
        // SAFETY: not `spanned`, so these exact bytes were checked (see
        // above) and nothing has written to them since.
        Ok(unsafe { Utf8Bytes::from_bytes_unchecked(payload) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CloseCode, Frame};

    const KEY: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];

    fn masked(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        Frame::masked(op, fin, false, payload, KEY).to_vec()
    }

    fn decode_all(dec: &mut Decoder, bytes: &[u8]) -> Result<Vec<Event>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(ev) = dec.decode(&mut buf)? {
            out.push(ev);
        }
        Ok(out)
    }

    fn server() -> Decoder {
        Decoder::new(Role::Server, Limits::default())
    }

    #[test]
    fn single_text_and_binary() {
        let mut bytes = masked(OpCode::Text, true, b"hello");
        bytes.extend(masked(OpCode::Binary, true, &[0, 1, 2]));
        let evs = decode_all(&mut server(), &bytes).unwrap();
        assert_eq!(
            evs,
            [
                Event::Text("hello".into()),
                Event::Binary(vec![0, 1, 2].into())
            ]
        );
    }

    /// Whole frames in one buffer take `decode_whole`; fed a byte at a time
    /// the same frames take the general path. Both must agree, on events
    /// and on errors, at every boundary the one-pass path checks.
    #[test]
    fn one_pass_and_general_path_agree() {
        let big = vec![b'x'; 300]; // a 16-bit length
        let cases: Vec<(Limits, Vec<u8>)> = vec![
            (Limits::default(), masked(OpCode::Text, true, b"ascii")),
            (
                Limits::default(),
                masked(OpCode::Text, true, "κόσμε".as_bytes()),
            ),
            (
                Limits::default(),
                masked(OpCode::Text, true, &[b'a', 0xff, b'b']),
            ),
            (Limits::default(), masked(OpCode::Text, true, &[0xe2, 0x82])),
            (Limits::default(), masked(OpCode::Binary, true, &big)),
            (Limits::default(), masked(OpCode::Text, true, b"")),
            (
                Limits::default(),
                Frame::new(OpCode::Text, true, false, Bytes::from_static(b"no mask")).to_vec(),
            ),
            (
                Limits::default(),
                Frame::masked(OpCode::Text, true, true, b"rsv1", KEY).to_vec(),
            ),
            (
                Limits {
                    max_frame_size: 4,
                    ..Limits::default()
                },
                masked(OpCode::Binary, true, b"12345"),
            ),
            (
                Limits {
                    max_message_size: 4,
                    ..Limits::default()
                },
                masked(OpCode::Text, true, b"12345"),
            ),
            (
                Limits {
                    max_fragments: 0,
                    ..Limits::default()
                },
                masked(OpCode::Text, true, b"1"),
            ),
        ];
        for (limits, frame) in cases {
            let mut bytes = frame.clone();
            bytes.extend(masked(OpCode::Binary, true, b"next"));
            let whole = decode_all(&mut Decoder::new(Role::Server, limits), &bytes);
            let mut dec = Decoder::new(Role::Server, limits);
            let mut buf = BytesMut::new();
            let mut piecewise = Ok(Vec::new());
            'feed: for b in &bytes {
                buf.extend_from_slice(&[*b]);
                loop {
                    match dec.decode(&mut buf) {
                        Ok(Some(ev)) => piecewise.as_mut().expect("ok so far").push(ev),
                        Ok(None) => break,
                        Err(e) => {
                            piecewise = Err(e);
                            break 'feed;
                        }
                    }
                }
            }
            assert_eq!(whole, piecewise, "frame {frame:02x?} with {limits:?}");
        }
    }

    #[test]
    fn byte_at_a_time_gives_same_result() {
        let mut bytes = masked(OpCode::Text, false, "κό".as_bytes());
        bytes.extend(masked(OpCode::Ping, true, b"p"));
        bytes.extend(masked(OpCode::Continuation, true, "σμε".as_bytes()));
        let mut dec = server();
        let mut buf = BytesMut::new();
        let mut evs = Vec::new();
        for b in bytes {
            buf.extend_from_slice(&[b]);
            while let Some(ev) = dec.decode(&mut buf).unwrap() {
                evs.push(ev);
            }
        }
        assert_eq!(evs, [Event::Ping("p".into()), Event::Text("κόσμε".into())]);
    }

    /// Bytes the validator accepted but that went back to the caller
    /// between calls are checked again: a caller that overwrites them gets
    /// a 1007, never a text event holding invalid UTF-8.
    #[test]
    fn text_changed_by_the_caller_between_calls_is_checked_again() {
        for fragmented in [false, true] {
            let mut bytes = if fragmented {
                masked(OpCode::Text, false, b"ab")
            } else {
                Vec::new()
            };
            let frame = masked(OpCode::Continuation, true, b"hello world");
            if fragmented {
                bytes.extend_from_slice(&frame);
            } else {
                bytes.extend_from_slice(&masked(OpCode::Text, true, b"hello world"));
            }
            let mut dec = server();
            // Everything but the last payload byte: the frame is pending.
            let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
            let mut events = Vec::new();
            while let Some(ev) = dec.decode(&mut buf).unwrap() {
                events.push(ev);
            }
            assert!(events.is_empty());
            // The unmasked, validated bytes are at the front of `buf` now;
            // a careless caller writes over one of them.
            buf[0] = 0xff;
            buf.extend_from_slice(&bytes[bytes.len() - 1..]);
            assert_eq!(dec.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
        }
        // The same split without tampering still decodes (checked twice).
        let bytes = masked(OpCode::Text, true, "κόσμε".as_bytes());
        let mut dec = server();
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 3]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&bytes[bytes.len() - 3..]);
        assert_eq!(dec.decode(&mut buf), Ok(Some(Event::Text("κόσμε".into()))));
    }

    #[test]
    fn unmasked_client_frame_is_1002() {
        let bytes = Frame::new(OpCode::Text, true, false, "x".into()).to_vec();
        let err = decode_all(&mut server(), &bytes).unwrap_err();
        assert_eq!(err, ProtocolError::Masking(true));
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn masked_server_frame_rejected_by_client() {
        let bytes = masked(OpCode::Text, true, b"x");
        let mut dec = Decoder::new(Role::Client, Limits::default());
        assert_eq!(
            decode_all(&mut dec, &bytes),
            Err(ProtocolError::Masking(false))
        );
    }

    #[test]
    fn reserved_bits_are_1002() {
        for bit in [0x40u8, 0x20, 0x10] {
            let mut bytes = masked(OpCode::Text, true, b"x");
            bytes[0] |= bit;
            assert_eq!(
                decode_all(&mut server(), &bytes),
                Err(ProtocolError::ReservedBits)
            );
        }
    }

    #[test]
    fn control_frame_rules() {
        let mut frag_ping = masked(OpCode::Ping, true, b"x");
        frag_ping[0] &= 0x7f;
        assert_eq!(
            decode_all(&mut server(), &frag_ping),
            Err(ProtocolError::FragmentedControl)
        );
        let long = masked(OpCode::Ping, true, &[0; 126]);
        assert_eq!(
            decode_all(&mut server(), &long),
            Err(ProtocolError::ControlTooLong)
        );
        let ok = masked(OpCode::Ping, true, &[7; 125]);
        assert_eq!(
            decode_all(&mut server(), &ok).unwrap(),
            [Event::Ping(vec![7; 125].into())]
        );
    }

    #[test]
    fn fragmentation_order() {
        let cont = masked(OpCode::Continuation, true, b"x");
        assert_eq!(
            decode_all(&mut server(), &cont),
            Err(ProtocolError::UnexpectedContinuation)
        );
        let mut two_starts = masked(OpCode::Text, false, b"a");
        two_starts.extend(masked(OpCode::Text, true, b"b"));
        assert_eq!(
            decode_all(&mut server(), &two_starts),
            Err(ProtocolError::ExpectedContinuation)
        );
    }

    #[test]
    fn invalid_utf8_fails_fast_inside_a_frame() {
        // Header and first bytes of a long text frame whose second byte is bad.
        let bytes = masked(
            OpCode::Text,
            true,
            &[b'a', 0xff, b'b', b'c', b'd', b'e', b'f'],
        );
        let mut dec = server();
        let mut buf = BytesMut::from(&bytes[..2 + 4 + 2]);
        assert_eq!(dec.decode(&mut buf), Err(ProtocolError::InvalidUtf8));
        assert_eq!(
            ProtocolError::InvalidUtf8.close_code(),
            CloseCode::INVALID_PAYLOAD
        );
    }

    #[test]
    fn invalid_utf8_across_fragments_fails_on_the_bad_fragment() {
        let mut dec = server();
        let first = masked(OpCode::Text, false, &[0xce, 0xba, 0xed]);
        assert_eq!(decode_all(&mut dec, &first).unwrap(), []);
        let second = masked(OpCode::Continuation, false, &[0xa0, 0x80]);
        assert_eq!(
            decode_all(&mut dec, &second),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn limits_checked_from_header_before_payload() {
        let limits = Limits {
            max_frame_size: 100,
            max_message_size: 150,
            max_fragments: 3,
        };
        // Only the header of a 101-byte frame: rejected without the payload.
        let big = masked(OpCode::Binary, true, &[0; 101]);
        let mut dec = Decoder::new(Role::Server, limits);
        let mut buf = BytesMut::from(&big[..8]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(ProtocolError::FrameTooBig { size: 101, .. })
        ));
        // Exactly at the limit is fine.
        let at = masked(OpCode::Binary, true, &[0; 100]);
        assert_eq!(
            decode_all(&mut Decoder::new(Role::Server, limits), &at)
                .unwrap()
                .len(),
            1
        );
        // Message over the limit across fragments.
        let mut msg = masked(OpCode::Binary, false, &[0; 100]);
        msg.extend(masked(OpCode::Continuation, true, &[0; 51]));
        let err = decode_all(&mut Decoder::new(Role::Server, limits), &msg).unwrap_err();
        assert!(matches!(err, ProtocolError::MessageTooBig { .. }));
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
        // Fragment count.
        let mut frags = masked(OpCode::Binary, false, b"a");
        for _ in 0..3 {
            frags.extend(masked(OpCode::Continuation, false, b"a"));
        }
        let err = decode_all(&mut Decoder::new(Role::Server, limits), &frags).unwrap_err();
        assert_eq!(err, ProtocolError::TooManyFragments(3));
    }

    #[test]
    fn huge_declared_length_does_not_allocate() {
        let mut bytes = vec![0x82, 0xff];
        bytes.extend_from_slice(&((1u64 << 62).to_be_bytes()));
        bytes.extend_from_slice(&KEY);
        assert!(matches!(
            decode_all(&mut server(), &bytes),
            Err(ProtocolError::FrameTooBig { .. })
        ));
    }

    #[test]
    fn close_frames() {
        let mut dec = server();
        let close = Frame::masked(
            OpCode::Close,
            true,
            false,
            &CloseFrame::new(1000, "bye").encode(),
            KEY,
        );
        let mut bytes = close.to_vec();
        bytes.extend(masked(OpCode::Text, true, b"ignored"));
        assert_eq!(
            decode_all(&mut dec, &bytes).unwrap(),
            [Event::Close(Some(CloseFrame::new(1000, "bye")))]
        );
        assert!(dec.is_closed());
        let bad = masked(OpCode::Close, true, &[0x03, 0xed]);
        assert_eq!(
            decode_all(&mut server(), &bad),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        let empty = masked(OpCode::Close, true, &[]);
        assert_eq!(
            decode_all(&mut server(), &empty).unwrap(),
            [Event::Close(None)]
        );
    }

    #[derive(Debug)]
    struct Upper;
    impl PayloadExtension for Upper {
        fn decode_fragment(
            &mut self,
            f: &[u8],
            _fin: bool,
            out: &mut BytesMut,
            limit: usize,
        ) -> Result<(), ProtocolError> {
            if out.len() + f.len() * 2 > limit {
                return Err(ProtocolError::MessageTooBig {
                    size: (out.len() + f.len() * 2) as u64,
                    limit,
                });
            }
            for b in f {
                out.extend_from_slice(&[b.to_ascii_uppercase(); 2]);
            }
            Ok(())
        }
    }

    #[test]
    fn extension_transforms_rsv1_messages_only() {
        let mut dec = server();
        dec.set_extension(Box::new(Upper));
        let mut bytes = Frame::masked(OpCode::Text, false, true, b"ab", KEY).to_vec();
        bytes.extend(masked(OpCode::Continuation, true, b"c"));
        bytes.extend(masked(OpCode::Text, true, b"plain"));
        assert_eq!(
            decode_all(&mut dec, &bytes).unwrap(),
            [Event::Text("AABBCC".into()), Event::Text("plain".into())]
        );
        // RSV1 on a continuation frame is an error even with the extension.
        let mut bad = masked(OpCode::Text, false, b"a");
        bad.extend(Frame::masked(OpCode::Continuation, true, true, b"b", KEY).to_vec());
        let mut dec = server();
        dec.set_extension(Box::new(Upper));
        assert_eq!(decode_all(&mut dec, &bad), Err(ProtocolError::ReservedBits));
    }
}
