//! `close`: `CloseFrame::parse` and `CloseFrame::encode`.
//!
//! Checks, for arbitrary bytes as a close payload:
//! - `parse` never panics and agrees with the RFC 6455 §5.5.1/§7.4 rules
//!   (empty: no status; one byte: error; code must be sendable; reason must
//!   be UTF-8), with the error mapped to the right close code;
//! - for a payload that parses, `encode` gives back exactly the same bytes;
//! - for any `CloseFrame` built from the input (code from the first two
//!   bytes, reason from the rest, lossily made UTF-8, possibly far over the
//!   123-byte limit): `encode` fits a control frame, truncates the reason at a
//!   char boundary only when it must, and `parse(encode(x))` gives back `x`
//!   (with the truncated reason) whenever the code is sendable;
//! - a close frame built with `Frame::close` decodes, through a client-side
//!   `Decoder`, to the same `Event::Close`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_proto::{
    CloseCode, CloseFrame, Decoder, Event, Frame, Limits, ProtocolError, Role, MAX_CLOSE_REASON,
};

fn sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fuzz_target!(|data: &[u8]| {
    // 1. parse against the rules.
    let parsed = CloseFrame::parse(data);
    match (data.len(), &parsed) {
        (0, Ok(None)) => {}
        (1, Err(ProtocolError::InvalidClosePayload)) => {}
        (_, Err(ProtocolError::InvalidCloseCode(c))) => {
            assert!(data.len() >= 2);
            assert_eq!(*c, u16::from_be_bytes([data[0], data[1]]));
            assert!(!sendable(*c) && !CloseCode(*c).is_sendable());
        }
        (_, Err(ProtocolError::InvalidUtf8)) => {
            assert!(data.len() >= 2 && sendable(u16::from_be_bytes([data[0], data[1]])));
            assert!(std::str::from_utf8(&data[2..]).is_err());
        }
        (_, Ok(Some(f))) => {
            assert!(data.len() >= 2);
            assert_eq!(f.code.0, u16::from_be_bytes([data[0], data[1]]));
            assert!(sendable(f.code.0) && f.code.is_sendable());
            assert_eq!(f.reason.as_bytes(), &data[2..]);
            // Short enough for a control frame: encode is the identity.
            if data.len() <= 125 {
                assert_eq!(f.encode().as_ref(), data);
            }
        }
        (len, other) => panic!("parse of {len} bytes gave {other:?}"),
    }
    if let Err(e) = &parsed {
        let want = if *e == ProtocolError::InvalidUtf8 {
            CloseCode::INVALID_PAYLOAD
        } else {
            CloseCode::PROTOCOL_ERROR
        };
        assert_eq!(e.close_code(), want);
    }

    // 2. encode any frame, then parse it back.
    if data.len() < 2 {
        return;
    }
    let code = u16::from_be_bytes([data[0], data[1]]);
    let reason = String::from_utf8_lossy(&data[2..]).into_owned();
    let frame = CloseFrame::new(code, reason.clone());
    let wire = frame.encode();
    assert!(wire.len() <= 125, "close payload of {} bytes", wire.len());
    assert_eq!(&wire[..2], &data[..2]);
    let sent = std::str::from_utf8(&wire[2..]).expect("encoded reason is UTF-8");
    assert!(reason.starts_with(sent), "reason not a prefix");
    if reason.len() <= MAX_CLOSE_REASON {
        assert_eq!(sent, reason);
    } else {
        // Cut at the last char boundary at or below 123 bytes.
        assert!(sent.len() + 4 > MAX_CLOSE_REASON);
        assert!(sent.len() <= MAX_CLOSE_REASON);
    }
    let expect = CloseFrame::new(code, sent);
    let reparsed = CloseFrame::parse(&wire);
    if sendable(code) {
        assert_eq!(reparsed, Ok(Some(expect.clone())));
    } else {
        assert_eq!(reparsed, Err(ProtocolError::InvalidCloseCode(code)));
    }

    // 3. through the wire: Frame::close, then a client decoder.
    let mut buf = BytesMut::from(&Frame::close(Some(&frame)).to_vec()[..]);
    let mut dec = Decoder::new(Role::Client, Limits::default());
    let got = dec.decode(&mut buf);
    if sendable(code) {
        assert_eq!(got, Ok(Some(Event::Close(Some(expect)))));
        assert!(dec.is_closed());
    } else {
        assert_eq!(got, Err(ProtocolError::InvalidCloseCode(code)));
    }
});
