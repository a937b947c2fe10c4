//! `handshake`: the opening-handshake parsers on hostile header sets.
//!
//! Builds an `http::HeaderMap` from the input (names from a small set of
//! WebSocket-relevant headers, arbitrary values, repeats allowed) and calls
//! `validate_request`, `parse_protocols` and `parse_extensions`. Checks:
//! - nothing panics;
//! - a successful `validate_request` means: GET, HTTP/1.1 or later, exactly
//!   one `Sec-WebSocket-Key` and `Sec-WebSocket-Version: 13`, an accept key
//!   of 28 chars equal to `accept_key(trimmed key)`, and the same protocols
//!   and extensions as the standalone parsers return;
//! - a client given that accept key (and the first offered protocol) accepts
//!   the response in `validate_response`;
//! - parsed protocols and extension offers are HTTP tokens within the
//!   documented caps, and re-serialising them parses back to the same value.
//!
//! Input layout:
//!
//! ```text
//! byte 0      bits 0-1 method (3 = POST, else GET), bits 2-3 version
//!             (0 = HTTP/1.0, else 1.1/2/3), bit 4: start from a valid
//!             request (upgrade, connection, key, version headers)
//! then        records: [name byte] [len byte] [len value bytes]
//!             name byte: low 4 bits index NAMES, bit 7 set = insert
//!             (replace) instead of append
//! ```
#![no_main]

use http::{header::HeaderName, HeaderMap, HeaderValue, Method, StatusCode, Version};
use libfuzzer_sys::fuzz_target;
use switchboard_proto::{
    accept_key, parse_extensions, parse_protocols, validate_request, validate_response,
    ExtensionOffer, MAX_EXTENSION_PARAMS, MAX_LIST_ITEMS,
};

const NAMES: [&str; 10] = [
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "sec-websocket-accept",
    "host",
    "origin",
    "x-forwarded-for",
];

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_offers(offers: &[ExtensionOffer]) {
    assert!(offers.len() <= MAX_LIST_ITEMS);
    for o in offers {
        assert!(is_token(&o.name), "extension name {:?}", o.name);
        assert!(o.params.len() <= MAX_EXTENSION_PARAMS);
        for (k, v) in &o.params {
            assert!(is_token(k), "param name {k:?}");
            if let Some(v) = v {
                assert!(is_token(v), "param value {v:?}");
            }
        }
    }
    // Round trip: serialise, parse again.
    let text = offers
        .iter()
        .map(|o| {
            let mut s = o.name.clone();
            for (k, v) in &o.params {
                s.push_str("; ");
                s.push_str(k);
                if let Some(v) = v {
                    s.push('=');
                    s.push_str(v);
                }
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut h = HeaderMap::new();
    if !text.is_empty() {
        h.insert(
            "sec-websocket-extensions",
            HeaderValue::from_str(&text).expect("tokens make a header value"),
        );
    }
    assert_eq!(parse_extensions(&h).as_deref(), Ok(offers));
}

fn check_protocols(protocols: &[String]) {
    assert!(protocols.len() <= MAX_LIST_ITEMS);
    assert!(protocols.iter().all(|p| is_token(p)), "{protocols:?}");
    let mut h = HeaderMap::new();
    if !protocols.is_empty() {
        let text = protocols.join(", ");
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&text).expect("tokens make a header value"),
        );
    }
    assert_eq!(parse_protocols(&h).as_deref(), Ok(protocols));
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let method = if flags & 3 == 3 {
        Method::POST
    } else {
        Method::GET
    };
    let version = [
        Version::HTTP_10,
        Version::HTTP_11,
        Version::HTTP_2,
        Version::HTTP_3,
    ][usize::from((flags >> 2) & 3)];
    let mut headers = HeaderMap::new();
    if flags & 0x10 != 0 {
        for (k, v) in [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ] {
            headers.insert(k, HeaderValue::from_static(v));
        }
    }
    while let [name_byte, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (value, tail) = tail.split_at(len);
        rest = tail;
        let name = HeaderName::from_static(NAMES[usize::from(name_byte & 0x0f) % NAMES.len()]);
        // Bytes HTTP would never deliver as a value (CR, LF, NUL...) are
        // rejected here just as hyper rejects them on the wire.
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        if name_byte & 0x80 != 0 {
            headers.insert(name, value);
        } else {
            headers.append(name, value);
        }
    }

    let protocols = parse_protocols(&headers);
    let extensions = parse_extensions(&headers);
    if let Ok(p) = &protocols {
        check_protocols(p);
    }
    if let Ok(e) = &extensions {
        check_offers(e);
    }

    let Ok(req) = validate_request(&method, version, &headers) else {
        return;
    };
    assert_eq!(method, Method::GET);
    assert!(version >= Version::HTTP_11);
    assert_eq!(req.accept.len(), 28, "accept key {:?}", req.accept);
    let keys: Vec<_> = headers.get_all("sec-websocket-key").iter().collect();
    assert_eq!(keys.len(), 1);
    let key = std::str::from_utf8(keys[0].as_bytes().trim_ascii()).expect("base64 is ASCII");
    assert_eq!(req.accept, accept_key(key.as_bytes()));
    let versions: Vec<_> = headers.get_all("sec-websocket-version").iter().collect();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].as_bytes().trim_ascii(), b"13");
    assert_eq!(protocols.as_ref(), Ok(&req.protocols));
    assert_eq!(extensions.as_ref(), Ok(&req.extensions));

    // The client side accepts what this server would answer.
    let mut resp = HeaderMap::new();
    resp.insert("upgrade", HeaderValue::from_static("websocket"));
    resp.insert("connection", HeaderValue::from_static("Upgrade"));
    resp.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&req.accept).expect("base64 is a header value"),
    );
    let chosen = req.protocols.first().cloned();
    if let Some(p) = &chosen {
        resp.insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(p).expect("token is a header value"),
        );
    }
    assert_eq!(
        validate_response(StatusCode::SWITCHING_PROTOCOLS, &resp, key, &req.protocols),
        Ok(chosen)
    );
});
