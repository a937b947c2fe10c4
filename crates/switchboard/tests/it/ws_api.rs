//! The WebSocket API through the in-process test client.

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchboard::{
    testing::TestClient, Accept, App, CloseCode, Error, Message, Path, StatusCode, WebSocket,
    WsConfig,
};

async fn echo(ws: WebSocket) -> Result<(), Error> {
    let mut ws = ws.accept().await?;
    while let Some(msg) = ws.recv_message().await? {
        ws.send(msg).await?;
    }
    Ok(())
}

fn app() -> App {
    App::new()
        .websocket("/ws/echo", echo)
        .websocket(
            "/ws/{room}",
            |ws: WebSocket, Path(room): Path<String>| async move {
                let mut ws = ws.accept().await?;
                ws.send_json(&json!({"message": format!("Welcome to {room}!")}))
                    .await?;
                while let Some(msg) = ws.recv_json::<Value>().await? {
                    ws.send_json(&json!({"room": room, "message": msg})).await?;
                }
                Ok::<_, Error>(())
            },
        )
        .websocket("/info", |ws: WebSocket| async move {
            let token = ws.query_param("token").unwrap_or("-").to_owned();
            let ua = ws
                .headers()
                .get("x-test")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let ip = ws.client_addr().ip().to_string();
            let ws = ws.accept().await?;
            ws.send_json(&json!({"token": token, "x": ua, "ip": ip, "open": ws.is_open()}))
                .await?;
            Ok::<_, Error>(())
        })
        .websocket_with(
            "/mqtt",
            WsConfig::default().protocols(["mqtt", "mqttv5"]),
            |ws: WebSocket| async move {
                let ws = ws.accept().await?;
                ws.send_text(ws.protocol().unwrap_or("none").to_owned())
                    .await?;
                Ok::<_, Error>(())
            },
        )
        .websocket("/pick", |ws: WebSocket| async move {
            let choice = ws.protocols().last().cloned().unwrap_or_default();
            let ws = ws.accept_with(Accept::new().protocol(choice)).await?;
            ws.send_text(ws.protocol().unwrap_or("none").to_owned())
                .await?;
            Ok::<_, Error>(())
        })
        .websocket("/bad-pick", |ws: WebSocket| async move {
            match ws
                .accept_with(Accept::new().protocol("never-offered"))
                .await
            {
                Err(e) if e.is_handshake() => Ok::<_, Error>(()),
                other => panic!("expected handshake error, got {other:?}"),
            }
        })
        .websocket("/reject", |ws: WebSocket| async move {
            ws.reject(StatusCode::UNAUTHORIZED, "token required");
        })
        .websocket("/close-early", |ws: WebSocket| async move {
            ws.close(CloseCode::POLICY_VIOLATION, "go away");
        })
        .websocket("/ignore", |_ws: WebSocket| async move {})
        .websocket("/fail-early", |_ws: WebSocket| async move {
            Err::<(), _>("nope")
        })
        .websocket("/fail", |ws: WebSocket| async move {
            let mut ws = ws.accept().await?;
            ws.recv_text().await?;
            Err::<(), Error>(Error::app("handler gave up"))
        })
        .websocket("/panic", |ws: WebSocket| async move {
            let mut ws = ws.accept().await?;
            ws.recv_text().await?;
            panic!("handler bug");
            #[allow(unreachable_code)]
            Ok::<_, Error>(())
        })
        .websocket("/server-close", |ws: WebSocket| async move {
            let mut ws = ws.accept().await?;
            ws.close(4000, "bye").await?;
            // After the handshake, receiving reports the disconnect.
            let err = ws.recv().await.unwrap_err();
            assert!(err.is_disconnect());
            assert!(!ws.is_open());
            Ok::<_, Error>(())
        })
        .websocket("/typed", |ws: WebSocket| async move {
            let mut ws = ws.accept().await?;
            loop {
                match ws.recv_text().await {
                    Ok(Some(t)) => ws.send_text(format!("text:{t}")).await?,
                    Ok(None) => break,
                    Err(e) if e.is_wrong_type() => ws.send_text(format!("wrong:{e}")).await?,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .websocket("/json-errors", |ws: WebSocket| async move {
            let mut ws = ws.accept().await?;
            loop {
                match ws.recv_json::<Cmd>().await {
                    Ok(Some(cmd)) => ws.send_json(&cmd).await?,
                    Ok(None) => break,
                    Err(e) if e.is_json() => ws.send_json(&json!({"error": "bad json"})).await?,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .websocket("/streams", |ws: WebSocket| async move {
            let mut ws = ws.accept().await?;
            let sender = ws.sender();
            let mut n = 0;
            let mut stream = ws.json_stream::<Cmd>();
            while let Some(item) = stream.next().await {
                let cmd = item?;
                n += cmd.n;
                sender.send_json(&json!({"sum": n})).await?;
            }
            Ok::<_, Error>(())
        })
        .websocket("/split", |ws: WebSocket| async move {
            let (tx, mut rx) = ws.accept().await?.split();
            let ticker = {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0..3 {
                        tx.send_text(format!("tick {i}")).await?;
                    }
                    Ok::<_, Error>(())
                })
            };
            ticker.await.map_err(Error::app)??;
            while let Some(t) = rx.recv_text().await? {
                tx.send_text(format!("got {t}")).await?;
            }
            Ok::<_, Error>(())
        })
        .websocket("/state", |ws: WebSocket| async move {
            let mut ws = ws.accept().await?;
            ws.extensions_mut().insert(0u32);
            while let Some(_t) = ws.recv_text().await? {
                let count = ws.extensions_mut().get_mut::<u32>().map(|c| {
                    *c += 1;
                    *c
                });
                ws.send_text(count.unwrap_or(0).to_string()).await?;
            }
            Ok::<_, Error>(())
        })
        .websocket_with(
            "/origin",
            WsConfig::default().allowed_origins(["https://good.example"]),
            echo,
        )
        .websocket_with("/small", WsConfig::default().max_message_size(16), echo)
}

#[derive(Serialize, Deserialize)]
struct Cmd {
    n: u32,
}

async fn recv_close(ws: &mut switchboard::Socket) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.recv())
            .await
            .expect("timely close")
        {
            Ok(Message::Close(Some(f))) => return (f.code.0, f.reason),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
}

#[tokio::test]
async fn echo_text_bytes_and_close() {
    let c = TestClient::new(app());
    let mut ws = c.websocket_connect("/ws/echo").await.unwrap();
    ws.send_text("hello").await.unwrap();
    assert_eq!(ws.recv().await.unwrap(), Message::text("hello"));
    ws.send_bytes(vec![0u8, 1, 2]).await.unwrap();
    assert_eq!(ws.recv_bytes().await.unwrap().unwrap().as_ref(), &[0, 1, 2]);
    ws.send_text("").await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some(""));
    let big = "x".repeat(300_000);
    ws.send_text(big.clone()).await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().unwrap(), big);
    ws.close(CloseCode::NORMAL, "done").await.unwrap();
    let f = ws.close_frame().unwrap();
    assert_eq!((f.code, f.reason.as_str()), (CloseCode::NORMAL, "done"));
}

#[tokio::test]
async fn room_json_with_path_param() {
    let c = TestClient::new(app());
    let mut ws = c.websocket_connect("/ws/general").await.unwrap();
    assert_eq!(
        ws.recv_json::<Value>().await.unwrap().unwrap(),
        json!({"message": "Welcome to general!"})
    );
    ws.send_json(&json!({"text": "hi"})).await.unwrap();
    assert_eq!(
        ws.recv_json::<Value>().await.unwrap().unwrap(),
        json!({"room": "general", "message": {"text": "hi"}})
    );
}

#[tokio::test]
async fn request_facts_available_before_accept() {
    let c = TestClient::new(app());
    let mut ws = c
        .websocket_connect("/info?token=abc%20d")
        .header("x-test", "yes")
        .await
        .unwrap();
    assert_eq!(
        ws.recv_json::<Value>().await.unwrap().unwrap(),
        json!({"token": "abc d", "x": "yes", "ip": "127.0.0.1", "open": true})
    );
    // The handler returned: the server closes normally.
    assert_eq!(recv_close(&mut ws).await.0, 1000);
}

#[tokio::test]
async fn subprotocol_negotiation() {
    let c = TestClient::new(app());
    let mut ws = c
        .websocket_connect("/mqtt")
        .protocol("foo")
        .protocol("mqttv5")
        .await
        .unwrap();
    assert_eq!(ws.protocol(), Some("mqttv5"));
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("mqttv5"));
    let mut ws = c.websocket_connect("/mqtt").await.unwrap();
    assert_eq!(ws.protocol(), None);
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("none"));
    let err = c
        .websocket_connect("/mqtt")
        .protocol("stomp")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(err.to_string().contains("supported: mqtt, mqttv5"), "{err}");
    let mut ws = c
        .websocket_connect("/pick")
        .protocol("a")
        .protocol("b")
        .await
        .unwrap();
    assert_eq!(ws.protocol(), Some("b"));
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("b"));
    let err = c
        .websocket_connect("/bad-pick")
        .protocol("a")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
}

