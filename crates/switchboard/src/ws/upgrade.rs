//! The upgrade: from an HTTP request on a WebSocket route to a running
//! handler with an accepted [`Socket`].
//!
//! The route checks the handshake (RFC 6455 §4.2.1), the origin policy and
//! the subprotocol offer (and `accept` negotiates permessage-deflate when
//! the route enables it), runs the handler's extractors, then spawns the
//! handler with a [`WebSocket`]. The HTTP response is whatever the handler
//! decides first: `accept()` answers 101 and completes the upgrade (over
//! HTTP/2, an extended CONNECT stream of RFC 8441, it answers 200 and the
//! stream becomes the socket, with the same engine and handlers);
//! `reject()` or `close()` before accepting answers with an HTTP error (403
//! by default, as Starlette does); returning without accepting answers 403,
//! or 500 if the handler failed. After the handler ends, an open socket is
//! closed with 1000, or 1011 if the handler returned an error or panicked.

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use switchboard_proto::{
    CloseCode, CloseFrame, Decoder, DeflateParams, Inflate, Role, UpgradeRequest,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::oneshot,
};

use crate::{
    app::AppShared,
    error::Error,
    extract::{Rejection, RequestContext},
    handler::PreparedWs,
    middleware::Reject,
    response::{error_response, Body, IntoResponse, Response},
    ws::{
        compress::Negotiated,
        config::WsConfig,
        headers::StoredHeaders,
        signal::{unless, ConnSignal},
        socket::{linger, ConnInfo, ReadState, Receiver, RecvPolicy, Sender, Socket},
        writer::{spawn_writer, Slot},
    },
};

type ResponseSlot = Arc<std::sync::Mutex<Option<oneshot::Sender<Response>>>>;

/// An incoming WebSocket connection, before the handshake is answered.
///
/// Inspect the request (path and query params, headers, offered
/// subprotocols, client address), then [`accept`](WebSocket::accept) it or
/// [`reject`](WebSocket::reject) it with an HTTP status.
#[derive(Debug)]
pub struct WebSocket {
    // Boxed, like the accept future below: the handler's future holds the
    // `WebSocket` for the connection's whole life, so every byte here is a
    // byte per idle connection (docs/BENCHMARKS.md, idle memory).
    info: Box<ConnInfo>,
    request: Box<UpgradeRequest>,
    config: Arc<WsConfig>,
    respond: ResponseSlot,
    on_upgrade: Option<OnUpgrade>,
    app: Arc<AppShared>,
    extensions: http::Extensions,
    accepted: Arc<std::sync::OnceLock<Arc<super::writer::Shared>>>,
    /// The connection's kill/going-away/forced signals (registered with the
    /// app when the request arrived).
    signal: Arc<ConnSignal>,
    /// An HTTP/2 extended CONNECT (RFC 8441): accept answers 200, not 101.
    over_h2: bool,
}

/// Options for [`WebSocket::accept_with`].
#[derive(Debug, Default, Clone)]
#[must_use]
pub struct Accept {
    protocol: Option<String>,
    headers: HeaderMap,
}

impl Accept {
    /// Default options: the route's subprotocol choice, no extra headers.
    pub fn new() -> Self {
        Accept::default()
    }

    /// Selects this subprotocol; it must be one the client offered.
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = Some(protocol.into());
        self
    }

    /// Adds a header to the 101 response (e.g. a cookie).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }
}

impl WebSocket {
    /// Accepts with the route's subprotocol choice.
    pub fn accept(self) -> impl Future<Output = Result<Socket, Error>> + Send {
        self.accept_with(Accept::new())
    }

    /// Accepts with an explicit subprotocol and extra response headers.
    pub fn accept_with(
        self,
        options: Accept,
    ) -> impl Future<Output = Result<Socket, Error>> + Send {
        // On the heap: the handshake's state (the response, the upgrade)
        // is large and only needed once, and an inline future would keep
        // room for it in the handler's future for the connection's life.
        Box::pin(self.accept_inner(options))
    }

