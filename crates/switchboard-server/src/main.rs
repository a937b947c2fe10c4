//! The `switchboard` binary: the demo server (`cargo run --release`).
//!
//! `switchboard serve --bind 127.0.0.1:8000` serves `GET /health`,
//! `POST /api/echo` (JSON in, JSON out), `WS /ws/echo` (echoes every text and
//! binary message unchanged), `WS /ws/rooms/{room}` (every message a member
//! sends goes unchanged to every other member of the room) and `GET /stats`
//! (the hub's counts). `--autobahn` selects the limits profile the
//! Autobahn TestSuite's group 9 needs.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use switchboard::{hub::Hub, App, Json, Limits, Path, State, WebSocket, WsConfig};

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
    /// Use the limits profile for the Autobahn TestSuite (20 MiB messages
    /// and frames, 1 Mi fragments); explicit limit flags still override it.
    #[arg(long)]
    autobahn: bool,
    /// Seconds handlers get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10)]
    shutdown_timeout: u64,
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
}

fn demo_app(args: &ServeArgs) -> App {
    let limits = args.limits();
    let mut ws = WsConfig::default().limits(limits);
    if args.autobahn {
        // Group 9 echoes 16 MiB messages; let one sit in the queue whole.
        ws = ws.max_queue_bytes(limits.max_message_size);
    }
    App::new()
        .state(Hub::new())
        .ws_config(ws)
        .shutdown_timeout(Duration::from_secs(args.shutdown_timeout))
        .get("/health", || async { "ok" })
        .post("/api/echo", |Json(v): Json<serde_json::Value>| async move {
            Json(v)
        })
        .websocket("/ws/echo", |ws: WebSocket| async move {
            let mut ws = ws.accept().await?;
            while let Some(msg) = ws.recv_message().await? {
                ws.send(msg).await?;
            }
            Ok::<_, switchboard::Error>(())
        })
        .get("/stats", |State(hub): State<Hub>| async move {
            Json(hub.stats())
        })
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
}

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
    demo_app(&args).serve(&args.bind).await
}
