//! [`Utf8Bytes`]: the payload of a text message, shared bytes known to be
//! valid UTF-8.
//!
//! The decoder has already validated a text message (it must, to fail the
//! connection with 1007 as soon as the bytes go wrong), and the payload
//! already sits in a reference-counted [`Bytes`] slice of the read buffer.
//! Turning that into a `String` meant a second validation, an allocation and
//! a copy per message, and sending it meant turning the `String` back into
//! `Bytes`. On the echo benchmark that round trip was about a tenth of the
//! server's user-space instructions per message (docs/BENCHMARKS.md,
//! "Profiles and fixes"), so text travels as `Utf8Bytes` instead: a `Bytes`
//! whose constructors guarantee UTF-8, which reads as a `&str` for free and
//! goes out as a frame payload without a copy.
//!
//! This module holds the crate's only `unsafe`: reading the bytes as `str`
//! without checking them again. Every safe constructor validates (or starts
//! from a `str`); the one unchecked constructor is crate-private, used by the
//! decoder (`checked_text`) only for bytes it checked and that no
//! other code could have touched since, and it re-checks in debug builds
//! (the tests and the fuzz targets).
#![allow(unsafe_code)]

use std::{borrow::Borrow, fmt, hash::Hash, ops::Deref, str::Utf8Error};

use bytes::Bytes;

/// An immutable, cheaply cloned string: [`Bytes`] that are valid UTF-8.
///
/// The payload of every text message, received or sent. It reads as a
/// `&str` (it derefs to `str`), compares with `str` and `String`, and
/// converts from `String`, `&str` and `&'static str` without surprises;
/// [`Utf8Bytes::try_from`] checks arbitrary `Bytes`.
///
/// ```
/// use switchboard_proto::Utf8Bytes;
/// use bytes::Bytes;
///
/// let t = Utf8Bytes::from("héllo");
/// assert_eq!(t, "héllo");
/// assert_eq!(t.len(), 6);
/// assert!(t.starts_with("hé"));
/// let owned: String = t.to_string();
/// assert_eq!(owned, "héllo");
///
/// assert!(Utf8Bytes::try_from(Bytes::from_static(b"ok")).is_ok());
/// assert!(Utf8Bytes::try_from(Bytes::from_static(&[0xff])).is_err());
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// An empty string.
    pub const fn new() -> Self {
        Utf8Bytes(Bytes::new())
    }

    /// A string that points at static text (no allocation).
    pub const fn from_static(s: &'static str) -> Self {
        Utf8Bytes(Bytes::from_static(s.as_bytes()))
    }

    /// Bytes the caller guarantees to be valid UTF-8.
    ///
    /// # Safety
    /// `bytes` must be valid UTF-8: [`Utf8Bytes::as_str`] reads them without
    /// checking.
    pub(crate) unsafe fn from_bytes_unchecked(bytes: Bytes) -> Self {
        debug_assert!(
            std::str::from_utf8(&bytes).is_ok(),
            "Utf8Bytes::from_bytes_unchecked given invalid UTF-8"
        );
        Utf8Bytes(bytes)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor either starts from a `str`, validates
        // with `std::str::from_utf8`, or (`from_bytes_unchecked`, used by
        // the decoder after its validator accepted the whole message) is
        // given bytes the caller proved valid; the bytes never change after.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes (no copy).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Gives up the UTF-8 guarantee for the underlying bytes (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Utf8Bytes {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Utf8Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<str> for Utf8Bytes {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Hash for Utf8Bytes {
    /// Hashes as the `str` does (so maps keyed by `Utf8Bytes` can be looked
    /// up with a `&str`, as [`Borrow`] requires).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<String> for Utf8Bytes {
    /// Takes the string's buffer (no copy).
    fn from(s: String) -> Self {
        Utf8Bytes(Bytes::from(s))
    }
}

impl From<&String> for Utf8Bytes {
    fn from(s: &String) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<&str> for Utf8Bytes {
    /// Copies the text (use [`Utf8Bytes::from_static`] for static text
    /// without a copy).
    fn from(s: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<Box<str>> for Utf8Bytes {
    fn from(s: Box<str>) -> Self {
        Utf8Bytes::from(String::from(s))
    }
}

impl From<char> for Utf8Bytes {
    fn from(c: char) -> Self {
        Utf8Bytes::from(String::from(c))
    }
}

impl From<Utf8Bytes> for Bytes {
    fn from(t: Utf8Bytes) -> Bytes {
        t.0
    }
}

impl From<Utf8Bytes> for String {
    /// Copies the text into a `String` (no validation).
    fn from(t: Utf8Bytes) -> String {
        t.as_str().to_owned()
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = Utf8Error;

    /// Checks that `bytes` are UTF-8 (no copy).
    fn try_from(bytes: Bytes) -> Result<Self, Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Utf8Bytes(bytes))
    }
}

impl TryFrom<Vec<u8>> for Utf8Bytes {
    type Error = Utf8Error;

    /// Checks that `bytes` are UTF-8 (no copy).
    fn try_from(bytes: Vec<u8>) -> Result<Self, Utf8Error> {
        Utf8Bytes::try_from(Bytes::from(bytes))
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Utf8Bytes {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Utf8Bytes> for str {
    fn eq(&self, other: &Utf8Bytes) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Utf8Bytes> for &str {
    fn eq(&self, other: &Utf8Bytes) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Utf8Bytes> for String {
    fn eq(&self, other: &Utf8Bytes) -> bool {
        self.as_str() == other.as_str()
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Utf8Bytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Utf8Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Utf8Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn checked_conversions_refuse_invalid_utf8() {
        let bad = Bytes::from_static(&[b'a', 0xc3]);
        assert!(Utf8Bytes::try_from(bad).is_err());
        assert!(Utf8Bytes::try_from(vec![0xed, 0xa0, 0x80]).is_err()); // a surrogate
        let good = Utf8Bytes::try_from(Bytes::from_static("κόσμε".as_bytes())).unwrap();
        assert_eq!(good, "κόσμε");
    }

    #[test]
    fn from_string_and_back_keep_the_text() {
        let s = String::from("switchboard ✓");
        let t = Utf8Bytes::from(s.clone());
        assert_eq!(t, s);
        assert_eq!(s, t);
        assert_eq!(String::from(t.clone()), s);
        assert_eq!(&t[..6], "switch");
        assert_eq!(Bytes::from(t), Bytes::from(s));
        assert_eq!(Utf8Bytes::from('✓'), "✓");
        assert_eq!(Utf8Bytes::new(), "");
        assert_eq!(Utf8Bytes::from_static("static"), *"static");
    }

    #[test]
    fn formats_and_hashes_as_its_text() {
        let t = Utf8Bytes::from("a \"quoted\" word");
        assert_eq!(format!("{t}"), "a \"quoted\" word");
        assert_eq!(format!("{t:?}"), format!("{:?}", "a \"quoted\" word"));
        let mut map = HashMap::new();
        map.insert(t, 1);
        assert_eq!(map.get("a \"quoted\" word"), Some(&1));
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serializes_as_a_string() {
        let t = Utf8Bytes::from("say 'hi' ✓");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"say 'hi' ✓\"");
        assert_eq!(serde_json::from_str::<Utf8Bytes>(&json).unwrap(), t);
    }

    #[test]
    fn clones_share_the_buffer() {
        let t = Utf8Bytes::from(String::from("shared"));
        let c = t.clone();
        assert_eq!(t.as_bytes().as_ptr(), c.as_bytes().as_ptr());
    }
}
