//! What crosses Redis: the envelope format of room channels and history
//! entries, and the JSON control messages of node and control channels.
//! Sans-IO: bytes in, values out, tested with byte slices.
//!
//! A history entry (the stream field `m`) is the *tail*:
//!
//! ```text
//! opcode (1 byte: 'T' text | 'B' binary) | origin length (1 byte) | origin | payload
//! ```
//!
//! A room channel message is the tail behind a text header that the
//! publish script writes once it knows the offset and epoch:
//!
//! ```text
//! "SB1 " offset (decimal) " " epoch (hex) " " tail
//! ```
//!
//! The client builds the tail's head (opcode and origin) and passes the
//! payload as a separate argument, so the payload is copied only into the
//! command buffer.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard::proto::OpCode;

/// Version tag and separator opening every room channel message.
pub(crate) const MAGIC: &[u8] = b"SB1 ";

/// The opcode-and-origin head of a tail.
pub(crate) fn head(opcode: OpCode, origin: &str) -> Vec<u8> {
    debug_assert!(origin.len() <= 255, "node ids are validated to 64 bytes");
    let mut head = Vec::with_capacity(2 + origin.len());
    head.push(if opcode == OpCode::Binary { b'B' } else { b'T' });
    head.push(origin.len() as u8);
    head.extend_from_slice(origin.as_bytes());
    head
}

/// A decoded tail: who sent what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tail {
    pub(crate) opcode: OpCode,
    pub(crate) origin: Bytes,
    pub(crate) payload: Bytes,
}

/// A decoded room channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireEnvelope {
    pub(crate) offset: u64,
    pub(crate) epoch: Bytes,
    pub(crate) tail: Tail,
}

/// Why bytes from Redis were not an envelope (another writer on our
/// channels, or a version we do not speak).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed envelope: {0}")]
pub(crate) struct WireError(&'static str);

pub(crate) fn decode_tail(tail: Bytes) -> Result<Tail, WireError> {
    let (&op, rest) = tail.split_first().ok_or(WireError("empty"))?;
    let opcode = match op {
        b'T' => OpCode::Text,
        b'B' => OpCode::Binary,
        _ => return Err(WireError("opcode")),
    };
    let (&len, _) = rest.split_first().ok_or(WireError("origin length"))?;
    let start = 2;
    let end = start + usize::from(len);
    if tail.len() < end {
        return Err(WireError("origin"));
    }
    if opcode == OpCode::Text && std::str::from_utf8(&tail[end..]).is_err() {
        return Err(WireError("text payload is not UTF-8"));
    }
    Ok(Tail {
        opcode,
        origin: tail.slice(start..end),
        payload: tail.slice(end..),
    })
}

pub(crate) fn decode_envelope(msg: Bytes) -> Result<WireEnvelope, WireError> {
    if !msg.starts_with(MAGIC) {
        return Err(WireError("version"));
    }
    let mut at = MAGIC.len();
    let field = |at: &mut usize| -> Result<Bytes, WireError> {
        let rel = msg[*at..]
            .iter()
            .position(|&b| b == b' ')
            .ok_or(WireError("header"))?;
        let f = msg.slice(*at..*at + rel);
        *at += rel + 1;
        Ok(f)
    };
    let offset = field(&mut at)?;
    let epoch = field(&mut at)?;
    let offset = std::str::from_utf8(&offset)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(WireError("offset"))?;
    Ok(WireEnvelope {
        offset,
        epoch,
        tail: decode_tail(msg.slice(at..))?,
    })
}

/// Messages on node and control channels (JSON: rare and small).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Control {
    /// Sent by a node to itself through Redis: proves both connections
    /// and the subscription work end to end.
    Probe { seq: u64 },
    /// On the control channel: every node answers with its stats.
    Stats { id: u64, from: String },
    /// To one node: close one of its connections.
    Close {
        id: u64,
        from: String,
        conn: u64,
        code: u16,
        reason: String,
    },
    /// The answer to request `id`, sent to the requester's node channel.
    Reply {
        id: u64,
        from: String,
        body: serde_json::Value,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(offset: u64, epoch: &str, opcode: OpCode, origin: &str, payload: &[u8]) -> Bytes {
        let mut m = Vec::new();
        m.extend_from_slice(MAGIC);
        m.extend_from_slice(format!("{offset} {epoch} ").as_bytes());
        m.extend_from_slice(&head(opcode, origin));
        m.extend_from_slice(payload);
        m.into()
    }

    #[test]
    fn round_trip() {
        let e = decode_envelope(envelope(42, "00ff", OpCode::Text, "node-a", b"hi there")).unwrap();
        assert_eq!(e.offset, 42);
        assert_eq!(&e.epoch[..], b"00ff");
        assert_eq!(e.tail.opcode, OpCode::Text);
        assert_eq!(&e.tail.origin[..], b"node-a");
        assert_eq!(&e.tail.payload[..], b"hi there");
    }

    #[test]
    fn binary_payloads_may_hold_anything() {
        let payload = [0u8, b' ', 0xff, b'S', b'B'];
        let e = decode_envelope(envelope(1, "e", OpCode::Binary, "n", &payload)).unwrap();
        assert_eq!(e.tail.opcode, OpCode::Binary);
        assert_eq!(&e.tail.payload[..], &payload);
        let empty = decode_envelope(envelope(7, "e", OpCode::Text, "n", b"")).unwrap();
        assert!(empty.tail.payload.is_empty());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = envelope(3, "abc", OpCode::Text, "node", b"payload");
        for cut in 0..good.len() - b"payload".len() {
            assert!(decode_envelope(good.slice(..cut)).is_err(), "cut at {cut}");
        }
        for bad in [
            &b"SB2 1 e T\x01nx"[..],
            b"SB1 x e T\x01nx",
            b"SB1 1 e X\x01nx",
            b"SB1 1 e T\x09n",
            b"SB1 1 e T\x01n\xff",
        ] {
            assert!(decode_envelope(Bytes::from_static(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn control_messages_are_tagged_json() {
        let c = Control::Stats {
            id: 9,
            from: "a".into(),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"op":"stats","id":9,"from":"a"}"#);
        assert_eq!(serde_json::from_str::<Control>(&json).unwrap(), c);
    }
}
