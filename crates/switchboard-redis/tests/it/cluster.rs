//! Several nodes (each a hub with its own backplane and connections) on
//! one real Redis, behaving as one.

use std::{collections::HashMap, time::Duration};

use switchboard::{
    hub::{Backplane, ConnId, Envelope, RecoveryError, StreamPosition},
    proto::OpCode,
    Bytes, CloseCode, CloseFrame, Message,
};

use crate::{redis_testing::RedisServer, support::*};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_broadcast_exactly_once_in_order() {
    const PER_SENDER: usize = 100;
    let redis = RedisServer::start();
    let nodes = [
        Node::start(fast(&redis.url(), "a")).await,
        Node::start(fast(&redis.url(), "b")).await,
        Node::start(fast(&redis.url(), "c")).await,
    ];
    let mut sockets = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for m in 0..2 {
            let user = format!("{}{m}", ["a", "b", "c"][n]);
            sockets.push((user.clone(), node.member("r", &user).await));
        }
    }
    subscribed(&nodes.iter().collect::<Vec<_>>(), "r").await;
    // Every member sends; senders interleave on every node.
    for i in 0..PER_SENDER {
        for (user, ws) in &sockets {
            ws.send_text(format!("{user} {i}")).await.unwrap();
        }
    }
    let senders = sockets.len() - 1;
    let expected = senders * PER_SENDER;
    for (me, ws) in &mut sockets {
        let mut next: HashMap<String, usize> = HashMap::new();
        for _ in 0..expected {
            let msg = recv_within(ws, Duration::from_secs(5)).await;
            let (from, i) = msg.split_once(' ').unwrap();
            assert_ne!(from, me, "{me} got its own message back");
            let i: usize = i.parse().unwrap();
            let want = next.entry(from.to_owned()).or_insert(0);
            assert_eq!(
                i, *want,
                "{me}: {from}'s messages out of order or duplicated"
            );
            *want += 1;
        }
        assert_eq!(next.len(), senders);
        assert!(next.values().all(|&n| n == PER_SENDER));
    }
    for (_, ws) in &mut sockets {
        nothing_more(ws, Duration::from_millis(200)).await;
    }
    for node in &nodes {
        let h = node.bp.health();
        assert!(h.healthy, "{h:?}");
        assert_eq!(h.publish_errors, 0);
        assert_eq!(node.hub.stats().backplane_errors, 0);
    }
}

