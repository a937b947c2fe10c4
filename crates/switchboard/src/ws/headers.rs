//! The handshake's request headers and URI, kept for the socket's life in
//! one small packed buffer; the `HeaderMap` that `headers()` returns is
//! built from it on first use.
//!
//! Every socket keeps its handshake's headers (`Socket::headers`), but most
//! handlers read them, if at all, in their extractors, before the upgrade.
//! A `HeaderMap` holding a handful of headers is about 650 bytes of buckets
//! and index, plus the values; kept for every idle connection, that was the
//! largest single item of its memory (docs/BENCHMARKS.md, idle memory). So
//! the names and values are copied into one buffer sized to fit
//! (length-prefixed, so no byte of a value is special), together with the
//! URI's text, which must leave hyper's read buffer anyway: hyper parses
//! both as slices of its 8 KiB connection buffer, and keeping any slice
//! would keep that buffer alive. The map is rebuilt, once, when something
//! asks for it; its values are slices of the packed buffer, not copies.

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

/// Request headers, packed until someone asks for the map.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoredHeaders {
    /// Per header: name length (u32, big-endian), name, value length,
    /// value. Empty when `map` was given whole.
    packed: Bytes,
    map: OnceLock<HeaderMap>,
}

impl StoredHeaders {
    /// Headers already in a map (a client's handshake response): kept as
    /// they are.
    pub(crate) fn from_map(map: HeaderMap) -> StoredHeaders {
        StoredHeaders {
            packed: Bytes::new(),
            map: OnceLock::from(map),
        }
    }

    /// Copies `uri` and `headers` out of the request (see the module docs)
    /// into one allocation: the URI comes back as its own value, the
    /// headers packed.
    pub(crate) fn detach(uri: &Uri, headers: &HeaderMap) -> (Uri, StoredHeaders) {
        // An origin-form URI (`/path?query`, what HTTP/1.1 clients send) is
        // re-parsed from the copy; any other form is rebuilt from its text.
        let origin_form = uri.scheme().is_none() && uri.authority().is_none();
        let path = match uri.path_and_query() {
            Some(pq) if origin_form => pq.as_str(),
            _ => "",
        };
        let packed_len: usize = headers
            .iter()
            .map(|(name, value)| 8 + name.as_str().len() + value.len())
            .sum();
        let mut buf = BytesMut::with_capacity(path.len() + packed_len);
        buf.extend_from_slice(path.as_bytes());
        for (name, value) in headers {
            put_piece(&mut buf, name.as_str().as_bytes());
            put_piece(&mut buf, value.as_bytes());
        }
        let mut buf = buf.freeze();
        let packed = buf.split_off(path.len());
        let uri = if path.is_empty() {
            Uri::try_from(uri.to_string()).unwrap_or_else(|_| uri.clone())
        } else {
            Uri::from_maybe_shared(buf).unwrap_or_else(|_| uri.clone())
        };
        let stored = StoredHeaders {
            packed,
            map: OnceLock::new(),
        };
        (uri, stored)
    }

    /// The headers as a map (built on the first call).
    pub(crate) fn map(&self) -> &HeaderMap {
        self.map.get_or_init(|| unpack(&self.packed))
    }
}

/// A length-prefixed piece of the packed buffer.
fn put_piece(buf: &mut BytesMut, piece: &[u8]) {
    // Header blocks are bounded by the server's head size (hyper's limit is
    // far below 4 GiB), so the length always fits.
    buf.put_u32(u32::try_from(piece.len()).unwrap_or(u32::MAX));
    buf.extend_from_slice(piece);
}

/// The next piece of `packed` at `*at` (`None` at the end or on a short
/// buffer, which `pack` never writes).
fn take_piece(packed: &Bytes, at: &mut usize) -> Option<Bytes> {
    let len_bytes = packed.get(*at..*at + 4)?;
    let len = u32::from_be_bytes(len_bytes.try_into().ok()?) as usize;
    let start = *at + 4;
    let end = start.checked_add(len).filter(|&end| end <= packed.len())?;
    *at = end;
    Some(packed.slice(start..end))
}

fn unpack(packed: &Bytes) -> HeaderMap {
    let mut map = HeaderMap::new();
    let mut at = 0;
    while let (Some(name), Some(value)) = (take_piece(packed, &mut at), take_piece(packed, &mut at))
    {
        // Both were a valid name and value when packed.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name),
            HeaderValue::from_maybe_shared(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_uri_come_back_as_they_were() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.com"));
        headers.append("x-multi", HeaderValue::from_static("one"));
        headers.append("x-multi", HeaderValue::from_static("two: with colon"));
        headers.insert("sec-websocket-protocol", HeaderValue::from_static(""));
        let uri: Uri = "/ws/room?token=a%20b".parse().unwrap();
        let (copy, stored) = StoredHeaders::detach(&uri, &headers);
        assert_eq!(copy, uri);
        assert_eq!(copy.query(), Some("token=a%20b"));
        assert_eq!(stored.map(), &headers);
        let multi: Vec<_> = stored.map().get_all("x-multi").iter().collect();
        assert_eq!(multi, ["one", "two: with colon"]);
        // Built once, then the same map.
        assert!(std::ptr::eq(stored.map(), stored.map()));
    }

    #[test]
    fn absolute_uris_and_empty_header_sets() {
        let uri: Uri = "http://example.com/ws?x=1".parse().unwrap();
        let (copy, stored) = StoredHeaders::detach(&uri, &HeaderMap::new());
        assert_eq!(copy, uri);
        assert!(stored.map().is_empty());
    }

    #[test]
    fn a_truncated_buffer_yields_what_is_whole() {
        let mut headers = HeaderMap::new();
        headers.insert("a", HeaderValue::from_static("1"));
        headers.insert("b", HeaderValue::from_static("2"));
        let (_, stored) = StoredHeaders::detach(&"/".parse().unwrap(), &headers);
        let cut = stored.packed.slice(..stored.packed.len() - 1);
        let map = unpack(&cut);
        assert_eq!(map.len(), 1);
        assert_eq!(map["a"], "1");
    }
}
