//! Heartbeat, idle timeout, rate limits, control-frame floods, connection
//! limits — each triggered exactly at its threshold.

use std::time::{Duration, Instant};

use switchboard::{
    proto::{Frame, OpCode},
    testing::TestClient,
    App, Error, Message, RateLimit, RateLimitPolicy, StatusCode, WebSocket, WsConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn echo(ws: WebSocket) -> Result<(), Error> {
    let mut ws = ws.accept().await?;
    loop {
        match ws.recv_message().await {
            Ok(Some(m)) => ws.send(m).await?,
            Ok(None) => return Ok(()),
            Err(e) if e.is_rate_limited() => ws.send_text("slow down").await?,
            Err(e) => return Err(e),
        }
    }
}

async fn close_of(ws: &mut switchboard::Socket) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.recv())
            .await
            .expect("closed in time")
        {
            Ok(Message::Close(Some(f))) => return (f.code.0, f.reason),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => continue,
            Err(e) => return (e.close_code().map_or(0, |c| c.0), e.to_string()),
        }
    }
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed() {
    let cfg = WsConfig::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .pong_timeout(Duration::from_millis(100))
        .close_timeout(Duration::from_millis(200));
    let c = TestClient::new(App::new().websocket_with("/ws", cfg, echo));
    // `mute` never reads, so it never answers the server's pings.
    let mut mute = c.websocket_connect("/ws").await.unwrap();
    // `live` keeps reading, so its pongs go out.
    let mut live = c.websocket_connect("/ws").await.unwrap();
    let started = Instant::now();
    let live_task = tokio::spawn(async move {
        let r = tokio::time::timeout(Duration::from_millis(800), live.recv()).await;
        assert!(r.is_err(), "the live client must stay connected: {r:?}");
        live
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (code, reason) = close_of(&mut mute).await;
    assert_eq!((code, reason.as_str()), (1001, "pong timeout"));
    assert!(started.elapsed() >= Duration::from_millis(200));
    let mut live = live_task.await.unwrap();
    live.send_text("still").await.unwrap();
    assert_eq!(live.recv_text().await.unwrap().as_deref(), Some("still"));
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let cfg = WsConfig::default().idle_timeout(Some(Duration::from_millis(200)));
    let c = TestClient::new(App::new().websocket_with("/ws", cfg, echo));
    let mut ws = c.websocket_connect("/ws").await.unwrap();
    let started = Instant::now();
    assert_eq!(close_of(&mut ws).await, (1001, "idle timeout".to_owned()));
    assert!(started.elapsed() >= Duration::from_millis(190));
}

/// Data messages keep an idle-timeout connection open (the receiver marks
/// the peer heard, the writer's tick turns that into time), and once the
/// data stops the timeout applies again.
#[tokio::test]
async fn data_keeps_an_idle_connection_open() {
    let cfg = WsConfig::default().idle_timeout(Some(Duration::from_millis(200)));
    let c = TestClient::new(App::new().websocket_with("/ws", cfg, echo));
    let mut ws = c.websocket_connect("/ws").await.unwrap();
    // 12 messages 50 ms apart: 550 ms, well past the timeout.
    for i in 0..12 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ws.send_text(format!("m{i}")).await.unwrap();
        assert_eq!(ws.recv_text().await.unwrap(), Some(format!("m{i}")));
    }
    // The server saw the last message before its echo came back.
    let last = Instant::now();
    assert_eq!(close_of(&mut ws).await, (1001, "idle timeout".to_owned()));
    assert!(last.elapsed() >= Duration::from_millis(190));
}

#[tokio::test]
async fn rate_limit_closes_exactly_after_the_burst() {
    let cfg = WsConfig::default().rate_limit(RateLimit::new(0.5, 5));
    let c = TestClient::new(App::new().websocket_with("/ws", cfg, echo));
    let mut ws = c.websocket_connect("/ws").await.unwrap();
    for i in 0..5 {
        ws.send_text(format!("{i}")).await.unwrap();
        assert_eq!(ws.recv_text().await.unwrap(), Some(format!("{i}")));
    }
    ws.send_text("6th").await.unwrap();
    assert_eq!(
        close_of(&mut ws).await,
        (1008, "rate limit exceeded".to_owned())
    );
}

#[tokio::test]
async fn rate_limit_drop_policy_notifies_and_keeps_the_socket() {
    let cfg = WsConfig::default().rate_limit(RateLimit::new(0.5, 3).policy(RateLimitPolicy::Drop));
    let c = TestClient::new(App::new().websocket_with("/ws", cfg, echo));
    let mut ws = c.websocket_connect("/ws").await.unwrap();
    for i in 0..4 {
        ws.send_text(format!("{i}")).await.unwrap();
    }
    for expected in ["0", "1", "2", "slow down"] {
        assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some(expected));
    }
    assert!(ws.is_open());
}

