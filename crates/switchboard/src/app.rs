//! The application: routes, state, hooks and settings, built with
//! [`App`] and frozen into [`AppShared`] when served.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::FutureExt;
use http::{header, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    connlimit::ConnLimiter,
    extract::{Rejection, RequestContext},
    handler::{BoxFuture, Handler, PreparedWs, WsHandler},
    middleware::{Middleware, Reject},
    response::{error_response, IntoResponse, Response},
    router::{best_match, Pattern, RouteIndex},
    ws::{self, WebSocket, WsConfig, WsEvents},
};

type BoxHandler = Arc<dyn Fn(RequestContext, Incoming) -> BoxFuture<Response> + Send + Sync>;
type BoxWsHandler = Arc<dyn Fn(&mut RequestContext) -> Result<PreparedWs, Rejection> + Send + Sync>;
type Hook = Box<dyn Fn() -> BoxFuture<()> + Send + Sync>;

struct WsRoute {
    config: Arc<WsConfig>,
    handler: BoxWsHandler,
}

struct Route {
    pattern: Pattern,
    methods: Vec<(Method, BoxHandler)>,
    websocket: Option<WsRoute>,
}

/// Server settings with their defaults; set through [`App`] methods.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    /// Largest request body the body extractors read (413 above).
    pub(crate) max_body_size: usize,
    /// Time allowed for a client to send its request headers (slowloris).
    pub(crate) handshake_timeout: Duration,
    /// Time handlers get to finish after a shutdown signal.
    pub(crate) shutdown_timeout: Duration,
    /// Most request headers accepted (431 above).
    pub(crate) max_headers: usize,
    /// Largest request head in bytes (431 above).
    pub(crate) max_header_bytes: usize,
    /// Most open WebSockets (503 above); `None`: unlimited.
    pub(crate) max_connections: Option<usize>,
    /// Most open WebSockets per client IP (429 above); `None`: unlimited.
    pub(crate) max_connections_per_ip: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            // JSON APIs rarely need more; uploads should stream.
            max_body_size: 1 << 20,
            // nginx's client_header_timeout is 60 s, Go's ReadHeaderTimeout
            // unset; 10 s drops slowloris quickly and suits real clients.
            handshake_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            // hyper's default is 100; browsers send fewer than 30.
            max_headers: 100,
            // nginx's large_client_header_buffers default is 4 x 8 KiB.
            max_header_bytes: 64 * 1024,
            max_connections: None,
            max_connections_per_ip: None,
        }
    }
}

/// What the running server shares with every request and socket.
pub(crate) struct AppShared {
    routes: Vec<Route>,
    /// `routes` by first path segment.
    index: RouteIndex,
    fallback: Option<BoxHandler>,
    pub(crate) state: http::Extensions,
    pub(crate) config: ServerConfig,
    /// Set on shutdown: new WebSocket upgrades get 503.
    draining: AtomicBool,
    /// Cancelled on shutdown: every socket's writer sends close 1001.
    pub(crate) going_away: CancellationToken,
    /// Cancelled when the shutdown deadline passes: tasks are dropped.
    pub(crate) force_close: CancellationToken,
    /// The same two signals for WebSocket connections, which poll them per
    /// message and so need them lock-free (see `ws/signal.rs`).
    pub(crate) signals: Arc<crate::ws::signal::Signals>,
    /// One timer for every WebSocket connection's heartbeat, idle timeout
    /// and credential expiry (see `ws/heartbeat.rs`).
    pub(crate) heartbeat: Arc<crate::ws::heartbeat::Heartbeat>,
    /// Every connection and handler task, awaited on shutdown.
    pub(crate) tracker: TaskTracker,
    startup: Vec<Hook>,
    shutdown: Vec<Hook>,
    /// Middleware for every route, then for WebSocket routes only.
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    pub(crate) ws_middleware: Vec<Arc<dyn Middleware>>,
    pub(crate) connections: Arc<ConnLimiter>,
    /// Where connections record metrics; `None` unless [`App::metrics`].
    pub(crate) metrics: Option<Arc<crate::metrics::Recorder>>,
    /// HTTP/1.1 connection settings, from `config`.
    pub(crate) http1: hyper::server::conn::http1::Builder,
}

