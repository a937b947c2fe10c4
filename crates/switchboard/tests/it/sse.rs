//! Server-Sent Events: the response type (formatting, keep-alive,
//! disconnects, shutdown) and the hub bridge (sockets to SSE, ids,
//! `Last-Event-ID` recovery and gaps, bad input, auth, limits, slow
//! consumers), through the in-process client and over real TCP.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use base64::Engine as _;
use futures_util::{stream, StreamExt};
use serde_json::Value;
use switchboard::{
    auth::{create_token, JwtAuth},
    hub::{Hub, HubConfig},
    sse::{Event, Sse, SseRequest},
    testing::{TestClient, TestEvent, TestStream},
    App, Bytes, Error, Message, Path, State, StatusCode, WebSocket,
};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// The demo server's shape: sockets relay to the room's other members,
/// SSE subscribers follow the same room.
fn room_app(hub: Hub) -> App {
    App::new()
        .state(hub)
        .websocket(
            "/ws/rooms/{room}",
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
                sse.room(&hub, &room).keep_alive(Duration::from_secs(30))
            },
        )
}

fn history_hub() -> Hub {
    Hub::with_config(HubConfig::default().history(100))
}

async fn next(s: &mut TestStream) -> TestEvent {
    timeout(WAIT, s.next_non_comment())
        .await
        .expect("an event in time")
        .expect("the stream to go on")
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

fn epoch_of(s: &TestStream) -> String {
    s.header("switchboard-epoch")
        .expect("epoch header")
        .to_owned()
}

#[tokio::test]
async fn events_are_formatted_and_multi_line_data_arrives_whole() {
    let app = App::new().get("/e", || async {
        Sse::new(stream::iter([
            Event::new().data("one\ntwo\r\nthree"),
            Event::new()
                .event("named")
                .id("7")
                .retry(Duration::from_millis(1500))
                .data(""),
            Event::new().comment("just a comment"),
            Event::new().data("trailing\n"),
        ]))
    });
    let c = TestClient::new(app);
    let mut s = c.get("/e").stream().await;
    assert_eq!(s.status(), StatusCode::OK);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some("no-cache"));
    assert_eq!(s.header("x-accel-buffering"), Some("no"));
    assert_eq!(
        s.next_event().await.unwrap().data.as_deref(),
        Some("one\ntwo\nthree")
    );
    let named = s.next_event().await.unwrap();
    assert_eq!(named.event.as_deref(), Some("named"));
    assert_eq!(named.id.as_deref(), Some("7"));
    assert_eq!(named.retry, Some(1500));
    assert_eq!(named.data.as_deref(), Some(""));
    let comment = s.next_event().await.unwrap();
    assert!(comment.is_comment());
    assert_eq!(comment.comments, ["just a comment"]);
    assert_eq!(
        s.next_event().await.unwrap().data.as_deref(),
        Some("trailing\n")
    );
    assert!(
        s.next_event().await.is_none(),
        "the body ends with the stream"
    );
}

#[tokio::test]
async fn raw_wire_bytes_are_exact() {
    let app = App::new().get("/e", || async {
        Sse::new(stream::iter([Event::new().event("x").data("a\nb")])).no_keep_alive()
    });
    let c = TestClient::new(app);
    let body = c.get("/e").send().await;
    assert_eq!(body.text(), "event: x\ndata: a\ndata: b\n\n");
}

#[tokio::test]
async fn idle_streams_send_keep_alive_comments() {
    let app = App::new().get("/e", || async {
        Sse::new(stream::pending::<Event>()).keep_alive(Duration::from_millis(50))
    });
    let c = TestClient::new(app);
    let mut s = c.get("/e").stream().await;
    for _ in 0..2 {
        let ka = timeout(WAIT, s.next_event()).await.unwrap().unwrap();
        assert!(ka.is_comment());
        assert_eq!(ka.comments, ["keep-alive"]);
    }
}

/// Counts live instances, to see the event stream dropped.
struct Alive(Arc<AtomicUsize>);
impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_client_that_goes_away_drops_the_event_stream() {
    let alive = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&alive);
    let app = App::new().get("/e", move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let guard = Alive(counter);
            let s = stream::once(async { Event::new().data("hello") }).chain(stream::pending());
            // The guard lives as long as the stream.
            Sse::new(s.map(move |e| {
                let _ = &guard;
                e
            }))
        }
    });
    let c = TestClient::new(app);
    let mut s = c.get("/e").stream().await;
    assert_eq!(next(&mut s).await.data.as_deref(), Some("hello"));
    assert_eq!(alive.load(Ordering::SeqCst), 1);
    drop(s);
    wait_until(|| alive.load(Ordering::SeqCst) == 0).await;
}

