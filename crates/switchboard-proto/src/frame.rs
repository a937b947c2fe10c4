//! Frame headers and encoded outgoing frames (RFC 6455 §5.2).
//!
//! [`FrameHeader::parse`] reads a header from the front of a byte slice and
//! never panics on short or hostile input. [`Frame`] is an encoded outgoing
//! frame: a small inline header plus a shared `Bytes` payload, so one frame can
//! be queued on many connections without copying the payload (frame-once
//! broadcast). Server frames are never masked, which is what makes that
//! sharing possible.

use bytes::Bytes;

use crate::{error::ProtocolError, mask::apply_mask};

/// A frame opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: a text message (UTF-8).
    Text,
    /// 0x2: a binary message.
    Binary,
    /// 0x8: connection close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Decodes the 4-bit opcode; `None` for reserved values.
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong are control opcodes.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Largest header: 2 fixed bytes, 8 length bytes, 4 mask bytes.
pub const MAX_HEADER_LEN: usize = 14;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1 (used by permessage-deflate).
    pub rsv1: bool,
    /// RSV2 (no extension here uses it).
    pub rsv2: bool,
    /// RSV3 (no extension here uses it).
    pub rsv3: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, present on client frames.
    pub mask: Option<[u8; 4]>,
    /// Payload length as declared (up to 2^63 - 1).
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parses a header from the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed, or the header and its
    /// length in bytes. Rejects reserved opcodes and 64-bit lengths with the
    /// top bit set; other rules (masking, control limits) are the decoder's.
    ///
    /// ```
    /// use switchboard_proto::{FrameHeader, OpCode};
    /// let (h, len) = FrameHeader::parse(&[0x81, 0x05, b'h']).unwrap().unwrap();
    /// assert_eq!((h.opcode, h.fin, h.payload_len, len), (OpCode::Text, true, 5, 2));
    /// assert!(FrameHeader::parse(&[0x81]).unwrap().is_none());
    /// ```
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0f))?;
        let masked = b1 & 0x80 != 0;
        let (payload_len, mut pos) = match b1 & 0x7f {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut len = [0u8; 8];
                len.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(len);
                if len >> 63 != 0 {
                    return Err(ProtocolError::InvalidLength);
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            if buf.len() < pos + 4 {
                return Ok(None);
            }
            let key = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(key)
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin: b0 & 0x80 != 0,
                rsv1: b0 & 0x40 != 0,
                rsv2: b0 & 0x20 != 0,
                rsv3: b0 & 0x10 != 0,
                opcode,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// Encodes this header; returns the bytes and how many are used.
    pub fn encode(&self) -> ([u8; MAX_HEADER_LEN], usize) {
        let mut out = [0u8; MAX_HEADER_LEN];
        out[0] = (u8::from(self.fin) << 7)
            | (u8::from(self.rsv1) << 6)
            | (u8::from(self.rsv2) << 5)
            | (u8::from(self.rsv3) << 4)
            | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut pos = 2;
        if self.payload_len < 126 {
            out[1] = mask_bit | self.payload_len as u8;
        } else if self.payload_len <= u64::from(u16::MAX) {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
            pos = 4;
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
            pos = 10;
        }
        if let Some(key) = self.mask {
            out[pos..pos + 4].copy_from_slice(&key);
            pos += 4;
        }
        (out, pos)
    }
}

/// An encoded frame ready to write: inline header bytes plus a payload.
///
/// Cloning is cheap (the payload is reference counted), so a broadcast encodes
/// one `Frame` and hands a clone to every recipient.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    header: [u8; MAX_HEADER_LEN],
    header_len: u8,
    opcode: OpCode,
    payload: Bytes,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("opcode", &self.opcode)
            .field("header", &self.header())
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Frame {
    /// An unmasked frame (what a server sends).
    ///
    /// ```
    /// use switchboard_proto::{Frame, OpCode};
    /// let f = Frame::new(OpCode::Text, true, false, "hi".into());
    /// assert_eq!(f.header(), &[0x81, 0x02]);
    /// assert_eq!(f.payload().as_ref(), b"hi");
    /// ```
    pub fn new(opcode: OpCode, fin: bool, rsv1: bool, payload: Bytes) -> Frame {
        let (header, header_len) = FrameHeader {
            fin,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: None,
            payload_len: payload.len() as u64,
        }
        .encode();
        Frame {
            header,
            header_len: header_len as u8,
            opcode,
            payload,
        }
    }

    /// A masked frame (what a client sends). The payload is copied once to
    /// apply the mask.
    pub fn masked(opcode: OpCode, fin: bool, rsv1: bool, payload: &[u8], key: [u8; 4]) -> Frame {
        let (header, header_len) = FrameHeader {
            fin,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: Some(key),
            payload_len: payload.len() as u64,
        }
        .encode();
        let mut data = payload.to_vec();
        apply_mask(&mut data, key, 0);
        Frame {
            header,
            header_len: header_len as u8,
            opcode,
            payload: data.into(),
        }
    }

    /// A close frame carrying `close` (or no payload when `None`).
    pub fn close(close: Option<&crate::CloseFrame>) -> Frame {
        Frame::new(
            OpCode::Close,
            true,
            false,
            close.map(|c| c.encode()).unwrap_or_default(),
        )
    }

    /// The encoded header bytes.
    pub fn header(&self) -> &[u8] {
        &self.header[..usize::from(self.header_len)]
    }

    /// The payload bytes as they go on the wire.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The frame's opcode.
    pub fn opcode(&self) -> OpCode {
        self.opcode
    }

    /// Whether this is the final fragment of its message.
    pub fn fin(&self) -> bool {
        self.header[0] & 0x80 != 0
    }

    /// Whether RSV1 is set (a permessage-deflate compressed message).
    pub fn rsv1(&self) -> bool {
        self.header[0] & 0x40 != 0
    }

    /// Whether the payload is masked (a client frame).
    ///
    /// ```
    /// use switchboard_proto::{Frame, OpCode};
    /// let f = Frame::masked(OpCode::Binary, false, true, b"x", [1, 2, 3, 4]);
    /// assert!(f.is_masked() && f.rsv1() && !f.fin());
    /// assert!(!Frame::new(OpCode::Ping, true, false, "p".into()).is_masked());
    /// ```
    pub fn is_masked(&self) -> bool {
        self.header[1] & 0x80 != 0
    }

    /// Total bytes on the wire.
    pub fn wire_len(&self) -> usize {
        usize::from(self.header_len) + self.payload.len()
    }

    /// Header and payload in one buffer (tests, debugging).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.wire_len());
        v.extend_from_slice(self.header());
        v.extend_from_slice(&self.payload);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_at_boundaries() {
        for len in [0u64, 125, 126, 127, 65535, 65536, 1 << 32, (1 << 63) - 1] {
            let h = FrameHeader {
                fin: true,
                rsv1: false,
                rsv2: false,
                rsv3: false,
                opcode: OpCode::Binary,
                mask: Some([9, 8, 7, 6]),
                payload_len: len,
            };
            let (bytes, n) = h.encode();
            let (parsed, m) = FrameHeader::parse(&bytes[..n]).unwrap().unwrap();
            assert_eq!((parsed, m), (h, n), "len {len}");
            // Every strict prefix asks for more bytes.
            for cut in 0..n {
                assert_eq!(FrameHeader::parse(&bytes[..cut]).unwrap(), None);
            }
        }
    }

    #[test]
    fn length_top_bit_rejected() {
        let mut buf = vec![0x82, 127];
        buf.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(FrameHeader::parse(&buf), Err(ProtocolError::InvalidLength));
    }

    #[test]
    fn reserved_opcodes_rejected() {
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(
                FrameHeader::parse(&[0x80 | op, 0]),
                Err(ProtocolError::ReservedOpcode(op))
            );
        }
    }

    #[test]
    fn masked_frame_unmasks() {
        let f = Frame::masked(
            OpCode::Text,
            true,
            false,
            b"Hello",
            [0x37, 0xfa, 0x21, 0x3d],
        );
        assert_eq!(
            f.to_vec(),
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }
}
