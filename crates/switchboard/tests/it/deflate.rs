//! permessage-deflate (RFC 7692, issue 4): negotiation, compressed echo in
//! both directions, decompression bombs (one frame, fragments, across
//! messages) closing 1009 on both roles, corrupt data closing 1007,
//! frame-once broadcast to mixed recipients, and the bytes on a real TCP
//! wire.

use std::time::Duration;

use switchboard::{
    http::{header, HeaderValue},
    hub::Hub,
    proto::{Deflate, Frame, OpCode},
    testing::TestClient,
    Accept, App, DeflateConfig, Error, Limits, Message, Socket, State, WebSocket, WsConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::spawn;

async fn echo(ws: WebSocket) -> Result<(), Error> {
    let mut ws = ws.accept().await?;
    while let Some(msg) = ws.recv_message().await? {
        ws.send(msg).await?;
    }
    Ok(())
}

/// An echo app whose routes differ only in compression settings.
fn app() -> App {
    let small = Limits {
        max_message_size: 16 * 1024,
        ..Limits::DEFAULT
    };
    App::new()
        .ws_config(WsConfig::default().compression(Some(DeflateConfig::default())))
        .websocket("/echo", echo)
        .websocket_with("/plain", WsConfig::default(), echo)
        .websocket_with(
            "/small",
            WsConfig::default()
                .limits(small)
                .compression(Some(DeflateConfig::default())),
            echo,
        )
        .websocket_with(
            "/takeover",
            WsConfig::default().compression(Some(
                DeflateConfig::default()
                    .server_no_context_takeover(false)
                    .threshold(0),
            )),
            echo,
        )
        .websocket_with(
            "/reset-clients",
            WsConfig::default().compression(Some(
                DeflateConfig::default()
                    .client_no_context_takeover(true)
                    .client_max_window_bits(10),
            )),
            echo,
        )
        .websocket("/params", |ws: WebSocket| async move {
            let ws = ws.accept().await?;
            let p = ws.compression();
            ws.send_text(p.map_or("none".into(), |p| p.header_value()))
                .await?;
            Ok::<_, Error>(())
        })
        .websocket("/zeros", |ws: WebSocket| async move {
            // 64 KiB of zeros: a few hundred bytes on the wire.
            let ws = ws.accept().await?;
            ws.send_bytes(vec![0u8; 64 * 1024]).await?;
            let mut ws = ws;
            while ws.recv_message().await?.is_some() {}
            Ok::<_, Error>(())
        })
        .websocket_with("/liar", WsConfig::default(), |ws: WebSocket| async move {
            // Answers an extension nobody offered.
            let accept = Accept::new().header(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static("permessage-deflate"),
            );
            ws.accept_with(accept).await?;
            Ok::<_, Error>(())
        })
}

/// Reads until the connection ends; the close code the server sent.
async fn close_code(ws: &mut Socket) -> u16 {
    let wait = async {
        loop {
            match ws.recv().await {
                Ok(Message::Close(Some(f))) => return f.code.0,
                Ok(Message::Close(None)) => return 1005,
                Ok(_) => {}
                Err(e) => return e.close_code().map_or(1006, |c| c.0),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("connection should end")
}

fn text(n: usize) -> String {
    (0..n)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect::<String>()
}

#[tokio::test]
async fn negotiated_and_echoed_both_ways() {
    let client = TestClient::new(app());
    let mut ws = client
        .websocket_connect("/echo")
        .compression(DeflateConfig::default().threshold(0))
        .await
        .unwrap();
    let p = ws.compression().expect("negotiated");
    assert!(p.server_no_context_takeover());
    assert_eq!(
        ws.headers().get("sec-websocket-extensions").unwrap(),
        "permessage-deflate; server_no_context_takeover"
    );
    for msg in ["", "tiny", &text(5000), &"κόσμε 🦀".repeat(500)] {
        ws.send_text(msg).await.unwrap();
        assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some(msg));
    }
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send_bytes(blob.clone()).await.unwrap();
    assert_eq!(ws.recv_bytes().await.unwrap().unwrap(), blob);
}

#[tokio::test]
async fn not_negotiated_without_both_sides() {
    let client = TestClient::new(app());
    // The route does not enable it.
    let mut ws = client
        .websocket_connect("/plain")
        .compression(DeflateConfig::default())
        .await
        .unwrap();
    assert!(ws.compression().is_none());
    assert!(ws.headers().get("sec-websocket-extensions").is_none());
    ws.send_text(text(4000)).await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().unwrap(), text(4000));
    // The client does not offer it.
    let mut ws = client.websocket_connect("/echo").await.unwrap();
    assert!(ws.compression().is_none());
    ws.send_text(text(4000)).await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().unwrap(), text(4000));
    // The handler sees the same answer.
    let mut ws = client.websocket_connect("/params").await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("none"));
    let mut ws = client
        .websocket_connect("/params")
        .compression(DeflateConfig::default())
        .await
        .unwrap();
    assert_eq!(
        ws.recv_text().await.unwrap().as_deref(),
        Some("permessage-deflate; server_no_context_takeover")
    );
}

