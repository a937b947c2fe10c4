//! The `switchboard` binary: the demo server (`cargo run --release`).
//!
//! `switchboard serve --bind 127.0.0.1:8000` serves `GET /health`,
//! `POST /api/echo` (JSON in, JSON out), `WS /ws/echo` (echoes every text and
//! binary message unchanged), `WS /ws/rooms/{room}` (every message a member
//! sends goes unchanged to every other member of the room) and `GET /stats`
//! (the hub's counts). `GET /events/{room}` follows the same rooms as
//! `WS /ws/rooms/{room}` over Server-Sent Events (with `Last-Event-ID`
//! recovery from the rooms' last 100 messages); `GET /metrics` is
//! Prometheus text, `GET /ready` the readiness probe (`/health` stays the
//! liveness one). `--autobahn` selects the limits profile the Autobahn
//! TestSuite's group 9 needs.
//!
//! permessage-deflate is on by default for every route (the framework's
//! [`DeflateConfig`] defaults: server no context takeover, messages of 1024
//! bytes or more at level 1); `--no-compression` turns it off,
//! `--compression-threshold` and `--context-takeover` tune it, and
//! `--autobahn` compresses every message with context takeover allowed so
//! that Autobahn groups 12 and 13 exercise both compressor modes.
//!
//! `GET /` (and `GET /chat`) is the seeds' chat application as a page,
//! talking the seeds' JSON chat protocol over `WS /ws/chat`, with its own
//! rooms, presence and history (see `chat.rs` and `docs/chat.md`).
//!
//! `GET /openapi.json` (OpenAPI 3.1), `GET /asyncapi.json` (AsyncAPI 3.0)
//! and `GET /docs` (an offline page for both) describe these routes
//! (docs/api-docs.md). `--tls-cert PEM --tls-key PEM` serves all of it over
//! TLS: `https://` and `wss://`, HTTP/2 by ALPN, WebSockets over HTTP/2 by
//! extended CONNECT (docs/tls.md).
//!
//! `--redis URL --node-id ID` (feature `redis`, on by default) makes the
//! relay rooms cluster-wide through Redis and adds `GET /health/cluster`,
//! `GET /cluster/stats` and `GET /cluster/members/{room}` (see `cluster.rs`
//! and `docs/cluster.md`); without `--redis` nothing changes.

mod chat;
mod cluster;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use switchboard::{
    hub::{Hub, HubConfig},
    metrics::{Metrics, Readiness},
    sse::SseRequest,
    App, DeflateConfig, DocsConfig, Json, Limits, MessageDoc, Path, RouteDoc, State, TlsConfig,
    WebSocket, WsConfig,
};

#[derive(Parser, Debug)]
#[command(
    name = "switchboard",
    version,
    about = "Switchboard real-time WebSocket server"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the demo server (the default command).
    Serve(ServeArgs),
}

#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    bind: String,
    /// Largest incoming WebSocket message in bytes (default 4 MiB).
    #[arg(long)]
    max_message_size: Option<usize>,
    /// Largest incoming WebSocket frame in bytes (default 4 MiB).
    #[arg(long)]
    max_frame_size: Option<usize>,
    /// Most fragments per incoming message (default 1024).
    #[arg(long)]
    max_fragments: Option<usize>,
    /// Use the profile for the Autobahn TestSuite: 20 MiB messages and
    /// frames, 1 Mi fragments, and compression of every message (threshold
    /// 0) with server context takeover allowed; explicit flags still
    /// override it.
    #[arg(long)]
    autobahn: bool,
    /// Do not negotiate permessage-deflate. By default it is on: clients
    /// that offer it (browsers do) get messages of 1024 bytes or more
    /// compressed at level 1, each on its own (server_no_context_takeover,
    /// so broadcasts are compressed once), and may compress theirs.
    #[arg(long)]
    no_compression: bool,
    /// Compress outgoing messages of at least this many bytes (default
    /// 1024; 0 with --autobahn).
    #[arg(long)]
    compression_threshold: Option<usize>,
    /// Keep the server's compression window between messages unless the
    /// client asks otherwise: better ratios for repetitive traffic, but
    /// about 370 KiB of compressor per connection and broadcasts
    /// compressed per recipient (implied by --autobahn).
    #[arg(long)]
    context_takeover: bool,
    /// Serve HTTPS and WSS (HTTP/1.1 and HTTP/2, WebSockets over both) with
    /// this PEM certificate chain; needs --tls-key.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<std::path::PathBuf>,
    /// Seconds handlers get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10)]
    shutdown_timeout: u64,
    /// `--redis URL --node-id ID`: run as a cluster node (see cluster.rs).
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

