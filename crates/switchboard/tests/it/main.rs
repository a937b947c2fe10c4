//! Integration tests, built as one test binary (the ripgrep habit): HTTP
//! routing and extractors, the WebSocket API through the in-process test
//! client, real TCP with raw bytes and an independent client
//! (tokio-tungstenite), and graceful shutdown.

#![allow(missing_docs, missing_debug_implementations)]

mod auth;
mod deflate;
mod docs;
mod events;
mod http_api;
mod hub;
mod metrics;
mod protection;
mod shutdown;
mod sse;
mod tcp;
#[cfg(feature = "tls")]
mod tls;
mod ws_api;

use std::net::SocketAddr;

use switchboard::App;
use tokio::sync::oneshot;

/// A server on an ephemeral loopback port; dropping `stop` (or sending on
/// it) shuts it down.
pub struct Running {
    pub addr: SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.done.await.expect("server task")
    }
}

pub async fn spawn(app: App) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(app.serve_with_shutdown(listener, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        done,
    }
}