impl std::fmt::Debug for AppShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppShared")
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|r| r.pattern.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AppShared {
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts a graceful shutdown: refuse upgrades, ask sockets to close.
    pub(crate) fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::Release);
        self.going_away.cancel();
        self.signals.go_away();
        self.tracker.close();
    }

    /// The shutdown deadline passed: drop every connection and handler.
    pub(crate) fn force_close_now(&self) {
        self.force_close.cancel();
        self.signals.force();
    }

    pub(crate) async fn run_startup(&self) {
        for hook in &self.startup {
            hook().await;
        }
    }

    pub(crate) async fn run_shutdown(&self) {
        for hook in &self.shutdown {
            hook().await;
        }
    }

    /// Routes one request.
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        remote: std::net::SocketAddr,
    ) -> Response {
        let (parts, body) = req.into_parts();
        // A clone of the URI shares its bytes: no copy of the path.
        let uri = parts.uri.clone();
        let path = uri.path();
        let candidates = self.index.candidates(path).map(|i| &self.routes[i]);
        let found = best_match(candidates.map(|r| (&r.pattern, r)), path);
        let Some((route, params)) = found else {
            let cx = RequestContext {
                parts,
                params: Vec::new(),
                remote,
                shared: Arc::clone(&self),
            };
            return match &self.fallback {
                Some(f) => {
                    let res = f(cx, body).await;
                    crate::sse::prepare_response(res, &self.going_away, self.metrics.as_ref())
                }
                None => error_response(
                    StatusCode::NOT_FOUND,
                    &format!("no route for {} {}", cx.parts.method, path),
                ),
            };
        };
        // HTTP/1.1 upgrades carry `Upgrade`; HTTP/2 WebSockets arrive as an
        // extended CONNECT (RFC 8441), which no HTTP route serves.
        let wants_upgrade =
            parts.headers.contains_key(header::UPGRADE) || parts.method == Method::CONNECT;
        let http_handler = route
            .methods
            .iter()
            .find(|(m, _)| *m == parts.method)
            .map(|(_, h)| Arc::clone(h));
        let cx = RequestContext {
            parts,
            params,
            remote,
            shared: Arc::clone(&self),
        };
        match (&route.websocket, http_handler) {
            (Some(ws_route), h) if wants_upgrade || h.is_none() => {
                let handler = Arc::clone(&ws_route.handler);
                let started = std::time::Instant::now();
                let metrics = self.metrics.clone();
                let res =
                    ws::upgrade::serve(cx, Arc::clone(&ws_route.config), move |cx| handler(cx))
                        .await;
                if let Some(m) = metrics {
                    m.handshake(res.status(), started.elapsed());
                }
                res
            }
            (_, Some(h)) => {
                let mut cx = cx;
                for m in &self.middleware {
                    match m.before(&mut cx) {
                        Ok(()) => {}
                        Err(Reject::Http(r)) => return r.into_response(),
                        Err(Reject::Close(c)) => {
                            return error_response(StatusCode::FORBIDDEN, &c.reason)
                        }
                    }
                }
                match std::panic::AssertUnwindSafe(h(cx, body))
                    .catch_unwind()
                    .await
                {
                    Ok(res) => {
                        crate::sse::prepare_response(res, &self.going_away, self.metrics.as_ref())
                    }
                    Err(panic) => {
                        let msg = ws::upgrade::panic_message(&panic);
                        tracing::error!(path = %path, panic = %msg, "handler panicked");
                        error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
                    }
                }
            }
            (_, None) => {
                let allow: Vec<&str> = route.methods.iter().map(|(m, _)| m.as_str()).collect();
                let mut res = error_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("method {} not allowed on {}", cx.parts.method, path),
                );
                if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                    res.headers_mut().insert(header::ALLOW, v);
                }
                res
            }
        }
    }
}