#[tokio::test]
async fn refusing_before_accept() {
    let c = TestClient::new(app());
    let err = c.websocket_connect("/reject").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(err.to_string().contains("token required"));
    let err = c.websocket_connect("/close-early").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert!(err.to_string().contains("close code 1008"), "{err}");
    assert!(err.to_string().contains("go away"));
    let err = c.websocket_connect("/ignore").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    let err = c.websocket_connect("/fail-early").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
}

#[tokio::test]
async fn handler_error_and_panic_close_with_1011_and_others_continue() {
    let c = TestClient::new(app());
    let mut healthy = c.websocket_connect("/ws/echo").await.unwrap();
    for path in ["/fail", "/panic"] {
        let mut ws = c.websocket_connect(path).await.unwrap();
        ws.send_text("go").await.unwrap();
        assert_eq!(
            recv_close(&mut ws).await,
            (1011, "internal error".to_owned()),
            "{path}"
        );
    }
    healthy.send_text("still here").await.unwrap();
    assert_eq!(
        healthy.recv_text().await.unwrap().as_deref(),
        Some("still here")
    );
}

#[tokio::test]
async fn server_close_with_code_and_reason() {
    let c = TestClient::new(app());
    let mut ws = c.websocket_connect("/server-close").await.unwrap();
    assert_eq!(recv_close(&mut ws).await, (4000, "bye".to_owned()));
    // Afterwards the client gets a disconnect error carrying the code.
    let err = ws.recv().await.unwrap_err();
    assert!(err.is_disconnect());
    assert_eq!(err.close_code(), Some(CloseCode(4000)));
    assert_eq!(err.close_reason(), Some("bye"));
    assert!(!ws.is_open());
}