/// The hub's broadcasts drop the backplane's future at once (no task per
/// message), so a queued message must be sent whether or not anyone waits
/// for its acknowledgement (the `Backplane::publish` contract). A writer
/// that dropped jobs whose future was gone loses every one of these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_broadcasts_reach_the_other_node() {
    const N: usize = 20;
    let redis = RedisServer::start();
    let a = Node::start(fast(&redis.url(), "a")).await;
    let b = Node::start(fast(&redis.url(), "b")).await;
    let mut b1 = b.member("r", "b1").await;
    subscribed(&[&b], "r").await;
    // `Hub::broadcast_to` (through `publish_frame`), from a task.
    for i in 0..N {
        a.hub.broadcast_to("r", format!("task {i}"));
    }
    // The same from a thread outside any runtime.
    let hub = a.hub.clone();
    std::thread::spawn(move || {
        for i in 0..N {
            hub.broadcast_to("r", format!("thread {i}"));
        }
    })
    .join()
    .unwrap();
    // The backplane itself: each future dropped without ever being polled.
    for i in 0..N {
        drop(a.bp.publish(Envelope {
            origin: "a".into(),
            room: "r".into(),
            opcode: OpCode::Text,
            payload: Bytes::from(format!("direct {i}")),
            offset: None,
        }));
    }
    // All of them, in the order they were published.
    for kind in ["task", "thread", "direct"] {
        for i in 0..N {
            assert_eq!(
                recv_within(&mut b1, Duration::from_secs(5)).await,
                format!("{kind} {i}")
            );
        }
    }
    nothing_more(&mut b1, Duration::from_millis(200)).await;
    // And recorded in the room's stream, under consecutive offsets.
    assert_eq!(
        b.hub.position("r").await.unwrap().offset,
        3 * N as u64,
        "every message in the stream"
    );
    assert_eq!(a.bp.health().publish_errors, 0);
    assert_eq!(a.hub.stats().backplane_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_stats_aggregate() {
    let redis = RedisServer::start();
    let a = Node::start(fast(&redis.url(), "a")).await;
    let b = Node::start(fast(&redis.url(), "b")).await;
    let c = Node::start(fast(&redis.url(), "c")).await;
    let _a1 = a.member("lobby", "ann").await;
    let _b1 = b.member("lobby", "bob").await;
    let _b2 = b.member("lobby", "bea").await;
    let _c1 = c.member("other", "cid").await;
    let mut users = Vec::new();
    for _ in 0..200 {
        let members = c.hub.cluster_members("lobby").await.unwrap();
        users = members
            .iter()
            .map(|m| {
                let node = m.node.as_deref().unwrap().to_owned();
                (node, m.meta["user"].as_str().unwrap().to_owned())
            })
            .collect();
        users.sort();
        if users.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(users, pairs(&[("a", "ann"), ("b", "bea"), ("b", "bob")]));

    let stats = a.hub.cluster_stats().await.unwrap();
    assert!(stats.unanswered.is_empty(), "{stats:?}");
    assert_eq!(stats.nodes.len(), 3);
    assert_eq!(stats.connections, 4);
    assert_eq!(stats.rooms["lobby"], 3);
    assert_eq!(stats.rooms["other"], 1);
    assert_eq!(stats.nodes["b"].connections, 2);
    assert!(stats.nodes["c"].backplane.as_ref().unwrap().healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_wherever_it_is() {
    let redis = RedisServer::start();
    let a = Node::start(fast(&redis.url(), "a")).await;
    let b = Node::start(fast(&redis.url(), "b")).await;
    let mut victim = a.member("r", "victim").await;
    let conn = a.hub.members("r")[0].conn;
    let frame = CloseFrame::new(CloseCode(4000), "kicked");
    // From node b: closes the socket on node a.
    assert!(b.hub.cluster_close("a", conn, frame.clone()).await.unwrap());
    let got = tokio::time::timeout(Duration::from_secs(2), victim.recv())
        .await
        .expect("close in time");
    match got {
        Ok(Message::Close(Some(f))) => assert_eq!(f, frame),
        Err(_) | Ok(Message::Close(None)) => {
            assert_eq!(victim.close_frame(), Some(&frame))
        }
        other => panic!("expected a close, got {other:?}"),
    }
    // No such connection, no such node: false, quickly.
    assert!(!b
        .hub
        .cluster_close("a", ConnId(999), frame.clone())
        .await
        .unwrap());
    let t = std::time::Instant::now();
    assert!(!b.hub.cluster_close("ghost", conn, frame).await.unwrap());
    assert!(t.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_cluster_wide_and_recovery_is_exact_or_refused() {
    let redis = RedisServer::start();
    let a = Node::start(fast(&redis.url(), "a").history(10)).await;
    let b = Node::start(fast(&redis.url(), "b").history(10)).await;
    let start = b.hub.position("h").await.unwrap();
    assert_eq!(start.offset, 0);
    for i in 1..=5 {
        let d = a.hub.publish("h", format!("m{i}")).await.unwrap();
        assert_eq!(d.offset, Some(i));
    }
    // Node b publishes into the same stream.
    let d = b.hub.publish("h", "m6").await.unwrap();
    assert_eq!(d.offset, Some(6));
    let pos = a.hub.position("h").await.unwrap();
    assert_eq!(
        pos,
        StreamPosition {
            offset: 6,
            epoch: start.epoch.clone()
        }
    );
    let since = StreamPosition {
        offset: 3,
        epoch: start.epoch.clone(),
    };
    let missed = b.hub.cluster_recover("h", &since).await.unwrap().unwrap();
    let texts: Vec<Message> = missed.iter().map(|e| e.message()).collect();
    assert_eq!(
        texts,
        ["m4", "m5", "m6"].map(Message::text).to_vec(),
        "exactly the missed messages"
    );
    assert_eq!(
        missed.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [4, 5, 6]
    );
    assert_eq!(a.hub.cluster_recover("h", &pos).await.unwrap(), Ok(vec![]));
    // A gap beyond the history (10) is refused whole.
    for i in 7..=20 {
        a.hub.publish("h", format!("m{i}")).await.unwrap();
    }
    let old = b.hub.cluster_recover("h", &since).await.unwrap();
    assert!(
        matches!(old, Err(RecoveryError::TooOld { requested: 3, .. })),
        "{old:?}"
    );
    // Wrong epoch, offset from the future.
    let other = StreamPosition {
        offset: 3,
        epoch: "not-this-one".into(),
    };
    assert_eq!(
        b.hub.cluster_recover("h", &other).await.unwrap(),
        Err(RecoveryError::EpochChanged {
            current: start.epoch.clone()
        })
    );
    let ahead = StreamPosition {
        offset: 99,
        epoch: start.epoch,
    };
    assert!(matches!(
        b.hub.cluster_recover("h", &ahead).await.unwrap(),
        Err(RecoveryError::Ahead {
            requested: 99,
            last: 20
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_presence_expires_and_a_stopped_nodes_goes_at_once() {
    let redis = RedisServer::start();
    let a = Node::start(fast(&redis.url(), "a")).await;
    let b = Node::start(fast(&redis.url(), "b")).await;
    let c = Node::start(fast(&redis.url(), "c")).await;
    let _a1 = a.member("p", "ann").await;
    let b1 = b.member("p", "bob").await;
    let c1 = c.member("p", "cid").await;
    let count = |n: &Node| {
        let hub = n.hub.clone();
        async move { hub.cluster_members("p").await.map(|m| m.len()).unwrap_or(0) }
    };
    for _ in 0..200 {
        if count(&a).await == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count(&a).await, 3);
    // Node b dies without a word (its tasks stop, nothing is cleaned up):
    // its member stays listed until the TTL (1.5 s), then disappears.
    b.bp.abort();
    drop(b1);
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&a).await, 3, "entries live until the TTL");
    let t = std::time::Instant::now();
    while count(&a).await != 2 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "ghost member after the TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = a.hub.cluster_stats().await.unwrap();
    assert_eq!(stats.nodes.keys().collect::<Vec<_>>(), ["a", "c"]);
    // Node c shuts down cleanly: gone at once.
    c.bp.shutdown().await;
    drop(c1);
    assert_eq!(count(&a).await, 1);
}
