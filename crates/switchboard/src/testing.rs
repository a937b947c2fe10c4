//! An in-process test client: HTTP requests and WebSockets against an
//! [`App`] with no TCP port, as the seeds' `TestClient` does.
//!
//! Each request or socket gets its own in-memory duplex pipe served by the
//! same hyper connection code as real TCP, so tests exercise the real
//! handshake, framing and close paths.
//!
//! ```
//! use switchboard::{testing::TestClient, App, Socket, WebSocket};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let app = App::new()
//!     .get("/health", || async { "ok" })
//!     .websocket("/ws", |ws: WebSocket| async move {
//!         let mut ws = ws.accept().await?;
//!         while let Some(t) = ws.recv_text().await? {
//!             ws.send_text(format!("echo: {t}")).await?;
//!         }
//!         Ok::<_, switchboard::Error>(())
//!     });
//! let client = TestClient::new(app);
//! assert_eq!(client.get("/health").send().await.text(), "ok");
//! let mut ws = client.websocket_connect("/ws").await.unwrap();
//! ws.send_text("hi").await.unwrap();
//! assert_eq!(ws.recv_text().await.unwrap().as_deref(), Some("echo: hi"));
//! # }
//! ```

use std::{
    future::{Future, IntoFuture},
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    app::{App, AppShared},
    client::{ConnectError, WsClient},
    server::spawn_connection,
    ws::Socket,
};

mod stream;
pub use stream::{TestEvent, TestStream};

/// Size of each in-memory pipe; like a socket buffer, it only bounds how
/// much is in flight, not message sizes.
const PIPE_BYTES: usize = 256 * 1024;

/// Drives an [`App`] in process.
#[derive(Debug)]
pub struct TestClient {
    shared: Arc<AppShared>,
    next_port: AtomicU16,
    pipe_bytes: usize,
}

impl TestClient {
    /// Wraps `app`. Startup hooks do not run until [`TestClient::startup`].
    pub fn new(app: App) -> TestClient {
        TestClient {
            shared: app.into_shared(),
            next_port: AtomicU16::new(40000),
            pipe_bytes: PIPE_BYTES,
        }
    }

    /// Sets the capacity of each in-memory pipe (default 256 KiB), e.g.
    /// small to make a client that stops reading back-pressure quickly.
    pub fn pipe_capacity(mut self, bytes: usize) -> TestClient {
        self.pipe_bytes = bytes.max(1);
        self
    }

    /// Runs the app's startup hooks.
    pub async fn startup(&self) {
        self.shared.run_startup().await;
    }

    /// Shuts the app down as the server would (1001 to open sockets, wait
    /// for handlers, shutdown hooks).
    pub async fn shutdown(&self) {
        self.shared.begin_shutdown();
        let deadline = self.shared.config.shutdown_timeout;
        if tokio::time::timeout(deadline, self.shared.tracker.wait())
            .await
            .is_err()
        {
            self.shared.force_close_now();
        }
        self.shared.run_shutdown().await;
    }

    fn connect_pipe(&self) -> (tokio::io::DuplexStream, SocketAddr) {
        let (client, server) = tokio::io::duplex(self.pipe_bytes);
        let port = self.next_port.fetch_add(1, Ordering::Relaxed).max(1024);
        let remote = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        spawn_connection(&self.shared, server, remote);
        (client, remote)
    }

    /// Starts a request.
    pub fn request(&self, method: Method, path: &str) -> TestRequest<'_> {
        TestRequest {
            client: self,
            method,
            path: path.to_owned(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// Starts a `GET`.
    pub fn get(&self, path: &str) -> TestRequest<'_> {
        self.request(Method::GET, path)
    }

    /// Starts a `POST`.
    pub fn post(&self, path: &str) -> TestRequest<'_> {
        self.request(Method::POST, path)
    }

