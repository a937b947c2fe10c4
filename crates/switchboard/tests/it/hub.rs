//! The hub through real sockets: fan-out, ordering, slow consumers,
//! membership cleanup, history and recovery, presence.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::json;
use switchboard::{
    hub::{Hub, HubConfig, PresenceKind, RecoveryError, StreamPosition},
    testing::TestClient,
    App, Error, Message, Path, Socket, State, WebSocket, WsConfig,
};

fn room_app(hub: Hub, config: WsConfig) -> App {
    App::new().state(hub).websocket_with(
        "/rooms/{room}",
        config,
        |ws: WebSocket, Path(room): Path<String>, State(hub): State<Hub>| async move {
            let user = ws.query_param("user").unwrap_or("anon").to_owned();
            let mut ws = ws.accept().await?;
            let member = hub.connect_with_meta(ws.sender(), json!({ "user": user }));
            let joined = member.join(&room);
            ws.send_json(&json!({"joined": room, "epoch": joined.epoch, "offset": joined.offset}))
                .await?;
            if let Some(n) = ws.query_param("replay").and_then(|n| n.parse().ok()) {
                member.replay_last(&room, n);
            }
            while let Some(msg) = ws.recv_message().await? {
                member.broadcast_others(&room, msg);
            }
            Ok::<_, Error>(())
        },
    )
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

async fn joined(ws: &mut Socket) -> serde_json::Value {
    ws.recv_json::<serde_json::Value>().await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_clients_get_every_broadcast_once_in_order() {
    const CLIENTS: usize = 1000;
    const MESSAGES: usize = 20;
    let hub = Hub::new();
    let c = Arc::new(TestClient::new(room_app(hub.clone(), WsConfig::default())));
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        let mut ws = c.websocket_connect("/rooms/lobby").await.unwrap();
        joined(&mut ws).await;
        readers.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(MESSAGES);
            for _ in 0..MESSAGES {
                got.push(ws.recv_text().await.unwrap().unwrap());
            }
            // Nothing extra arrives.
            let extra = tokio::time::timeout(Duration::from_millis(100), ws.recv_text()).await;
            assert!(extra.is_err(), "unexpected extra message {extra:?}");
            got
        }));
    }
    assert_eq!(hub.stats().rooms["lobby"], CLIENTS);
    for i in 0..MESSAGES {
        let d = hub.broadcast_to("lobby", format!("m{i}"));
        assert_eq!((d.delivered, d.slow), (CLIENTS, 0));
    }
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_closed_as_slow_and_the_rest_get_everything() {
    const CLIENTS: usize = 1000;
    const MESSAGES: usize = 100;
    let hub = Hub::new();
    let config = WsConfig::default().max_queue_bytes(32 * 1024);
    let c = Arc::new(TestClient::new(room_app(hub.clone(), config)).pipe_capacity(16 * 1024));
    let received = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..CLIENTS - 1 {
        let mut ws = c.websocket_connect("/rooms/feed").await.unwrap();
        joined(&mut ws).await;
        let received = Arc::clone(&received);
        readers.push(tokio::spawn(async move {
            for i in 0..MESSAGES {
                let m = ws.recv_bytes().await.unwrap().unwrap();
                assert_eq!(m[0] as usize, i);
                received.fetch_add(1, Ordering::Relaxed);
            }
            ws
        }));
    }
    let mut stalled = c.websocket_connect("/rooms/feed").await.unwrap();
    joined(&mut stalled).await;
    let payload = vec![0u8; 1024];
    for i in 0..MESSAGES {
        // Pace the publisher by the readers that do read, so only a client
        // that stops reading can fall 32 KiB behind.
        let floor = (CLIENTS - 1) * i.saturating_sub(8);
        wait_until(|| received.load(Ordering::Relaxed) >= floor).await;
        let mut m = payload.clone();
        m[0] = i as u8;
        hub.broadcast_to("feed", m);
    }
    let mut alive = Vec::new();
    for r in readers {
        alive.push(r.await.unwrap());
    }
    assert_eq!(hub.stats().slow_consumers, 1);
    // The stalled client, reading at last, finds itself disconnected.
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stalled.recv().await {
                Ok(Message::Close(f)) => return f.map(|f| (f.code.0, f.reason)),
                Ok(_) => continue,
                Err(e) => return e.close_code().map(|c| (c.0, e.to_string())),
            }
        }
    })
    .await
    .unwrap();
    if let Some((code, reason)) = outcome {
        assert!(code == 1008 || code == 1006, "{code} {reason}");
    }
    wait_until(|| hub.stats().rooms.get("feed").copied().unwrap_or(0) == CLIENTS - 1).await;
}

