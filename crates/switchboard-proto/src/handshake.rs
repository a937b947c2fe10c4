//! The opening handshake (RFC 6455 §4): request validation, the accept key,
//! subprotocol and extension header parsing, and client-side checks.
//!
//! Everything here reads `http` types and strings and writes nothing to a
//! socket. Header parsers cap how many items they accept, so a hostile header
//! with thousands of entries costs a bounded amount of work.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use sha1::{Digest, Sha1};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Most subprotocols or extension offers read from one request.
pub const MAX_LIST_ITEMS: usize = 32;
/// Most parameters read for one extension offer.
pub const MAX_EXTENSION_PARAMS: usize = 16;

/// Why an upgrade request was refused, with the HTTP status to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandshakeError {
    /// 400, 405 or 426.
    pub status: StatusCode,
    /// A human-readable explanation for the response body.
    pub message: &'static str,
}

impl HandshakeError {
    const fn new(status: StatusCode, message: &'static str) -> Self {
        HandshakeError { status, message }
    }
}

/// A validated upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The value for `Sec-WebSocket-Accept`; empty for an HTTP/2 extended
    /// CONNECT ([`validate_h2_request`]), which has no key (RFC 8441 §5).
    pub accept: String,
    /// Subprotocols the client offered, in its order of preference.
    pub protocols: Vec<String>,
    /// Extensions the client offered, in its order of preference.
    pub extensions: Vec<ExtensionOffer>,
}

/// Computes `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
///
/// ```
/// // The example from RFC 6455 §1.3.
/// assert_eq!(
///     switchboard_proto::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
///     "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
/// );
/// ```
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    STANDARD.encode(sha.finalize())
}

/// Whether a comma-separated header (every occurrence) contains `token`,
/// compared case-insensitively.
pub fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        // The usual case, a value that is just the token, without a split.
        v.as_bytes().eq_ignore_ascii_case(token.as_bytes())
            || v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The only value of header `name`: `None` when it is missing or repeated.
fn single_value(headers: &HeaderMap, name: header::HeaderName) -> Option<&[u8]> {
    let mut values = headers.get_all(name).into_iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Some(v.as_bytes().trim_ascii()),
        _ => None,
    }
}