impl ServeArgs {
    fn limits(&self) -> Limits {
        let mut limits = if self.autobahn {
            Limits::AUTOBAHN
        } else {
            Limits::DEFAULT
        };
        if let Some(n) = self.max_message_size {
            limits.max_message_size = n;
        }
        if let Some(n) = self.max_frame_size {
            limits.max_frame_size = n;
        }
        if let Some(n) = self.max_fragments {
            limits.max_fragments = n;
        }
        limits
    }

    fn compression(&self) -> Option<DeflateConfig> {
        if self.no_compression {
            return None;
        }
        let mut cfg = DeflateConfig::default();
        if self.autobahn || self.context_takeover {
            cfg = cfg.server_no_context_takeover(false);
        }
        if self.autobahn {
            cfg = cfg.threshold(0);
        }
        if let Some(n) = self.compression_threshold {
            cfg = cfg.threshold(n);
        }
        Some(cfg)
    }
}

fn demo_app(args: &ServeArgs) -> App {
    let limits = args.limits();
    let mut ws = WsConfig::default()
        .limits(limits)
        .compression(args.compression());
    if args.autobahn {
        // Group 9 echoes 16 MiB messages; let one sit in the queue whole.
        ws = ws.max_queue_bytes(limits.max_message_size);
    }
    // The relay rooms keep their last 100 messages, so an SSE client that
    // reconnects with `Last-Event-ID` gets what it missed.
    let hub = cluster::hub(&args.cluster, HubConfig::default().history(100));
    let app = cluster::routes(App::new(), &hub);
    chat::routes(app)
        .state(hub.clone())
        .ws_config(ws)
        .shutdown_timeout(Duration::from_secs(args.shutdown_timeout))
        .docs_config(
            DocsConfig::new()
                .title("Switchboard demo server")
                .version(env!("CARGO_PKG_VERSION"))
                .description(
                    "The Switchboard demo: an echo socket, relay rooms over WebSockets \
                     and Server-Sent Events, the chat application, metrics and probes.",
                ),
        )
        .get("/health", || async { "ok" })
        .doc(
            RouteDoc::new()
                .summary("Liveness probe")
                .tag("ops")
                .response_content(200, "The server is alive: `ok`", "text/plain"),
        )
        .readiness("/ready", Readiness::new().hub(&hub))
        .metrics("/metrics", Metrics::new().hub(&hub))
        .post("/api/echo", |Json(v): Json<serde_json::Value>| async move {
            Json(v)
        })
        .doc(
            RouteDoc::new()
                .summary("Echo a JSON value")
                .tag("demo")
                .request_body::<serde_json::Value>()
                .response::<serde_json::Value>(200, "The same JSON value")
                .error_response(400, "The body is not valid JSON")
                .error_response(415, "The body is not `application/json`"),
        )
        .websocket("/ws/echo", |ws: WebSocket| async move {
            let mut ws = ws.accept().await?;
            while let Some(msg) = ws.recv_message().await? {
                ws.send(msg).await?;
            }
            Ok::<_, switchboard::Error>(())
        })
        .doc(
            RouteDoc::new()
                .summary("Echo socket")
                .description("Every text and binary message comes back unchanged.")
                .tag("demo")
                .receives(MessageDoc::text("text").summary("Any text message"))
                .receives(MessageDoc::binary("binary").summary("Any binary message"))
                .sends(MessageDoc::text("text").summary("The text message, echoed"))
                .sends(MessageDoc::binary("binary").summary("The binary message, echoed")),
        )
        .get("/stats", |State(hub): State<Hub>| async move {
            Json(hub.stats())
        })
        .doc(
            RouteDoc::new()
                .summary("Hub counts")
                .description("Rooms, members and messages of the relay hub.")
                .tag("ops")
                .response_content(200, "The hub's counts", "application/json"),
        )
        .websocket(
            "/ws/rooms/{room}",
            |ws: WebSocket, Path(room): Path<String>, State(hub): State<Hub>| async move {
                let mut ws = ws.accept().await?;
                let member = hub.connect(ws.sender());
                member.join(&room);
                // Relay: every message goes unchanged to every other member
                // of the room (frame-once broadcast), never back to the sender.
                while let Some(msg) = ws.recv_message().await? {
                    member.broadcast_others(&room, msg);
                }
                Ok::<_, switchboard::Error>(())
            },
        )
        .doc(
            RouteDoc::new()
                .summary("Relay room")
                .description(
                    "Every message a member sends goes unchanged to every other member \
                     of the room (never back to the sender), and to the room's SSE \
                     subscribers at `GET /events/{room}`.",
                )
                .tag("rooms")
                .path_param::<String>("room", "The room to join (created on first use)")
                .receives(MessageDoc::text("text").summary("A text message for the room"))
                .receives(MessageDoc::binary("binary").summary("A binary message for the room"))
                .sends(MessageDoc::text("text").summary("A member's text message"))
                .sends(MessageDoc::binary("binary").summary("A member's binary message")),
        )
        // The same rooms over Server-Sent Events: text messages as
        // `message` events, binary as `binary` events in base64, ids
        // the room offset (the epoch is in the `Switchboard-Epoch`
        // header), `Last-Event-ID` recovery (docs/sse.md).
        .get(
            "/events/{room}",
            |sse: SseRequest, Path(room): Path<String>, State(hub): State<Hub>| async move {
                sse.room(&hub, &room).epoch_in_ids(false)
            },
        )
        .doc(
            RouteDoc::new()
                .summary("Relay room over Server-Sent Events")
                .description(
                    "The same room as `WS /ws/rooms/{room}`. Each event's id is \
                     its room offset (the room's history epoch is in the \
                     `Switchboard-Epoch` response header); reconnect with `Last-Event-ID` to get what was missed from the \
                     room's last 100 messages, or a `gap` event saying why not \
                     (see docs/sse.md).",
                )
                .tag("rooms")
                .sse()
                .path_param::<String>("room", "The room to follow")
                .sends(MessageDoc::text("message").summary("A member's text message, unchanged"))
                .sends(
                    MessageDoc::text("binary").summary("A member's binary message, base64-encoded"),
                ),
        )
}