#[tokio::test]
async fn membership_is_empty_after_everyone_leaves() {
    let hub = Hub::new();
    let c = TestClient::new(room_app(hub.clone(), WsConfig::default()));
    let mut sockets = Vec::new();
    for room in ["a", "a", "b"] {
        let mut ws = c
            .websocket_connect(&format!("/rooms/{room}"))
            .await
            .unwrap();
        joined(&mut ws).await;
        sockets.push(ws);
    }
    let stats = hub.stats();
    assert_eq!(stats.connections, 3);
    assert_eq!(
        serde_json::to_value(&stats.rooms).unwrap(),
        json!({"a": 2, "b": 1})
    );
    // One closes cleanly, one just drops (abnormal), one is closed by the server.
    let mut it = sockets.into_iter();
    it.next().unwrap().close(1000, "").await.unwrap();
    drop(it.next().unwrap());
    let third = it.next().unwrap();
    hub.broadcast_to("b", Message::Close(None));
    drop(third);
    wait_until(|| hub.stats().connections == 0).await;
    assert!(hub.stats().rooms.is_empty());
}

#[tokio::test]
async fn relay_goes_to_others_in_the_room_only() {
    let hub = Hub::new();
    let c = TestClient::new(room_app(hub.clone(), WsConfig::default()));
    let mut a = c.websocket_connect("/rooms/x").await.unwrap();
    let mut b = c.websocket_connect("/rooms/x").await.unwrap();
    let mut other = c.websocket_connect("/rooms/y").await.unwrap();
    for ws in [&mut a, &mut b, &mut other] {
        joined(ws).await;
    }
    a.send_text("hello").await.unwrap();
    a.send_bytes(vec![1u8, 2]).await.unwrap();
    assert_eq!(b.recv().await.unwrap(), Message::text("hello"));
    assert_eq!(b.recv().await.unwrap(), Message::binary(vec![1u8, 2]));
    for ws in [&mut a, &mut other] {
        assert!(tokio::time::timeout(Duration::from_millis(100), ws.recv())
            .await
            .is_err());
    }
}

#[tokio::test]
async fn history_for_late_joiners_and_exact_recovery() {
    let hub = Hub::with_config(HubConfig::default().history(5));
    let c = TestClient::new(room_app(hub.clone(), WsConfig::default()));
    let mut first = c.websocket_connect("/rooms/h").await.unwrap();
    let info = joined(&mut first).await;
    let epoch = info["epoch"].as_str().unwrap().to_owned();
    for i in 1..=7 {
        assert_eq!(hub.broadcast_to("h", format!("m{i}")).offset, Some(i));
    }
    // A late joiner replays the last 3 of the 5 kept.
    let mut late = c.websocket_connect("/rooms/h?replay=3").await.unwrap();
    assert_eq!(joined(&mut late).await["offset"], 7);
    for i in 5..=7 {
        assert_eq!(late.recv_text().await.unwrap().unwrap(), format!("m{i}"));
    }
    // Recovery: exactly what was missed after offset 4.
    let got = hub
        .recover(
            "h",
            &StreamPosition {
                offset: 4,
                epoch: epoch.clone(),
            },
        )
        .unwrap();
    let texts: Vec<_> = got.iter().map(|e| (e.offset, e.message())).collect();
    assert_eq!(
        texts,
        [
            (5, Message::text("m5")),
            (6, Message::text("m6")),
            (7, Message::text("m7"))
        ]
    );
    assert!(hub
        .recover(
            "h",
            &StreamPosition {
                offset: 7,
                epoch: epoch.clone()
            }
        )
        .unwrap()
        .is_empty());
    // Too far back: refused whole, never partial.
    assert_eq!(
        hub.recover(
            "h",
            &StreamPosition {
                offset: 1,
                epoch: epoch.clone()
            }
        ),
        Err(RecoveryError::TooOld {
            requested: 1,
            oldest: 3
        })
    );
    assert!(matches!(
        hub.recover(
            "h",
            &StreamPosition {
                offset: 2,
                epoch: "other".into()
            }
        ),
        Err(RecoveryError::EpochChanged { .. })
    ));
    assert!(matches!(
        hub.recover("h", &StreamPosition { offset: 9, epoch }),
        Err(RecoveryError::Ahead { .. })
    ));
}