/// Whether `key` is the base64 of 16 bytes (a valid `Sec-WebSocket-Key`),
/// checked without decoding: 16 bytes are 21 full base64 characters, one
/// that carries the last 2 bits (its low 4 bits zero, as canonical base64
/// requires), and `==`.
fn is_valid_key(key: &[u8]) -> bool {
    let is_b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24
        && key[..21].iter().all(is_b64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && key[22..] == *b"=="
}

/// Validates a client's upgrade request.
///
/// ```
/// use http::{HeaderMap, Method, Version};
/// let mut h = HeaderMap::new();
/// h.insert("upgrade", "websocket".parse().unwrap());
/// h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
/// h.insert("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap());
/// h.insert("sec-websocket-version", "13".parse().unwrap());
/// h.insert("sec-websocket-protocol", "mqtt, chat".parse().unwrap());
/// let req = switchboard_proto::validate_request(&Method::GET, Version::HTTP_11, &h).unwrap();
/// assert_eq!(req.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// assert_eq!(req.protocols, ["mqtt", "chat"]);
/// ```
pub fn validate_request(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<UpgradeRequest, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "WebSocket upgrade requires GET",
        ));
    }
    if version < Version::HTTP_11 {
        return Err(HandshakeError::new(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrade requires HTTP/1.1",
        ));
    }
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::new(
            StatusCode::BAD_REQUEST,
            "missing or invalid Upgrade: websocket header",
        ));
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::new(
            StatusCode::BAD_REQUEST,
            "missing Connection: upgrade header",
        ));
    }
    if single_value(headers, header::SEC_WEBSOCKET_VERSION) != Some(b"13") {
        return Err(HandshakeError::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version; this server speaks 13",
        ));
    }
    let Some(key) = single_value(headers, header::SEC_WEBSOCKET_KEY) else {
        return Err(HandshakeError::new(
            StatusCode::BAD_REQUEST,
            "missing or repeated Sec-WebSocket-Key header",
        ));
    };
    if !is_valid_key(key) {
        return Err(HandshakeError::new(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    let protocols = parse_protocols(headers)
        .map_err(|message| HandshakeError::new(StatusCode::BAD_REQUEST, message))?;
    let extensions = parse_extensions(headers)
        .map_err(|message| HandshakeError::new(StatusCode::BAD_REQUEST, message))?;
    Ok(UpgradeRequest {
        accept: accept_key(key),
        protocols,
        extensions,
    })
}

/// Validates a WebSocket request over HTTP/2: an extended CONNECT with
/// `:protocol` `websocket` (RFC 8441 §4-5). `protocol` is the `:protocol`
/// pseudo-header, `None` when the request had none.
///
/// HTTP/2 has no `Upgrade`, `Connection` or `Sec-WebSocket-Key`: the stream
/// itself becomes the WebSocket once the server answers 200. Version,
/// subprotocols and extensions are negotiated with the same headers as in
/// HTTP/1.1, and the returned request's `accept` is empty.
///
/// ```
/// use http::{HeaderMap, Method};
/// let mut h = HeaderMap::new();
/// h.insert("sec-websocket-version", "13".parse().unwrap());
/// h.insert("sec-websocket-protocol", "chat".parse().unwrap());
/// let req =
///     switchboard_proto::validate_h2_request(&Method::CONNECT, Some("websocket"), &h).unwrap();
/// assert_eq!(req.protocols, ["chat"]);
/// assert!(req.accept.is_empty());
/// // A plain CONNECT (no :protocol) is not a WebSocket request.
/// let err = switchboard_proto::validate_h2_request(&Method::CONNECT, None, &h).unwrap_err();
/// assert_eq!(err.status, 400);
/// ```
pub fn validate_h2_request(
    method: &Method,
    protocol: Option<&str>,
    headers: &HeaderMap,
) -> Result<UpgradeRequest, HandshakeError> {
    if method != Method::CONNECT {
        return Err(HandshakeError::new(
            StatusCode::BAD_REQUEST,
            "WebSocket over HTTP/2 needs an extended CONNECT with :protocol websocket \
             (RFC 8441); HTTP/2 has no Upgrade header",
        ));
    }
    match protocol {
        Some(p) if p.eq_ignore_ascii_case("websocket") => {}
        Some(_) => {
            return Err(HandshakeError::new(
                StatusCode::BAD_REQUEST,
                "unsupported :protocol; this route speaks websocket",
            ))
        }
        None => {
            return Err(HandshakeError::new(
                StatusCode::BAD_REQUEST,
                "CONNECT without :protocol websocket; WebSocket over HTTP/2 needs the \
                 extended CONNECT of RFC 8441",
            ))
        }
    }
    if single_value(headers, header::SEC_WEBSOCKET_VERSION) != Some(b"13") {
        return Err(HandshakeError::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version; this server speaks 13",
        ));
    }
    let protocols = parse_protocols(headers)
        .map_err(|message| HandshakeError::new(StatusCode::BAD_REQUEST, message))?;
    let extensions = parse_extensions(headers)
        .map_err(|message| HandshakeError::new(StatusCode::BAD_REQUEST, message))?;
    Ok(UpgradeRequest {
        accept: String::new(),
        protocols,
        extensions,
    })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses every `Sec-WebSocket-Protocol` header into a list of tokens.
pub fn parse_protocols(headers: &HeaderMap) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let value = value
            .to_str()
            .map_err(|_| "Sec-WebSocket-Protocol is not ASCII")?;
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !is_token(item) {
                return Err("Sec-WebSocket-Protocol entries must be HTTP tokens");
            }
            if out.len() == MAX_LIST_ITEMS {
                return Err("too many Sec-WebSocket-Protocol entries");
            }
            out.push(item.to_owned());
        }
    }
    Ok(out)
}