#[tokio::test]
async fn client_rejects_an_unoffered_extension() {
    let client = TestClient::new(app());
    let err = client.websocket_connect("/liar").await.unwrap_err();
    assert!(
        matches!(err, switchboard::ConnectError::Extension(_)),
        "{err}"
    );
}

#[tokio::test]
async fn context_takeover_across_many_messages() {
    let client = TestClient::new(app());
    // Both directions keep their window: every message leans on the last.
    let mut ws = client
        .websocket_connect("/takeover")
        .compression(
            DeflateConfig::default()
                .server_no_context_takeover(false)
                .threshold(0),
        )
        .await
        .unwrap();
    let p = ws.compression().unwrap();
    assert!(!p.server_no_context_takeover() && !p.client_no_context_takeover());
    for i in 0..200 {
        let msg = format!("{{\"seq\":{i},\"body\":\"{}\"}}", text(i * 13 % 3000));
        ws.send_text(msg.clone()).await.unwrap();
        assert_eq!(ws.recv_text().await.unwrap().unwrap(), msg);
    }
}

#[tokio::test]
async fn server_can_require_client_no_context_takeover() {
    let client = TestClient::new(app());
    let mut ws = client
        .websocket_connect("/reset-clients")
        .compression(DeflateConfig::default().threshold(0))
        .await
        .unwrap();
    assert_eq!(
        ws.headers().get("sec-websocket-extensions").unwrap(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
         client_max_window_bits=10"
    );
    let p = ws.compression().unwrap();
    assert_eq!(p.outgoing(switchboard::proto::Role::Client), (10, true));
    // Repeats would be back-references with takeover; the server's
    // inflater resets, so they must not be.
    for _ in 0..20 {
        ws.send_text(text(2000)).await.unwrap();
        assert_eq!(ws.recv_text().await.unwrap().unwrap(), text(2000));
    }
}

/// Sends `frames` (built unmasked; the client's writer masks them) and
/// returns the close code the server answers with.
async fn send_raw(path: &str, frames: Vec<Frame>) -> u16 {
    let client = TestClient::new(app());
    let mut ws = client
        .websocket_connect(path)
        .compression(DeflateConfig::default())
        .await
        .unwrap();
    let sender = ws.sender();
    for f in frames {
        if sender.send_frame(f).await.is_err() {
            break;
        }
    }
    close_code(&mut ws).await
}

fn bomb(bytes: usize) -> bytes::Bytes {
    Deflate::new(15, true, 9)
        .compress(&vec![0u8; bytes])
        .unwrap()
}

#[tokio::test]
async fn bomb_in_one_frame_closes_1009() {
    let b = bomb(64 * 1024);
    assert!(b.len() < 400, "{} bytes", b.len());
    let code = send_raw("/small", vec![Frame::new(OpCode::Binary, true, true, b)]).await;
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn bomb_across_fragments_closes_1009() {
    let b = bomb(1 << 20);
    let parts: Vec<_> = b.chunks(b.len() / 4 + 1).collect();
    let frames = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let op = if i == 0 {
                OpCode::Text
            } else {
                OpCode::Continuation
            };
            Frame::new(op, i + 1 == parts.len(), i == 0, p.to_vec().into())
        })
        .collect();
    assert_eq!(send_raw("/small", frames).await, 1009);
}

