//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! RFC 6455 §8.1 asks an endpoint to fail the connection (1007) as soon as a
//! text message is known to be invalid UTF-8, even before its last fragment.
//! [`Utf8Validator`] is fed each fragment (or part of one) in order and keeps
//! at most three bytes of an unfinished code point between calls. It leans on
//! `std::str::from_utf8`, which is SIMD-accelerated, instead of a hand-written
//! DFA.

/// The error for a text payload that is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8 in text message")]
pub struct InvalidUtf8;

/// Validates a byte stream as UTF-8 piece by piece.
///
/// ```
/// use switchboard_proto::Utf8Validator;
/// let mut v = Utf8Validator::new();
/// let euro = "€".as_bytes(); // e2 82 ac
/// v.feed(&euro[..1]).unwrap();
/// v.feed(&euro[1..]).unwrap();
/// assert!(v.finish().is_ok());
/// assert!(Utf8Validator::new().feed(&[0xff]).is_err());
/// ```
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: usize,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets any pending partial code point (start of a new message).
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }

    /// Validates the next bytes of the stream. Fails as soon as the bytes so
    /// far cannot be the start of valid UTF-8.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            let have = self.pending_len;
            let take = (4 - have).min(data.len());
            let mut tmp = [0u8; 4];
            tmp[..have].copy_from_slice(&self.pending[..have]);
            tmp[have..have + take].copy_from_slice(&data[..take]);
            match std::str::from_utf8(&tmp[..have + take]) {
                Ok(_) => {
                    self.pending_len = 0;
                    data = &data[take..];
                }
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(e) => {
                    let valid = e.valid_up_to();
                    if valid == 0 {
                        // Still inside the same code point; all of `data` was used.
                        self.pending[..have + take].copy_from_slice(&tmp[..have + take]);
                        self.pending_len = have + take;
                        return Ok(());
                    }
                    self.pending_len = 0;
                    data = &data[valid - have..];
                }
            }
        }
        // Most text on the wire is ASCII (JSON, chat): `is_ascii` checks a
        // word at a time and costs a third of `from_utf8` on short messages.
        if data.is_ascii() {
            return Ok(());
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len();
                Ok(())
            }
        }
    }

    /// Checks that the stream did not stop in the middle of a code point.
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_everywhere(bytes: &[u8]) -> bool {
        let whole = std::str::from_utf8(bytes).is_ok();
        for cut1 in 0..=bytes.len() {
            for cut2 in cut1..=bytes.len() {
                let mut v = Utf8Validator::new();
                let ok = v.feed(&bytes[..cut1]).is_ok()
                    && v.feed(&bytes[cut1..cut2]).is_ok()
                    && v.feed(&bytes[cut2..]).is_ok()
                    && v.finish().is_ok();
                assert_eq!(ok, whole, "{bytes:x?} cut at {cut1},{cut2}");
            }
        }
        whole
    }

    #[test]
    fn valid_text_split_anywhere() {
        assert!(split_everywhere("Hello-µ@ßöäüàá-UTF-8!!".as_bytes()));
        assert!(split_everywhere("κόσμε𝄞€".as_bytes()));
    }

    #[test]
    fn invalid_text_split_anywhere() {
        assert!(!split_everywhere(&[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
            0x65, 0x64, 0x69, 0x74, 0x65, 0x64
        ]));
        assert!(!split_everywhere(&[0xf4, 0x90, 0x80, 0x80]));
        assert!(!split_everywhere(&[0xc0, 0x80]));
        assert!(!split_everywhere(&[0xe2, 0x82]));
    }

    #[test]
    fn fails_fast_before_message_end() {
        let mut v = Utf8Validator::new();
        // 0xce 0xba is valid, then 0xed 0xa0 starts a surrogate: invalid at once.
        assert!(v.feed(&[0xce, 0xba, 0xed]).is_ok());
        assert!(v.feed(&[0xa0]).is_err());
    }

    #[test]
    fn truncated_code_point_fails_at_finish() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[0xf0, 0x9d]).is_ok());
        assert!(v.finish().is_err());
    }
}
