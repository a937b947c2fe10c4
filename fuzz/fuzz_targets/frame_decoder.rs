//! `frame_decoder`: feeds arbitrary bytes to `switchboard_proto::Decoder` and
//! checks it against itself and against a small reference model.
//!
//! For every input, for both `Role::Server` and `Role::Client`:
//! - decoding never panics, and the harness stops at the first error (an
//!   error is final per the `Decoder::decode` contract);
//! - decoding the stream in one chunk and in fuzzer-chosen chunks gives the
//!   same events, the same final error (or none), and the same unconsumed
//!   bytes left in the buffer (the decoder unmasks in place, so this also
//!   checks masking at every offset);
//! - both agree with `reference()`, a deliberately naive whole-buffer
//!   re-implementation of RFC 6455 framing written from the RFC and the
//!   decoder's documented rules (same error precedence);
//! - every event is well formed: text is UTF-8, control payloads are at most
//!   125 bytes, messages respect the limits, and after a close event the
//!   decoder reports `is_closed()` and swallows further input.
//!
//! Input layout (see `fuzz/seeds/frame_decoder/` and `fuzz/gen_seeds.py`):
//!
//! ```text
//! byte 0      config: bits 0-1 limits profile (see PROFILES),
//!                     bit 2 install a test payload extension (RSV1 messages)
//! byte 1      n = number of chunk sizes (taken mod 17)
//! n bytes     chunk sizes, used cyclically to split the stream
//! rest        the byte stream the peer sent
//! ```
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_proto::{
    CloseCode, CloseFrame, Decoder, Event, Limits, PayloadExtension, ProtocolError, Role,
};

/// Limit profiles, small so the fuzzer reaches every limit with short inputs.
const PROFILES: [Limits; 4] = [
    Limits {
        max_frame_size: 64 << 10,
        max_message_size: 64 << 10,
        max_fragments: 64,
    },
    Limits {
        max_frame_size: 125,
        max_message_size: 256,
        max_fragments: 4,
    },
    Limits {
        max_frame_size: 16,
        max_message_size: 16,
        max_fragments: 2,
    },
    Limits {
        max_frame_size: 64 << 10,
        max_message_size: 1 << 10,
        max_fragments: 1024,
    },
];

/// A stand-in for permessage-deflate: every payload byte comes out twice, so
/// output grows faster than input and the extension's own limit check fires.
#[derive(Debug)]
struct Doubler;

impl PayloadExtension for Doubler {
    fn decode_fragment(
        &mut self,
        fragment: &[u8],
        _fin: bool,
        out: &mut BytesMut,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        let size = out.len() + 2 * fragment.len();
        if size > limit {
            return Err(ProtocolError::MessageTooBig {
                size: size as u64,
                limit,
            });
        }
        for &b in fragment {
            out.extend_from_slice(&[b, b]);
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Event>,
    error: Option<ProtocolError>,
    /// Bytes left in the buffer after the last call (only compared when
    /// there was no error: after an error the buffer's state is unspecified).
    rest: Vec<u8>,
}

struct Config {
    limits: Limits,
    extension: bool,
}

impl Config {
    fn decoder(&self, role: Role) -> Decoder {
        let mut dec = Decoder::new(role, self.limits);
        if self.extension {
            dec.set_extension(Box::new(Doubler));
        }
        dec
    }
}

/// Runs `dec` over `chunks`, calling `decode` until it wants more input after
/// each chunk, and stopping at the first error.
fn run<'a>(cfg: &Config, dec: &mut Decoder, chunks: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(ev)) => {
                    assert!(buf.len() <= before, "decode grew the buffer");
                    check_event(cfg, dec, &ev);
                    events.push(ev);
                }
                Ok(None) => {
                    assert!(buf.len() <= before, "decode grew the buffer");
                    if dec.is_closed() {
                        assert!(buf.is_empty(), "input after close not swallowed");
                    }
                    break;
                }
                Err(error) => {
                    assert_ne!(error, ProtocolError::FrameAfterClose);
                    let code = error.close_code();
                    assert!(code.is_sendable(), "close code {code} for {error:?}");
                    return Outcome {
                        events,
                        error: Some(error),
                        rest: Vec::new(),
                    };
                }
            }
        }
    }
    Outcome {
        events,
        error: None,
        rest: buf.to_vec(),
    }
}

fn check_event(cfg: &Config, dec: &Decoder, ev: &Event) {
    match ev {
        Event::Text(b) => {
            assert!(
                std::str::from_utf8(b.as_bytes()).is_ok(),
                "text event not UTF-8"
            );
            assert!(b.len() <= cfg.limits.max_message_size);
        }
        Event::Binary(b) => assert!(b.len() <= cfg.limits.max_message_size),
        Event::Ping(b) | Event::Pong(b) => assert!(b.len() <= 125),
        Event::Close(c) => {
            assert!(dec.is_closed(), "close event but decoder not closed");
            if let Some(c) = c {
                assert!(c.code.is_sendable());
                assert!(c.reason.len() <= 123);
            }
        }
    }
}

