//! A data streamer with topic subscriptions (the seeds' `DataStreamer`):
//! clients send `{"action": "subscribe", "topic": "prices"}` or
//! `unsubscribe`; a background task publishes to each topic on a timer,
//! and every subscriber of a topic gets each update once. Topics are hub
//! rooms, so fan-out is frame-once and slow subscribers are cut off
//! without slowing the others.
//!
//! ```text
//! cargo run -p example-data-stream     # ws://127.0.0.1:3000/ws/stream
//! ```

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use switchboard::{hub::Hub, App, Error, State, WebSocket};

/// Topics this server produces.
const TOPICS: [&str; 3] = ["prices", "weather", "sports"];

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Request {
    Subscribe { topic: String },
    Unsubscribe { topic: String },
}

async fn stream(ws: WebSocket, State(hub): State<Hub>) -> Result<(), Error> {
    let mut ws = ws.accept().await?;
    let member = hub.connect(ws.sender());
    ws.send_json(&json!({"type": "topics", "topics": TOPICS}))
        .await?;
    loop {
        match ws.recv_json::<Request>().await {
            Ok(Some(Request::Subscribe { topic })) if TOPICS.contains(&topic.as_str()) => {
                member.join(&topic);
                ws.send_json(&json!({"type": "subscribed", "topic": topic}))
                    .await?;
            }
            Ok(Some(Request::Subscribe { topic })) => {
                ws.send_json(
                    &json!({"type": "error", "message": format!("unknown topic {topic}")}),
                )
                .await?;
            }
            Ok(Some(Request::Unsubscribe { topic })) => {
                member.leave(&topic);
                ws.send_json(&json!({"type": "unsubscribed", "topic": topic}))
                    .await?;
            }
            Ok(None) => return Ok(()),
            Err(e) if e.is_recoverable() => {
                ws.send_json(&json!({"type": "error", "message": e.to_string()}))
                    .await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Publishes one update per topic every `period`, forever.
async fn produce(hub: Hub, period: Duration) {
    let mut tick = tokio::time::interval(period);
    let mut seq = 0u64;
    loop {
        tick.tick().await;
        seq += 1;
        for topic in TOPICS {
            let update = json!({"type": "update", "topic": topic, "seq": seq});
            let _ = hub.broadcast_json(topic, &update);
        }
    }
}

/// The application and its hub, shared by `main` and the tests.
fn app(period: Duration) -> App {
    let hub = Hub::new();
    let producer = hub.clone();
    App::new()
        .state(hub)
        .on_startup(move || {
            let hub = producer.clone();
            async move {
                tokio::spawn(produce(hub, period));
            }
        })
        .websocket("/ws/stream", stream)
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
    app(Duration::from_secs(1)).serve(addr).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};
    use switchboard::testing::TestClient;

    #[tokio::test]
    async fn subscribers_get_only_their_topics() {
        let c = TestClient::new(super::app(Duration::from_millis(20)));
        c.startup().await;
        let mut ws = c.websocket_connect("/ws/stream").await.unwrap();
        assert_eq!(
            ws.recv_json::<Value>().await.unwrap().unwrap()["type"],
            "topics"
        );
        ws.send_json(&json!({"action": "subscribe", "topic": "weather"}))
            .await
            .unwrap();
        assert_eq!(
            ws.recv_json::<Value>().await.unwrap().unwrap()["type"],
            "subscribed"
        );
        let mut last = 0;
        for _ in 0..3 {
            let u: Value = ws.recv_json().await.unwrap().unwrap();
            assert_eq!(u["topic"], "weather");
            let seq = u["seq"].as_u64().unwrap();
            assert!(seq > last, "updates arrive once and in order");
            last = seq;
        }
        ws.send_json(&json!({"action": "subscribe", "topic": "gossip"}))
            .await
            .unwrap();
        loop {
            let m: Value = ws.recv_json().await.unwrap().unwrap();
            if m["type"] == "error" {
                assert_eq!(m["message"], "unknown topic gossip");
                break;
            }
        }
    }
}
