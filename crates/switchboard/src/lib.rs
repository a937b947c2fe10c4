//! Switchboard: a real-time WebSocket framework.
//!
//! HTTP routes and WebSocket routes side by side, typed extractors, a socket
//! API with text, bytes, JSON and `Stream`s, an event style, graceful
//! shutdown, and an in-process test client. The protocol itself lives in the
//! sans-IO crate [`switchboard_proto`], re-exported as [`proto`].
//!
//! ```no_run
//! use switchboard::{App, WebSocket};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     App::new()
//!         .get("/health", || async { "ok" })
//!         .websocket("/ws/echo", |ws: WebSocket| async move {
//!             let mut ws = ws.accept().await?;
//!             while let Some(msg) = ws.recv_message().await? {
//!                 ws.send(msg).await?;
//!             }
//!             Ok::<_, switchboard::Error>(())
//!         })
//!         .serve("127.0.0.1:8000")
//!         .await
//! }
//! ```
//!
//! # Layout
//! In the order a request flows through them:
//! - `server`: accept loop, HTTP/1.1 connections (hyper), graceful shutdown.
//! - `app`, `router`: the route table and dispatch; 404/405.
//! - `extract`, `path_de`, `handler`, `response`: extractors, handler traits,
//!   responses.
//! - `ws::upgrade`: handshake checks and the [`WebSocket`] → [`Socket`] accept.
//! - `ws::socket`: [`Socket`], [`Sender`], [`Receiver`] over the sans-IO decoder.
//! - `ws::writer`: the per-connection writer task with its byte-bounded queue.
//! - `ws::compress`: outgoing permessage-deflate, in the writer task (the
//!   inflater is the decoder's, in [`proto`]); enable with [`WsConfig::compression`].
//! - `ws::events`: the [`WsEvents`] callback style.
//! - [`hub`]: rooms, frame-once broadcast, presence, history; members are
//!   sockets or [`hub::Subscription`] streams.
//! - [`sse`]: Server-Sent Events responses and the hub-room bridge.
//! - [`metrics`]: Prometheus metrics (`GET /metrics`) and readiness.
//! - `client`, `testing`: a client on the same engine and the [`testing::TestClient`].
//! - `docs`: [`RouteDoc`] metadata and the generated OpenAPI 3.1 /
//!   AsyncAPI 3.0 documents and offline `/docs` page.
//! - `tls` (feature `tls`): rustls, ALPN h2/http/1.1, WebSockets over
//!   HTTP/2 (RFC 8441), `App::serve_tls`.
//!
//! # Feature flags
//! - `tls` (off by default): HTTPS/WSS with rustls (ring provider), ALPN
//!   `h2` and `http/1.1`, and WebSockets over HTTP/2 (RFC 8441):
//!   `App::serve_tls` and `TlsConfig`.
//!
//! Everything else above is in the default build.

mod app;
pub mod auth;
mod client;
mod connlimit;
mod docs;
mod error;
mod extract;
mod handler;
pub mod hub;
pub mod metrics;
mod middleware;
mod path_de;
mod ratelimit;
mod response;
mod router;
mod server;
pub mod sse;
pub mod testing;
#[cfg(feature = "tls")]
mod tls;
mod ws;

pub use app::App;
pub use client::{ConnectError, WsClient};
pub use docs::{DocsConfig, MessageDoc, RouteDoc};
pub use error::Error;
pub use extract::{
    ClientAddr, Extension, FromRequest, FromRequestParts, Path, Query, Rejection, RequestContext,
    State,
};
pub use handler::{Handler, WsHandler, WsResult};
pub use middleware::{Middleware, Reject};
pub use ratelimit::{RateLimit, RateLimitPolicy};
pub use response::{error_response, Body, BoxError, Html, IntoResponse, Json, Response};
pub use server::shutdown_signal;
pub use switchboard_proto as proto;
pub use switchboard_proto::{
    CloseCode, CloseFrame, DeflateConfig, DeflateParams, Limits, Utf8Bytes,
};
#[cfg(feature = "tls")]
pub use tls::TlsConfig;
pub use ws::{
    Accept, Message, OriginCheck, OriginPolicy, Receiver, Sender, Socket, WebSocket, WsConfig,
    WsEvents,
};

pub use bytes::Bytes;
pub use http::{self, HeaderMap, Method, StatusCode};