/// Cuts `data` into pieces whose sizes cycle through `sizes`.
fn chunks<'a>(data: &'a [u8], sizes: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    if sizes.iter().all(|&s| s == 0) {
        out.push(data);
        return out;
    }
    let mut rest = data;
    for &s in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at(usize::from(s).min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let [config, n, rest @ ..] = input else {
        return;
    };
    let n = usize::from(*n % 17).min(rest.len());
    let (sizes, data) = rest.split_at(n);
    let cfg = Config {
        limits: PROFILES[usize::from(config & 3)],
        extension: config & 4 != 0,
    };
    let pieces = chunks(data, sizes);
    assert_eq!(pieces.concat(), data);

    for role in [Role::Server, Role::Client] {
        let whole = run(&cfg, &mut cfg.decoder(role), std::iter::once(data));
        let split = run(&cfg, &mut cfg.decoder(role), pieces.iter().copied());
        assert_eq!(whole, split, "{role:?}: one chunk vs split {sizes:?}");
        let model = reference(&cfg, role, data);
        assert_eq!(whole.events, model.events, "{role:?}: decoder vs reference");
        assert_eq!(whole.error, model.error, "{role:?}: decoder vs reference");
        if whole.error.is_none() {
            assert_eq!(whole.rest, model.rest, "{role:?}: unconsumed bytes");
        }
    }
});

// ------------------------------------------------------------ reference ---

/// `Ok(true)`: valid; `Ok(false)`: a valid prefix cut inside a code point;
/// `Err`: definitely invalid whatever follows.
fn utf8_prefix(b: &[u8]) -> Result<bool, ()> {
    match std::str::from_utf8(b) {
        Ok(_) => Ok(true),
        Err(e) if e.error_len().is_none() => Ok(false),
        Err(_) => Err(()),
    }
}

