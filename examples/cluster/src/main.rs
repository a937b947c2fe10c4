//! The chat as a cluster: run two nodes on one Redis, and a message sent on
//! one arrives on the other.
//!
//! Each node is the seeds' chat protocol (a subset of `examples/chat-rooms`:
//! `join_room`, `leave_room`, `chat_message`; the server sends `welcome`,
//! `room_joined` with the members on *every* node, `user_joined`,
//! `user_left`, `chat_message`) on a [`Hub`] whose backplane is a
//! [`RedisBackplane`]. Nothing in the handler knows about Redis: the hub
//! sends every broadcast to the other nodes, and presence is cluster-wide.
//!
//! ```text
//! redis-server --port 6379 --save '' &                    # any Redis 6+
//! cargo run -p example-cluster -- node --node-id a --bind 127.0.0.1:3001 &
//! cargo run -p example-cluster -- node --node-id b --bind 127.0.0.1:3002 &
//! cargo run -p example-cluster -- listen ws://127.0.0.1:3002/ws lobby &   # on node b
//! cargo run -p example-cluster -- say ws://127.0.0.1:3001/ws lobby "hello from a"
//! # the listener (node b) prints: [lobby] ann: hello from a
//! curl http://127.0.0.1:3001/health/cluster                 # 200 while Redis is fine
//! cargo test -p example-cluster                              # two nodes on a real Redis
//! ```
//!
//! `node` takes `--redis URL` (default `redis://127.0.0.1:6379`); any
//! WebSocket client speaking the JSON protocol works instead of
//! `listen`/`say`.

use std::{sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use switchboard::{
    hub::{Hub, HubConfig, Member},
    App, Error, IntoResponse, Json, Response, State, StatusCode, WebSocket, WsClient,
};
use switchboard_redis::{RedisBackplane, RedisConfig};

#[derive(Parser, Debug)]
#[command(about = "Switchboard cluster example: chat nodes on Redis and a tiny client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a chat node.
    Node {
        /// The cluster's Redis.
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// This node's id (unique in the cluster).
        #[arg(long)]
        node_id: String,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:3001")]
        bind: String,
    },
    /// Join a room and print its messages until interrupted.
    Listen {
        /// The node's chat socket, e.g. ws://127.0.0.1:3002/ws
        url: String,
        room: String,
        #[arg(long, default_value = "bob")]
        name: String,
    },
    /// Join a room, send one message, wait until the room has it, leave.
    Say {
        url: String,
        room: String,
        message: String,
        #[arg(long, default_value = "ann")]
        name: String,
    },
}

/// Recent messages replayed to a joiner, from this node's copy of the room.
const REPLAY: usize = 50;

/// Handles one chat connection (the protocol of `examples/chat-rooms`).
async fn chat(ws: WebSocket, State(hub): State<Hub>) -> Result<(), Error> {
    let name = ws.query_param("name").unwrap_or("guest").to_owned();
    let mut ws = ws.accept().await?;
    let member: Member = hub.connect_with_meta(ws.sender(), json!({ "name": name }));
    let id = member.id().to_string();
    ws.send_json(&json!({"type": "welcome", "connection_id": id, "name": name}))
        .await?;
    let notice = |kind: &str, room: &str| {
        json!({"type": kind, "connection_id": id, "name": name, "room": room}).to_string()
    };
    while let Some(text) = ws.recv_text().await? {
        let msg: Value = serde_json::from_str(&text).unwrap_or_default();
        let room = msg["room"].as_str().unwrap_or_default().to_owned();
        match msg["type"].as_str() {
            Some("join_room") if !room.is_empty() => {
                member.join(&room);
                // Members on every node (this one's own are listed even if
                // Redis is unreachable right now).
                let members = match hub.cluster_members(&room).await {
                    Ok(m) => m,
                    Err(_) => hub.members(&room),
                };
                let members: Vec<Value> = members.iter().map(|m| (*m.meta).clone()).collect();
                ws.send_json(&json!({"type": "room_joined", "room": room, "members": members}))
                    .await?;
                member.replay_last(&room, REPLAY);
                member.broadcast_others(&room, notice("user_joined", &room));
            }
            Some("leave_room") => {
                if member.leave(&room) {
                    hub.broadcast_to(&room, notice("user_left", &room));
                }
                ws.send_json(&json!({"type": "room_left", "room": room}))
                    .await?;
            }
            Some("chat_message") if hub.is_member(member.id(), &room) => {
                let text = msg["message"].as_str().unwrap_or_default();
                let out = json!({"type": "chat_message", "connection_id": id,
                    "name": name, "room": room, "message": text});
                // Every member of the room on every node, the sender too.
                hub.broadcast_to(&room, out.to_string());
            }
            _ => {
                ws.send_json(&json!({"type": "error", "message": "Unknown message type"}))
                    .await?
            }
        }
    }
    for room in member.rooms() {
        member.leave(&room);
        hub.broadcast_to(&room, notice("user_left", &room));
    }
    Ok(())
}

/// 200 and the backplane's health while it is healthy, 503 otherwise.
async fn cluster_health(State(hub): State<Hub>) -> Response {
    let Some(bp) = hub.backplane() else {
        return "ok".into_response();
    };
    let health = bp.health();
    let status = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"node": bp.node_id(), "backplane": health})),
    )
        .into_response()
}