/// A Switchboard application: HTTP and WebSocket routes, shared state,
/// lifecycle hooks and server settings.
///
/// ```no_run
/// use serde_json::json;
/// use switchboard::{App, Json, Path, WebSocket};
///
/// # async fn run() -> std::io::Result<()> {
/// let app = App::new()
///     .get("/health", || async { "ok" })
///     .post("/api/echo", |Json(v): Json<serde_json::Value>| async move { Json(v) })
///     .websocket("/ws/{room}", |ws: WebSocket, Path(room): Path<String>| async move {
///         let mut ws = ws.accept().await?;
///         ws.send_json(&json!({"message": format!("Welcome to {room}!")})).await?;
///         while let Some(msg) = ws.recv_json::<serde_json::Value>().await? {
///             ws.send_json(&json!({"room": room, "message": msg})).await?;
///         }
///         Ok::<_, switchboard::Error>(())
///     });
/// app.serve("127.0.0.1:8000").await
/// # }
/// ```
#[must_use]
pub struct App {
    routes: Vec<Route>,
    fallback: Option<BoxHandler>,
    state: http::Extensions,
    config: ServerConfig,
    ws_config: WsConfig,
    startup: Vec<Hook>,
    shutdown: Vec<Hook>,
    middleware: Vec<Arc<dyn Middleware>>,
    ws_middleware: Vec<Arc<dyn Middleware>>,
    metrics: Option<Arc<crate::metrics::Recorder>>,
    /// Route documentation and the API documents' settings.
    pub(crate) docs: crate::docs::DocsState,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|r| r.pattern.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl App {
    /// An empty application.
    pub fn new() -> App {
        App {
            routes: Vec::new(),
            fallback: None,
            state: http::Extensions::new(),
            config: ServerConfig::default(),
            ws_config: WsConfig::default(),
            startup: Vec::new(),
            shutdown: Vec::new(),
            middleware: Vec::new(),
            ws_middleware: Vec::new(),
            metrics: None,
            docs: crate::docs::DocsState::default(),
        }
    }

    fn route_entry(&mut self, path: &str) -> &mut Route {
        let pattern = Pattern::parse(path);
        let idx = match self.routes.iter().position(|r| r.pattern == pattern) {
            Some(i) => i,
            None => {
                self.routes.push(Route {
                    pattern,
                    methods: Vec::new(),
                    websocket: None,
                });
                self.routes.len() - 1
            }
        };
        &mut self.routes[idx]
    }

    /// Adds an HTTP route for `method`. Panics if the same method and path
    /// are registered twice (a programming error).
    pub fn route<H, M>(mut self, method: Method, path: &str, handler: H) -> App
    where
        H: Handler<M>,
        M: 'static,
    {
        let route = self.route_entry(path);
        assert!(
            !route.methods.iter().any(|(m, _)| *m == method),
            "route {method} {path} registered twice"
        );
        let boxed: BoxHandler = Arc::new(move |cx, body| handler.clone().call(cx, body));
        route.methods.push((method.clone(), boxed));
        self.docs.last = Some(crate::docs::DocTarget::Http(method, path.to_owned()));
        self
    }

    /// Adds a `GET` route.
    pub fn get<H: Handler<M>, M: 'static>(self, path: &str, handler: H) -> App {
        self.route(Method::GET, path, handler)
    }

