//! HTTP responses: the [`Body`] type and the [`IntoResponse`] conversions
//! that let handlers return strings, JSON, status codes and tuples.

use std::{convert::Infallible, pin::Pin, task::Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use serde::Serialize;

/// The boxed error type for streaming bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP response with Switchboard's body type.
pub type Response = http::Response<Body>;

/// A response body: a full buffer or a stream of chunks (SSE, downloads).
#[derive(Debug)]
pub struct Body(UnsyncBoxBody<Bytes, BoxError>);

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body::from(Bytes::new())
    }

    /// A body from any `http_body::Body` (for streaming responses).
    pub fn new<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Body(body.map_err(Into::into).boxed_unsync())
    }

    /// Collects the whole body into bytes.
    pub async fn collect_bytes(self) -> Result<Bytes, BoxError> {
        Ok(self.0.collect().await?.to_bytes())
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body(
            Full::new(b)
                .map_err(|e: Infallible| match e {})
                .boxed_unsync(),
        )
    }
}

impl From<String> for Body {
    fn from(s: String) -> Body {
        Body::from(Bytes::from(s))
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Body {
        Body::from(Bytes::from_static(s.as_bytes()))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body::from(Bytes::from(v))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// Anything a handler can return.
pub trait IntoResponse {
    /// Converts into a response.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

fn with_type(body: Body, content_type: &'static str) -> Response {
    let mut res = http::Response::new(body);
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        with_type(self.into(), "text/plain; charset=utf-8")
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        with_type(self.into(), "text/plain; charset=utf-8")
    }
}

impl IntoResponse for Bytes {
    fn into_response(self) -> Response {
        with_type(self.into(), "application/octet-stream")
    }
}

impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        Bytes::from(self).into_response()
    }
}

impl IntoResponse for () {
    fn into_response(self) -> Response {
        http::Response::new(Body::empty())
    }
}

impl IntoResponse for StatusCode {
    fn into_response(self) -> Response {
        let mut res = http::Response::new(Body::empty());
        *res.status_mut() = self;
        res
    }
}

impl IntoResponse for Body {
    fn into_response(self) -> Response {
        http::Response::new(self)
    }
}

impl<T: IntoResponse> IntoResponse for (StatusCode, T) {
    fn into_response(self) -> Response {
        let mut res = self.1.into_response();
        *res.status_mut() = self.0;
        res
    }
}

impl<T: IntoResponse> IntoResponse for (HeaderMap, T) {
    fn into_response(self) -> Response {
        let mut res = self.1.into_response();
        res.headers_mut().extend(self.0);
        res
    }
}

impl<T: IntoResponse> IntoResponse for (StatusCode, HeaderMap, T) {
    fn into_response(self) -> Response {
        let mut res = (self.1, self.2).into_response();
        *res.status_mut() = self.0;
        res
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(v) => v.into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// JSON in (as an extractor) and out (as a response).
///
/// As a response it serializes with `serde_json` and sets
/// `Content-Type: application/json`; a value that cannot be serialized
/// becomes a 500 with the reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(v) => with_type(v.into(), "application/json"),
            Err(e) => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("failed to serialize response: {e}"),
            ),
        }
    }
}

/// An HTML response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Html<T>(pub T);

impl<T: Into<Body>> IntoResponse for Html<T> {
    fn into_response(self) -> Response {
        with_type(self.0.into(), "text/html; charset=utf-8")
    }
}

/// The framework's error body: `{"error": message, "status": code}`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message, "status": status.as_u16() });
    let mut res = with_type(body.to_string().into(), "application/json");
    *res.status_mut() = status;
    res
}
