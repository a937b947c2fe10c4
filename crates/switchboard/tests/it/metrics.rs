//! Monitoring: `GET /metrics` has every series and they move with
//! traffic (handshakes, messages, bytes, closes, rate limits, auth
//! failures, SSE subscribers, hub counts, backplane state); `GET /ready`
//! follows shutdown and the backplane.

use std::{sync::Arc, time::Duration};

use switchboard::{
    auth::JwtAuth,
    hub::{Hub, HubConfig, MemoryBus},
    metrics::{Metrics, Readiness},
    sse::SseRequest,
    testing::TestClient,
    App, Error, Path, RateLimit, State, StatusCode, WebSocket, WsConfig,
};

fn app(hub: &Hub) -> App {
    App::new()
        .state(hub.clone())
        .get("/health", || async { "ok" })
        .metrics("/metrics", Metrics::new().hub(hub))
        .readiness("/ready", Readiness::new().hub(hub))
        .websocket("/echo", |ws: WebSocket| async move {
            let mut ws = ws.accept().await?;
            while let Some(m) = ws.recv_message().await? {
                ws.send(m).await?;
            }
            Ok::<_, Error>(())
        })
        .websocket_with(
            "/limited",
            WsConfig::default().rate_limit(RateLimit::new(0.1, 1)),
            |ws: WebSocket| async move {
                let mut ws = ws.accept().await?;
                while ws.recv_message().await?.is_some() {}
                Ok::<_, Error>(())
            },
        )
        .websocket(
            "/rooms/{room}",
            |ws: WebSocket, Path(room): Path<String>, State(hub): State<Hub>| async move {
                let mut ws = ws.accept().await?;
                let member = hub.connect(ws.sender());
                member.join(&room);
                while let Some(msg) = ws.recv_message().await? {
                    member.broadcast_others(&room, msg);
                }
                Ok::<_, Error>(())
            },
        )
        .get(
            "/events/{room}",
            |sse: SseRequest, Path(room): Path<String>, State(hub): State<Hub>| async move {
                sse.room(&hub, &room)
            },
        )
}

/// The value of one series (`name` with its labels, as printed).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
}

async fn scrape(c: &TestClient) -> String {
    let res = c.get("/metrics").send().await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    res.text()
}

async fn eventually(c: &TestClient, series: &str, want: f64) -> String {
    for _ in 0..500 {
        let text = scrape(c).await;
        if text.lines().any(|l| {
            l.rsplit_once(' ')
                .is_some_and(|(n, v)| n == series && v.parse::<f64>() == Ok(want))
        }) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = scrape(c).await;
    panic!("{series} never reached {want}:\n{text}");
}

#[tokio::test]
async fn the_scrape_lists_every_series() {
    let hub = Hub::new();
    let c = TestClient::new(app(&hub));
    let text = scrape(&c).await;
    for name in [
        "switchboard_ws_connections",
        "switchboard_ws_handshakes_total",
        "switchboard_ws_handshake_duration_seconds",
        "switchboard_ws_messages_received_total",
        "switchboard_ws_received_bytes_total",
        "switchboard_ws_messages_sent_total",
        "switchboard_ws_sent_bytes_total",
        "switchboard_ws_close_frames_total",
        "switchboard_ws_rate_limited_total",
        "switchboard_auth_failures_total",
        "switchboard_sse_subscribers",
        "switchboard_hub_connections",
        "switchboard_hub_rooms",
        "switchboard_hub_broadcasts_total",
        "switchboard_hub_deliveries_total",
        "switchboard_hub_slow_consumer_closes_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} not declared in\n{text}"
        );
    }
    assert!(!text.contains("switchboard_backplane_"), "not clustered");
}

