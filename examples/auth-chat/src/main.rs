//! Authenticated chat: `POST /token` mints a JWT (the seeds'
//! `create_token`), and `WS /ws/{room}` requires it — from an
//! `Authorization: Bearer` header, a `?token=` query parameter, or a
//! `Sec-WebSocket-Protocol` entry `bearer.<jwt>` (what browsers can send).
//! Messages are relayed to the room with the sender's user id from the
//! verified claims; a bad token is refused with 401 before the upgrade.
//!
//! ```text
//! SECRET=change-me cargo run -p example-auth-chat
//! curl -XPOST localhost:3000/token -H 'content-type: application/json' -d '{"user":"ann"}'
//! websocat "ws://127.0.0.1:3000/ws/general?token=<token>"
//! ```

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use switchboard::{
    auth::{create_token, JwtAuth},
    hub::Hub,
    App, Error, Json, Path, Rejection, State, StatusCode, WebSocket, WsConfig,
};

#[derive(Deserialize)]
struct Login {
    user: String,
}

/// Token lifetime: short, as the client can always get a new one.
const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Clone)]
struct Secret(Vec<u8>);

async fn token(
    State(secret): State<Secret>,
    Json(login): Json<Login>,
) -> Result<Json<serde_json::Value>, Rejection> {
    if login.user.is_empty() || login.user.len() > 64 {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "user must be 1 to 64 characters",
        ));
    }
    let token = create_token(&secret.0, &login.user, TOKEN_TTL)
        .map_err(|e| Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(
        json!({ "token": token, "expires_in": TOKEN_TTL.as_secs() }),
    ))
}

async fn room(
    ws: WebSocket,
    Path(room): Path<String>,
    State(hub): State<Hub>,
) -> Result<(), Error> {
    let mut ws = ws.accept().await?;
    // Present because the route's JwtAuth middleware verified the token.
    let user = ws.user_id().unwrap_or_default();
    let member = hub.connect_with_meta(ws.sender(), json!({ "user": user }));
    member.join(&room);
    member.broadcast_others(
        &room,
        json!({"type": "user_joined", "user": user}).to_string(),
    );
    while let Some(text) = ws.recv_text().await? {
        let msg = json!({"type": "message", "user": user, "text": text});
        hub.broadcast_to(&room, msg.to_string());
    }
    member.broadcast_others(
        &room,
        json!({"type": "user_left", "user": user}).to_string(),
    );
    Ok(())
}

/// The application, shared by `main` and the tests.
fn app(secret: &[u8]) -> App {
    let auth = JwtAuth::hs256(secret).leeway(Duration::from_secs(5));
    App::new()
        .state(Hub::new())
        .state(Secret(secret.to_vec()))
        .post("/token", token)
        .websocket_with(
            "/ws/{room}",
            WsConfig::default().protocols(["chat"]).middleware(auth),
            room,
        )
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let secret = std::env::var("SECRET").unwrap_or_else(|_| {
        eprintln!("warning: SECRET not set; using the development secret \"dev-secret\"");
        "dev-secret".to_owned()
    });
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    app(secret.as_bytes()).serve(addr).await
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use switchboard::{testing::TestClient, StatusCode};

    #[tokio::test]
    async fn token_then_authenticated_room() {
        let c = TestClient::new(super::app(b"s3cret"));
        let mut tokens = Vec::new();
        for user in ["ann", "bob"] {
            let r = c.post("/token").json(&json!({ "user": user })).send().await;
            assert_eq!(r.status(), StatusCode::OK);
            tokens.push(r.json::<Value>()["token"].as_str().unwrap().to_owned());
        }
        let mut ann = c
            .websocket_connect(&format!("/ws/general?token={}", tokens[0]))
            .await
            .unwrap();
        // Bob authenticates the way a browser would: through the subprotocol.
        let mut bob = c
            .websocket_connect("/ws/general")
            .protocol("chat")
            .protocol(&format!("bearer.{}", tokens[1]))
            .await
            .unwrap();
        assert_eq!(bob.protocol(), Some("chat"));
        assert_eq!(
            ann.recv_json::<Value>().await.unwrap().unwrap(),
            json!({"type": "user_joined", "user": "bob"})
        );
        bob.send_text("hello").await.unwrap();
        for ws in [&mut ann, &mut bob] {
            assert_eq!(
                ws.recv_json::<Value>().await.unwrap().unwrap(),
                json!({"type": "message", "user": "bob", "text": "hello"})
            );
        }
    }

    #[tokio::test]
    async fn bad_tokens_and_bad_logins_are_refused() {
        let c = TestClient::new(super::app(b"s3cret"));
        let err = c
            .websocket_connect("/ws/general?token=forged")
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
        let err = c.websocket_connect("/ws/general").await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
        let r = c.post("/token").json(&json!({ "user": "" })).send().await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}