    /// Adds a `POST` route.
    pub fn post<H: Handler<M>, M: 'static>(self, path: &str, handler: H) -> App {
        self.route(Method::POST, path, handler)
    }

    /// Adds a `PUT` route.
    pub fn put<H: Handler<M>, M: 'static>(self, path: &str, handler: H) -> App {
        self.route(Method::PUT, path, handler)
    }

    /// Adds a `PATCH` route.
    pub fn patch<H: Handler<M>, M: 'static>(self, path: &str, handler: H) -> App {
        self.route(Method::PATCH, path, handler)
    }

    /// Adds a `DELETE` route.
    pub fn delete<H: Handler<M>, M: 'static>(self, path: &str, handler: H) -> App {
        self.route(Method::DELETE, path, handler)
    }

    /// Handles requests no route matches (default: 404 with a JSON body).
    pub fn fallback<H: Handler<M>, M: 'static>(mut self, handler: H) -> App {
        self.fallback = Some(Arc::new(move |cx, body| handler.clone().call(cx, body)));
        self
    }

    /// Adds a WebSocket route with the app's default [`WsConfig`].
    pub fn websocket<H: WsHandler<M>, M: 'static>(self, path: &str, handler: H) -> App {
        let config = self.ws_config.clone();
        self.websocket_with(path, config, handler)
    }

    /// Adds a WebSocket route with its own settings.
    pub fn websocket_with<H: WsHandler<M>, M: 'static>(
        mut self,
        path: &str,
        config: WsConfig,
        handler: H,
    ) -> App {
        let route = self.route_entry(path);
        assert!(
            route.websocket.is_none(),
            "websocket route {path} registered twice"
        );
        route.websocket = Some(WsRoute {
            config: Arc::new(config),
            handler: Arc::new(move |cx| handler.clone().prepare(cx)),
        });
        self.docs.last = Some(crate::docs::DocTarget::Ws(path.to_owned()));
        self
    }

    /// Adds a WebSocket route served by an event handler.
    pub fn websocket_events<E: WsEvents>(self, path: &str, events: E) -> App {
        let config = self.ws_config.clone();
        self.websocket_events_with(path, config, events)
    }

    /// Adds a WebSocket route served by an event handler, with settings.
    pub fn websocket_events_with<E: WsEvents>(
        self,
        path: &str,
        config: WsConfig,
        events: E,
    ) -> App {
        let events = Arc::new(events);
        self.websocket_with(path, config, move |ws: WebSocket| {
            let events = Arc::clone(&events);
            async move { ws::events::run(&*events, ws).await }
        })
    }

    /// Default settings for WebSocket routes added after this call.
    pub fn ws_config(mut self, config: WsConfig) -> App {
        self.ws_config = config;
        self
    }

    /// Registers shared state, available to handlers as [`State<T>`](crate::State).
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> App {
        self.state.insert(value);
        self
    }

    /// Runs `hook` before the server accepts connections.
    pub fn on_startup<F, Fut>(mut self, hook: F) -> App
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.startup.push(Box::new(move || Box::pin(hook())));
        self
    }

    /// Runs `hook` after the server has stopped and connections drained.
    pub fn on_shutdown<F, Fut>(mut self, hook: F) -> App
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.shutdown.push(Box::new(move || Box::pin(hook())));
        self
    }

    /// Largest request body the body extractors read (default 1 MiB; 413 above).
    pub fn max_body_size(mut self, bytes: usize) -> App {
        self.config.max_body_size = bytes;
        self
    }

    /// Time a client has to send its request headers (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> App {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Time handlers get to finish after a shutdown signal (default 10 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> App {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Most request headers accepted (default 100).
    pub fn max_headers(mut self, n: usize) -> App {
        self.config.max_headers = n;
        self
    }

    /// Largest request head in bytes (default 64 KiB, at least 8 KiB).
    pub fn max_header_bytes(mut self, bytes: usize) -> App {
        self.config.max_header_bytes = bytes.max(8 * 1024);
        self
    }

    /// Most open WebSockets; more are refused with 503 (default: no limit).
    pub fn max_connections(mut self, n: usize) -> App {
        self.config.max_connections = Some(n);
        self
    }

    /// Most open WebSockets per client IP; more are refused with 429
    /// (default: no limit).
    pub fn max_connections_per_ip(mut self, n: usize) -> App {
        self.config.max_connections_per_ip = Some(n);
        self
    }

    /// Adds middleware that runs before every handler (HTTP and
    /// WebSocket), in the order added.
    pub fn middleware(mut self, m: impl Middleware) -> App {
        self.middleware.push(Arc::new(m));
        self
    }

    /// Adds middleware for WebSocket routes only (the seeds'
    /// `add_ws_middleware`), run after [`App::middleware`].
    pub fn ws_middleware(mut self, m: impl Middleware) -> App {
        self.ws_middleware.push(Arc::new(m));
        self
    }

    /// Records metrics into `recorder` (see [`App::metrics`]).
    pub(crate) fn record_metrics(mut self, recorder: Arc<crate::metrics::Recorder>) -> App {
        self.metrics = Some(recorder);
        self
    }

    pub(crate) fn into_shared(self) -> Arc<AppShared> {
        // The API documents describe the finished route table.
        let summaries: Vec<crate::docs::RouteSummary> = self
            .routes
            .iter()
            .map(|r| crate::docs::RouteSummary {
                pattern: r.pattern.as_str().to_owned(),
                methods: r.methods.iter().map(|(m, _)| m.clone()).collect(),
                websocket: r.websocket.as_ref().map(|w| w.config.protocols.clone()),
            })
            .collect();
        let this = self.install_docs(&summaries);
        this.freeze()
    }

    fn freeze(self) -> Arc<AppShared> {
        Arc::new(AppShared {
            index: RouteIndex::new(self.routes.iter().map(|r| &r.pattern)),
            routes: self.routes,
            fallback: self.fallback,
            state: self.state,
            draining: AtomicBool::new(false),
            going_away: CancellationToken::new(),
            force_close: CancellationToken::new(),
            signals: Arc::default(),
            heartbeat: Arc::default(),
            tracker: TaskTracker::new(),
            startup: self.startup,
            shutdown: self.shutdown,
            middleware: self.middleware,
            ws_middleware: self.ws_middleware,
            metrics: self.metrics,
            connections: Arc::new(ConnLimiter::new(
                self.config.max_connections,
                self.config.max_connections_per_ip,
            )),
            http1: crate::server::http1_builder(&self.config),
            config: self.config,
        })
    }
}
