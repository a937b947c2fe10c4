//! The seeds' real-time chat, on the hub: rooms, presence, history.
//!
//! Protocol (JSON text messages, as in the seeds): the client sends
//! `{"type": "join_room", "room"}`, `{"type": "leave_room", "room"}` and
//! `{"type": "chat_message", "room", "message"}`; the server answers
//! `welcome`, `room_joined` (with the members present and the last 50
//! messages replayed after it), `room_left`, and tells the room
//! `user_joined`, `user_left` and `chat_message`. Anything else gets
//! `{"type": "error", "message": "Unknown message type"}`.
//!
//! ```text
//! cargo run -p example-chat-rooms            # ws://127.0.0.1:3000/ws?name=ann
//! cargo test -p example-chat-rooms
//! ```

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard::{
    hub::{Hub, HubConfig, Member},
    App, Error, State, WebSocket,
};

/// What a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMsg {
    JoinRoom { room: String },
    LeaveRoom { room: String },
    ChatMessage { room: String, message: String },
}

/// What the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMsg<'a> {
    Welcome {
        connection_id: String,
        name: &'a str,
        message: &'a str,
    },
    RoomJoined {
        room: &'a str,
        members: Vec<serde_json::Value>,
    },
    RoomLeft {
        room: &'a str,
    },
    UserJoined {
        connection_id: String,
        name: &'a str,
        room: &'a str,
    },
    UserLeft {
        connection_id: String,
        name: &'a str,
        room: &'a str,
    },
    ChatMessage {
        connection_id: String,
        name: &'a str,
        room: &'a str,
        message: &'a str,
    },
    Error {
        message: String,
    },
}

/// Messages a late joiner is shown (the seeds replay 50 of the last 1000).
const REPLAY: usize = 50;

fn parse(text: &str) -> Result<ClientMsg, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("Error processing message: {e}"))?;
    match value.get("type").and_then(|t| t.as_str()) {
        Some("join_room" | "leave_room" | "chat_message") => {
            serde_json::from_value(value).map_err(|e| format!("Error processing message: {e}"))
        }
        _ => Err("Unknown message type".to_owned()),
    }
}

fn json_text(msg: &ServerMsg<'_>) -> String {
    serde_json::to_string(msg).unwrap_or_default()
}

async fn chat(ws: WebSocket, State(hub): State<Hub>) -> Result<(), Error> {
    let name = ws.query_param("name").unwrap_or("guest").to_owned();
    let mut ws = ws.accept().await?;
    let member: Member = hub.connect_with_meta(ws.sender(), json!({ "name": name }));
    let id = member.id().to_string();
    ws.send_json(&ServerMsg::Welcome {
        connection_id: id.clone(),
        name: &name,
        message: "Welcome to the chat!",
    })
    .await?;
    while let Some(text) = ws.recv_text().await? {
        match parse(&text) {
            Ok(ClientMsg::JoinRoom { room }) => {
                member.join(&room);
                let members = hub
                    .members(&room)
                    .into_iter()
                    .map(|m| (*m.meta).clone())
                    .collect();
                ws.send_json(&ServerMsg::RoomJoined {
                    room: &room,
                    members,
                })
                .await?;
                member.replay_last(&room, REPLAY);
                let notice = ServerMsg::UserJoined {
                    connection_id: id.clone(),
                    name: &name,
                    room: &room,
                };
                member.broadcast_others(&room, json_text(&notice));
            }
            Ok(ClientMsg::LeaveRoom { room }) => {
                if member.leave(&room) {
                    let notice = ServerMsg::UserLeft {
                        connection_id: id.clone(),
                        name: &name,
                        room: &room,
                    };
                    hub.broadcast_to(&room, json_text(&notice));
                }
                ws.send_json(&ServerMsg::RoomLeft { room: &room }).await?;
            }
            Ok(ClientMsg::ChatMessage { room, message }) => {
                if !hub.is_member(member.id(), &room) {
                    ws.send_json(&ServerMsg::Error {
                        message: format!("not in room {room}"),
                    })
                    .await?;
                    continue;
                }
                let msg = ServerMsg::ChatMessage {
                    connection_id: id.clone(),
                    name: &name,
                    room: &room,
                    message: &message,
                };
                // Everyone in the room, the sender included, in one order.
                hub.broadcast_to(&room, json_text(&msg));
            }
            Err(message) => ws.send_json(&ServerMsg::Error { message }).await?,
        }
    }
    // Tell each room this member was in that it left; dropping `member`
    // then removes it from the hub.
    for room in member.rooms() {
        member.leave(&room);
        let notice = ServerMsg::UserLeft {
            connection_id: id.clone(),
            name: &name,
            room: &room,
        };
        hub.broadcast_to(&room, json_text(&notice));
    }
    Ok(())
}