/// One extension offered in `Sec-WebSocket-Extensions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// Parameters in order; `None` for a parameter without a value.
    pub params: Vec<(String, Option<String>)>,
}

/// Parses every `Sec-WebSocket-Extensions` header (RFC 6455 §9.1 grammar,
/// quoted values allowed). Rejects malformed lists rather than guessing.
///
/// ```
/// use http::HeaderMap;
/// let mut h = HeaderMap::new();
/// h.insert(
///     "sec-websocket-extensions",
///     "permessage-deflate; client_max_window_bits, x-foo; a=\"1\"".parse().unwrap(),
/// );
/// let offers = switchboard_proto::parse_extensions(&h).unwrap();
/// assert_eq!(offers[0].name, "permessage-deflate");
/// assert_eq!(offers[0].params, [("client_max_window_bits".to_owned(), None)]);
/// assert_eq!(offers[1].params, [("a".to_owned(), Some("1".to_owned()))]);
/// ```
pub fn parse_extensions(headers: &HeaderMap) -> Result<Vec<ExtensionOffer>, &'static str> {
    let mut out = Vec::new();
    for value in headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
        parse_extension_value(value, &mut out)?;
    }
    Ok(out)
}

fn parse_extension_value(
    value: &HeaderValue,
    out: &mut Vec<ExtensionOffer>,
) -> Result<(), &'static str> {
    const BAD: &str = "malformed Sec-WebSocket-Extensions header";
    let value = value.to_str().map_err(|_| BAD)?;
    // Quoted strings may not contain ',' or ';' in valid offers (values must
    // be tokens once unquoted), so splitting first is safe; a quote that
    // hides a separator makes the pieces fail validation below.
    for offer in value.split(',').map(str::trim) {
        if offer.is_empty() {
            continue;
        }
        if out.len() == MAX_LIST_ITEMS {
            return Err("too many Sec-WebSocket-Extensions offers");
        }
        let mut parts = offer.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        if !is_token(name) {
            return Err(BAD);
        }
        let mut params = Vec::new();
        for param in parts {
            if params.len() == MAX_EXTENSION_PARAMS {
                return Err("too many extension parameters");
            }
            let (key, val) = match param.split_once('=') {
                None => (param, None),
                Some((k, v)) => {
                    let v = v.trim();
                    let v = match v.strip_prefix('"') {
                        Some(rest) => rest.strip_suffix('"').ok_or(BAD)?,
                        None => v,
                    };
                    if !is_token(v) {
                        return Err(BAD);
                    }
                    (k.trim(), Some(v.to_owned()))
                }
            };
            if !is_token(key) {
                return Err(BAD);
            }
            params.push((key.to_owned(), val));
        }
        out.push(ExtensionOffer {
            name: name.to_owned(),
            params,
        });
    }
    Ok(())
}

/// Why a server's handshake response was refused by a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientHandshakeError {
    /// The status was not 101.
    #[error("server answered {0} instead of 101 Switching Protocols")]
    Status(StatusCode),
    /// `Upgrade`/`Connection` headers missing.
    #[error("response lacks Upgrade: websocket / Connection: upgrade")]
    NotUpgrade,
    /// `Sec-WebSocket-Accept` did not match the key.
    #[error("Sec-WebSocket-Accept does not match the key")]
    BadAccept,
    /// The server chose a subprotocol the client did not offer.
    #[error("server selected subprotocol {0:?} that was not offered")]
    UnofferedProtocol(String),
}

