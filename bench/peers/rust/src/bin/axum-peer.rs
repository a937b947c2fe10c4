//! The axum peer: what most Rust users write today.
//!
//! `WS /ws/echo` echoes every message (axum's `ws` feature, tokio-tungstenite
//! underneath); `WS /ws/rooms/{room}` is the idiomatic axum chat: one
//! `tokio::sync::broadcast` channel per room, every message a member sends goes
//! to every OTHER member (tagged with the sender's id and filtered on receipt).
//!
//! Run: `axum-peer --port 9001` (or `PORT=9001`). Written for this benchmark
//! against axum's documented API; nothing copied from its repository.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use axum::{
    extract::{
        ws::{Message, WebSocket, WebSocketUpgrade},
        Path, State,
    },
    response::IntoResponse,
    serve::ListenerExt,
    routing::get,
    Router,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;

/// Messages a slow member may fall behind before it starts losing them
/// (`RecvError::Lagged`); the usual chat-example value.
const ROOM_CAPACITY: usize = 1024;

#[derive(Clone, Default)]
struct AppState {
    rooms: Arc<Mutex<HashMap<String, broadcast::Sender<(u64, Message)>>>>,
    next_id: Arc<AtomicU64>,
}

fn port() -> u16 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("PORT").ok())
        .and_then(|p| p.parse().ok())
        .unwrap_or(9001)
}

#[tokio::main]
async fn main() {
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ws/echo", get(echo))
        .route("/ws/rooms/{room}", get(room))
        .with_state(AppState::default());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port()))
        .await
        .expect("bind");
    println!("axum peer listening on {}", listener.local_addr().unwrap());
    // TCP_NODELAY like every other server in the comparison.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.expect("serve");
}

async fn echo(ws: WebSocketUpgrade) -> impl IntoResponse {
    ws.on_upgrade(|mut socket: WebSocket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    if socket.send(msg).await.is_err() {
                        break;
                    }
                }
                // Keep reading after a close: tungstenite sends the close
                // reply on the next read, which then ends the stream.
                _ => {}
            }
        }
    })
}

async fn room(
    ws: WebSocketUpgrade,
    Path(room): Path<String>,
    State(state): State<AppState>,
) -> impl IntoResponse {
    ws.on_upgrade(move |socket| member(socket, room, state))
}

async fn member(socket: WebSocket, room: String, state: AppState) {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let tx = state
        .rooms
        .lock()
        .unwrap()
        .entry(room.clone())
        .or_insert_with(|| broadcast::channel(ROOM_CAPACITY).0)
        .clone();
    let mut rx = tx.subscribe();
    let (mut sink, mut stream) = socket.split();
    // Forward the room's messages (except our own) to this socket.
    let mut send_task = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok((from, msg)) if from != id => {
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    // Publish what this member sends.
    let mut recv_task = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    let _ = tx.send((id, msg));
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    tokio::select! {
        _ = &mut send_task => recv_task.abort(),
        _ = &mut recv_task => send_task.abort(),
    }
    let mut rooms = state.rooms.lock().unwrap();
    if rooms.get(&room).is_some_and(|tx| tx.receiver_count() == 0) {
        rooms.remove(&room);
    }
}