/// A chat node on `hub`.
fn app(hub: Hub) -> App {
    App::new()
        .state(hub)
        .websocket("/ws", chat)
        .get("/health/cluster", cluster_health)
}

/// The hub of a node called `node_id` on the Redis at `redis`.
fn clustered_hub(redis: &str, node_id: &str) -> Result<Hub, switchboard_redis::Error> {
    let backplane = RedisBackplane::new(RedisConfig::new(redis, node_id))?;
    Ok(Hub::with_backplane(
        HubConfig::default().history(1000),
        Arc::new(backplane),
    ))
}

async fn client(url: &str, name: &str, room: &str) -> Result<switchboard::Socket, String> {
    let url = format!("{url}?name={name}");
    let ws = WsClient::new(url.as_str()).connect().await;
    let ws = ws.map_err(|e| format!("{url}: {e}"))?;
    ws.send_json(&json!({"type": "join_room", "room": room}))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

async fn run_client(command: Command) -> Result<(), String> {
    match command {
        Command::Listen { url, room, name } => {
            let mut ws = client(&url, &name, &room).await?;
            while let Some(m) = ws.recv_json::<Value>().await.map_err(|e| e.to_string())? {
                let field = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                match m["type"].as_str() {
                    Some("chat_message") => {
                        println!(
                            "[{}] {}: {}",
                            field("room"),
                            field("name"),
                            field("message")
                        )
                    }
                    Some("room_joined") => {
                        println!("joined [{}], members: {}", field("room"), m["members"])
                    }
                    Some(kind) if kind.starts_with("user_") => {
                        println!("[{}] {} {kind}", field("room"), field("name"))
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        Command::Say {
            url,
            room,
            message,
            name,
        } => {
            let mut ws = client(&url, &name, &room).await?;
            let msg = json!({"type": "chat_message", "room": room, "message": message});
            let mut sent = false;
            let wait = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(m) = ws.recv_json::<Value>().await.map_err(|e| e.to_string())? {
                    if m["type"] == "room_joined" && !sent {
                        ws.send_json(&msg).await.map_err(|e| e.to_string())?;
                        sent = true;
                    }
                    if m["type"] == "chat_message" && m["message"] == message {
                        println!("sent to [{room}]: {message}");
                        return ws.close(1000, "").await.map_err(|e| e.to_string());
                    }
                }
                Err("connection closed".to_owned())
            });
            wait.await.map_err(|_| "no echo within 5 s".to_owned())?
        }
        Command::Node { .. } => unreachable!("handled in main"),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Node {
            redis,
            node_id,
            bind,
        } => {
            let hub = clustered_hub(&redis, &node_id).map_err(std::io::Error::other)?;
            app(hub).serve(bind).await
        }
        command => run_client(command).await.map_err(std::io::Error::other),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};
    use switchboard::{testing::TestClient, Socket};
    use switchboard_redis::testing::RedisServer;

    async fn next_of(ws: &mut Socket, kind: &str) -> Value {
        loop {
            let m: Value = tokio::time::timeout(Duration::from_secs(5), ws.recv_json())
                .await
                .expect("message in time")
                .unwrap()
                .unwrap();
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
        next_of(&mut ws, "welcome").await;
        ws.send_json(&json!({"type": "join_room", "room": room}))
            .await
            .unwrap();
        next_of(&mut ws, "room_joined").await;
        ws
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_sent_on_one_node_arrives_on_the_other() {
        let redis = RedisServer::start();
        let hub_a = super::clustered_hub(&redis.url(), "a").unwrap();
        let hub_b = super::clustered_hub(&redis.url(), "b").unwrap();
        let a = TestClient::new(super::app(hub_a.clone()));
        let b = TestClient::new(super::app(hub_b.clone()));
        let mut ann = join(&a, "ann", "lobby").await;
        let mut bob = join(&b, "bob", "lobby").await;
        // Wait until both nodes receive the room from Redis.
        for _ in 0..500 {
            if hub_a.stats().backplane.unwrap().subscriptions == 1
                && hub_b.stats().backplane.unwrap().subscriptions == 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ann.send_json(&json!({"type": "chat_message", "room": "lobby", "message": "hello from a"}))
            .await
            .unwrap();
        for ws in [&mut bob, &mut ann] {
            let m = next_of(ws, "chat_message").await;
            assert_eq!(
                (m["name"].as_str(), m["message"].as_str()),
                (Some("ann"), Some("hello from a"))
            );
        }
        // Presence is cluster-wide: a third member on node b sees ann (node a).
        let mut names = Vec::new();
        for _ in 0..100 {
            let mut cat = b.websocket_connect("/ws?name=cat").await.unwrap();
            next_of(&mut cat, "welcome").await;
            cat.send_json(&json!({"type": "join_room", "room": "lobby"}))
                .await
                .unwrap();
            let joined = next_of(&mut cat, "room_joined").await;
            names = joined["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            if names.len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(names, ["ann", "bob", "cat"]);
        // Healthy once both Redis connections are up and a first probe has
        // come back (503 until then, which on a loaded machine can outlast
        // the steps above; seen once in about 15 test runs under load):
        // bounded wait, 5 s.
        let mut last = (0, String::new());
        for _ in 0..250 {
            let r = a.get("/health/cluster").send().await;
            last = (r.status().as_u16(), r.text());
            if last.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(last.0, 200, "GET /health/cluster: {}", last.1);
    }
}
