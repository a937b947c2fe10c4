//! Nodes for the tests: a hub with its own `RedisBackplane` and an
//! in-process client, and small bounded waiting helpers.

use std::{sync::Arc, time::Duration};

use serde_json::json;
use switchboard::{
    hub::{Backplane, Hub, HubConfig},
    testing::TestClient,
    App, Error, Path, Socket, State, WebSocket,
};
use switchboard_redis::{RedisBackplane, RedisConfig};

/// Settings that make the tests fast: short presence TTL and probes; the
/// reconnect backoff and the timeouts are the defaults (what the 3 s
/// resume promise is made with).
pub(crate) fn fast(url: &str, id: &str) -> RedisConfig {
    RedisConfig::new(url, id)
        .history(100)
        .presence_ttl(Duration::from_millis(1500), Duration::from_millis(300))
        .probe(Duration::from_millis(250), Duration::from_millis(1000))
}

pub(crate) struct Node {
    pub(crate) hub: Hub,
    pub(crate) bp: RedisBackplane,
    pub(crate) client: TestClient,
}

impl Node {
    pub(crate) async fn start(config: RedisConfig) -> Node {
        let node = Node::start_unready(config);
        assert!(
            node.bp.ready(Duration::from_secs(5)).await,
            "node not healthy: {:?}",
            node.bp.health()
        );
        node
    }

    pub(crate) fn start_unready(config: RedisConfig) -> Node {
        let bp = RedisBackplane::new(config).expect("valid config");
        let hub = Hub::with_backplane(HubConfig::default(), Arc::new(bp.clone()));
        let client = TestClient::new(room_app(hub.clone()));
        Node { hub, bp, client }
    }

    /// A member of `room` called `user`, once the server said it joined.
    pub(crate) async fn member(&self, room: &str, user: &str) -> Socket {
        let mut ws = self
            .client
            .websocket_connect(&format!("/rooms/{room}?user={user}"))
            .await
            .expect("connect");
        let hello: serde_json::Value = ws.recv_json().await.unwrap().unwrap();
        assert_eq!(hello["joined"], room);
        ws
    }
}

/// Every message a member sends goes to every other member of the room,
/// on every node; `!publish <text>` goes through `Hub::publish` instead.
fn room_app(hub: Hub) -> App {
    App::new().state(hub).websocket(
        "/rooms/{room}",
        |ws: WebSocket, Path(room): Path<String>, State(hub): State<Hub>| async move {
            let user = ws.query_param("user").unwrap_or("anon").to_owned();
            let mut ws = ws.accept().await?;
            let member = hub.connect_with_meta(ws.sender(), json!({ "user": user }));
            member.join(&room);
            ws.send_json(&json!({ "joined": room, "conn": member.id() }))
                .await?;
            while let Some(msg) = ws.recv_message().await? {
                member.broadcast_others(&room, msg);
            }
            Ok::<_, Error>(())
        },
    )
}

/// Polls `f` every 10 ms for at most `limit`; panics with `what` if it
/// never holds.
pub(crate) async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not reached within {limit:?}");
}

/// Waits until every node's subscription to `room` is confirmed by Redis.
pub(crate) async fn subscribed(nodes: &[&Node], room: &str) {
    wait_for("subscriptions confirmed", Duration::from_secs(5), || {
        nodes.iter().all(|n| n.bp.is_subscribed(room))
    })
    .await;
}

/// The next text message, failing after `limit`.
pub(crate) async fn recv_within(ws: &mut Socket, limit: Duration) -> String {
    tokio::time::timeout(limit, ws.recv_text())
        .await
        .expect("message in time")
        .expect("socket ok")
        .expect("socket open")
}

/// Asserts that nothing arrives for `quiet`.
pub(crate) async fn nothing_more(ws: &mut Socket, quiet: Duration) {
    if let Ok(msg) = tokio::time::timeout(quiet, ws.recv()).await {
        panic!("unexpected message: {msg:?}");
    }
}