fn ref_close(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
    if payload.is_empty() {
        return Ok(None);
    }
    if payload.len() == 1 {
        return Err(ProtocolError::InvalidClosePayload);
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let ok = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !ok {
        return Err(ProtocolError::InvalidCloseCode(code));
    }
    let reason =
        String::from_utf8(payload[2..].to_vec()).map_err(|_| ProtocolError::InvalidUtf8)?;
    Ok(Some(CloseFrame {
        code: CloseCode(code),
        reason,
    }))
}

struct RefMessage {
    text: bool,
    compressed: bool,
    fragments: usize,
    wire_len: u64,
    data: Vec<u8>,
    /// `data[..checked]` is known to be whole, valid UTF-8 characters, so
    /// only the rest needs re-checking (keeps the model linear-time).
    checked: usize,
}

impl RefMessage {
    /// UTF-8 verdict on `data` followed by `more`, as `utf8_prefix` gives.
    fn utf8_with(&self, more: &[u8]) -> Result<bool, ()> {
        let mut tail = self.data[self.checked..].to_vec();
        tail.extend_from_slice(more);
        utf8_prefix(&tail)
    }

    /// Appends `bytes` and moves `checked` past every complete character.
    fn push(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        self.checked += match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
    }
}

/// A straightforward whole-buffer decoder: parses frames by index, unmasks
/// byte by byte, validates UTF-8 of the message so far with `from_utf8`.
fn reference(cfg: &Config, role: Role, input: &[u8]) -> Outcome {
    let limits = cfg.limits;
    let mut events = Vec::new();
    let mut message: Option<RefMessage> = None;
    let mut pos = 0usize;
    let fail = |events, e| Outcome {
        events,
        error: Some(e),
        rest: Vec::new(),
    };
    loop {
        let b = &input[pos..];
        if b.len() < 2 {
            break;
        }
        let (fin, rsv1, rsv2, rsv3) = (
            b[0] & 0x80 != 0,
            b[0] & 0x40 != 0,
            b[0] & 0x20 != 0,
            b[0] & 0x10 != 0,
        );
        let op = b[0] & 0x0f;
        if !matches!(op, 0 | 1 | 2 | 8 | 9 | 10) {
            return fail(events, ProtocolError::ReservedOpcode(op));
        }
        let control = op >= 8;
        let masked = b[1] & 0x80 != 0;
        let (len, mut hlen) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(b[2]) << 8 | u64::from(b[3]), 4),
            127 if b.len() >= 10 => {
                let len = b[2..10]
                    .iter()
                    .fold(0u64, |acc, &x| acc << 8 | u64::from(x));
                if len >= 1 << 63 {
                    return fail(events, ProtocolError::InvalidLength);
                }
                (len, 10)
            }
            126 | 127 => break,
            n => (u64::from(n), 2),
        };
        let mut key = None;
        if masked {
            if b.len() < hlen + 4 {
                break;
            }
            key = Some([b[hlen], b[hlen + 1], b[hlen + 2], b[hlen + 3]]);
            hlen += 4;
        }
        // Header rules, in the decoder's documented order.
        if rsv2 || rsv3 || (rsv1 && !(cfg.extension && matches!(op, 1 | 2))) {
            return fail(events, ProtocolError::ReservedBits);
        }
        match (role, masked) {
            (Role::Server, false) => return fail(events, ProtocolError::Masking(true)),
            (Role::Client, true) => return fail(events, ProtocolError::Masking(false)),
            _ => {}
        }
        if control {
            if !fin {
                return fail(events, ProtocolError::FragmentedControl);
            }
            if len > 125 {
                return fail(events, ProtocolError::ControlTooLong);
            }
        } else {
            match (op, &message) {
                (0, None) => return fail(events, ProtocolError::UnexpectedContinuation),
                (1 | 2, Some(_)) => return fail(events, ProtocolError::ExpectedContinuation),
                _ => {}
            }
            if len > limits.max_frame_size as u64 {
                return fail(
                    events,
                    ProtocolError::FrameTooBig {
                        size: len,
                        limit: limits.max_frame_size,
                    },
                );
            }
            let (so_far, frags) = match (&message, op) {
                (Some(m), 0) => (m.wire_len, m.fragments),
                _ => (0, 0),
            };
            if so_far + len > limits.max_message_size as u64 {
                return fail(
                    events,
                    ProtocolError::MessageTooBig {
                        size: so_far + len,
                        limit: limits.max_message_size,
                    },
                );
            }
            if frags >= limits.max_fragments {
                return fail(
                    events,
                    ProtocolError::TooManyFragments(limits.max_fragments),
                );
            }
            if op != 0 {
                message = Some(RefMessage {
                    text: op == 1,
                    compressed: rsv1,
                    fragments: 0,
                    wire_len: 0,
                    data: Vec::new(),
                    checked: 0,
                });
            }
        }
        // Payload: whatever of it has arrived, unmasked.
        let len = len as usize;
        let start = pos + hlen;
        let avail = (input.len() - start).min(len);
        let mut payload: Vec<u8> = input[start..start + avail].to_vec();
        if let Some(k) = key {
            for (i, x) in payload.iter_mut().enumerate() {
                *x ^= k[i % 4];
            }
        }
        // Uncompressed text fails as soon as the bytes seen so far are invalid.
        let plain_text = message.as_ref().is_some_and(|m| m.text && !m.compressed);
        if !control
            && plain_text
            && message
                .as_ref()
                .is_some_and(|m| m.utf8_with(&payload).is_err())
        {
            return fail(events, ProtocolError::InvalidUtf8);
        }
        if avail < len {
            // Incomplete frame: the decoder has consumed the header and
            // keeps the payload bytes seen so far, already unmasked.
            return Outcome {
                events,
                error: None,
                rest: payload,
            };
        }
        pos = start + len;
        match op {
            9 => events.push(Event::Ping(payload.into())),
            10 => events.push(Event::Pong(payload.into())),
            8 => {
                match ref_close(&payload) {
                    Ok(c) => events.push(Event::Close(c)),
                    Err(e) => return fail(events, e),
                }
                // Everything after the close frame is ignored.
                return Outcome {
                    events,
                    error: None,
                    rest: Vec::new(),
                };
            }
            _ => {
                let m = message.as_mut().expect("data frame without a message");
                m.fragments += 1;
                m.wire_len += len as u64;
                if m.compressed {
                    let size = m.data.len() + 2 * payload.len();
                    if size > limits.max_message_size {
                        return fail(
                            events,
                            ProtocolError::MessageTooBig {
                                size: size as u64,
                                limit: limits.max_message_size,
                            },
                        );
                    }
                    let doubled: Vec<u8> = payload.iter().flat_map(|&x| [x, x]).collect();
                    if m.text && m.utf8_with(&doubled).is_err() {
                        return fail(events, ProtocolError::InvalidUtf8);
                    }
                    m.push(&doubled);
                } else {
                    m.push(&payload);
                }
                if fin {
                    let m = message.take().expect("message");
                    if m.text {
                        if m.utf8_with(&[]) != Ok(true) {
                            return fail(events, ProtocolError::InvalidUtf8);
                        }
                        events.push(Event::Text(
                            m.data.try_into().expect("the model checked the text"),
                        ));
                    } else {
                        events.push(Event::Binary(m.data.into()));
                    }
                }
            }
        }
    }
    Outcome {
        events,
        error: None,
        rest: input[pos..].to_vec(),
    }
}