#[tokio::test]
async fn disconnected_subscribers_leave_the_room() {
    let hub = history_hub();
    let c = TestClient::new(room_app(hub.clone()));
    let a = c.get("/events/lobby").stream().await;
    let b = c.get("/events/lobby").stream().await;
    assert_eq!(a.status(), StatusCode::OK);
    wait_until(|| hub.stats().rooms.get("lobby") == Some(&2)).await;
    assert_eq!(hub.members("lobby")[0].meta["transport"], "sse");
    drop(a);
    wait_until(|| hub.stats().rooms.get("lobby") == Some(&1)).await;
    drop(b);
    wait_until(|| hub.stats().connections == 0).await;
    assert!(hub.stats().rooms.is_empty());
}

#[tokio::test]
async fn a_socket_members_messages_reach_sse_subscribers() {
    let hub = history_hub();
    let c = TestClient::new(room_app(hub.clone()));
    let mut s = c.get("/events/chat").stream().await;
    assert_eq!(s.header("switchboard-recovery"), Some("none"));
    assert_eq!(s.header("switchboard-replay-from"), Some("1"));
    let epoch = epoch_of(&s);
    let ws = c.websocket_connect("/ws/rooms/chat").await.unwrap();
    wait_until(|| hub.stats().rooms.get("chat") == Some(&2)).await;
    ws.send_text("hello\nworld").await.unwrap();
    ws.send_bytes(Bytes::from_static(&[0, 1, 2, 255]))
        .await
        .unwrap();
    let text = next(&mut s).await;
    assert_eq!(text.event, None, "a default `message` event");
    assert_eq!(text.data.as_deref(), Some("hello\nworld"));
    assert_eq!(text.id, Some(format!("{epoch}:1")));
    let bin = next(&mut s).await;
    assert_eq!(bin.event.as_deref(), Some("binary"));
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(bin.data.unwrap())
            .unwrap(),
        [0, 1, 2, 255]
    );
    assert_eq!(bin.id, Some(format!("{epoch}:2")));
    // The socket relay itself is unchanged: a second socket gets it too.
    let mut other = c.websocket_connect("/ws/rooms/chat").await.unwrap();
    wait_until(|| hub.stats().rooms.get("chat") == Some(&3)).await;
    ws.send_text("again").await.unwrap();
    assert_eq!(other.recv_text().await.unwrap().as_deref(), Some("again"));
    assert_eq!(next(&mut s).await.data.as_deref(), Some("again"));
}

#[tokio::test]
async fn last_event_id_replays_exactly_what_was_missed_then_goes_live() {
    let hub = history_hub();
    let c = TestClient::new(room_app(hub.clone()));
    for i in 1..=5 {
        hub.broadcast_to("news", format!("m{i}"));
    }
    let mut first = c.get("/events/news").stream().await;
    let epoch = epoch_of(&first);
    hub.broadcast_to("news", "m6");
    let ev = next(&mut first).await;
    assert_eq!(ev.id, Some(format!("{epoch}:6")));
    drop(first);
    // Missed while away.
    hub.broadcast_to("news", "m7");
    hub.broadcast_to("news", Message::Binary(Bytes::from_static(b"\x07")));
    let mut s = c
        .get("/events/news")
        .header("last-event-id", &format!("{epoch}:3"))
        .stream()
        .await;
    assert_eq!(s.status(), StatusCode::OK);
    assert_eq!(s.header("switchboard-recovery"), Some("full"));
    assert_eq!(s.header("switchboard-replay-from"), Some("4"));
    let mut got = Vec::new();
    for _ in 0..5 {
        let e = next(&mut s).await;
        got.push((e.id.unwrap(), e.event, e.data.unwrap()));
    }
    let want: Vec<(String, Option<String>, String)> = vec![
        (format!("{epoch}:4"), None, "m4".into()),
        (format!("{epoch}:5"), None, "m5".into()),
        (format!("{epoch}:6"), None, "m6".into()),
        (format!("{epoch}:7"), None, "m7".into()),
        (format!("{epoch}:8"), Some("binary".into()), "Bw==".into()),
    ];
    assert_eq!(got, want);
    hub.broadcast_to("news", "live");
    let live = next(&mut s).await;
    assert_eq!(
        (live.id, live.data),
        (Some(format!("{epoch}:9")), Some("live".into()))
    );
    // Caught up exactly: resuming from the newest id replays nothing.
    let mut none = c
        .get("/events/news")
        .header("last-event-id", &format!("{epoch}:9"))
        .stream()
        .await;
    assert_eq!(none.header("switchboard-recovery"), Some("full"));
    assert_eq!(none.header("switchboard-replay-from"), Some("10"));
    hub.broadcast_to("news", "ten");
    assert_eq!(next(&mut none).await.data.as_deref(), Some("ten"));
}

