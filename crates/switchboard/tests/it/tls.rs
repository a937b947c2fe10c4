//! TLS (feature `tls`): `https://` and `wss://` with a self-signed
//! certificate made in the test (rcgen), ALPN h2 and http/1.1, WebSockets
//! over HTTP/2 through extended CONNECT (RFC 8441) with an h2 client
//! (hyper's, over the `h2` crate) and an independent WebSocket client
//! (tokio-tungstenite) on the stream, and bad input: garbage and stalled
//! TLS handshakes, plaintext HTTP on the TLS port, an extended CONNECT the
//! server did not enable, a CONNECT for another protocol.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use switchboard::{App, Path, TlsConfig, WebSocket, WsConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
};
use tokio_rustls::{client::TlsStream, TlsConnector};
use tokio_tungstenite::{
    tungstenite::{protocol::Role, Message as TMessage},
    WebSocketStream,
};

use crate::Running;

struct Cert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed() -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Cert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

fn app() -> App {
    App::new()
        .handshake_timeout(Duration::from_millis(700))
        .shutdown_timeout(Duration::from_secs(2))
        .get("/health", || async { "ok" })
        .websocket("/ws/echo", |ws: WebSocket| async move {
            let mut ws = ws.accept().await?;
            while let Some(msg) = ws.recv_message().await? {
                ws.send(msg).await?;
            }
            Ok::<_, switchboard::Error>(())
        })
        .websocket_with(
            "/ws/deflate",
            WsConfig::default().compression(Some(switchboard::DeflateConfig::default())),
            |ws: WebSocket| async move { ws.accept().await.map(drop) },
        )
        .websocket_with(
            "/ws/rooms/{room}",
            WsConfig::default().protocols(["chat.v1"]),
            |ws: WebSocket, Path(room): Path<String>| async move {
                let mut ws = ws.accept().await?;
                ws.send_text(format!("welcome to {room}")).await?;
                while let Some(msg) = ws.recv_message().await? {
                    ws.send(msg).await?;
                }
                Ok::<_, switchboard::Error>(())
            },
        )
}

async fn spawn_tls(app: App, tls: TlsConfig) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(app.serve_tls_with_shutdown(listener, tls, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        done,
    }
}

async fn server(tls: impl FnOnce(TlsConfig) -> TlsConfig) -> (Running, Cert) {
    let cert = self_signed();
    let config = TlsConfig::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap();
    (spawn_tls(app(), tls(config)).await, cert)
}