/// Checks a server's response to a client's upgrade request and returns the
/// selected subprotocol, if any.
pub fn validate_response(
    status: StatusCode,
    headers: &HeaderMap,
    key: &str,
    offered_protocols: &[String],
) -> Result<Option<String>, ClientHandshakeError> {
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(ClientHandshakeError::Status(status));
    }
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(ClientHandshakeError::NotUpgrade);
    }
    let expected = accept_key(key.as_bytes());
    match headers.get(header::SEC_WEBSOCKET_ACCEPT) {
        Some(v) if v.as_bytes() == expected.as_bytes() => {}
        _ => return Err(ClientHandshakeError::BadAccept),
    }
    match headers.get(header::SEC_WEBSOCKET_PROTOCOL) {
        None => Ok(None),
        Some(v) => {
            let p = v.to_str().unwrap_or_default().to_owned();
            if offered_protocols.contains(&p) {
                Ok(Some(p))
            } else {
                Err(ClientHandshakeError::UnofferedProtocol(p))
            }
        }
    }
}

/// Encodes 16 random bytes as a `Sec-WebSocket-Key` (the caller supplies
/// the randomness; this crate does no I/O).
pub fn client_key(random: [u8; 16]) -> String {
    STANDARD.encode(random)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("upgrade", "WebSocket".parse().unwrap());
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        h.insert("sec-websocket-version", "13".parse().unwrap());
        h
    }

    #[test]
    fn accepts_a_valid_request() {
        let r = validate_request(&Method::GET, Version::HTTP_11, &good()).unwrap();
        assert_eq!(r.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(r.protocols.is_empty() && r.extensions.is_empty());
    }

    #[test]
    fn rejections_carry_status() {
        let check = |h: HeaderMap, m: Method, status: StatusCode| {
            let err = validate_request(&m, Version::HTTP_11, &h).unwrap_err();
            assert_eq!(err.status, status, "{}", err.message);
        };
        check(good(), Method::POST, StatusCode::METHOD_NOT_ALLOWED);
        let mut h = good();
        h.remove("upgrade");
        check(h, Method::GET, StatusCode::BAD_REQUEST);
        let mut h = good();
        h.insert("connection", "keep-alive".parse().unwrap());
        check(h, Method::GET, StatusCode::BAD_REQUEST);
        let mut h = good();
        h.insert("sec-websocket-version", "8".parse().unwrap());
        check(h, Method::GET, StatusCode::UPGRADE_REQUIRED);
        let mut h = good();
        h.insert("sec-websocket-key", "c2hvcnQ=".parse().unwrap());
        check(h, Method::GET, StatusCode::BAD_REQUEST);
        let mut h = good();
        h.remove("sec-websocket-key");
        check(h, Method::GET, StatusCode::BAD_REQUEST);
        let err = validate_request(&Method::GET, Version::HTTP_10, &good()).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        // Repeated version or key headers are refused, even when equal.
        let mut h = good();
        h.append("sec-websocket-version", "13".parse().unwrap());
        check(h, Method::GET, StatusCode::UPGRADE_REQUIRED);
        let mut h = good();
        h.append(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        check(h, Method::GET, StatusCode::BAD_REQUEST);
        // 24 characters that are not the padded base64 of 16 bytes.
        for key in [
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZQ===",
            "dGhlIHNhbXBsZSBub25jZSE1",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25j*Q==",
            "dGhlIHNhbXBsZSBub25jZQ",
        ] {
            let mut h = good();
            h.insert("sec-websocket-key", key.parse().unwrap());
            check(h, Method::GET, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn key_check_agrees_with_a_base64_decoder() {
        let decodes_to_16 = |k: &[u8]| STANDARD.decode(k).is_ok_and(|raw| raw.len() == 16);
        // Random valid keys, with each position's character replaced by
        // every byte value: accepted exactly when they decode to 16 bytes.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20 {
            let mut raw = [0u8; 16];
            for b in &mut raw {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            let key = STANDARD.encode(raw).into_bytes();
            assert!(is_valid_key(&key));
            for pos in 0..key.len() {
                for c in 0..=255u8 {
                    let mut k = key.clone();
                    k[pos] = c;
                    assert_eq!(is_valid_key(&k), decodes_to_16(&k), "{k:?}");
                }
            }
        }
        for k in [
            &b""[..],
            b"==",
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZQ===",
        ] {
            assert_eq!(is_valid_key(k), decodes_to_16(k));
        }
    }

    #[test]
    fn surrounding_whitespace_and_case_are_accepted() {
        let mut h = good();
        h.insert(
            "sec-websocket-key",
            " dGhlIHNhbXBsZSBub25jZQ== ".parse().unwrap(),
        );
        h.insert("sec-websocket-version", " 13".parse().unwrap());
        h.insert("upgrade", "websocket, h2c".parse().unwrap());
        h.insert("connection", "UPGRADE".parse().unwrap());
        let r = validate_request(&Method::GET, Version::HTTP_11, &h).unwrap();
        assert_eq!(r.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn connection_token_list_is_searched() {
        let mut h = good();
        h.insert("connection", "keep-alive,  upgrade ".parse().unwrap());
        assert!(validate_request(&Method::GET, Version::HTTP_11, &h).is_ok());
    }

    #[test]
    fn hostile_lists_are_bounded_and_rejected() {
        let mut h = good();
        let many = vec!["p"; 1000].join(",");
        h.insert("sec-websocket-protocol", many.parse().unwrap());
        assert!(validate_request(&Method::GET, Version::HTTP_11, &h).is_err());
        for bad in ["; a", "x; =1", "x; a=\"1", "x; a=b c", "x y", "x; a=\"\""] {
            let mut h = good();
            h.insert("sec-websocket-extensions", bad.parse().unwrap());
            assert!(parse_extensions(&h).is_err(), "{bad}");
        }
        let mut h = good();
        h.insert("sec-websocket-extensions", "a, , b;x;y=2".parse().unwrap());
        let offers = parse_extensions(&h).unwrap();
        assert_eq!(offers.len(), 2);
    }

    #[test]
    fn client_checks_response() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut h = HeaderMap::new();
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert(
            "sec-websocket-accept",
            accept_key(key.as_bytes()).parse().unwrap(),
        );
        assert_eq!(
            validate_response(StatusCode::SWITCHING_PROTOCOLS, &h, key, &[]),
            Ok(None)
        );
        h.insert("sec-websocket-protocol", "chat".parse().unwrap());
        assert!(validate_response(StatusCode::SWITCHING_PROTOCOLS, &h, key, &[]).is_err());
        assert_eq!(
            validate_response(StatusCode::SWITCHING_PROTOCOLS, &h, key, &["chat".into()]),
            Ok(Some("chat".into()))
        );
        assert_eq!(
            validate_response(StatusCode::FORBIDDEN, &h, key, &[]),
            Err(ClientHandshakeError::Status(StatusCode::FORBIDDEN))
        );
    }

    #[test]
    fn h2_extended_connect() {
        let mut h = HeaderMap::new();
        h.insert("sec-websocket-version", "13".parse().unwrap());
        h.insert(
            "sec-websocket-extensions",
            "permessage-deflate".parse().unwrap(),
        );
        let r = validate_h2_request(&Method::CONNECT, Some("websocket"), &h).unwrap();
        assert!(r.accept.is_empty());
        assert_eq!(r.extensions[0].name, "permessage-deflate");
        // Case-insensitive protocol token, like the Upgrade header.
        assert!(validate_h2_request(&Method::CONNECT, Some("WebSocket"), &h).is_ok());
        let status = |m: Method, p: Option<&str>, h: &HeaderMap| {
            validate_h2_request(&m, p, h).unwrap_err().status
        };
        assert_eq!(status(Method::GET, Some("websocket"), &h), 400);
        assert_eq!(status(Method::CONNECT, None, &h), 400);
        assert_eq!(status(Method::CONNECT, Some("webtransport"), &h), 400);
        assert_eq!(
            status(Method::CONNECT, Some("websocket"), &HeaderMap::new()),
            StatusCode::UPGRADE_REQUIRED
        );
    }
}