    async fn accept_inner(mut self, options: Accept) -> Result<Socket, Error> {
        let protocol = match options.protocol {
            Some(p) if self.request.protocols.contains(&p) => Some(p),
            Some(p) => {
                return Err(Error::handshake(format!(
                    "subprotocol {p:?} was not offered by the client"
                )))
            }
            None => choose_protocol(&self.config.protocols, &self.request.protocols),
        };
        let Some(responder) = self.respond.lock().ok().and_then(|mut s| s.take()) else {
            return Err(Error::handshake("the handshake was already answered"));
        };
        let on_upgrade = self
            .on_upgrade
            .take()
            .ok_or_else(|| Error::handshake("the connection cannot be upgraded"))?;
        let mut res = http::Response::new(Body::empty());
        if self.over_h2 {
            // RFC 8441 §5: a 200 answers the extended CONNECT and the stream
            // carries the frames; there is no key, accept or Upgrade header.
            *res.status_mut() = StatusCode::OK;
        } else {
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = res.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(
                header::SEC_WEBSOCKET_ACCEPT,
                // The computed key moves into the header (no copy).
                HeaderValue::try_from(std::mem::take(&mut self.request.accept))
                    .map_err(|_| Error::handshake("invalid accept key"))?,
            );
        }
        let h = res.headers_mut();
        if let Some(p) = &protocol {
            h.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(p).map_err(|_| Error::handshake("invalid subprotocol"))?,
            );
        }
        // permessage-deflate: the first acceptable offer, if the route
        // enables compression.
        let deflate = self.config.compression.as_ref().and_then(|cfg| {
            DeflateParams::negotiate(&self.request.extensions, cfg)
                .map(|params| Negotiated::new(params, Role::Server, cfg))
        });
        if let Some(n) = &deflate {
            h.insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(&n.params.header_value())
                    .map_err(|_| Error::handshake("invalid extension answer"))?,
            );
        }
        if !options.headers.is_empty() {
            h.extend(options.headers);
        }
        if responder.send(res).is_err() {
            return Err(Error::handshake("the client went away before the upgrade"));
        }
        let upgraded = on_upgrade
            .await
            .map_err(|e| Error::handshake(format!("upgrade failed: {e}")))?;
        let (read, write, leftover, plain_tcp) = split_io(upgraded);
        let mut writer_options = self
            .config
            .writer_options(Role::Server, Arc::clone(&self.signal));
        writer_options.deflate = deflate;
        writer_options.metrics = self.app.metrics.clone();
        writer_options.plain_tcp = plain_tcp;
        writer_options.heartbeat = Some(Arc::clone(&self.app.heartbeat));
        let shared = spawn_writer(write, writer_options);
        let _ = self.accepted.set(Arc::clone(&shared));
        let mut decoder = Decoder::new(Role::Server, self.config.limits);
        if let Some(n) = &deflate {
            // Inflates under `limits.max_message_size` (bomb-safe).
            decoder.set_extension(Box::new(Inflate::for_connection(&n.params, Role::Server)));
        }
        let reader = ReadState::new(read, decoder, leftover);
        // Moved, not cloned: the socket owns the request facts from here.
        let mut info = self.info;
        info.protocol = protocol;
        let info: Arc<ConnInfo> = Arc::from(info);
        let mut socket = Socket::new(
            Sender {
                shared: Arc::clone(&shared),
            },
            Receiver::new(
                reader,
                shared,
                RecvPolicy::new(self.config.rate_limit, self.config.max_control_per_sec),
            ),
            info,
        );
        *socket.extensions_mut() = self.extensions;
        if let Some(expiry) = socket.extensions().get::<crate::auth::TokenExpiry>() {
            socket.sender().shared.set_expiry(Some(expiry.0));
        }
        Ok(socket)
    }

    /// Refuses the connection with an HTTP `status` and a JSON error body.
    pub fn reject(self, status: StatusCode, message: &str) {
        self.respond_with(error_response(status, message));
    }

    /// Refuses the connection before accepting, as the seeds'
    /// `websocket.close(code)` before `accept()` does: answers 403 with the
    /// code and reason in the body.
    pub fn close(self, code: impl Into<CloseCode>, reason: &str) {
        let code = code.into();
        let msg = if reason.is_empty() {
            format!("connection refused (close code {code})")
        } else {
            format!("connection refused (close code {code}): {reason}")
        };
        self.reject(StatusCode::FORBIDDEN, &msg);
    }

    /// Answers the handshake with any response.
    pub fn respond_with(self, response: impl IntoResponse) {
        if let Some(tx) = self.respond.lock().ok().and_then(|mut s| s.take()) {
            let _ = tx.send(response.into_response());
        }
    }

    /// Request extensions (what middleware attached, e.g. verified token
    /// claims); they become the socket's per-connection extensions.
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    /// Subprotocols the client offered, in its order of preference.
    pub fn protocols(&self) -> &[String] {
        &self.request.protocols
    }

    /// Extensions the client offered (`Sec-WebSocket-Extensions`).
    pub fn offered_extensions(&self) -> &[switchboard_proto::ExtensionOffer] {
        &self.request.extensions
    }

    super::socket::request_accessors!();
}

