//! Testing a Switchboard app, as the seeds' `TestClient` examples do.
//!
//! `TestClient::new(app())` drives the very `App` that `main` serves, in
//! process: every request and WebSocket gets an in-memory pipe served by
//! the same HTTP and WebSocket code as real TCP, so the handshake, framing
//! and close handshake are all exercised, with no port to allocate and no
//! server to start. Each test builds its own client, so tests do not share
//! state and run in parallel.
//!
//! Patterns shown: HTTP requests with JSON bodies and status checks;
//! `websocket_connect` (with a query string carrying a token); sending and
//! receiving JSON; asserting close codes sent by the server (1000, 1008,
//! 1009), by the client, and on shutdown (1001); and bounding
//! every wait with a timeout so a missing message fails the test instead of
//! hanging it.

use std::time::Duration;

use example_testing::{app, MAX_MESSAGE_BYTES};
use serde_json::{json, Value};
use switchboard::{
    auth::create_token, testing::TestClient, CloseCode, CloseFrame, Message, Socket, StatusCode,
};

/// How long any single receive may take before the test fails.
const WAIT: Duration = Duration::from_secs(5);

/// The next JSON message (fails the test on a close, an error or a timeout).
async fn recv(ws: &mut Socket) -> Value {
    tokio::time::timeout(WAIT, ws.recv_json::<Value>())
        .await
        .expect("a message within the timeout")
        .expect("a valid JSON message")
        .expect("a message, not a close")
}

/// The server's close frame, skipping any data messages before it.
async fn recv_close(ws: &mut Socket) -> CloseFrame {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.recv())
            .await
            .expect("a close within the timeout")
            .expect("a close frame, not an error");
        match msg {
            Message::Close(Some(frame)) => return frame,
            Message::Close(None) => return CloseFrame::new(CloseCode::NO_STATUS, ""),
            _ => continue,
        }
    }
}

/// Gets a token over HTTP, as a real client would before connecting.
async fn token_for(client: &TestClient, user_id: &str) -> String {
    let res = client
        .post("/api/generate-token")
        .json(&json!({ "user_id": user_id }))
        .send()
        .await;
    assert_eq!(res.status(), StatusCode::CREATED, "{}", res.text());
    res.json::<Value>()["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn http_requests_and_rejections() {
    let client = TestClient::new(app());
    let res = client.get("/health").send().await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text(), "ok");

    assert!(!token_for(&client, "123").await.is_empty());

    // The framework's extractors reject bad input with a status and a JSON
    // body; tests can assert both.
    let res = client
        .post("/api/generate-token")
        .body("user_id=123")
        .send()
        .await;
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let res = client
        .post("/api/generate-token")
        .json(&json!({"user": "123"}))
        .send()
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.json::<Value>()["error"]
        .as_str()
        .unwrap()
        .contains("user_id"));
    let res = client.get("/nowhere").send().await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn websocket_connection() {
    let client = TestClient::new(app());
    let mut ws = client.websocket_connect("/ws").await.unwrap();
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user"], Value::Null);

    ws.send_json(&json!({"type": "message", "text": "Hello"}))
        .await
        .unwrap();
    let response = recv(&mut ws).await;
    assert_eq!(response["type"], "echo");
    assert_eq!(response["data"]["text"], "Hello");
}

#[tokio::test]
async fn websocket_authentication() {
    let client = TestClient::new(app());
    let token = token_for(&client, "123").await;
    let mut ws = client
        .websocket_connect(&format!("/ws?token={token}"))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "welcome", "user": "123"})
    );

    ws.send_json(&json!({"type": "message", "text": "Hello"}))
        .await
        .unwrap();
    let response = recv(&mut ws).await;
    assert_eq!(response["type"], "message");
    assert_eq!(response["user"], "123");
    assert_eq!(response["data"]["text"], "Hello");
}

#[tokio::test]
async fn bad_token_is_closed_with_1008() {
    let client = TestClient::new(app());
    // The auth middleware accepts, then closes with 1008 and the reason.
    let mut ws = client.websocket_connect("/ws?token=forged").await.unwrap();
    let frame = recv_close(&mut ws).await;
    assert_eq!(frame.code, CloseCode::POLICY_VIOLATION);
    assert_eq!(frame.reason, "malformed token");

    // A well-formed token signed with another key fails the same way.
    let forged = create_token(b"not the server's key", "eve", Duration::from_secs(60)).unwrap();
    let mut ws = client
        .websocket_connect(&format!("/ws?token={forged}"))
        .await
        .unwrap();
    let frame = recv_close(&mut ws).await;
    assert_eq!(
        (frame.code, frame.reason.as_str()),
        (CloseCode::POLICY_VIOLATION, "invalid token signature")
    );
}

