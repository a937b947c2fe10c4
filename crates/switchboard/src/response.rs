//! HTTP responses: the [`Body`] type and the [`IntoResponse`] conversions
//! that let handlers return strings, JSON, status codes and tuples.

use std::{pin::Pin, task::Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt};
use serde::Serialize;

/// The boxed error type for streaming bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP response with Switchboard's body type.
pub type Response = http::Response<Body>;

/// A response body: a full buffer or a stream of chunks (SSE, downloads).
#[derive(Debug)]
pub struct Body(Inner);

/// A full buffer is kept as it is (no allocation, no dynamic dispatch:
/// most responses, and every handshake answer, are one); streams are boxed.
#[derive(Debug)]
enum Inner {
    /// The whole body; `None` once it has been polled out.
    Full(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

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
        Body(Inner::Stream(body.map_err(Into::into).boxed_unsync()))
    }

    /// Collects the whole body into bytes.
    pub async fn collect_bytes(self) -> Result<Bytes, BoxError> {
        match self.0 {
            Inner::Full(b) => Ok(b.unwrap_or_default()),
            Inner::Stream(s) => Ok(s.collect().await?.to_bytes()),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body(Inner::Full(Some(b)))
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
        match &mut self.0 {
            // As `http_body_util::Full`: one data frame, none when empty.
            Inner::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Inner::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Inner::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.0 {
            Inner::Full(b) => {
                http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Stream(s) => s.size_hint(),
        }
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

#[cfg(test)]
mod tests {
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn full_bodies_behave_as_http_body_util_full() {
        let empty = Body::empty();
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
        let mut empty = empty;
        assert!(empty.frame().await.is_none());

        let mut full = Body::from("hello");
        assert!(!full.is_end_stream());
        assert_eq!(full.size_hint().exact(), Some(5));
        let frame = full.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"hello"));
        assert!(full.is_end_stream());
        assert!(full.frame().await.is_none());

        assert_eq!(
            Body::from(vec![1u8, 2]).collect_bytes().await.unwrap(),
            Bytes::from_static(&[1, 2])
        );
        let stream = Body::new(http_body_util::Full::new(Bytes::from_static(b"s")));
        assert!(!stream.is_end_stream());
        assert_eq!(
            stream.collect_bytes().await.unwrap(),
            Bytes::from_static(b"s")
        );
    }
}