#[tokio::test]
async fn a_bare_offset_resumes_in_the_current_epoch() {
    let hub = history_hub();
    let c = TestClient::new(room_app(hub.clone()));
    for i in 1..=3 {
        hub.broadcast_to("r", format!("m{i}"));
    }
    let mut s = c
        .get("/events/r")
        .header("last-event-id", "2")
        .stream()
        .await;
    assert_eq!(s.header("switchboard-recovery"), Some("full"));
    assert_eq!(next(&mut s).await.data.as_deref(), Some("m3"));
}

async fn gap_of(c: &TestClient, room: &str, last: &str) -> (TestStream, Value) {
    let mut s = c
        .get(&format!("/events/{room}"))
        .header("last-event-id", last)
        .stream()
        .await;
    assert_eq!(s.status(), StatusCode::OK);
    assert_eq!(s.header("switchboard-recovery"), Some("gap"));
    let gap = next(&mut s).await;
    assert_eq!(gap.event.as_deref(), Some("gap"));
    let data: Value = serde_json::from_str(gap.data.as_deref().unwrap()).unwrap();
    // The gap event moves the client's position to now.
    assert_eq!(
        gap.id,
        Some(format!(
            "{}:{}",
            data["epoch"].as_str().unwrap(),
            data["offset"]
        ))
    );
    (s, data)
}

#[tokio::test]
async fn an_unfillable_gap_is_an_explicit_event_never_silence() {
    let hub = Hub::with_config(HubConfig::default().history(3));
    let c = TestClient::new(room_app(hub.clone()));
    for i in 1..=10 {
        hub.broadcast_to("r", format!("m{i}"));
    }
    let epoch = epoch_of(&c.get("/events/r").stream().await);
    // Older than the history keeps.
    let (mut s, data) = gap_of(&c, "r", &format!("{epoch}:2")).await;
    assert_eq!(data["reason"], "too_old");
    assert_eq!(data["oldest"], 8);
    assert_eq!(data["offset"], 10);
    assert_eq!(s.header("switchboard-replay-from"), Some("11"));
    hub.broadcast_to("r", "after");
    assert_eq!(next(&mut s).await.data.as_deref(), Some("after"));
    // An epoch the room never had (a restart, another room, another node).
    let (_, data) = gap_of(&c, "r", "deadbeef:5").await;
    assert_eq!(data["reason"], "epoch_changed");
    assert_eq!(data["last_event_id"], "deadbeef:5");
    // Ahead of the stream.
    let (_, data) = gap_of(&c, "r", &format!("{epoch}:99")).await;
    assert_eq!(data["reason"], "ahead");
    // A room that never existed.
    let (_, data) = gap_of(&c, "fresh", "abc:1").await;
    assert_eq!(data["reason"], "epoch_changed");
}

#[tokio::test]
async fn a_malformed_last_event_id_is_a_400_and_the_server_goes_on() {
    let hub = history_hub();
    let c = TestClient::new(room_app(hub.clone()));
    for bad in [
        "abc",
        "x:y",
        "1:",
        ":",
        "-1",
        "a b:1",
        "1:2:3",
        &"9".repeat(300),
    ] {
        let res = c.get("/events/r").header("last-event-id", bad).send().await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        let body: Value = res.json();
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains("Last-Event-ID"), "{msg}");
    }
    assert_eq!(hub.stats().connections, 0, "nothing subscribed");
    let ok = c.get("/events/r").stream().await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_oversized_query_string_is_a_414() {
    let c = TestClient::new(room_app(history_hub()));
    let res = c
        .get(&format!("/events/r?pad={}", "x".repeat(9000)))
        .send()
        .await;
    assert_eq!(res.status(), StatusCode::URI_TOO_LONG);
    assert!(res.text().contains("query string too long"));
}

#[tokio::test]
async fn auth_applies_by_query_token_or_header() {
    let secret = b"sse-secret";
    let hub = history_hub();
    let app = room_app(hub.clone()).middleware(JwtAuth::hs256(secret));
    let c = TestClient::new(app);
    let missing = c.get("/events/r").send().await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert!(missing.text().contains("missing token"));
    let bad = c.get("/events/r?token=nope").send().await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let token = create_token(secret, "ann", Duration::from_secs(60)).unwrap();
    let by_query = c.get(&format!("/events/r?token={token}")).stream().await;
    assert_eq!(by_query.status(), StatusCode::OK);
    let by_header = c
        .get("/events/r")
        .header("authorization", &format!("Bearer {token}"))
        .stream()
        .await;
    assert_eq!(by_header.status(), StatusCode::OK);
    wait_until(|| hub.members("r").len() == 2).await;
    assert!(hub.members("r").iter().all(|m| m.meta["user"] == "ann"));
}