#[tokio::test]
async fn websocket_chat_room() {
    let client = TestClient::new(app());
    let mut ws1 = client.websocket_connect("/ws").await.unwrap();
    recv(&mut ws1).await; // welcome
    ws1.send_json(&json!({"type": "join_room", "room": "general"}))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws1).await["type"], "room_joined");

    let mut ws2 = client.websocket_connect("/ws").await.unwrap();
    recv(&mut ws2).await; // welcome
    ws2.send_json(&json!({"type": "join_room", "room": "general"}))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws2).await["type"], "room_joined");

    ws1.send_json(&json!({
        "type": "chat_message",
        "room": "general",
        "message": "Hello everyone!",
    }))
    .await
    .unwrap();
    let response = recv(&mut ws2).await;
    assert_eq!(response["type"], "chat_message");
    assert_eq!(response["message"], "Hello everyone!");

    // A client that did not join gets an error instead.
    let mut ws3 = client.websocket_connect("/ws").await.unwrap();
    recv(&mut ws3).await; // welcome
    ws3.send_json(&json!({"type": "chat_message", "room": "general", "message": "hi"}))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws3).await["type"], "error");

    // The sender does not get its own chat message: the next thing it
    // receives is the answer to its next request.
    ws1.send_json(&json!({"type": "message", "text": "ping"}))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws1).await["type"], "echo");
}

#[tokio::test]
async fn websocket_error_handling() {
    let client = TestClient::new(app());
    let mut ws = client.websocket_connect("/ws").await.unwrap();
    recv(&mut ws).await; // welcome

    ws.send_json(&json!({"type": "invalid_type"}))
        .await
        .unwrap();
    let response = recv(&mut ws).await;
    assert_eq!(response["type"], "error");
    assert!(response["message"]
        .as_str()
        .unwrap()
        .contains("Unknown message type"));

    // Invalid JSON gets an error reply too, and the socket stays usable.
    ws.send_text("{not json").await.unwrap();
    assert_eq!(recv(&mut ws).await["type"], "error");
    ws.send_json(&json!({"type": "message", "text": "still here"}))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await["data"]["text"], "still here");
}

#[tokio::test]
async fn server_closes_with_1000_on_quit() {
    let client = TestClient::new(app());
    let mut ws = client.websocket_connect("/ws").await.unwrap();
    recv(&mut ws).await; // welcome
    ws.send_json(&json!({"type": "quit"})).await.unwrap();

    let frame = recv_close(&mut ws).await;
    assert_eq!(
        (frame.code, frame.reason.as_str()),
        (CloseCode::NORMAL, "bye")
    );
    // After the close, receiving is a disconnect error carrying the code.
    let err = ws.recv().await.unwrap_err();
    assert!(err.is_disconnect());
    assert_eq!(err.close_code(), Some(CloseCode::NORMAL));
    assert!(!ws.is_open());
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let client = TestClient::new(app());
    let mut ws = client.websocket_connect("/ws").await.unwrap();
    recv(&mut ws).await; // welcome
    ws.send_text("x".repeat(MAX_MESSAGE_BYTES + 1))
        .await
        .unwrap();
    let frame = recv_close(&mut ws).await;
    assert_eq!(frame.code, CloseCode::MESSAGE_TOO_BIG);
}

#[tokio::test]
async fn client_close_code_is_echoed() {
    let client = TestClient::new(app());
    let mut ws = client.websocket_connect("/ws").await.unwrap();
    recv(&mut ws).await; // welcome
                         // `close` sends our frame and waits for the server's answer.
    ws.close(CloseCode(4000), "done").await.unwrap();
    assert_eq!(ws.close_frame().map(|f| f.code), Some(CloseCode(4000)));
}

#[tokio::test]
async fn shutdown_sends_1001_and_refuses_new_sockets() {
    let client = TestClient::new(app());
    let mut ws = client.websocket_connect("/ws").await.unwrap();
    recv(&mut ws).await; // welcome
                         // Shutdown waits for handlers to finish, and ours finishes when the
                         // client answers the 1001: run both at once.
    let ((), frame) = tokio::join!(client.shutdown(), recv_close(&mut ws));
    assert_eq!(frame.code, CloseCode::GOING_AWAY);
    let err = client.websocket_connect("/ws").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
}
