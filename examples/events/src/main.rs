//! The event style: a type implementing `WsEvents` (`on_connect`,
//! `on_message`, `on_disconnect`) instead of a receive loop, as the seeds'
//! `WebSocketEndpoint` classes and `@ws_handler.on_message` decorators do.
//!
//! The handler is a tiny chat: everyone connected to `/chat` gets every
//! message, numbered, plus "joined" and "left" notices with the online
//! count; `GET /stats` reports the hub's counts. It shows per-connection
//! state (`Socket::extensions_mut`, here the connection's hub membership),
//! the hub shared between an event handler and an HTTP route, broadcast
//! (the hub encodes each message once and never waits on a slow reader),
//! and closing with a specific code (1003 for binary messages).
//!
//! ```text
//! cargo run -p example-events          # listens on 127.0.0.1:3000
//! websocat ws://127.0.0.1:3000/chat    # open two of these and type
//! curl http://127.0.0.1:3000/stats
//! cargo test -p example-events
//! ```

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use serde_json::json;
use switchboard::{
    hub::{Hub, Member},
    App, CloseCode, CloseFrame, Error, Json, Message, Socket, State, WsEvents,
};

/// The event handler. The framework shares one instance among all
/// connections of the route, hence `&self` and the atomic counter.
#[derive(Debug)]
struct Chat {
    hub: Hub,
    /// Messages relayed so far: the next message's sequence number.
    sent: AtomicU64,
}

/// This connection's membership, kept in the socket's extensions (which
/// need `Clone`, hence the `Arc`). Dropping the last clone leaves the hub.
type Membership = Arc<Member>;

impl Chat {
    fn online(&self) -> usize {
        self.hub.stats().connections
    }
}

impl WsEvents for Chat {
    async fn on_connect(&self, ws: &mut Socket) -> Result<(), Error> {
        let member = self.hub.connect(ws.sender());
        let id = member.id().0;
        ws.extensions_mut().insert::<Membership>(Arc::new(member));
        ws.send_json(&json!({"type": "welcome", "id": id})).await?;
        // To every connection, this one included.
        self.hub
            .broadcast(json!({"type": "joined", "id": id, "online": self.online()}).to_string());
        Ok(())
    }

    async fn on_message(&self, ws: &mut Socket, msg: Message) -> Result<(), Error> {
        let Some(id) = ws.extensions().get::<Membership>().map(|m| m.id().0) else {
            return Err(Error::app("on_connect did not run"));
        };
        match msg {
            Message::Text(text) => {
                let seq = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
                let out = json!({"type": "message", "seq": seq, "from": id, "text": text});
                // Encoded once, queued on every socket; a socket whose
                // queue is full is closed as a slow consumer (1008).
                self.hub.broadcast(out.to_string());
                Ok(())
            }
            // Close with a specific code; `close` waits for the client's
            // answer, then the framework calls `on_disconnect`.
            _ => {
                ws.close(CloseCode::UNSUPPORTED_DATA, "text messages only")
                    .await
            }
        }
    }

    async fn on_disconnect(&self, ws: &mut Socket, close: CloseFrame) {
        // Leave the hub first, so the notice goes to the others only.
        let Some(member) = ws.extensions_mut().remove::<Membership>() else {
            return;
        };
        let id = member.id().0;
        drop(member);
        let online = self.online();
        self.hub.broadcast(
            json!({"type": "left", "id": id, "online": online, "code": close.code.0}).to_string(),
        );
    }
}

/// The application, shared by `main` and the tests.
fn app() -> App {
    let hub = Hub::new();
    App::new()
        .state(hub.clone())
        .get("/stats", |State(hub): State<Hub>| async move {
            Json(hub.stats())
        })
        .websocket_events(
            "/chat",
            Chat {
                hub,
                sent: AtomicU64::new(0),
            },
        )
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    app().serve(addr).await
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use switchboard::{testing::TestClient, CloseCode, Message, Socket};

    use super::app;

    async fn next(ws: &mut Socket) -> Value {
        ws.recv_json::<Value>().await.unwrap().expect("a message")
    }

    /// Connects and reads the welcome and the joined notice.
    async fn join(client: &TestClient) -> (Socket, u64) {
        let mut ws = client.websocket_connect("/chat").await.unwrap();
        let welcome = next(&mut ws).await;
        assert_eq!(welcome["type"], "welcome");
        let id = welcome["id"].as_u64().unwrap();
        assert_eq!(next(&mut ws).await["type"], "joined");
        (ws, id)
    }

    #[tokio::test]
    async fn join_message_and_leave() {
        let client = TestClient::new(app());
        let (mut alice, _) = join(&client).await;
        let (mut bob, bob_id) = join(&client).await;
        assert_eq!(
            next(&mut alice).await,
            json!({"type": "joined", "id": bob_id, "online": 2})
        );
        let stats = client.get("/stats").send().await.json::<Value>();
        assert_eq!(stats["connections"], 2);

        // One message reaches everyone, numbered.
        bob.send_text("hi all").await.unwrap();
        let expected = json!({"type": "message", "seq": 1, "from": bob_id, "text": "hi all"});
        assert_eq!(next(&mut alice).await, expected);
        assert_eq!(next(&mut bob).await, expected);

        // Bob leaves; Alice is told, with his close code.
        bob.close(CloseCode::NORMAL, "bye").await.unwrap();
        assert_eq!(
            next(&mut alice).await,
            json!({"type": "left", "id": bob_id, "online": 1, "code": 1000})
        );
    }

    #[tokio::test]
    async fn binary_messages_close_with_1003() {
        let client = TestClient::new(app());
        let (mut alice, _) = join(&client).await;
        let (mut bob, bob_id) = join(&client).await;
        next(&mut alice).await; // bob joined

        bob.send_bytes(vec![1u8, 2, 3]).await.unwrap();
        match bob.recv().await.unwrap() {
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::UNSUPPORTED_DATA);
                assert_eq!(frame.reason, "text messages only");
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
        // The others hear that Bob left, and why.
        assert_eq!(
            next(&mut alice).await,
            json!({"type": "left", "id": bob_id, "online": 1, "code": 1003})
        );
    }
}
