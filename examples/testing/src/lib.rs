//! The app under test in the `testing` example: a small WebSocket service
//! shaped like the seeds' `websocket_app` (welcome message, echo, token
//! authentication, rooms, error replies), exposed as [`app`] so that both
//! `main.rs` (which serves it) and `tests/app.rs` (which tests it with
//! `switchboard::testing::TestClient`, no TCP port) use the same routes.
//!
//! Start with `tests/app.rs`: it is what this example is about.
//!
//! ```text
//! cargo test -p example-testing        # the tests
//! cargo run -p example-testing         # serve it on 127.0.0.1:3000
//! ```
//!
//! Routes:
//! - `GET /health`: `ok`.
//! - `POST /api/generate-token` with `{"user_id": "..."}`: `{"token": "..."}`,
//!   an HS256 JWT valid for an hour.
//! - `WS /ws`, optionally `?token=...`: greets with
//!   `{"type": "welcome", "user": ...}`, then answers JSON messages by
//!   `type`: `message` (echoed as `echo`, or as `message` with the user when
//!   authenticated), `join_room`, `chat_message` (sent to the room's other
//!   members), `quit` (closes with 1000 "bye"); anything else gets
//!   `{"type": "error", ...}`. A token that does not verify is accepted and
//!   closed at once with 1008 and the reason, as the seeds do; messages over
//!   4 KiB close the connection with 1009.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use switchboard::{
    auth::{create_token, JwtAuth},
    hub::{Hub, Member},
    App, CloseCode, Error, Json, Socket, State, StatusCode, WebSocket, WsConfig,
};

/// Largest WebSocket message the `/ws` route accepts; larger ones close the
/// connection with 1009 (the default is 4 MiB; chat messages are small).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// The HS256 secret. A real app reads it from its configuration.
const SECRET: &[u8] = b"example secret, not for production";

#[derive(Debug, Deserialize)]
struct TokenRequest {
    user_id: String,
}

async fn generate_token(Json(req): Json<TokenRequest>) -> (StatusCode, Json<Value>) {
    match create_token(SECRET, &req.user_id, Duration::from_secs(3600)) {
        Ok(token) => (StatusCode::CREATED, Json(json!({ "token": token }))),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.reason() })),
        ),
    }
}

async fn ws_handler(ws: WebSocket, State(hub): State<Hub>) -> Result<(), Error> {
    let mut ws = ws.accept().await?;
    // The JWT middleware verified the token (if any) before the upgrade.
    let user = ws.user_id();
    // Leaves every room when dropped, however this function ends.
    let member = hub.connect_with_meta(ws.sender(), json!({ "user": user }));
    ws.send_json(&json!({"type": "welcome", "user": user}))
        .await?;
    loop {
        let msg: Value = match ws.recv_json().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(()),
            Err(e) if e.is_json() => {
                ws.send_json(&json!({"type": "error", "message": e.to_string()}))
                    .await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if !handle(&mut ws, &member, user.as_deref(), &msg).await? {
            return Ok(());
        }
    }
}

/// Answers one message; `false` once the connection is closed.
async fn handle(
    ws: &mut Socket,
    member: &Member,
    user: Option<&str>,
    msg: &Value,
) -> Result<bool, Error> {
    let room = msg["room"].as_str().unwrap_or("general");
    match msg["type"].as_str().unwrap_or_default() {
        "message" => {
            let reply = match user {
                Some(user) => json!({"type": "message", "user": user, "data": msg}),
                None => json!({"type": "echo", "data": msg}),
            };
            ws.send_json(&reply).await?;
        }
        "join_room" => {
            member.join(room);
            ws.send_json(&json!({"type": "room_joined", "room": room}))
                .await?;
        }
        "chat_message" if member.hub().is_member(member.id(), room) => {
            let out = json!({
                "type": "chat_message",
                "room": room,
                "from": user,
                "message": msg["message"],
            });
            // Encoded once and queued for every other member; never waits.
            member.broadcast_others(room, out.to_string());
        }
        "chat_message" => {
            ws.send_json(&json!({"type": "error", "message": format!("not in room {room:?}")}))
                .await?;
        }
        "quit" => {
            // Sends our close frame and waits for the client's answer.
            ws.close(CloseCode::NORMAL, "bye").await?;
            return Ok(false);
        }
        other => {
            ws.send_json(&json!({
                "type": "error",
                "message": format!("Unknown message type: {other:?}"),
            }))
            .await?;
        }
    }
    Ok(true)
}

/// The application: used by `main.rs` to serve and by `tests/app.rs` to test.
pub fn app() -> App {
    App::new()
        .state(Hub::new())
        // Verifies `?token=` (or `Authorization: Bearer`) on WebSocket
        // routes. Optional: no token means anonymous. A bad token is
        // accepted and closed with 1008, which browsers can see (they cannot
        // read the body of a refused upgrade).
        .ws_middleware(
            JwtAuth::hs256(SECRET)
                .optional(true)
                .reject_after_accept(true),
        )
        .get("/health", || async { "ok" })
        .post("/api/generate-token", generate_token)
        .websocket_with(
            "/ws",
            WsConfig::default().max_message_size(MAX_MESSAGE_BYTES),
            ws_handler,
        )
}