#[tokio::test]
async fn ping_flood_is_closed_with_1008() {
    let cfg = WsConfig::default().max_control_frames_per_sec(10);
    let c = TestClient::new(App::new().websocket_with("/ws", cfg, echo));
    let mut ws = c.websocket_connect("/ws").await.unwrap();
    for _ in 0..10 {
        ws.ping("x");
    }
    ws.send_text("ok").await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("ok"));
    ws.ping("one too many");
    assert_eq!(
        close_of(&mut ws).await,
        (1008, "control frame flood".to_owned())
    );
}

#[tokio::test]
async fn connection_limits_trigger_at_their_thresholds() {
    let app = App::new().max_connections_per_ip(2).websocket("/ws", echo);
    let c = TestClient::new(app);
    let a = c.websocket_connect("/ws").await.unwrap();
    let _b = c.websocket_connect("/ws").await.unwrap();
    let err = c.websocket_connect("/ws").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert!(
        err.to_string()
            .contains("too many connections from 127.0.0.1 (limit 2)"),
        "{err}"
    );
    // A slot comes back when a connection ends.
    let mut a = a;
    a.close(1000, "").await.unwrap();
    let mut ok = None;
    for _ in 0..100 {
        if let Ok(ws) = c.websocket_connect("/ws").await {
            ok = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok.is_some());

    let c = TestClient::new(App::new().max_connections(1).websocket("/ws", echo));
    let _only = c.websocket_connect("/ws").await.unwrap();
    let err = c.websocket_connect("/ws").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(err
        .to_string()
        .contains("connection limit reached (1 connections)"));
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_cut_by_the_write_timeout() {
    let cfg = WsConfig::default()
        .write_timeout(Duration::from_millis(200))
        .close_timeout(Duration::from_millis(200))
        .max_queue_bytes(1 << 24);
    let app = App::new().websocket_with("/flood", cfg, |ws: WebSocket| async move {
        let mut ws = ws.accept().await?;
        let sender = ws.sender();
        let blob = vec![7u8; 64 * 1024];
        let pump = tokio::spawn(async move {
            let mut sent = 0usize;
            while sender.send_bytes(blob.clone()).await.is_ok() {
                sent += 1;
                if sent > 10_000 {
                    break;
                }
            }
            sent
        });
        let outcome = ws.recv().await;
        let sent = pump.await.unwrap_or(0);
        assert!(sent < 10_000, "the writer must have given up");
        assert!(outcome.is_err());
        Ok::<_, Error>(())
    });
    let server = crate::spawn(app).await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"GET /flood HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 64];
    let _ = s.read(&mut head).await.unwrap();
    // Never read again: the server's writes stall; it must give up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = Frame::new(OpCode::Close, true, false, Default::default());
    drop(s);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_sender_waits_for_room_and_every_message_arrives_in_order() {
    const N: usize = 400;
    // 8 KiB of queue against 400 messages of 1 KiB and a client that starts
    // reading late: most sends wait for room (the boxed slow path).
    let cfg = WsConfig::default().max_queue_bytes(8 * 1024);
    let app = App::new().websocket_with("/burst", cfg, |ws: WebSocket| async move {
        let ws = ws.accept().await?;
        for i in 0..N {
            let mut text = format!("{i:05}");
            text.push_str(&"x".repeat(1019));
            if i % 2 == 0 {
                ws.send_text(text).await?;
            } else {
                ws.send(Message::text(text)).await?;
            }
        }
        ws.send_json(&serde_json::json!({ "done": N })).await?;
        // A value serde cannot encode fails the send, not the connection.
        let bad = std::collections::HashMap::from([((1, 2), 3)]);
        assert!(ws.send_json(&bad).await.is_err());
        ws.send(Message::Close(None)).await?;
        Ok::<_, Error>(())
    });
    let c = TestClient::new(app).pipe_capacity(4 * 1024);
    let mut ws = c.websocket_connect("/burst").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..N {
        let text = tokio::time::timeout(Duration::from_secs(5), ws.recv_text())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        assert_eq!(text.len(), 1024);
        assert_eq!(text[..5].parse::<usize>().unwrap(), i, "in order");
    }
    let done: serde_json::Value = ws.recv_json().await.unwrap().unwrap();
    assert_eq!(done["done"], N);
    assert!(matches!(ws.recv().await, Ok(Message::Close(None))));
}
