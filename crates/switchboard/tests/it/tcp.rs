//! Real TCP: raw protocol bytes against the server, an independent client
//! (tokio-tungstenite), our own client, and the HTTP limits.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchboard::{
    proto::{CloseFrame, Frame, OpCode},
    App, Error, WebSocket, WsClient, WsConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, protocol::frame::coding::CloseCode as TCode};

use crate::spawn;

fn echo_app() -> App {
    App::new()
        .get("/health", || async { "ok" })
        .websocket_with(
            "/ws/echo",
            WsConfig::default().max_message_size(1024),
            |ws: WebSocket| async move {
                let mut ws = ws.accept().await?;
                while let Some(msg) = ws.recv_message().await? {
                    ws.send(msg).await?;
                }
                Ok::<_, Error>(())
            },
        )
        .handshake_timeout(Duration::from_millis(300))
}

const KEY: [u8; 4] = [1, 2, 3, 4];

/// Opens a raw upgraded TCP stream to /ws/echo.
async fn raw_socket(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="));
    s
}

/// Reads one server frame (unmasked, payload < 64 KiB).
async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are never masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.unwrap();
            u16::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (h[0], payload)
}

async fn expect_close(s: &mut TcpStream, code: u16) {
    let (b0, payload) = tokio::time::timeout(Duration::from_secs(5), read_frame(s))
        .await
        .unwrap();
    assert_eq!(b0, 0x88, "expected a close frame");
    assert_eq!(
        u16::from_be_bytes([payload[0], payload[1]]),
        code,
        "{:?}",
        String::from_utf8_lossy(&payload[2..])
    );
    // The server then closes the TCP connection.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(n.is_ok() || rest.is_empty());
}

#[tokio::test]
async fn rfc6455_violations_close_with_the_right_codes() {
    let server = spawn(echo_app()).await;
    // Unmasked client frame -> 1002.
    let mut s = raw_socket(server.addr).await;
    s.write_all(&Frame::new(OpCode::Text, true, false, "x".into()).to_vec())
        .await
        .unwrap();
    expect_close(&mut s, 1002).await;
    // Reserved opcode -> 1002.
    let mut s = raw_socket(server.addr).await;
    s.write_all(&[0x83, 0x80, 1, 2, 3, 4]).await.unwrap();
    expect_close(&mut s, 1002).await;
    // RSV1 without an extension -> 1002.
    let mut s = raw_socket(server.addr).await;
    let mut f = Frame::masked(OpCode::Text, true, false, b"x", KEY).to_vec();
    f[0] |= 0x40;
    s.write_all(&f).await.unwrap();
    expect_close(&mut s, 1002).await;
    // Invalid UTF-8 -> 1007.
    let mut s = raw_socket(server.addr).await;
    s.write_all(&Frame::masked(OpCode::Text, true, false, &[0xff, 0xfe], KEY).to_vec())
        .await
        .unwrap();
    expect_close(&mut s, 1007).await;
    // Message over the 1 KiB limit, declared in the header -> 1009.
    let mut s = raw_socket(server.addr).await;
    s.write_all(&[0x82, 0xfe, 0x08, 0x00, 1, 2, 3, 4])
        .await
        .unwrap();
    expect_close(&mut s, 1009).await;
    // Invalid close code -> 1002.
    let mut s = raw_socket(server.addr).await;
    s.write_all(&Frame::masked(OpCode::Close, true, false, &[0x03, 0xed], KEY).to_vec())
        .await
        .unwrap();
    expect_close(&mut s, 1002).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn pings_are_answered_and_fragments_reassembled() {
    let server = spawn(echo_app()).await;
    let mut s = raw_socket(server.addr).await;
    let mut bytes = Frame::masked(OpCode::Text, false, false, b"Hel", KEY).to_vec();
    bytes.extend(Frame::masked(OpCode::Ping, true, false, b"p!", KEY).to_vec());
    bytes.extend(Frame::masked(OpCode::Continuation, true, false, b"lo", KEY).to_vec());
    s.write_all(&bytes).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (0x8a, b"p!".to_vec()));
    assert_eq!(read_frame(&mut s).await, (0x81, b"Hello".to_vec()));
    // Client-initiated close: echoed with the same code, then TCP closes.
    let close = CloseFrame::new(4321, "bye").encode();
    s.write_all(&Frame::masked(OpCode::Close, true, false, &close, KEY).to_vec())
        .await
        .unwrap();
    let (b0, payload) = read_frame(&mut s).await;
    assert_eq!((b0, &payload[..2]), (0x88, &4321u16.to_be_bytes()[..]));
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).await.unwrap(), 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tokio_tungstenite_interop() {
    let server = spawn(echo_app()).await;
    let url = format!("ws://{}/ws/echo", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(tungstenite::Message::text("héllo")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        tungstenite::Message::text("héllo")
    );
    ws.send(tungstenite::Message::binary(vec![9u8; 1000]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        tungstenite::Message::binary(vec![9u8; 1000])
    );
    ws.send(tungstenite::Message::Ping(b"hi".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        tungstenite::Message::Pong(b"hi".to_vec())
    );
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: TCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    match ws.next().await {
        Some(Ok(tungstenite::Message::Close(Some(f)))) => assert_eq!(f.code, TCode::Normal),
        other => panic!("expected close echo, got {other:?}"),
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn own_client_over_tcp() {
    let server = spawn(echo_app()).await;
    let mut ws = WsClient::new(format!("ws://{}/ws/echo", server.addr))
        .connect()
        .await
        .unwrap();
    ws.send_text("over tcp").await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("over tcp"));
    ws.close(1000, "").await.unwrap();
    let err = WsClient::new(format!("ws://{}/nope", server.addr))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn slowloris_connection_is_dropped() {
    let server = spawn(echo_app()).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(
        r.is_ok(),
        "connection must be dropped by the handshake timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Other clients are unaffected.
    let mut ok = TcpStream::connect(server.addr).await.unwrap();
    ok.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    ok.read_to_end(&mut resp).await.unwrap();
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 200"));
    server.shutdown().await.unwrap();
}

/// The status line of the answer to a `GET /health` with `extra` headers
/// besides `Host`.
async fn health_with_headers(addr: std::net::SocketAddr, extra: usize) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = String::from("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..extra {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut resp))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&resp);
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn too_many_headers_is_rejected() {
    let server = spawn(echo_app().max_headers(20)).await;
    let status = health_with_headers(server.addr, 50).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_default_header_limit_is_100() {
    let server = spawn(echo_app()).await;
    // Host and Connection plus 98: exactly 100 headers.
    let status = health_with_headers(server.addr, 98).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let status = health_with_headers(server.addr, 99).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    server.shutdown().await.unwrap();
}
