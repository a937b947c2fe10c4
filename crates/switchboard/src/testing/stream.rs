//! Streaming responses for the test client: read a body chunk by chunk, or
//! as Server-Sent Events parsed the way a browser's `EventSource` does
//! (plus the comments, so keep-alives can be seen).
//!
//! Test-only helpers: they favour loud panics and plain fields over
//! flexibility.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// A response whose body is read as it arrives (see
/// [`TestRequest::stream`](super::TestRequest::stream)).
///
/// ```
/// use futures_util::stream;
/// use switchboard::{sse::{Event, Sse}, testing::TestClient, App};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let app = App::new().get("/events", || async {
///     Sse::new(stream::iter([Event::new().event("greeting").data("hi\nthere")]))
/// });
/// let client = TestClient::new(app);
/// let mut events = client.get("/events").stream().await;
/// assert_eq!(events.header("content-type"), Some("text/event-stream"));
/// let ev = events.next_event().await.unwrap();
/// assert_eq!(ev.event.as_deref(), Some("greeting"));
/// assert_eq!(ev.data.as_deref(), Some("hi\nthere"));
/// assert!(events.next_event().await.is_none());
/// # }
/// ```
#[derive(Debug)]
pub struct TestStream {
    status: StatusCode,
    headers: HeaderMap,
    body: Incoming,
    buf: BytesMut,
    ended: bool,
    conn: tokio::task::JoinHandle<()>,
}

/// One server-sent event as a client sees it, with the comment lines that
/// came in the same block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestEvent {
    /// The `event:` field, if any (browsers use `message` when absent).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`; `None` without any.
    pub data: Option<String>,
    /// The `id:` field, if any.
    pub id: Option<String>,
    /// The `retry:` field in milliseconds, if any.
    pub retry: Option<u64>,
    /// Comment lines (after the `:` and one space).
    pub comments: Vec<String>,
}

impl TestEvent {
    /// Whether the block held only comments (a keep-alive).
    pub fn is_comment(&self) -> bool {
        self.event.is_none() && self.data.is_none() && self.id.is_none() && self.retry.is_none()
    }
}

impl TestStream {
    pub(super) fn new(
        res: http::Response<Incoming>,
        conn: tokio::task::JoinHandle<()>,
    ) -> TestStream {
        let (parts, body) = res.into_parts();
        TestStream {
            status: parts.status,
            headers: parts.headers,
            body,
            buf: BytesMut::new(),
            ended: false,
            conn,
        }
    }

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

    /// The next chunk of body bytes; `None` at the end of the body.
    pub async fn chunk(&mut self) -> Option<Bytes> {
        if !self.buf.is_empty() {
            return Some(self.buf.split().freeze());
        }
        self.read().await
    }

    async fn read(&mut self) -> Option<Bytes> {
        while !self.ended {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(data);
                    }
                }
                Some(Err(_)) | None => self.ended = true,
            }
        }
        None
    }

    /// The rest of the body as text (for error responses).
    pub async fn text(mut self) -> String {
        let mut all = self.buf.split().to_vec();
        while let Some(c) = self.read().await {
            all.extend_from_slice(&c);
        }
        String::from_utf8_lossy(&all).into_owned()
    }

    /// The next event block (events, and comment-only blocks such as
    /// keep-alives); `None` once the body ended.
    pub async fn next_event(&mut self) -> Option<TestEvent> {
        loop {
            if let Some(block) = take_block(&mut self.buf) {
                return Some(parse_block(&block));
            }
            let chunk = self.read().await?;
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next block that is not a comment (skips keep-alives).
    pub async fn next_non_comment(&mut self) -> Option<TestEvent> {
        loop {
            let ev = self.next_event().await?;
            if !ev.is_comment() {
                return Some(ev);
            }
        }
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        // Closes the in-memory pipe: the server sees the client go away.
        self.conn.abort();
    }
}

/// Splits off one block ending in a blank line (any SSE line ending).
fn take_block(buf: &mut BytesMut) -> Option<String> {
    let text = std::str::from_utf8(buf).ok()?;
    let mut pos = 0;
    let mut line_start = 0;
    let bytes = text.as_bytes();
    while pos < bytes.len() {
        let b = bytes[pos];
        if b == b'\n' || b == b'\r' {
            let line_empty = pos == line_start;
            let mut next = pos + 1;
            if b == b'\r' && bytes.get(next) == Some(&b'\n') {
                next += 1;
            } else if b == b'\r' && next == bytes.len() {
                // A `\r` at the end may be half of `\r\n`: wait.
                return None;
            }
            if line_empty {
                let block = text[..line_start].to_owned();
                let _ = buf.split_to(next);
                return Some(block);
            }
            line_start = next;
            pos = next;
        } else {
            pos += 1;
        }
    }
    None
}

fn parse_block(block: &str) -> TestEvent {
    let mut ev = TestEvent::default();
    let mut data: Option<String> = None;
    for line in block.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "" => ev.comments.push(value.to_owned()),
            "event" => ev.event = Some(value.to_owned()),
            "id" => ev.id = Some(value.to_owned()),
            "retry" => ev.retry = value.parse().ok(),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    ev.data = data;
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_on_blank_lines_of_any_ending() {
        let mut buf = BytesMut::from(&b"data: a\ndata: b\n\n: ka\r\n\r\nid: 1\rdata:\r\rrest"[..]);
        let a = parse_block(&take_block(&mut buf).unwrap());
        assert_eq!(a.data.as_deref(), Some("a\nb"));
        let k = parse_block(&take_block(&mut buf).unwrap());
        assert!(k.is_comment());
        assert_eq!(k.comments, ["ka"]);
        let c = parse_block(&take_block(&mut buf).unwrap());
        assert_eq!((c.id.as_deref(), c.data.as_deref()), (Some("1"), Some("")));
        assert!(take_block(&mut buf).is_none());
        assert_eq!(&buf[..], b"rest");
    }
}
