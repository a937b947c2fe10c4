//! Graceful shutdown: 1001 to open sockets, 503 to new upgrades, deadline.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use switchboard::{testing::TestClient, App, Error, Message, StatusCode, WebSocket, WsClient};

fn app() -> App {
    App::new().websocket("/ws/echo", |ws: WebSocket| async move {
        let mut ws = ws.accept().await?;
        while let Some(msg) = ws.recv_message().await? {
            ws.send(msg).await?;
        }
        Ok::<_, Error>(())
    })
}

#[tokio::test]
async fn open_sockets_get_1001_and_hooks_run() {
    let hook_ran = Arc::new(AtomicBool::new(false));
    let flag = hook_ran.clone();
    let app = app().on_shutdown(move || {
        let flag = flag.clone();
        async move { flag.store(true, Ordering::SeqCst) }
    });
    let server = crate::spawn(app).await;
    let mut ws = WsClient::new(format!("ws://{}/ws/echo", server.addr))
        .connect()
        .await
        .unwrap();
    ws.send_text("before").await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("before"));
    let started = Instant::now();
    let stop = tokio::spawn(server.shutdown());
    match tokio::time::timeout(Duration::from_secs(5), ws.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Message::Close(Some(f)) => assert_eq!(f.code.0, 1001),
        other => panic!("expected 1001, got {other:?}"),
    }
    stop.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(hook_ran.load(Ordering::SeqCst));
}

#[tokio::test]
async fn new_upgrades_during_drain_get_503() {
    let c = Arc::new(TestClient::new(app()));
    let mut ws = c.websocket_connect("/ws/echo").await.unwrap();
    let stopper = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.shutdown().await })
    };
    // The open socket is told to go away...
    match ws.recv().await.unwrap() {
        Message::Close(Some(f)) => assert_eq!(f.code.0, 1001),
        other => panic!("expected 1001, got {other:?}"),
    }
    // ...and new upgrades are refused while draining.
    let err = c.websocket_connect("/ws/echo").await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(err.to_string().contains("shutting down"));
    stopper.await.unwrap();
}

#[tokio::test]
async fn stuck_handlers_are_force_closed_at_the_deadline() {
    let app = App::new()
        .shutdown_timeout(Duration::from_millis(300))
        .websocket("/stuck", |ws: WebSocket| async move {
            let _ws = ws.accept().await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, Error>(())
        });
    let server = crate::spawn(app).await;
    let mut ws = WsClient::new(format!("ws://{}/stuck", server.addr))
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let stop = tokio::spawn(server.shutdown());
    // The client still sees "going away" first.
    match ws.recv().await.unwrap() {
        Message::Close(Some(f)) => assert_eq!(f.code.0, 1001),
        other => panic!("expected 1001, got {other:?}"),
    }
    stop.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}
