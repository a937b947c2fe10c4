//! Two `switchboard serve --redis` processes on one real Redis behave as
//! one server for `/ws/rooms/{room}`: exactly once, in order, both ways;
//! `/health` stays "ok" while `/health/cluster` follows Redis.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use switchboard::WsClient;
use switchboard_redis::testing::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server process, killed on drop.
struct Server {
    port: u16,
    child: Child,
}

impl Server {
    async fn start(redis: &str, node: &str) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--redis", redis, "--node-id", node])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the server");
        let server = Server { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = server.get("/health/cluster").await {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET path`: status and body.
    async fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("timeout"))??;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    async fn subscriptions(&self) -> u64 {
        let (_, body) = self.get("/stats").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["backplane"]["subscriptions"].as_u64().unwrap_or(0)
    }

    async fn member(&self, room: &str) -> switchboard::Socket {
        WsClient::new(format!("ws://127.0.0.1:{}/ws/rooms/{room}", self.port))
            .connect()
            .await
            .expect("connect")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn recv(ws: &mut switchboard::Socket) -> String {
    tokio::time::timeout(Duration::from_secs(5), ws.recv_text())
        .await
        .expect("message in time")
        .expect("socket ok")
        .expect("socket open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_redis_relay_rooms_exactly_once_in_order() {
    const N: usize = 200;
    let mut redis = RedisServer::start();
    let one = Server::start(&redis.url(), "one").await;
    let two = Server::start(&redis.url(), "two").await;
    let x = one.member("r").await;
    let mut y = two.member("r").await;
    let mut z = two.member("r").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while one.subscriptions().await < 1 || two.subscriptions().await < 1 {
        assert!(Instant::now() < deadline, "subscriptions never confirmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..N {
        x.send_text(format!("x{i}")).await.unwrap();
    }
    for ws in [&mut y, &mut z] {
        for i in 0..N {
            assert_eq!(recv(ws).await, format!("x{i}"));
        }
    }
    let mut x = x;
    for i in 0..N {
        y.send_text(format!("y{i}")).await.unwrap();
    }
    for i in 0..N {
        assert_eq!(recv(&mut x).await, format!("y{i}"));
        assert_eq!(recv(&mut z).await, format!("y{i}"));
    }
    for ws in [&mut x, &mut y, &mut z] {
        let extra = tokio::time::timeout(Duration::from_millis(200), ws.recv()).await;
        assert!(extra.is_err(), "unexpected extra message: {extra:?}");
    }
    let (status, body) = one.get("/cluster/members/r").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let members: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(members.len(), 3, "{body}");
    let (_, body) = two.get("/cluster/stats").await.unwrap();
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["connections"], 3, "{body}");

    // Redis goes away: the nodes stay alive and serve their own members;
    // only the cluster health says so.
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if one.get("/health/cluster").await.unwrap().0 == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health/cluster stayed 200 without Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(one.get("/health").await.unwrap(), (200, "ok".to_owned()));
    y.send_text("local").await.unwrap();
    assert_eq!(recv(&mut z).await, "local");
}