#[tokio::test]
async fn bomb_across_messages_with_context_takeover_closes_1009() {
    // The first message fills the window (within the limit), the second
    // copies it over and over.
    let mut d = Deflate::new(15, false, 9);
    let first = d.compress(&[0u8; 15 * 1024]).unwrap();
    let second = d.compress(&[0u8; 60 * 1024]).unwrap();
    assert!(second.len() < 200);
    let code = send_raw(
        "/small",
        vec![
            Frame::new(OpCode::Binary, true, true, first),
            Frame::new(OpCode::Binary, true, true, second),
        ],
    )
    .await;
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn corrupt_deflate_data_closes_1007() {
    let junk = bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
    let code = send_raw("/echo", vec![Frame::new(OpCode::Text, true, true, junk)]).await;
    assert_eq!(code, 1007);
}

#[tokio::test]
async fn rsv1_on_a_control_frame_is_1002() {
    let code = send_raw(
        "/echo",
        vec![Frame::new(OpCode::Ping, true, true, "p".into())],
    )
    .await;
    assert_eq!(code, 1002);
}

#[tokio::test]
async fn client_inflates_under_its_own_limit() {
    let client = TestClient::new(app());
    let small = Limits {
        max_message_size: 16 * 1024,
        ..Limits::DEFAULT
    };
    let mut ws = client
        .websocket_connect("/zeros")
        .compression(DeflateConfig::default())
        .limits(small)
        .await
        .unwrap();
    let err = ws.recv().await.unwrap_err();
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    // With room for it, the same message arrives whole.
    let mut ws = client
        .websocket_connect("/zeros")
        .compression(DeflateConfig::default())
        .await
        .unwrap();
    assert_eq!(
        ws.recv_bytes().await.unwrap().unwrap(),
        vec![0u8; 64 * 1024]
    );
}

#[tokio::test]
async fn broadcast_reaches_mixed_recipients() {
    let hub = Hub::new();
    let relay = |ws: WebSocket, State(hub): State<Hub>| async move {
        let mut ws = ws.accept().await?;
        let member = hub.connect(ws.sender());
        member.join("room");
        ws.send_text("joined").await?;
        while ws.recv_message().await?.is_some() {}
        Ok::<_, Error>(())
    };
    let app = App::new()
        .state(hub.clone())
        .websocket_with(
            "/default",
            WsConfig::default().compression(Some(DeflateConfig::default())),
            relay,
        )
        .websocket_with(
            "/keep",
            WsConfig::default().compression(Some(
                DeflateConfig::default().server_no_context_takeover(false),
            )),
            relay,
        )
        .websocket_with("/none", WsConfig::default(), relay);
    let client = TestClient::new(app);
    let mut sockets = Vec::new();
    for (path, offer) in [
        ("/default", true),
        ("/default", true),
        ("/default", false),
        ("/keep", true),
        ("/keep", true),
        ("/none", true),
    ] {
        let mut c = client.websocket_connect(path);
        if offer {
            c = c.compression(DeflateConfig::default().server_no_context_takeover(false));
        }
        let mut ws = c.await.unwrap();
        assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("joined"));
        sockets.push(ws);
    }
    let keep = sockets[3].compression().unwrap();
    assert!(!keep.server_no_context_takeover());
    for i in 0..20 {
        let msg = format!("{i}: {}", text(2000 + i * 100));
        let d = hub.broadcast_to("room", msg.clone());
        assert_eq!(d.delivered, 6);
        for ws in &mut sockets {
            assert_eq!(ws.recv_text().await.unwrap().unwrap(), msg);
        }
    }
}