    /// Starts a `PUT`.
    pub fn put(&self, path: &str) -> TestRequest<'_> {
        self.request(Method::PUT, path)
    }

    /// Starts a `DELETE`.
    pub fn delete(&self, path: &str) -> TestRequest<'_> {
        self.request(Method::DELETE, path)
    }

    /// Opens a WebSocket to `path` (with query). Await it directly, or add
    /// headers and subprotocols first.
    pub fn websocket_connect(&self, path: &str) -> TestWsConnect<'_> {
        TestWsConnect {
            client: self,
            path: path.to_owned(),
            options: WsClient::new(""),
        }
    }
}

/// A request being built by [`TestClient`].
#[derive(Debug)]
#[must_use]
pub struct TestRequest<'a> {
    client: &'a TestClient,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl TestRequest<'_> {
    /// Adds a header.
    pub fn header(mut self, name: impl TryInto<HeaderName>, value: &str) -> Self {
        if let (Ok(n), Ok(v)) = (name.try_into(), HeaderValue::from_str(value)) {
            self.headers.append(n, v);
        }
        self
    }

    /// Sets a JSON body and `Content-Type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        self.body = serde_json::to_vec(value).unwrap_or_default().into();
        self.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self
    }

    /// Sets a raw body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the request and reads the whole response.
    ///
    /// Panics if the in-process connection fails, which only a framework
    /// bug can cause (tests want that loud).
    pub async fn send(self) -> TestResponse {
        let (res, _conn) = self.open().await;
        let status = res.status();
        let headers = res.headers().clone();
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        TestResponse {
            status,
            headers,
            body,
        }
    }

    /// Sends the request and returns once the response head arrives, to
    /// read the body as it streams (Server-Sent Events). Dropping the
    /// [`TestStream`] closes the connection, as a client going away would.
    pub async fn stream(self) -> TestStream {
        let (res, conn) = self.open().await;
        TestStream::new(res, conn)
    }

    /// Connects, sends the request, and returns the response head with the
    /// task driving the connection.
    async fn open(
        self,
    ) -> (
        http::Response<hyper::body::Incoming>,
        tokio::task::JoinHandle<()>,
    ) {
        let (io, _) = self.client.connect_pipe();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("in-process handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(self.method)
            .uri(&self.path)
            .header(header::HOST, "testserver")
            .body(Full::new(self.body))
            .expect("valid test request");
        req.headers_mut().extend(self.headers);
        let res = sender.send_request(req).await.expect("in-process request");
        (res, conn)
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct TestResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl TestResponse {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.body
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body on failure.
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not the expected JSON ({e}): {}", self.text()))
    }
}

/// A WebSocket connection being built by [`TestClient::websocket_connect`].
#[derive(Debug)]
#[must_use]
pub struct TestWsConnect<'a> {
    client: &'a TestClient,
    path: String,
    options: WsClient,
}

impl<'a> TestWsConnect<'a> {
    /// Adds a request header.
    pub fn header(mut self, name: impl TryInto<HeaderName>, value: &str) -> Self {
        if let (Ok(n), Ok(v)) = (name.try_into(), HeaderValue::from_str(value)) {
            self.options = self.options.header(n, v);
        }
        self
    }

    /// Offers a subprotocol.
    pub fn protocol(mut self, protocol: &str) -> Self {
        self.options = self.options.protocol(protocol);
        self
    }

    /// Offers permessage-deflate (see [`WsClient::compression`]).
    pub fn compression(mut self, config: switchboard_proto::DeflateConfig) -> Self {
        self.options = self.options.compression(Some(config));
        self
    }

    /// Limits for messages from the server (see [`WsClient::limits`]).
    pub fn limits(mut self, limits: switchboard_proto::Limits) -> Self {
        self.options = self.options.limits(limits);
        self
    }

    /// Performs the handshake.
    pub async fn connect(self) -> Result<Socket, ConnectError> {
        let (io, remote) = self.client.connect_pipe();
        self.options
            .handshake(io, "testserver", &self.path, remote)
            .await
    }
}

impl<'a> IntoFuture for TestWsConnect<'a> {
    type Output = Result<Socket, ConnectError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.connect())
    }
}