/// The application, shared by `main` and the tests.
fn app() -> App {
    App::new()
        .state(Hub::with_config(HubConfig::default().history(1000)))
        .websocket("/ws", chat)
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
    use switchboard::{testing::TestClient, Socket};

    async fn next(ws: &mut Socket) -> Value {
        ws.recv_json().await.unwrap().unwrap()
    }

    /// The next message of type `kind`, skipping others (replayed history
    /// and presence notices interleave with live traffic).
    async fn next_of(ws: &mut Socket, kind: &str) -> Value {
        loop {
            let m = next(ws).await;
            if m["type"] == kind {
                return m;
            }
        }
    }

    async fn join(c: &TestClient, name: &str, room: &str) -> Socket {
        let mut ws = c
            .websocket_connect(&format!("/ws?name={name}"))
            .await
            .unwrap();
        assert_eq!(next(&mut ws).await["type"], "welcome");
        ws.send_json(&json!({"type": "join_room", "room": room}))
            .await
            .unwrap();
        let joined = next(&mut ws).await;
        assert_eq!(
            (joined["type"].as_str(), joined["room"].as_str()),
            (Some("room_joined"), Some(room))
        );
        ws
    }

    #[tokio::test]
    async fn chat_presence_and_history() {
        let c = TestClient::new(super::app());
        let mut ann = join(&c, "ann", "general").await;
        let mut bob = join(&c, "bob", "general").await;
        let notice = next(&mut ann).await;
        assert_eq!(
            (notice["type"].as_str(), notice["name"].as_str()),
            (Some("user_joined"), Some("bob"))
        );
        bob.send_json(&json!({"type": "chat_message", "room": "general", "message": "hi"}))
            .await
            .unwrap();
        for ws in [&mut ann, &mut bob] {
            let m = next_of(ws, "chat_message").await;
            assert_eq!(
                (
                    m["type"].as_str(),
                    m["message"].as_str(),
                    m["name"].as_str()
                ),
                (Some("chat_message"), Some("hi"), Some("bob"))
            );
        }
        // A late joiner sees the members present and recent messages.
        let mut cat = c.websocket_connect("/ws?name=cat").await.unwrap();
        next(&mut cat).await;
        cat.send_json(&json!({"type": "join_room", "room": "general"}))
            .await
            .unwrap();
        let joined = next(&mut cat).await;
        let mut names: Vec<&str> = joined["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ann", "bob", "cat"]);
        let replayed: Vec<Value> = vec![
            next(&mut cat).await,
            next(&mut cat).await,
            next(&mut cat).await,
        ];
        let kinds: Vec<&str> = replayed
            .iter()
            .map(|m| m["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["user_joined", "user_joined", "chat_message"]);
        assert_eq!(replayed[2]["message"], "hi");
        // Leaving tells the others.
        bob.close(1000, "").await.unwrap();
        for ws in [&mut ann, &mut cat] {
            let m = next_of(ws, "user_left").await;
            assert_eq!(
                (m["type"].as_str(), m["name"].as_str()),
                (Some("user_left"), Some("bob"))
            );
        }
    }

    #[tokio::test]
    async fn unknown_and_malformed_messages_get_errors() {
        let c = TestClient::new(super::app());
        let mut ws = join(&c, "ann", "r").await;
        ws.send_json(&json!({"type": "dance"})).await.unwrap();
        assert_eq!(
            next(&mut ws).await,
            json!({"type": "error", "message": "Unknown message type"})
        );
        ws.send_text("{not json").await.unwrap();
        assert!(next(&mut ws).await["message"]
            .as_str()
            .unwrap()
            .starts_with("Error processing message"));
        ws.send_json(&json!({"type": "chat_message", "room": "elsewhere", "message": "x"}))
            .await
            .unwrap();
        assert_eq!(next(&mut ws).await["message"], "not in room elsewhere");
    }
}