/// The bytes on a real TCP connection: the 101 answer names the extension,
/// a compressed client message is understood, and the reply has RSV1 set
/// and is smaller than the text.
#[tokio::test]
async fn compressed_frames_on_the_wire() {
    let server = spawn(app()).await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7, \
          permessage-deflate; client_max_window_bits\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // The malformed first offer was skipped, the second accepted.
    assert!(
        head.contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n"
        ),
        "{head}"
    );
    let msg = text(3000);
    let packed = Deflate::new(15, false, 6).compress(msg.as_bytes()).unwrap();
    let frame = Frame::masked(OpCode::Text, true, true, &packed, [9, 8, 7, 6]);
    s.write_all(&frame.to_vec()).await.unwrap();
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(h[0], 0xc1, "FIN + RSV1 + text");
    let len = usize::from(h[1]);
    assert!(len < 126, "compressed reply is small: {len}");
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    let mut out = bytes::BytesMut::new();
    use switchboard::proto::PayloadExtension;
    switchboard::proto::Inflate::new(true)
        .decode_fragment(&payload, true, &mut out, 1 << 20)
        .unwrap();
    assert_eq!(&out[..], msg.as_bytes());
    drop(s);
    server.shutdown().await.unwrap();
}

/// Our client on a real TCP wire, against a hand-written server: it offers
/// the extension, compresses (RSV1, masked) what it sends, and inflates a
/// compressed server frame.
#[tokio::test]
async fn client_compresses_on_the_wire() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let msg = text(3000);
    let expected = msg.clone();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits\r\n"),
            "{head}"
        );
        let key = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("sec-websocket-key: ")
                    .or_else(|| l.strip_prefix("Sec-WebSocket-Key: "))
            })
            .unwrap()
            .trim();
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; client_max_window_bits=10\r\n\r\n",
            switchboard::proto::accept_key(key.as_bytes())
        );
        s.write_all(answer.as_bytes()).await.unwrap();
        // The client's message: FIN + RSV1 + text, masked, small.
        let mut h = [0u8; 6];
        s.read_exact(&mut h).await.unwrap();
        assert_eq!(h[0], 0xc1);
        assert_eq!(h[1] & 0x80, 0x80, "masked");
        let len = usize::from(h[1] & 0x7f);
        assert!(len < 126, "compressed: {len}");
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        switchboard::proto::apply_mask(&mut payload, [h[2], h[3], h[4], h[5]], 0);
        let mut out = bytes::BytesMut::new();
        use switchboard::proto::PayloadExtension;
        switchboard::proto::Inflate::new(true)
            .decode_fragment(&payload, true, &mut out, 1 << 20)
            .unwrap();
        assert_eq!(&out[..], expected.as_bytes());
        // Answer with a compressed frame of our own.
        let packed = Deflate::new(15, true, 6).compress(&out).unwrap();
        let frame = Frame::new(OpCode::Text, true, true, packed);
        s.write_all(&frame.to_vec()).await.unwrap();
        // The client's close frame, then hang up.
        let mut close = [0u8; 2];
        s.read_exact(&mut close).await.unwrap();
        assert_eq!(close[0], 0x88);
    });
    let mut ws = switchboard::WsClient::new(format!("ws://{addr}/"))
        .compression(Some(DeflateConfig::default()))
        .connect()
        .await
        .unwrap();
    let p = ws.compression().unwrap();
    assert_eq!(p.outgoing(switchboard::proto::Role::Client), (10, true));
    ws.send_text(msg.clone()).await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().unwrap(), msg);
    drop(ws);
    server.await.unwrap();
}