async fn tls_connect(addr: SocketAddr, cert: &Cert, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// An h2 client connection (hyper's client on the `h2` crate).
async fn h2_client(addr: SocketAddr, cert: &Cert) -> H2Sender {
    let tls = tls_connect(addr, cert, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// Whether the server's SETTINGS enable the extended CONNECT protocol, as
/// the `h2` crate's own client sees them after one request.
async fn advertises_extended_connect(addr: SocketAddr, cert: &Cert) -> bool {
    let tls = tls_connect(addr, cert, &[b"h2"]).await;
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = Request::get(format!("{}/health", authority(addr)))
        .body(())
        .unwrap();
    let (res, _) = client.send_request(req, true).unwrap();
    assert_eq!(res.await.unwrap().status(), StatusCode::OK);
    client.is_extended_connect_protocol_enabled()
}

fn authority(addr: SocketAddr) -> String {
    format!("https://localhost:{}", addr.port())
}

async fn h2_get(sender: &mut H2Sender, addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let req = Request::get(format!("{}{path}", authority(addr)))
        .body(Empty::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An RFC 8441 extended CONNECT; on 200, a WebSocket client on the stream.
async fn h2_websocket(
    sender: &mut H2Sender,
    addr: SocketAddr,
    path: &str,
    protocol: &str,
    subprotocol: Option<&str>,
) -> H2WsResult {
    h2_websocket_with(sender, addr, path, protocol, subprotocol, None).await
}

type H2WsResult = Result<
    (
        http::response::Parts,
        Option<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>,
    ),
    hyper::Error,
>;

async fn h2_websocket_with(
    sender: &mut H2Sender,
    addr: SocketAddr,
    path: &str,
    protocol: &str,
    subprotocol: Option<&str>,
    extensions: Option<&str>,
) -> H2WsResult {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("{}{path}", authority(addr)))
        .header("sec-websocket-version", "13");
    if let Some(p) = subprotocol {
        req = req.header("sec-websocket-protocol", p);
    }
    if let Some(e) = extensions {
        req = req.header("sec-websocket-extensions", e);
    }
    let mut req = req.body(Empty::new()).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from(protocol));
    let mut res = sender.send_request(req).await?;
    if res.status() != StatusCode::OK {
        let (parts, _) = res.into_parts();
        return Ok((parts, None));
    }
    let upgraded = hyper::upgrade::on(&mut res).await.unwrap();
    let (parts, _) = res.into_parts();
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    Ok((parts, Some(ws)))
}

async fn next_text<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("timed out")
    {
        Some(Ok(TMessage::Text(t))) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn wss_echo_works(addr: SocketAddr, cert: &Cert) {
    let tls = tls_connect(addr, cert, &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/ws/echo", addr.port());
    let (mut ws, res) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(TMessage::text("over tls")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "over tls");
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn wss_and_https_over_http1() {
    let (server, cert) = server(|c| c).await;
    wss_echo_works(server.addr, &cert).await;

    // A client that offers only http/1.1 gets it, and plain HTTPS works.
    let tls = tls_connect(server.addr, &cert, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/health")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");

    // The AsyncAPI servers say wss:// when the document came over TLS.
    let tls = tls_connect(server.addr, &cert, &[]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/asyncapi.json")
        .header("host", format!("localhost:{}", server.addr.port()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["servers"]["ws"]["protocol"], "wss");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn websockets_over_http2_extended_connect() {
    let (server, cert) = server(|c| c).await;
    let addr = server.addr;
    assert!(
        advertises_extended_connect(addr, &cert).await,
        "the server advertises SETTINGS_ENABLE_CONNECT_PROTOCOL"
    );
    let mut sender = h2_client(addr, &cert).await;
    assert_eq!(
        h2_get(&mut sender, addr, "/health").await,
        (StatusCode::OK, "ok".into())
    );

    // Two sockets and plain requests, all streams of one connection.
    let (parts, ws) = h2_websocket(&mut sender, addr, "/ws/echo", "websocket", None)
        .await
        .unwrap();
    assert_eq!(
        parts.status,
        StatusCode::OK,
        "RFC 8441 answers 200, not 101"
    );
    assert!(parts.headers.get("sec-websocket-accept").is_none());
    let mut echo = ws.unwrap();
    let (parts, ws) = h2_websocket(
        &mut sender,
        addr,
        "/ws/rooms/lobby",
        "websocket",
        Some("other, chat.v1"),
    )
    .await
    .unwrap();
    assert_eq!(parts.headers["sec-websocket-protocol"], "chat.v1");
    let mut room = ws.unwrap();
    // The same handler, extractors included.
    assert_eq!(next_text(&mut room).await, "welcome to lobby");

    echo.send(TMessage::text("hello over h2")).await.unwrap();
    assert_eq!(next_text(&mut echo).await, "hello over h2");
    let big = "x".repeat(200_000);
    echo.send(TMessage::text(big.clone())).await.unwrap();
    assert_eq!(next_text(&mut echo).await, big);
    echo.send(TMessage::binary(vec![1u8, 2, 3])).await.unwrap();
    match echo.next().await {
        Some(Ok(TMessage::Binary(b))) => assert_eq!(&b[..], [1, 2, 3]),
        other => panic!("{other:?}"),
    }
    // Extensions are negotiated as over HTTP/1.1.
    let (parts, _) = h2_websocket_with(
        &mut sender,
        addr,
        "/ws/deflate",
        "websocket",
        None,
        Some("permessage-deflate; client_max_window_bits"),
    )
    .await
    .unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    let answer = parts.headers["sec-websocket-extensions"].to_str().unwrap();
    assert!(answer.starts_with("permessage-deflate"), "{answer}");

    room.send(TMessage::text("in the room")).await.unwrap();
    assert_eq!(next_text(&mut room).await, "in the room");
    assert_eq!(h2_get(&mut sender, addr, "/health").await.0, StatusCode::OK);

    // A clean close handshake on the stream.
    echo.close(None).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), echo.next())
        .await
        .unwrap()
    {
        Some(Ok(TMessage::Close(_))) | None => {}
        other => panic!("expected the close reply, got {other:?}"),
    }

    // Shutdown: the open h2 socket is told "going away" (1001).
    let stop = tokio::spawn(server.shutdown());
    match tokio::time::timeout(Duration::from_secs(5), room.next())
        .await
        .unwrap()
    {
        Some(Ok(TMessage::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    drop(room);
    stop.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_http2_websocket_requests_get_clear_errors() {
    let (server, cert) = server(|c| c).await;
    let addr = server.addr;
    let mut sender = h2_client(addr, &cert).await;

    // A GET on a WebSocket route over h2 cannot upgrade.
    let (status, body) = h2_get(&mut sender, addr, "/ws/echo").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("extended CONNECT"), "{body}");

    // An extended CONNECT for another protocol.
    let (parts, ws) = h2_websocket(&mut sender, addr, "/ws/echo", "webtransport", None)
        .await
        .unwrap();
    assert!(ws.is_none());
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);

    // The connection still serves everything else.
    assert_eq!(h2_get(&mut sender, addr, "/health").await.0, StatusCode::OK);
    let (parts, ws) = h2_websocket(&mut sender, addr, "/ws/echo", "websocket", None)
        .await
        .unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    drop(ws);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn extended_connect_without_the_setting_is_refused() {
    let (server, cert) = server(|c| c.websockets_over_http2(false)).await;
    let addr = server.addr;
    assert!(!advertises_extended_connect(addr, &cert).await);
    let mut sender = h2_client(addr, &cert).await;
    // A client that sends `:protocol` anyway gets its stream reset with
    // PROTOCOL_ERROR (RFC 8441 §3), not a hang.
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        h2_websocket(&mut sender, addr, "/ws/echo", "websocket", None),
    )
    .await
    .expect("answered promptly")
    .expect_err("refused");
    let reason = format!("{err:?}");
    assert!(reason.contains("PROTOCOL_ERROR"), "{reason}");
    // Only that stream: the connection and the server go on, and the
    // HTTP/1.1 upgrade is still there for WebSockets.
    let mut sender = h2_client(addr, &cert).await;
    assert_eq!(h2_get(&mut sender, addr, "/health").await.0, StatusCode::OK);
    wss_echo_works(addr, &cert).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn http2_can_be_turned_off() {
    let (server, cert) = server(|c| c.http2(false)).await;
    let tls = tls_connect(server.addr, &cert, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(tls);
    wss_echo_works(server.addr, &cert).await;
    server.shutdown().await.unwrap();
}

/// Reads until EOF (or 5 s); returns what arrived.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn garbage_tls_handshakes_do_not_hurt_other_clients() {
    let (server, cert) = server(|c| c).await;
    let addr = server.addr;

    // A good client connected before the garbage.
    let tls = tls_connect(addr, &cert, &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/ws/echo", addr.port());
    let (mut early, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();

    // Random bytes that are not TLS: the connection is closed.
    let mut junk = TcpStream::connect(addr).await.unwrap();
    junk.write_all(&[0x00, 0xff, 0x13, 0x37, 0x42, 0x99, 0x01, 0x02])
        .await
        .unwrap();
    read_to_close(&mut junk).await;

    // A TLS record header followed by garbage: refused with an alert or a
    // close, nothing else.
    let mut bad_record = TcpStream::connect(addr).await.unwrap();
    let mut bytes = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    bytes.extend(std::iter::repeat_n(0xAB, 64));
    bad_record.write_all(&bytes).await.unwrap();
    let answer = read_to_close(&mut bad_record).await;
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "expected a TLS alert or a close, got {answer:?}"
    );

    // Plaintext HTTP on the TLS port: a readable 400.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut plain).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("use https:// or wss://"), "{answer}");

    // A client that connects and never speaks is dropped after the
    // handshake timeout (700 ms here), without holding anyone up.
    let started = std::time::Instant::now();
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    wss_echo_works(addr, &cert).await;
    assert!(read_to_close(&mut stalled).await.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(4),
        "stalled handshake closed after {waited:?}"
    );

    // The early client never noticed.
    early.send(TMessage::text("still here")).await.unwrap();
    assert_eq!(next_text(&mut early).await, "still here");
    server.shutdown().await.unwrap();
}

#[test]
fn bad_certificates_and_keys_are_reported() {
    let cert = self_signed();
    let err = TlsConfig::from_pem(b"not a pem", cert.key_pem.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("CERTIFICATE"), "{err}");
    let err = TlsConfig::from_pem(cert.cert_pem.as_bytes(), b"nope").unwrap_err();
    assert!(err.to_string().contains("private key"), "{err}");
    // A key that belongs to another certificate.
    let other = self_signed();
    let err = TlsConfig::from_pem(cert.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
    let err =
        TlsConfig::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}