/// mimalloc instead of glibc's malloc (feature `mimalloc`, on by default):
/// handshakes allocate a lot of small, short-lived pieces; built without
/// transparent huge pages so idle connections stay small.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    let served = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = TlsConfig::from_pem_files(cert, key)?;
            demo_app(&args).serve_tls(&args.bind, tls).await
        }
        _ => demo_app(&args).serve(&args.bind).await,
    };
    cluster::leave().await;
    served
}

#[cfg(test)]
mod tests {
    //! The demo's SSE rooms and monitoring routes, in process.

    use std::time::Duration;

    use clap::Parser;
    use switchboard::{testing::TestClient, Bytes, StatusCode};

    use super::{demo_app, Cli};

    fn demo() -> TestClient {
        TestClient::new(demo_app(&Cli::parse_from(["switchboard"]).serve))
    }

    #[tokio::test]
    async fn socket_messages_reach_sse_subscribers_with_ids_and_recovery() {
        let c = demo();
        let mut sse = c.get("/events/demo").stream().await;
        assert_eq!(sse.status(), StatusCode::OK);
        assert!(!sse.header("switchboard-epoch").unwrap().is_empty());
        let member = c.websocket_connect("/ws/rooms/demo").await.unwrap();
        let mut other = c.websocket_connect("/ws/rooms/demo").await.unwrap();
        // Both sockets are members before anything is sent.
        for _ in 0..500 {
            let stats: serde_json::Value = c.get("/stats").send().await.json();
            if stats["rooms"]["demo"] == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        member.send_text("hello").await.unwrap();
        member
            .send_bytes(Bytes::from_static(b"\x00\xff"))
            .await
            .unwrap();
        // The relay is unchanged: the other socket gets both, unchanged.
        assert_eq!(other.recv_text().await.unwrap().as_deref(), Some("hello"));
        assert_eq!(&other.recv_bytes().await.unwrap().unwrap()[..], b"\x00\xff");
        let text = sse.next_non_comment().await.unwrap();
        assert_eq!(text.event, None);
        assert_eq!(text.data.as_deref(), Some("hello"));
        assert_eq!(text.id.as_deref(), Some("1"));
        let bin = sse.next_non_comment().await.unwrap();
        assert_eq!(bin.event.as_deref(), Some("binary"));
        assert_eq!(bin.data.as_deref(), Some("AP8="));
        assert_eq!(bin.id.as_deref(), Some("2"));
        drop(sse);
        // Reconnecting with the first id (what EventSource sends back)
        // replays the second from history; an epoch-qualified id works too.
        let mut again = c
            .get("/events/demo")
            .header("last-event-id", "1")
            .stream()
            .await;
        assert_eq!(again.header("switchboard-recovery"), Some("full"));
        assert_eq!(
            again.next_non_comment().await.unwrap().data.as_deref(),
            Some("AP8=")
        );
        let bad = c
            .get("/events/demo")
            .header("last-event-id", "nonsense")
            .send()
            .await;
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn health_ready_and_metrics_are_served() {
        let c = demo();
        let health = c.get("/health").send().await;
        assert_eq!(
            (health.status(), health.text()),
            (StatusCode::OK, "ok".to_owned())
        );
        assert_eq!(c.get("/ready").send().await.status(), StatusCode::OK);
        let _ws = c.websocket_connect("/ws/echo").await.unwrap();
        let metrics = c.get("/metrics").send().await.text();
        for series in [
            "switchboard_ws_handshakes_total{outcome=\"accepted\"} 1",
            "switchboard_sse_subscribers 0",
            "switchboard_hub_slow_consumer_closes_total 0",
        ] {
            assert!(
                metrics.lines().any(|l| l == series),
                "{series} in\n{metrics}"
            );
        }
    }
}
