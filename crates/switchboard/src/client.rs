//! A WebSocket client on the same engine: for tests (through
//! [`TestClient`](crate::testing::TestClient), no TCP port), for the load tool, and
//! for talking to any RFC 6455 server over TCP with [`WsClient`].

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use switchboard_proto::{
    Decoder, DeflateConfig, DeflateParams, DeflateResponseError, Inflate, Limits, Role,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ws::{
    compress::Negotiated,
    socket::{ConnInfo, ReadState, Receiver, RecvPolicy, Sender, Socket},
    writer::spawn_writer,
};

/// Why a client could not open a WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server answered the handshake with something other than 101.
    #[error("handshake refused with {status}: {body}")]
    Rejected {
        /// The HTTP status.
        status: StatusCode,
        /// The response headers.
        headers: HeaderMap,
        /// The response body, as text.
        body: String,
    },
    /// The 101 response was invalid (bad accept key, unoffered protocol).
    #[error("invalid handshake response: {0}")]
    InvalidResponse(#[from] switchboard_proto::ClientHandshakeError),
    /// The 101 response accepted an extension we did not offer, or
    /// permessage-deflate with parameters we cannot accept (RFC 7692 §7).
    #[error(transparent)]
    Extension(#[from] switchboard_proto::DeflateResponseError),
    /// The URL could not be used.
    #[error("invalid url: {0}")]
    Url(String),
    /// Connecting or the HTTP exchange failed.
    #[error("connection failed: {0}")]
    Io(String),
}

impl ConnectError {
    /// The HTTP status of a refused handshake.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ConnectError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Options for opening a client WebSocket.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct WsClient {
    url: String,
    headers: HeaderMap,
    protocols: Vec<String>,
    limits: Option<Limits>,
    compression: Option<DeflateConfig>,
}

impl WsClient {
    /// A client for `url` (`ws://host:port/path?query`).
    pub fn new(url: impl Into<String>) -> Self {
        WsClient {
            url: url.into(),
            ..Default::default()
        }
    }

    /// Adds a request header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Offers a subprotocol (call repeatedly to offer several, in order).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocols.push(protocol.into());
        self
    }

    /// Limits for messages from the server (default: [`Limits::DEFAULT`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Offers permessage-deflate with `config` (default: `None`, no offer).
    /// When the server accepts, messages of at least the config's threshold
    /// are compressed and compressed server messages are inflated under
    /// the client's message limit. See [`Socket::compression`].
    pub fn compression(mut self, config: Option<DeflateConfig>) -> Self {
        self.compression = config;
        self
    }

    /// Connects over TCP and performs the handshake.
    pub async fn connect(self) -> Result<Socket, ConnectError> {
        let rest = self
            .url
            .strip_prefix("ws://")
            .ok_or_else(|| ConnectError::Url(format!("{}: only ws:// is supported", self.url)))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| ConnectError::Io(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let remote = stream
            .peer_addr()
            .map_err(|e| ConnectError::Io(e.to_string()))?;
        let path = path.to_owned();
        let authority = authority.to_owned();
        self.handshake(stream, &authority, &path, remote).await
    }

    /// Performs the handshake over an existing connection.
    pub(crate) async fn handshake<I>(
        self,
        io: I,
        host: &str,
        path_and_query: &str,
        remote: SocketAddr,
    ) -> Result<Socket, ConnectError>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let io_err = |e: hyper::Error| ConnectError::Io(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(io_err)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let key = switchboard_proto::client_key(rand::random());
        let mut req = Request::get(path_and_query)
            .body(Empty::<Bytes>::new())
            .map_err(|e| ConnectError::Url(e.to_string()))?;
        let h = req.headers_mut();
        h.insert(
            header::HOST,
            HeaderValue::from_str(host).map_err(|e| ConnectError::Url(e.to_string()))?,
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_str(&key).map_err(|e| ConnectError::Url(e.to_string()))?,
        );
        if !self.protocols.is_empty() {
            let joined = self.protocols.join(", ");
            h.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(&joined).map_err(|e| ConnectError::Url(e.to_string()))?,
            );
        }
        if let Some(cfg) = &self.compression {
            h.insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(&cfg.offer())
                    .map_err(|e| ConnectError::Url(e.to_string()))?,
            );
        }
        for (name, value) in &self.headers {
            h.append(name, value.clone());
        }
        let res = sender.send_request(req).await.map_err(io_err)?;
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = res.status();
            let headers = res.headers().clone();
            let body = res
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(ConnectError::Rejected {
                status,
                headers,
                body,
            });
        }
        let protocol = switchboard_proto::validate_response(
            res.status(),
            res.headers(),
            &key,
            &self.protocols,
        )?;
        let answered = switchboard_proto::parse_extensions(res.headers()).map_err(|_| {
            DeflateResponseError::new("malformed Sec-WebSocket-Extensions in the response")
        })?;
        let deflate = match &self.compression {
            Some(cfg) => DeflateParams::from_response(&answered, cfg)?
                .map(|params| Negotiated::new(params, Role::Client, cfg)),
            None if answered.is_empty() => None,
            None => {
                return Err(DeflateResponseError::new(
                    "the server accepted an extension that was not offered",
                )
                .into())
            }
        };
        let headers = res.headers().clone();
        let upgraded = hyper::upgrade::on(res).await.map_err(io_err)?;
        let (read, write) = tokio::io::split(TokioIo::new(upgraded));
        // Clients answer pings but do not send their own heartbeat.
        let config = crate::ws::WsConfig::default().ping_interval(None);
        let mut writer_options =
            config.writer_options(Role::Client, crate::ws::signal::ConnSignal::standalone());
        writer_options.deflate = deflate;
        let shared = spawn_writer(Box::new(write), writer_options);
        let mut decoder = Decoder::new(Role::Client, self.limits.unwrap_or(Limits::DEFAULT));
        if let Some(n) = &deflate {
            decoder.set_extension(Box::new(Inflate::for_connection(&n.params, Role::Client)));
        }
        let reader = ReadState::new(Box::new(read), decoder, Bytes::new());
        let info = ConnInfo {
            uri: path_and_query.parse().unwrap_or_default(),
            headers: crate::ws::headers::StoredHeaders::from_map(headers),
            params: Vec::new(),
            query: Vec::new(),
            remote,
            protocol,
        };
        // A client socket has no handler wrapper: when its receiver is
        // dropped it closes the connection itself.
        if let Ok(mut slot) = shared.slot.lock() {
            *slot = crate::ws::writer::Slot::HandlerDone;
        }
        Ok(Socket::new(
            Sender {
                shared: Arc::clone(&shared),
            },
            Receiver::new(reader, shared, RecvPolicy::unlimited()),
            Arc::new(info),
        ))
    }
}