#[tokio::test]
async fn websocket_traffic_moves_the_counters() {
    let hub = Hub::new();
    let c = TestClient::new(app(&hub));
    let mut ws = c.websocket_connect("/echo").await.unwrap();
    let text = eventually(&c, "switchboard_ws_connections", 1.0).await;
    assert_eq!(
        value(
            &text,
            "switchboard_ws_handshakes_total{outcome=\"accepted\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "switchboard_ws_handshake_duration_seconds_count"),
        1.0
    );
    for _ in 0..3 {
        ws.send_text("hello").await.unwrap();
        assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("hello"));
    }
    ws.send_bytes(vec![1u8; 10]).await.unwrap();
    ws.recv_bytes().await.unwrap();
    let text = scrape(&c).await;
    assert_eq!(value(&text, "switchboard_ws_messages_received_total"), 4.0);
    assert_eq!(value(&text, "switchboard_ws_received_bytes_total"), 25.0);
    eventually(&c, "switchboard_ws_messages_sent_total", 4.0).await;
    eventually(&c, "switchboard_ws_sent_bytes_total", 25.0).await;
    ws.close(switchboard::CloseCode::NORMAL, "bye")
        .await
        .unwrap();
    let text = eventually(&c, "switchboard_ws_connections", 0.0).await;
    assert_eq!(
        value(
            &text,
            "switchboard_ws_close_frames_total{direction=\"received\",code=\"1000\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "switchboard_ws_close_frames_total{direction=\"sent\",code=\"1000\"}"
        ),
        1.0
    );
    // A refused handshake is counted by outcome.
    let plain = c.get("/echo").send().await;
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
    let text = scrape(&c).await;
    assert_eq!(
        value(
            &text,
            "switchboard_ws_handshakes_total{outcome=\"bad_request\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn rate_limit_closes_and_auth_failures_are_counted() {
    let hub = Hub::new();
    let c = TestClient::new(app(&hub));
    let mut ws = c.websocket_connect("/limited").await.unwrap();
    ws.send_text("1").await.unwrap();
    ws.send_text("2").await.unwrap();
    let _ = ws.recv().await;
    let text = eventually(
        &c,
        "switchboard_ws_rate_limited_total{action=\"closed\"}",
        1.0,
    )
    .await;
    assert_eq!(
        value(
            &text,
            "switchboard_ws_close_frames_total{direction=\"sent\",code=\"1008\"}"
        ),
        1.0
    );

    let secured = TestClient::new(
        App::new()
            .middleware(JwtAuth::hs256(b"k").optional(false))
            .metrics("/metrics", Metrics::new())
            .get("/private", || async { "secret" }),
    );
    assert_eq!(
        secured.get("/private").send().await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        secured.get("/private?token=junk").send().await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The scrape itself is behind the same middleware here: use a token.
    let token = switchboard::auth::create_token(b"k", "ops", Duration::from_secs(60)).unwrap();
    let text = secured
        .get(&format!("/metrics?token={token}"))
        .send()
        .await
        .text();
    assert_eq!(
        value(
            &text,
            "switchboard_auth_failures_total{reason=\"missing token\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "switchboard_auth_failures_total{reason=\"malformed token\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn hub_broadcasts_and_sse_subscribers_show_up() {
    let hub = Hub::with_config(HubConfig::default().history(10));
    let c = TestClient::new(app(&hub));
    let mut events = c.get("/events/lobby").stream().await;
    let sender = c.websocket_connect("/rooms/lobby").await.unwrap();
    let text = eventually(&c, "switchboard_hub_connections", 2.0).await;
    assert_eq!(value(&text, "switchboard_sse_subscribers"), 1.0);
    assert_eq!(value(&text, "switchboard_hub_rooms"), 1.0);
    sender.send_text("hi").await.unwrap();
    let ev = events.next_non_comment().await.unwrap();
    assert_eq!(ev.data.as_deref(), Some("hi"));
    let text = scrape(&c).await;
    assert_eq!(value(&text, "switchboard_hub_broadcasts_total"), 1.0);
    assert_eq!(value(&text, "switchboard_hub_deliveries_total"), 1.0);
    drop(events);
    eventually(&c, "switchboard_sse_subscribers", 0.0).await;
    eventually(&c, "switchboard_hub_connections", 1.0).await;
}

#[tokio::test]
async fn clustered_hubs_report_the_backplane() {
    let bus = MemoryBus::new(10);
    let hub = Hub::with_backplane(HubConfig::default(), Arc::new(bus.node("a")));
    let c = TestClient::new(app(&hub));
    let _ws = c.websocket_connect("/rooms/r").await.unwrap();
    let text = eventually(&c, "switchboard_backplane_subscriptions", 1.0).await;
    assert_eq!(value(&text, "switchboard_backplane_healthy"), 1.0);
    assert_eq!(
        value(&text, "switchboard_backplane_publish_errors_total"),
        0.0
    );
    let ready = c.get("/ready").send().await;
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn health_stays_ok_and_ready_follows_shutdown() {
    let hub = Hub::new();
    let c = TestClient::new(app(&hub));
    let health = c.get("/health").send().await;
    assert_eq!(
        (health.status(), health.text()),
        (StatusCode::OK, "ok".into())
    );
    let ready = c.get("/ready").send().await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.json::<serde_json::Value>()["status"], "ready");
    c.shutdown().await;
    let draining = c.get("/ready").send().await;
    assert_eq!(draining.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = draining.json();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["reason"], "server is shutting down");
    // Liveness is not readiness.
    assert_eq!(c.get("/health").send().await.status(), StatusCode::OK);
}

/// `GET /metrics` over a real TCP connection.
async fn scrape_tcp(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text
}

/// Over real TCP, server connections write directly and start without a
/// writer task (see `ws/writer.rs`): broadcasts still reach every member
/// in order, and every way a connection ends (close handshake, a dropped
/// TCP connection, a member that only received) counts it closed.
#[tokio::test]
async fn over_tcp_broadcasts_arrive_and_every_end_is_counted() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as T;
    let hub = Hub::new();
    let server = crate::spawn(app(&hub)).await;
    let url = format!("ws://{}/rooms/lobby", server.addr);
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(tokio_tungstenite::connect_async(&url).await.unwrap().0);
    }
    let mut sender = tokio_tungstenite::connect_async(&url).await.unwrap().0;
    for _ in 0..200 {
        if hub.stats().rooms.get("lobby") == Some(&4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..300 {
        sender.send(T::text(format!("m{i}"))).await.unwrap();
    }
    for m in &mut members {
        for i in 0..300 {
            let got = tokio::time::timeout(Duration::from_secs(5), m.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(got, T::text(format!("m{i}")));
        }
    }
    // One closes properly, one just drops its TCP connection, the sender
    // (whose server side never queued a frame) closes too.
    members[0].close(None).await.unwrap();
    while members[0].next().await.is_some() {}
    members.remove(1);
    sender.close(None).await.unwrap();
    while sender.next().await.is_some() {}
    drop(members);
    let mut text = String::new();
    for _ in 0..500 {
        text = scrape_tcp(server.addr).await;
        if text.lines().any(|l| l == "switchboard_ws_connections 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        text.lines().any(|l| l == "switchboard_ws_connections 0"),
        "{text}"
    );
    assert_eq!(
        value(&text, "switchboard_ws_messages_received_total"),
        300.0
    );
    assert_eq!(value(&text, "switchboard_ws_messages_sent_total"), 900.0);
    server.shutdown().await.unwrap();
}