#[tokio::test]
async fn presence_lists_members_with_metadata_and_emits_events() {
    let hub = Hub::new();
    let mut events = hub.presence_events();
    let c = TestClient::new(room_app(hub.clone(), WsConfig::default()));
    let mut ann = c.websocket_connect("/rooms/p?user=ann").await.unwrap();
    joined(&mut ann).await;
    let mut bob = c.websocket_connect("/rooms/p?user=bob").await.unwrap();
    joined(&mut bob).await;
    let mut users: Vec<String> = hub
        .members("p")
        .iter()
        .map(|m| m.meta["user"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    assert_eq!(users, ["ann", "bob"]);
    bob.close(1000, "").await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        seen.push((ev.kind, ev.meta["user"].as_str().unwrap().to_owned()));
    }
    assert_eq!(
        seen,
        [
            (PresenceKind::Joined, "ann".to_owned()),
            (PresenceKind::Joined, "bob".to_owned()),
            (PresenceKind::Left, "bob".to_owned())
        ]
    );
}

#[tokio::test]
async fn two_nodes_on_a_memory_bus_act_as_one() {
    use switchboard::hub::MemoryBus;
    let bus = MemoryBus::new(100);
    let hub_a = Hub::with_backplane(HubConfig::default(), Arc::new(bus.node("a")));
    let hub_b = Hub::with_backplane(HubConfig::default(), Arc::new(bus.node("b")));
    let a = TestClient::new(room_app(hub_a.clone(), WsConfig::default()));
    let b = TestClient::new(room_app(hub_b.clone(), WsConfig::default()));
    let mut a1 = a.websocket_connect("/rooms/r?user=a1").await.unwrap();
    let mut b1 = b.websocket_connect("/rooms/r?user=b1").await.unwrap();
    let mut b2 = b.websocket_connect("/rooms/r?user=b2").await.unwrap();
    for ws in [&mut a1, &mut b1, &mut b2] {
        joined(ws).await;
    }
    // A member on node a sends; both members on node b get it once, in order.
    for i in 0..5 {
        a1.send_text(format!("from a {i}")).await.unwrap();
    }
    for ws in [&mut b1, &mut b2] {
        for i in 0..5 {
            assert_eq!(ws.recv_text().await.unwrap(), Some(format!("from a {i}")));
        }
    }
    // b1 sends: b2 (same node) and a1 (other node) get it; b1 does not.
    b1.send_text("from b1").await.unwrap();
    assert_eq!(b2.recv_text().await.unwrap().as_deref(), Some("from b1"));
    assert_eq!(a1.recv_text().await.unwrap().as_deref(), Some("from b1"));
    for ws in [&mut a1, &mut b1, &mut b2] {
        assert!(tokio::time::timeout(Duration::from_millis(100), ws.recv())
            .await
            .is_err());
    }
    // Presence across nodes, and recovery from the cluster's history.
    let mut users: Vec<String> = hub_a
        .cluster_members("r")
        .await
        .unwrap()
        .iter()
        .map(|m| m.meta["user"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    assert_eq!(users, ["a1", "b1", "b2"]);
    let pos = hub_b.position("r").await.unwrap();
    assert_eq!(pos.offset, 6);
    let d = hub_a.publish("r", "published").await.unwrap();
    assert_eq!(d.offset, Some(7));
    let missed = hub_b.cluster_recover("r", &pos).await.unwrap().unwrap();
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].message(), Message::text("published"));
    assert_eq!(b1.recv_text().await.unwrap().as_deref(), Some("published"));
    // Leaving a room on a node drops the node's subscription.
    drop(a1);
    wait_until(|| hub_a.stats().backplane.unwrap().subscriptions == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_stats_and_close_anywhere_on_a_memory_bus() {
    use switchboard::{hub::MemoryBus, CloseCode, CloseFrame};
    let bus = MemoryBus::new(0);
    let hub_a = Hub::with_backplane(HubConfig::default(), Arc::new(bus.node("a")));
    let hub_b = Hub::with_backplane(HubConfig::default(), Arc::new(bus.node("b")));
    let a = TestClient::new(room_app(hub_a.clone(), WsConfig::default()));
    let b = TestClient::new(room_app(hub_b.clone(), WsConfig::default()));
    let mut a1 = a.websocket_connect("/rooms/r?user=a1").await.unwrap();
    let mut b1 = b.websocket_connect("/rooms/s?user=b1").await.unwrap();
    let mut b2 = b.websocket_connect("/rooms/r?user=b2").await.unwrap();
    for ws in [&mut a1, &mut b1, &mut b2] {
        joined(ws).await;
    }
    let stats = hub_a.cluster_stats().await.unwrap();
    assert_eq!(stats.connections, 3);
    assert_eq!(stats.rooms["r"], 2);
    assert_eq!(stats.rooms["s"], 1);
    assert_eq!(stats.nodes.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert!(stats.unanswered.is_empty());
    // Presence names each member's node: (node, conn) is cluster-wide.
    let members = hub_a.cluster_members("r").await.unwrap();
    let b2_id = members
        .iter()
        .find(|m| m.meta["user"] == "b2")
        .map(|m| (m.node.as_deref().map(str::to_owned), m.conn))
        .unwrap();
    assert_eq!(b2_id.0.as_deref(), Some("b"));
    let frame = CloseFrame::new(CloseCode(4001), "bye");
    assert!(hub_a
        .cluster_close("b", b2_id.1, frame.clone())
        .await
        .unwrap());
    match tokio::time::timeout(Duration::from_secs(2), b2.recv())
        .await
        .unwrap()
    {
        Ok(Message::Close(Some(f))) => assert_eq!(f, frame),
        other => assert_eq!(b2.close_frame(), Some(&frame), "{other:?}"),
    }
    assert!(!hub_a.cluster_close("nobody", b2_id.1, frame).await.unwrap());
    // Not clustered: this node's own stats.
    let single = Hub::new().cluster_stats().await.unwrap();
    assert_eq!(single.connections, 0);
}

#[test]
fn member_less_history_rooms_are_evicted_oldest_first_at_the_limit() {
    let hub = Hub::with_config(HubConfig::default().history(2).max_history_rooms(2));
    for room in ["a", "b"] {
        hub.broadcast_to(room, format!("to {room}"));
    }
    // At the limit: both kept.
    assert_eq!(hub.history_last("a", 10).len(), 1);
    assert_eq!(hub.history_last("b", 10).len(), 1);
    // One more: the least recently used ("a") goes.
    hub.broadcast_to("c", "to c");
    assert!(hub.history_last("a", 10).is_empty());
    assert_eq!(
        hub.history_last("b", 10)[0].message(),
        Message::text("to b")
    );
    assert_eq!(
        hub.history_last("c", 10)[0].message(),
        Message::text("to c")
    );
}
