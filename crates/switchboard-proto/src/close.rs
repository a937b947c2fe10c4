//! Close codes and close-frame payloads (RFC 6455 §5.5.1, §7.4).
//!
//! Parsing validates what a peer may put on the wire: a payload of 0 bytes or
//! at least 2, a code from the allowed ranges, and a UTF-8 reason. Codes 1005,
//! 1006 and 1015 exist only for reporting and are never sent.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// A WebSocket close status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no status code was present (reporting only, never sent).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection dropped without a close frame (reporting only).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: payload data inconsistent with the message type (bad UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a policy was violated (auth, rate limits).
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message was too big to process.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server met an unexpected condition (handler error or panic).
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later (overload).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// Whether a peer may send this code in a close frame.
    ///
    /// ```
    /// use switchboard_proto::CloseCode;
    /// assert!(CloseCode(1000).is_sendable());
    /// assert!(CloseCode(4000).is_sendable());
    /// assert!(!CloseCode(1005).is_sendable());
    /// assert!(!CloseCode(999).is_sendable());
    /// ```
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.0
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A close code with its (possibly empty) UTF-8 reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason; at most 123 bytes on the wire.
    pub reason: String,
}

/// Longest reason that fits a control frame (125 bytes minus the code).
pub const MAX_CLOSE_REASON: usize = 123;

impl CloseFrame {
    /// A close frame with `code` and `reason`.
    pub fn new(code: impl Into<CloseCode>, reason: impl Into<String>) -> Self {
        CloseFrame {
            code: code.into(),
            reason: reason.into(),
        }
    }

    /// Parses a received close payload. `Ok(None)` for an empty payload.
    pub fn parse(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
        match payload.len() {
            0 => Ok(None),
            1 => Err(ProtocolError::InvalidClosePayload),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_sendable() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                let reason = std::str::from_utf8(&payload[2..])
                    .map_err(|_| ProtocolError::InvalidUtf8)?
                    .to_owned();
                Ok(Some(CloseFrame { code, reason }))
            }
        }
    }

    /// Encodes the payload of a close frame, truncating the reason at a char
    /// boundary so the frame stays within the 125-byte control limit.
    pub fn encode(&self) -> Bytes {
        let mut cut = self.reason.len().min(MAX_CLOSE_REASON);
        while !self.reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut out = BytesMut::with_capacity(2 + cut);
        out.put_u16(self.code.0);
        out.put_slice(&self.reason.as_bytes()[..cut]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_codes_match_autobahn_7_7_and_7_9() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(CloseCode(code).is_sendable(), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(code).is_sendable(), "{code}");
        }
    }

    #[test]
    fn parse_rules() {
        assert_eq!(CloseFrame::parse(&[]).unwrap(), None);
        assert_eq!(
            CloseFrame::parse(&[0x03]),
            Err(ProtocolError::InvalidClosePayload)
        );
        assert_eq!(
            CloseFrame::parse(&[0x03, 0xe8]).unwrap(),
            Some(CloseFrame::new(1000, ""))
        );
        assert_eq!(
            CloseFrame::parse(&[0x03, 0xed, 0xff]),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            CloseFrame::parse(&[0x03, 0xe8, 0xff]),
            Err(ProtocolError::InvalidUtf8)
        );
        let f = CloseFrame::parse(b"\x0f\xa0bye").unwrap().unwrap();
        assert_eq!((f.code.0, f.reason.as_str()), (4000, "bye"));
    }

    #[test]
    fn encode_truncates_at_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let payload = CloseFrame::new(1000, reason).encode();
        assert!(payload.len() <= 125);
        assert!(CloseFrame::parse(&payload).is_ok());
    }
}
