//! Extractors: typed pieces of a request that handlers take as arguments.
//!
//! Every extractor but the last argument implements [`FromRequestParts`]
//! (it reads the head: path params, query, headers, state, client address);
//! the last may implement [`FromRequest`] and consume the body ([`Json`],
//! `String`, `Bytes`). A failed extraction answers with a [`Rejection`]: a
//! status and a JSON body naming what was wrong, and the handler never runs.

use std::{future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{header, request::Parts, HeaderMap, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::{
    app::AppShared,
    path_de::PathDeserializer,
    response::{error_response, IntoResponse, Json, Response},
};

/// Everything known about a request before its body is read.
#[derive(Debug)]
pub struct RequestContext {
    pub(crate) parts: Parts,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) remote: SocketAddr,
    pub(crate) shared: Arc<AppShared>,
}

impl RequestContext {
    /// The request head.
    pub fn parts(&self) -> &Parts {
        &self.parts
    }

    /// The matched path parameters, in route order.
    pub fn path_params(&self) -> &[(String, String)] {
        &self.params
    }

    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The request headers.
    pub fn headers(&self) -> &http::HeaderMap {
        &self.parts.headers
    }

    /// The request head, mutable (middleware may rewrite headers).
    pub fn parts_mut(&mut self) -> &mut Parts {
        &mut self.parts
    }

    /// A query parameter by name (first occurrence, percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.parts.uri.query()?;
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Request extensions: middleware puts what it learned here; handlers
    /// read it with [`Extension<T>`] (and sockets see it in
    /// `Socket::extensions`).
    pub fn extensions(&self) -> &http::Extensions {
        &self.parts.extensions
    }

    /// Mutable request extensions.
    pub fn extensions_mut(&mut self) -> &mut http::Extensions {
        &mut self.parts.extensions
    }
}

/// A value a middleware inserted into the request extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<T>(pub T);

impl<T: Clone + Send + Sync + 'static> FromRequestParts for Extension<T> {
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, Rejection> {
        cx.parts
            .extensions
            .get::<T>()
            .cloned()
            .map(Extension)
            .ok_or_else(|| {
                Rejection::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("no {} in request extensions", std::any::type_name::<T>()),
                )
            })
    }
}

/// A failed extraction: the HTTP status and a message for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    status: StatusCode,
    message: String,
}

impl Rejection {
    /// A rejection with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for Rejection {}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        error_response(self.status, &self.message)
    }
}

/// Extracts a value from the request head.
pub trait FromRequestParts: Sized + Send {
    /// Performs the extraction.
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, Rejection>;
}

mod private {
    #[derive(Debug)]
    pub enum ViaParts {}
    #[derive(Debug)]
    pub enum ViaRequest {}
}

/// Extracts a value from the whole request, consuming the body. Only the
/// last handler argument may do this.
pub trait FromRequest<M = private::ViaRequest>: Sized + Send {
    /// Performs the extraction.
    fn from_request(
        cx: &mut RequestContext,
        body: Incoming,
    ) -> impl Future<Output = Result<Self, Rejection>> + Send;
}

impl<T: FromRequestParts> FromRequest<private::ViaParts> for T {
    async fn from_request(cx: &mut RequestContext, _body: Incoming) -> Result<Self, Rejection> {
        T::from_request_parts(cx)
    }
}

/// Typed path parameters: `Path<u32>`, `Path<(String, u32)>` or a struct.
///
/// A value that does not parse answers 400 naming the parameter:
/// `invalid path parameter `id`: expected u32, got "abc"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts for Path<T> {
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, Rejection> {
        T::deserialize(PathDeserializer { params: &cx.params })
            .map(Path)
            .map_err(|e| Rejection::new(StatusCode::BAD_REQUEST, e.0))
    }
}

/// Typed query parameters, deserialized with `serde_urlencoded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts for Query<T> {
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, Rejection> {
        let q = cx.parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(q).map(Query).map_err(|e| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                format!("invalid query string: {e}"),
            )
        })
    }
}

/// Shared application state registered with [`App::state`](crate::App::state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State<T>(pub T);

impl<T: Clone + Send + Sync + 'static> FromRequestParts for State<T> {
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, Rejection> {
        cx.shared
            .state
            .get::<T>()
            .cloned()
            .map(State)
            .ok_or_else(|| {
                Rejection::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "State<{}> was not registered with App::state",
                        std::any::type_name::<T>()
                    ),
                )
            })
    }
}

/// The client's socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl FromRequestParts for ClientAddr {
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, Rejection> {
        Ok(ClientAddr(cx.remote))
    }
}

impl FromRequestParts for HeaderMap {
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, Rejection> {
        Ok(cx.parts.headers.clone())
    }
}

impl FromRequestParts for Method {
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, Rejection> {
        Ok(cx.parts.method.clone())
    }
}

impl FromRequestParts for Uri {
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, Rejection> {
        Ok(cx.parts.uri.clone())
    }
}

async fn read_body(cx: &RequestContext, body: Incoming) -> Result<Bytes, Rejection> {
    let limit = cx.shared.config.max_body_size;
    let too_big = || {
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = cx
        .parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Err(e) => Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            format!("failed to read request body: {e}"),
        )),
    }
}

impl FromRequest for Bytes {
    async fn from_request(cx: &mut RequestContext, body: Incoming) -> Result<Self, Rejection> {
        read_body(cx, body).await
    }
}

impl FromRequest for String {
    async fn from_request(cx: &mut RequestContext, body: Incoming) -> Result<Self, Rejection> {
        let bytes = read_body(cx, body).await?;
        String::from_utf8(bytes.into())
            .map_err(|_| Rejection::new(StatusCode::BAD_REQUEST, "request body is not valid UTF-8"))
    }
}

impl<T: DeserializeOwned + Send> FromRequest for Json<T> {
    async fn from_request(cx: &mut RequestContext, body: Incoming) -> Result<Self, Rejection> {
        let is_json = cx
            .parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim();
                m.eq_ignore_ascii_case("application/json")
                    || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected Content-Type: application/json",
            ));
        }
        let bytes = read_body(cx, body).await?;
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| Rejection::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
    }
}