fn choose_protocol(supported: &[String], offered: &[String]) -> Option<String> {
    offered.iter().find(|p| supported.contains(p)).cloned()
}

/// Splits the upgraded connection into owned halves. A plain TCP stream is
/// unwrapped so reads and writes need no lock between them (and reported,
/// last: its senders may write directly, see `writer.rs`).
fn split_io(
    upgraded: Upgraded,
) -> (
    Box<dyn AsyncRead + Send + Unpin>,
    Box<dyn AsyncWrite + Send + Unpin>,
    Bytes,
    bool,
) {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (r, w) = parts.io.into_inner().into_split();
            (Box::new(r), Box::new(w), parts.read_buf, true)
        }
        Err(upgraded) => {
            let (r, w) = tokio::io::split(TokioIo::new(upgraded));
            (Box::new(r), Box::new(w), Bytes::new(), false)
        }
    }
}

/// Serves a request on a WebSocket route: checks, extraction, spawning.
pub(crate) async fn serve(
    mut cx: RequestContext,
    config: Arc<WsConfig>,
    prepare: impl FnOnce(&mut RequestContext) -> Result<PreparedWs, Rejection>,
) -> Response {
    let app = Arc::clone(&cx.shared);
    if app.is_draining() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
    }
    // HTTP/2 carries WebSockets on extended CONNECT streams (RFC 8441);
    // the server only sees those when the TLS listener enabled them.
    let over_h2 = cx.parts.version == http::Version::HTTP_2;
    let validated = if over_h2 {
        let protocol = cx
            .parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .map(hyper::ext::Protocol::as_str);
        switchboard_proto::validate_h2_request(&cx.parts.method, protocol, &cx.parts.headers)
    } else {
        switchboard_proto::validate_request(&cx.parts.method, cx.parts.version, &cx.parts.headers)
    };
    let request = match validated {
        Ok(r) => r,
        Err(e) => {
            let mut res = error_response(e.status, e.message);
            if e.status == StatusCode::UPGRADE_REQUIRED {
                res.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return res;
        }
    };
    let origin = cx
        .parts
        .headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if !config.origin.allows(origin) {
        return error_response(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let slot = match app.connections.acquire(cx.remote.ip()) {
        Ok(slot) => slot,
        Err(rejection) => return rejection.into_response(),
    };
    let mut refusal = None;
    let mut middleware_ran = false;
    for m in app
        .middleware
        .iter()
        .chain(&app.ws_middleware)
        .chain(&config.middleware)
    {
        middleware_ran = true;
        match m.before(&mut cx) {
            Ok(()) => {}
            Err(Reject::Http(r)) => return r.into_response(),
            Err(Reject::Close(c)) => {
                refusal = Some(c);
                break;
            }
        }
    }
    // Middleware may have removed entries (an auth token) from the offer.
    let mut request = request;
    if middleware_ran {
        request.protocols =
            switchboard_proto::parse_protocols(&cx.parts.headers).unwrap_or_default();
    }
    if !config.protocols.is_empty()
        && !request.protocols.is_empty()
        && choose_protocol(&config.protocols, &request.protocols).is_none()
    {
        return error_response(
            StatusCode::BAD_REQUEST,
            &format!(
                "none of the offered subprotocols is supported (supported: {})",
                config.protocols.join(", ")
            ),
        );
    }
    let handler: PreparedWs = match refusal {
        // Accept, then close at once with the middleware's code.
        Some(close) => Box::new(move |ws: WebSocket| {
            Box::pin(async move {
                let mut socket = ws.accept().await?;
                socket.close(close.code, &close.reason).await?;
                Ok(())
            })
        }),
        None => match prepare(&mut cx) {
            Ok(h) => h,
            Err(rejection) => return rejection.into_response(),
        },
    };
    let query = cx
        .parts
        .uri
        .query()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default();
    let on_upgrade = cx.parts.extensions.remove::<OnUpgrade>();
    let (tx, rx) = oneshot::channel();
    let respond: ResponseSlot = Arc::new(std::sync::Mutex::new(Some(tx)));
    let accepted = Arc::new(std::sync::OnceLock::new());
    let signal = app.signals.register();
    let (uri, headers) = StoredHeaders::detach(&cx.parts.uri, &cx.parts.headers);
    // For the log lines below; a clone shares the URI's bytes.
    let logged_uri = uri.clone();
    let ws = WebSocket {
        info: Box::new(ConnInfo {
            uri,
            headers,
            params: std::mem::take(&mut cx.params),
            query,
            remote: cx.remote,
            protocol: None,
        }),
        request: Box::new(request),
        config,
        respond: Arc::clone(&respond),
        on_upgrade,
        app: Arc::clone(&app),
        // An emptied map still holds its table (hyper's `OnUpgrade` was
        // in it): only a map with something in it is kept.
        extensions: match std::mem::take(&mut cx.parts.extensions) {
            e if e.is_empty() => http::Extensions::new(),
            e => e,
        },
        accepted: Arc::clone(&accepted),
        signal: Arc::clone(&signal),
        over_h2,
    };
    // Boxed: see `server::spawn_http1`.
    app.tracker.spawn(Box::pin(async move {
        // Held for the connection's lifetime (connection limits).
        let _slot = slot;
        let path = logged_uri.path();
        // Dropped when the shutdown deadline passes; polled per message,
        // hence a lock-free signal (see signal.rs).
        let run = std::panic::AssertUnwindSafe(handler(ws)).catch_unwind();
        let mut registered = None;
        let Some(outcome) = unless(run, signal.forced(), Some(&mut registered)).await else {
            return;
        };
        let (status, close) = match outcome {
            Ok(Ok(())) => (
                StatusCode::FORBIDDEN,
                CloseFrame::new(CloseCode::NORMAL, ""),
            ),
            Ok(Err(e)) => {
                let from_peer = e
                    .downcast_ref::<Error>()
                    .is_some_and(|e| e.is_disconnect() || e.is_io() || e.is_protocol());
                if from_peer {
                    // The peer went away or broke the protocol: the handler
                    // only passed that on. Not a server fault, and a client
                    // that resets its connection must not cost a log line.
                    tracing::debug!(path = %path, error = %e, "websocket handler ended by the peer");
                } else {
                    tracing::error!(path = %path, error = %e, "websocket handler failed");
                }
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    CloseFrame::new(CloseCode::INTERNAL_ERROR, "internal error"),
                )
            }
            Err(panic) => {
                let msg = panic_message(&panic);
                tracing::error!(path = %path, panic = %msg, "websocket handler panicked");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    CloseFrame::new(CloseCode::INTERNAL_ERROR, "internal error"),
                )
            }
        };
        // Never accepted: answer the handshake with an HTTP error.
        if let Some(tx) = respond.lock().ok().and_then(|mut s| s.take()) {
            let msg = if status == StatusCode::FORBIDDEN {
                "websocket connection rejected by the handler"
            } else {
                "websocket handler failed before accepting"
            };
            let _ = tx.send(error_response(status, msg));
        }
        // Accepted: finish the close handshake if the socket is still open.
        if let Some(shared) = accepted.get() {
            let parked = {
                let mut slot = match shared.slot.lock() {
                    Ok(s) => s,
                    Err(p) => p.into_inner(),
                };
                std::mem::replace(&mut *slot, Slot::HandlerDone)
            };
            if let Slot::Parked(state) = parked {
                // Boxed: its read and timer state would otherwise sit in
                // this task for the connection's whole life.
                Box::pin(linger(state, Arc::clone(shared), close)).await;
            } else if close.code == CloseCode::INTERNAL_ERROR {
                // The receiver lives on elsewhere; still tell the peer.
                shared.send_close(Some(&close));
            }
        }
    }));
    match rx.await {
        Ok(res) => res,
        Err(_) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "websocket handler ended without answering",
        ),
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}