#[tokio::test]
async fn the_stream_ends_when_its_token_expires() {
    let secret = b"sse-secret";
    let app =
        room_app(history_hub()).middleware(JwtAuth::hs256(secret).leeway(Duration::from_secs(0)));
    let c = TestClient::new(app);
    let token = create_token(secret, "ann", Duration::from_secs(1)).unwrap();
    let mut s = c.get(&format!("/events/r?token={token}")).stream().await;
    assert_eq!(s.status(), StatusCode::OK);
    let close = next(&mut s).await;
    assert_eq!(close.event.as_deref(), Some("close"));
    let data: Value = serde_json::from_str(close.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["code"], 1008);
    assert_eq!(data["reason"], "token expired");
    assert!(timeout(WAIT, s.next_event()).await.unwrap().is_none());
}

#[tokio::test]
async fn connection_limits_count_sse_subscribers() {
    let c = TestClient::new(room_app(history_hub()).max_connections(1));
    let first = c.get("/events/r").stream().await;
    assert_eq!(first.status(), StatusCode::OK);
    let over = c.get("/events/r").send().await;
    assert_eq!(over.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(over.text().contains("connection limit"));
    // A socket is refused too: one budget for both.
    assert!(c.websocket_connect("/ws/rooms/r").await.is_err());
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        let s = c.get("/events/r").stream().await;
        if s.status() == StatusCode::OK {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(again.is_some(), "the slot came back");

    let per_ip = TestClient::new(room_app(history_hub()).max_connections_per_ip(1));
    let _one = per_ip.get("/events/r").stream().await;
    // The test client gives each request its own port on the same IP.
    let res = per_ip.get("/events/r").send().await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_as_a_slow_consumer() {
    let hub = history_hub();
    let app = App::new().state(hub.clone()).get(
        "/events/{room}",
        |sse: SseRequest, Path(room): Path<String>, State(hub): State<Hub>| async move {
            sse.room(&hub, &room).max_queue_bytes(16 * 1024)
        },
    );
    // A tiny pipe: the client's "socket buffer" fills at once.
    let c = TestClient::new(app).pipe_capacity(1024);
    let s = c.get("/events/slow").stream().await;
    wait_until(|| hub.stats().rooms.get("slow") == Some(&1)).await;
    let payload = "x".repeat(1024);
    let mut cut = false;
    for _ in 0..2000 {
        if hub.broadcast_to("slow", payload.clone()).slow == 1 {
            cut = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(cut, "never cut");
    assert_eq!(hub.stats().slow_consumers, 1);
    // Out of the room at once, though its connection is still open.
    wait_until(|| hub.stats().connections == 0).await;
    drop(s);
}

#[tokio::test]
async fn shutdown_ends_open_event_streams() {
    let c = TestClient::new(room_app(history_hub()).shutdown_timeout(Duration::from_secs(30)));
    let mut room = c.get("/events/r").stream().await;
    let app = App::new().get("/plain", || async { Sse::new(stream::pending::<Event>()) });
    let plain_client = TestClient::new(app);
    let mut plain = plain_client.get("/plain").stream().await;
    let started = std::time::Instant::now();
    timeout(WAIT, c.shutdown()).await.expect("shutdown in time");
    timeout(WAIT, plain_client.shutdown())
        .await
        .expect("shutdown in time");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(timeout(WAIT, room.next_non_comment())
        .await
        .unwrap()
        .is_none());
    assert!(timeout(WAIT, plain.next_non_comment())
        .await
        .unwrap()
        .is_none());
    // New subscriptions are refused while draining.
    assert_eq!(
        c.get("/events/r").send().await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn over_real_tcp_a_dropped_client_is_noticed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = history_hub();
    let server = crate::spawn(room_app(hub.clone())).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /events/tcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    wait_until(|| hub.stats().rooms.get("tcp") == Some(&1)).await;
    hub.broadcast_to("tcp", "over tcp");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("over tcp") {
        let n = timeout(WAIT, tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    assert!(head.starts_with("HTTP/1.1 200 OK"));
    assert!(head.contains("content-type: text/event-stream"));
    assert!(head.contains("transfer-encoding: chunked"));
    drop(tcp);
    wait_until(|| hub.stats().connections == 0).await;
    server.shutdown().await.unwrap();
}