#[tokio::test]
async fn wrong_type_keeps_socket_usable() {
    let c = TestClient::new(app());
    let mut ws = c.websocket_connect("/typed").await.unwrap();
    ws.send_bytes(vec![1u8]).await.unwrap();
    assert_eq!(
        ws.recv_text().await.unwrap().as_deref(),
        Some("wrong:expected a text message, got binary")
    );
    ws.send_text("ok").await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("text:ok"));
}

#[tokio::test]
async fn invalid_json_keeps_socket_usable() {
    let c = TestClient::new(app());
    let mut ws = c.websocket_connect("/json-errors").await.unwrap();
    ws.send_text("{not json").await.unwrap();
    assert_eq!(
        ws.recv_json::<Value>().await.unwrap().unwrap(),
        json!({"error": "bad json"})
    );
    ws.send_text(r#"{"n": 3}"#).await.unwrap();
    assert_eq!(
        ws.recv_json::<Value>().await.unwrap().unwrap(),
        json!({"n": 3})
    );
}

#[tokio::test]
async fn json_stream_and_cloned_sender() {
    let c = TestClient::new(app());
    let mut ws = c.websocket_connect("/streams").await.unwrap();
    for n in [1, 2, 3] {
        ws.send_json(&json!({ "n": n })).await.unwrap();
    }
    let mut sums = Vec::new();
    for _ in 0..3 {
        sums.push(
            ws.recv_json::<Value>().await.unwrap().unwrap()["sum"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(sums, [1, 3, 6]);
    // A parse error is yielded and the stream goes on... until the close.
    ws.close(CloseCode::NORMAL, "").await.unwrap();
}

#[tokio::test]
async fn client_text_stream() {
    let c = TestClient::new(app());
    let ws = c.websocket_connect("/split").await.unwrap();
    let (tx, mut rx) = ws.split();
    let ticks: Vec<String> = rx.text_stream().take(3).map(|t| t.unwrap()).collect().await;
    assert_eq!(ticks, ["tick 0", "tick 1", "tick 2"]);
    tx.send_text("a").await.unwrap();
    assert_eq!(rx.recv_text().await.unwrap().as_deref(), Some("got a"));
    tx.close(CloseCode::NORMAL, "");
    assert!(rx.recv_text().await.unwrap().is_none());
}

#[tokio::test]
async fn per_connection_state() {
    let c = TestClient::new(app());
    let mut a = c.websocket_connect("/state").await.unwrap();
    let mut b = c.websocket_connect("/state").await.unwrap();
    for expected in ["1", "2"] {
        a.send_text("x").await.unwrap();
        assert_eq!(a.recv_text().await.unwrap().as_deref(), Some(expected));
    }
    b.send_text("x").await.unwrap();
    assert_eq!(b.recv_text().await.unwrap().as_deref(), Some("1"));
}

#[tokio::test]
async fn origin_allowlist() {
    let c = TestClient::new(app());
    let err = c
        .websocket_connect("/origin")
        .header("origin", "https://evil.example")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert!(err.to_string().contains("origin not allowed"));
    assert!(c
        .websocket_connect("/origin")
        .header("origin", "https://good.example")
        .await
        .is_ok());
    assert!(c.websocket_connect("/origin").await.is_ok());
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let c = TestClient::new(app());
    let mut ws = c.websocket_connect("/small").await.unwrap();
    ws.send_text("x".repeat(16)).await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().unwrap().len(), 16);
    ws.send_text("x".repeat(17)).await.unwrap();
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!(code, 1009);
    assert!(reason.contains("exceeds the limit of 16"), "{reason}");
}

#[tokio::test]
async fn handshake_errors_over_test_client() {
    let c = TestClient::new(app());
    let r = c.get("/ws/echo").send().await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().contains("Upgrade"), "{}", r.text());
    let r = c
        .get("/ws/echo")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "8")
        .send()
        .await;
    assert_eq!(r.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
}

/// The handler's future holds the `WebSocket` for the connection's whole
/// life, and an inline accept future would keep room for the handshake's
/// state in it: both are kept small (idle memory per connection, see
/// docs/BENCHMARKS.md).
#[tokio::test]
async fn handshake_state_stays_out_of_the_handler_future() {
    let app = App::new().websocket("/ws", |ws: WebSocket| async move {
        assert!(
            std::mem::size_of_val(&ws) <= 128,
            "WebSocket is {} bytes",
            std::mem::size_of_val(&ws)
        );
        let accept = ws.accept();
        assert!(
            std::mem::size_of_val(&accept) <= 16,
            "the accept future is {} bytes inline",
            std::mem::size_of_val(&accept)
        );
        let mut socket = accept.await?;
        socket.send_text("sized").await?;
        while socket.recv_message().await?.is_some() {}
        Ok::<_, switchboard::Error>(())
    });
    let client = TestClient::new(app);
    let mut ws = client.websocket_connect("/ws").await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("sized"));
}
