//! One client connection: TCP connect (optionally from a chosen source
//! address), the opening handshake, and masked frames.
//!
//! Raw tokio `TcpStream`s driven by the sans-IO `switchboard-proto` crate:
//! the key and the response check come from its handshake helpers, frames
//! are masked with its `Frame::masked`, and scenarios decode with its
//! `Decoder`. No client framework sits in between, so the tool spends its
//! time on syscalls, not on layers. Nothing here loops without a bound: every
//! read of the handshake response is capped in size and in time.

use std::{io, net::IpAddr, time::Duration};

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use switchboard_proto::{client_key, validate_response, CloseCode, CloseFrame, Frame, OpCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::target::Target;

/// Largest handshake response accepted; a server sending more is broken.
const MAX_RESPONSE: usize = 16 * 1024;
/// Most response headers parsed.
const MAX_HEADERS: usize = 32;

/// An open WebSocket connection after a successful handshake.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    /// Bytes the server sent after its 101 response (already frames).
    pub(crate) buf: BytesMut,
}

/// The upgrade request for `target` with `key`.
pub(crate) fn request(target: &Target, key: &str) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path, target.host_header
    )
    .into_bytes()
}

/// Parses a (possibly partial) handshake response in `buf`.
///
/// `Ok(None)`: more bytes needed. `Ok(Some(n))`: a valid 101 whose head is
/// the first `n` bytes. `Err`: refused or malformed.
pub(crate) fn parse_response(buf: &[u8], key: &str) -> Result<Option<usize>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE => return Ok(None),
        Ok(httparse::Status::Partial) => return Err("handshake response too large".into()),
        Err(e) => return Err(format!("bad handshake response: {e}")),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0))
        .map_err(|_| "bad status code in handshake response".to_owned())?;
    let mut map = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Err("bad header in handshake response".into());
        };
        map.append(name, value);
    }
    validate_response(status, &map, key, &[]).map_err(|e| e.to_string())?;
    Ok(Some(len))
}

/// Opens a TCP connection to `target` (from `source` when given) and
/// completes the WebSocket handshake, all within `timeout`.
pub(crate) async fn connect(
    target: &Target,
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<Conn> {
    match tokio::time::timeout(timeout, connect_inner(target, source)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "handshake timed out",
        )),
    }
}

async fn connect_inner(target: &Target, source: Option<IpAddr>) -> io::Result<Conn> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind((ip, 0).into())?;
    }
    let mut stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let key = client_key(rand::random());
    stream.write_all(&request(target, &key)).await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed during the handshake",
            ));
        }
        match parse_response(&buf, &key) {
            Ok(None) => continue,
            Ok(Some(n)) => {
                let _ = buf.split_to(n);
                return Ok(Conn { stream, buf });
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// A masked client frame, header and payload in one buffer, ready to be
/// written as many times as needed. The key is random per call; reusing one
/// frame for many sends is what every load generator does and no server can
/// tell.
pub(crate) fn masked(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    Frame::masked(opcode, true, false, payload, rand::random()).to_vec()
}

/// A masked close frame with code 1000.
pub(crate) fn close_frame() -> Vec<u8> {
    let payload = CloseFrame {
        code: CloseCode::NORMAL,
        reason: String::new(),
    }
    .encode();
    masked(OpCode::Close, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchboard_proto::{accept_key, Decoder, Event, Limits, Role};

    #[test]
    fn request_has_the_upgrade_headers() {
        let t = Target::parse("ws://127.0.0.1:8000/ws/echo").unwrap();
        let req = String::from_utf8(request(&t, "dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(req.starts_with("GET /ws/echo HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"));
        assert!(req.contains("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
        assert!(req.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn response_parsing() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n\x01\x02hi",
            accept_key(key.as_bytes())
        );
        let head = ok.len() - 4;
        assert_eq!(parse_response(ok.as_bytes(), key), Ok(Some(head)));
        // Every strict prefix of the head asks for more.
        for cut in 0..head {
            assert_eq!(
                parse_response(&ok.as_bytes()[..cut], key),
                Ok(None),
                "{cut}"
            );
        }
        let bad_accept = ok.replace(&accept_key(key.as_bytes()), "x");
        assert!(parse_response(bad_accept.as_bytes(), key).is_err());
        let refused = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert!(parse_response(refused.as_bytes(), key)
            .unwrap_err()
            .contains("404"));
        assert!(parse_response(&vec![b'a'; MAX_RESPONSE + 1], key).is_err());
    }

    #[test]
    fn masked_frames_decode_on_the_server_side() {
        let mut dec = Decoder::new(Role::Server, Limits::default());
        let mut buf = BytesMut::from(&masked(OpCode::Binary, b"payload")[..]);
        buf.extend_from_slice(&close_frame());
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Event::Binary(Bytes::from_static(b"payload")))
        );
        match dec.decode(&mut buf).unwrap() {
            Some(Event::Close(Some(c))) => assert_eq!(c.code, CloseCode::NORMAL),
            other => panic!("{other:?}"),
        }
    }
}
