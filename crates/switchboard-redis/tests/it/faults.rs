//! Redis failing under the cluster: killed (losing its data or not),
//! stalled, absent at startup; a subscription that dies silently; the
//! publish queue's bound. Every wait here is bounded.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use switchboard::{
    hub::{Backplane, Envelope, RecoveryError},
    proto::OpCode,
    Bytes, Message,
};

use crate::{
    redis_testing::{FreezingProxy, RedisServer},
    support::*,
};

/// The promise: cross-node delivery resumes within this of Redis being
/// back.
const RESUME: Duration = Duration::from_secs(3);

/// `publish` fails within its timeout (500 ms) plus scheduling slack.
const PUBLISH_BOUND: Duration = Duration::from_millis(800);

/// A failed publish nobody awaits is counted once its pipeline gives up:
/// at most the publish timeout (its deadline) plus the command timeout
/// (the pipeline's own wait), 500 ms each, plus scheduling slack.
const COUNT_BOUND: Duration = Duration::from_millis(1500);

/// Tasks alive on this test's runtime.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Publish failures as the backplane, the hub's stats and `/metrics` see
/// them; they must agree.
fn publish_errors(node: &Node) -> u64 {
    let counted = node.bp.health().publish_errors;
    let stats = node.hub.stats();
    assert_eq!(stats.backplane_errors, counted, "hub stats disagree");
    assert_eq!(
        stats.backplane.map(|h| h.publish_errors),
        Some(counted),
        "hub stats' health disagrees"
    );
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_local_rooms_carry_on_and_delivery_resumes() {
    const MAX_MESSAGES: usize = 20_000;
    let mut redis = RedisServer::start();
    let a = Node::start(fast(&redis.url(), "a")).await;
    let b = Node::start(fast(&redis.url(), "b")).await;
    let a1 = a.member("r", "a1").await;
    let mut a2 = a.member("r", "a2").await;
    let mut b1 = b.member("r", "b1").await;
    subscribed(&[&a, &b], "r").await;
    let before = a.hub.position("r").await.unwrap();

    // Load: a1 sends a numbered message every millisecond.
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
        tokio::spawn(async move {
            for i in 0..MAX_MESSAGES {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                a1.send_text(i.to_string()).await.unwrap();
                sent.store(i + 1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            a1
        })
    };
    // Readers note violations here (a panic in a task would go unseen).
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    // a2 (same node) must get every message, in order, outage or not.
    let local = Arc::new(AtomicUsize::new(0));
    let local_reader = {
        let (local, errors) = (Arc::clone(&local), Arc::clone(&errors));
        tokio::spawn(async move {
            loop {
                let Ok(Ok(Some(m))) =
                    tokio::time::timeout(Duration::from_secs(2), a2.recv_text()).await
                else {
                    break;
                };
                if m == "direct" {
                    continue; // the publishes made during the outage
                }
                let n = local.load(Ordering::Relaxed);
                if m != n.to_string() {
                    errors
                        .lock()
                        .unwrap()
                        .push(format!("local: got {m}, expected {n}"));
                }
                local.store(n + 1, Ordering::Relaxed);
            }
        })
    };
    // b1 (other node) gets an increasing subsequence: never a duplicate,
    // never out of order; a gap only around the outage.
    let remote: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let remote_reader = {
        let (remote, errors) = (Arc::clone(&remote), Arc::clone(&errors));
        tokio::spawn(async move {
            loop {
                let Ok(Ok(Some(m))) =
                    tokio::time::timeout(Duration::from_secs(2), b1.recv_text()).await
                else {
                    break;
                };
                if m == "direct" {
                    continue;
                }
                let Ok(i) = m.parse::<usize>() else {
                    errors.lock().unwrap().push(format!("remote: got {m:?}"));
                    continue;
                };
                let mut r = remote.lock().unwrap();
                if let Some(&(last, _)) = r.last() {
                    if i <= last {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("remote: got {i} after {last}"));
                    }
                }
                r.push((i, Instant::now()));
            }
        })
    };
    let remote_len = || remote.lock().unwrap().len();
    wait_for("cross-node traffic", Duration::from_secs(5), || {
        remote_len() >= 50
    })
    .await;

    redis.kill();
    // Publishing fails, within its bound, and says why.
    for _ in 0..5 {
        let t = Instant::now();
        let r = a.hub.publish("r", "direct").await;
        assert!(r.is_err(), "publish succeeded with Redis dead");
        assert!(
            t.elapsed() < PUBLISH_BOUND,
            "publish took {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("health red on both", Duration::from_secs(3), || {
        !a.bp.health().healthy && !b.bp.health().healthy
    })
    .await;
    // Local delivery goes on during the outage.
    let l0 = local.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        local.load(Ordering::Relaxed) > l0 + 50,
        "local delivery stalled"
    );

    redis.restart(); // no persistence: Redis comes back empty
    let back = Instant::now();
    let first_after = sent.load(Ordering::Relaxed);
    let resumed = loop {
        let seen = remote
            .lock()
            .unwrap()
            .iter()
            .find(|(i, _)| *i >= first_after)
            .map(|(_, t)| *t);
        if let Some(t) = seen {
            break t.saturating_duration_since(back);
        }
        assert!(
            back.elapsed() < RESUME + Duration::from_secs(2),
            "delivery never resumed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        resumed < RESUME,
        "cross-node delivery resumed after {resumed:?}"
    );
    eprintln!("delivery resumed {resumed:?} after the restart");
    wait_for("health green", RESUME, || {
        a.bp.health().healthy && b.bp.health().healthy
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let _a1 = load.await.unwrap();
    let total = sent.load(Ordering::Relaxed);
    wait_for("local reader done", Duration::from_secs(5), || {
        local.load(Ordering::Relaxed) == total
    })
    .await;
    // Everything sent after the restart reached the other node.
    wait_for("remote tail", Duration::from_secs(5), || {
        remote.lock().unwrap().last().map(|(i, _)| *i) == Some(total - 1)
    })
    .await;
    assert!(a.hub.stats().backplane_errors > 0);
    assert!(a.bp.health().publish_errors > 0);

    // Redis lost the room: recovery says so (a new epoch), it does not
    // pretend with a partial replay.
    match a.hub.cluster_recover("r", &before).await.unwrap() {
        Err(RecoveryError::EpochChanged { current }) => {
            assert!(!current.is_empty());
            assert_ne!(current, before.epoch);
        }
        other => panic!("expected a new epoch, got {other:?}"),
    }
    local_reader.abort();
    remote_reader.abort();
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} violations, first: {:?}",
        errors.len(),
        errors.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_with_its_data_kept_recovery_is_exact() {
    let mut redis = RedisServer::start_persistent();
    let a = Node::start(fast(&redis.url(), "a")).await;
    let b = Node::start(fast(&redis.url(), "b")).await;
    let mut b1 = b.member("h", "b1").await;
    subscribed(&[&b], "h").await;
    for i in 1..=10 {
        a.hub.publish("h", format!("m{i}")).await.unwrap();
    }
    for i in 1..=10 {
        assert_eq!(
            recv_within(&mut b1, Duration::from_secs(2)).await,
            format!("m{i}")
        );
    }
    // The client's bookmark.
    let pos = b.hub.position("h").await.unwrap();
    assert_eq!(pos.offset, 10);
    for i in 11..=20 {
        a.hub.publish("h", format!("m{i}")).await.unwrap();
    }
    redis.kill();
    redis.restart(); // appendfsync always: every acknowledged publish is kept
    let back = Instant::now();
    wait_for("healthy after restart", RESUME, || {
        a.bp.health().healthy && b.bp.health().healthy
    })
    .await;
    eprintln!("healthy {:?} after the restart", back.elapsed());
    let missed = b.hub.cluster_recover("h", &pos).await.unwrap().unwrap();
    assert_eq!(
        missed.iter().map(|e| e.message()).collect::<Vec<_>>(),
        (11..=20)
            .map(|i| Message::text(format!("m{i}")))
            .collect::<Vec<_>>()
    );
    // The stream goes on in the same epoch.
    let d = a.hub.publish("h", "m21").await.unwrap();
    assert_eq!(d.offset, Some(21));
    assert_eq!(b.hub.position("h").await.unwrap().epoch, pos.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stalled_calls_time_out_health_turns_red_nothing_hangs() {
    let redis = RedisServer::start();
    let a = Node::start(fast(&redis.url(), "a")).await;
    let b = Node::start(fast(&redis.url(), "b")).await;
    let mut a1 = a.member("r", "a1").await;
    let mut a2 = a.member("r", "a2").await;
    let mut b1 = b.member("r", "b1").await;
    subscribed(&[&a, &b], "r").await;

    redis.pause(); // SIGSTOP: sockets open, no answers
    let t = Instant::now();
    assert!(a.hub.publish("r", "stalled").await.is_err());
    assert!(
        t.elapsed() < PUBLISH_BOUND,
        "publish took {:?}",
        t.elapsed()
    );
    // ...but local members got it.
    for ws in [&mut a1, &mut a2] {
        assert_eq!(recv_within(ws, Duration::from_millis(200)).await, "stalled");
    }
    // Every other call is bounded too.
    let t = Instant::now();
    assert!(b.hub.cluster_members("r").await.is_err());
    assert!(b.hub.position("r").await.is_err());
    assert!(b.hub.cluster_stats().await.is_err());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "calls took {:?}",
        t.elapsed()
    );
    wait_for("health red", Duration::from_secs(3), || {
        !a.bp.health().healthy && !b.bp.health().healthy
    })
    .await;
    // The hub itself never waits on Redis.
    let t = Instant::now();
    let extra = a.member("r", "late").await;
    drop(extra);
    a2.send_text("local").await.unwrap();
    assert_eq!(
        recv_within(&mut a1, Duration::from_millis(200)).await,
        "local"
    );
    assert!(t.elapsed() < Duration::from_millis(500));

    redis.resume();
    let back = Instant::now();
    wait_for("healthy after the stall", RESUME, || {
        a.bp.health().healthy && b.bp.health().healthy
    })
    .await;
    // Cross-node delivery works again (the stalled publish may or may not
    // have gone through: an error means "not confirmed").
    a1.send_text("after").await.unwrap();
    loop {
        let m = recv_within(&mut b1, RESUME).await;
        if m == "after" {
            break;
        }
        assert!(m == "stalled" || m == "local", "unexpected {m}");
    }
    eprintln!("delivering {:?} after SIGCONT", back.elapsed());
}

/// Broadcasts drop the backplane's future (no task each), so failures
/// are counted by the backplane itself: N fire-and-forget broadcasts that
/// fail raise the count by exactly N, within a bounded time, whether Redis
/// is stalled (queued, sent, then timed out by the writer) or known dead
/// (refused at once). Publishes awaited alongside them are counted once
/// too: their futures time out first (the command timeout is longer than
/// the publish timeout here), and only the writer counts them, later.
///
/// On a current-thread runtime nothing else runs while the broadcasts are
/// made, so the task count before and after them is exact.
#[tokio::test]
async fn fire_and_forget_failures_are_counted_exactly_once_without_a_task_each() {
    const N: u64 = 100;
    const AWAITED: u64 = 5;
    let mut redis = RedisServer::start();
    let config = fast(&redis.url(), "a").command_timeout(Duration::from_millis(1000));
    // Publish timeout (500 ms) + command timeout + slack.
    let count_bound = Duration::from_millis(2000);
    let a = Node::start(config).await;
    let _a1 = a.member("r", "a1").await;
    assert_eq!(publish_errors(&a), 0);
    let awaited = |what: &'static str| {
        futures_util::future::join_all((0..AWAITED).map(|_| a.hub.publish("r", what)))
    };

    // Stalled: everything is queued and sent, and Redis never answers.
    redis.pause();
    let tasks = alive_tasks();
    for i in 0..N {
        a.hub.broadcast_to("r", format!("stalled {i}"));
    }
    assert!(
        alive_tasks() <= tasks,
        "{} tasks spawned by {N} broadcasts",
        alive_tasks() - tasks
    );
    let t = Instant::now();
    // Queued behind the broadcasts, while the link still looks up.
    for r in awaited("stalled, awaited").await {
        assert!(r.unwrap_err().0.contains("timed out"));
    }
    assert!(t.elapsed() < PUBLISH_BOUND, "took {:?}", t.elapsed());
    wait_for("stalled publishes counted", count_bound, || {
        publish_errors(&a) >= N + AWAITED
    })
    .await;
    eprintln!("stalled publishes counted after {:?}", t.elapsed());
    // Exactly once each: nothing more turns up later.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(publish_errors(&a), N + AWAITED);

    // Dead, and known to be: refused at once, and counted in the call.
    redis.kill();
    wait_for("command connection known down", RESUME, || {
        a.bp.health()
            .detail
            .is_some_and(|d| d.contains("command connection down"))
    })
    .await;
    let before = publish_errors(&a);
    let tasks = alive_tasks();
    for i in 0..N {
        a.hub.broadcast_to("r", format!("dead {i}"));
    }
    assert!(alive_tasks() <= tasks, "tasks spawned by broadcasts");
    assert_eq!(publish_errors(&a), before + N, "counted in the call");
    for r in awaited("dead, awaited").await {
        assert!(r.is_err());
    }
    assert_eq!(publish_errors(&a), before + N + AWAITED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(publish_errors(&a), before + N + AWAITED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_subscription_turns_health_red_and_is_rebuilt() {
    let redis = RedisServer::start();
    let proxy = FreezingProxy::start(redis.addr()).await;
    let a = Node::start(fast(&redis.url(), "a")).await;
    let b = Node::start(fast(&proxy.url(), "b")).await;
    let a1 = a.member("r", "a1").await;
    let mut b1 = b.member("r", "b1").await;
    subscribed(&[&a, &b], "r").await;
    a1.send_text("before").await.unwrap();
    assert_eq!(recv_within(&mut b1, Duration::from_secs(2)).await, "before");

    // Watch b's health from the side.
    let saw_red = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (bp, saw_red) = (b.bp.clone(), Arc::clone(&saw_red));
        tokio::spawn(async move {
            for _ in 0..1000 {
                if !bp.health().healthy {
                    saw_red.store(true, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    proxy.freeze_subscriptions(); // b's subscription: open, and silent
    let frozen = Instant::now();
    // Keep sending until b1 hears again.
    let mut i = 0;
    let got = loop {
        a1.send_text(format!("during {i}")).await.unwrap();
        i += 1;
        if let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_millis(50), b1.recv_text()).await
        {
            break m;
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(5),
            "subscription never rebuilt"
        );
    };
    assert!(got.starts_with("during"), "{got}");
    eprintln!(
        "subscription rebuilt {:?} after it went silent",
        frozen.elapsed()
    );
    let _ = watcher.await;
    assert!(
        saw_red.load(Ordering::Relaxed),
        "health stayed green while deaf"
    );
    wait_for("healthy again", RESUME, || b.bp.health().healthy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_queue_is_bounded() {
    let redis = RedisServer::start();
    let a = Node::start(fast(&redis.url(), "a").queue(4, 1 << 20)).await;
    redis.pause();
    let envelope = || Envelope {
        origin: "a".into(),
        room: "r".into(),
        opcode: OpCode::Text,
        payload: Bytes::from_static(b"x"),
        offset: None,
    };
    let t = Instant::now();
    let calls: Vec<_> = (0..50).map(|_| a.bp.publish(envelope())).collect();
    let mut full = 0;
    for call in calls {
        if let Err(e) = call.await {
            full += usize::from(e.0.contains("queue full"));
        } else {
            panic!("a publish succeeded against a stopped Redis");
        }
    }
    assert!(full >= 40, "only {full} of 50 refused by the full queue");
    assert!(t.elapsed() < PUBLISH_BOUND, "took {:?}", t.elapsed());
    // Every one of the 50 failures counted, each once: the refused ones
    // in the call, the queued ones by the writer when it gives up on them.
    wait_for("all 50 counted", COUNT_BOUND, || {
        a.bp.health().publish_errors >= 50
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.bp.health().publish_errors, 50);
    assert_eq!(a.hub.stats().backplane_errors, 50);
    redis.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_absent_at_startup_then_arriving() {
    let mut redis = RedisServer::start();
    redis.kill();
    let a = Node::start_unready(fast(&redis.url(), "a"));
    let _a1 = a.member("r", "a1").await; // the hub works without Redis
    let t = Instant::now();
    assert!(a.hub.publish("r", "x").await.is_err());
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "fail fast when down"
    );
    assert!(!a.bp.health().healthy);
    redis.restart();
    assert!(a.bp.ready(RESUME).await, "{:?}", a.bp.health());
    assert_eq!(a.hub.publish("r", "y").await.unwrap().offset, Some(1));
    wait_for("subscribed from the registry", RESUME, || {
        a.bp.is_subscribed("r")
    })
    .await;
}
