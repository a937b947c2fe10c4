//! `sink`: the smallest echo server this tool can talk to, on raw tokio and
//! the sans-IO proto crate: no router, no handler task, no writer task, no
//! queue — read, decode, write the same payload back.
//!
//! It exists to show the load tool is not the bottleneck: pinned to the
//! server's core it answers faster than any real server, so whatever rate the
//! tool drives it at is an upper bound the tool can produce. It is not a
//! server to deploy: it accepts any upgrade request on any path, checks only
//! the key, and stops by itself after `--max-seconds`.

use std::time::Duration;

use bytes::BytesMut;
use switchboard_proto::{accept_key, Decoder, Event, Frame, Limits, OpCode, Role};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Largest request head read before giving up on a connection.
const MAX_HEAD: usize = 16 * 1024;

pub(crate) async fn run(bind: &str, max: Duration) -> Result<(), String> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| format!("bind {bind}: {e}"))?;
    eprintln!(
        "sink listening on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    serve_on(listener, max).await;
    Ok(())
}

/// Serves on `listener` until `max` has passed.
pub(crate) async fn serve_on(listener: TcpListener, max: Duration) {
    let serve = async {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = serve(stream).await;
                });
            }
        }
    };
    let _ = tokio::time::timeout(max, serve).await;
}

/// The `Sec-WebSocket-Key` of a complete request head, or `None`.
pub(crate) fn request_key(head: &[u8]) -> Option<(String, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(n) = req.parse(head).ok()? else {
        return None;
    };
    let key = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))?;
    Some((String::from_utf8(key.value.to_vec()).ok()?, n))
}

async fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(8192);
    let key = loop {
        if stream.read_buf(&mut buf).await? == 0 || buf.len() > MAX_HEAD {
            return Ok(());
        }
        if let Some((key, n)) = request_key(&buf) {
            let _ = buf.split_to(n);
            break key;
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    let mut dec = Decoder::new(Role::Server, Limits::default());
    let mut out = Vec::with_capacity(8192);
    loop {
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(Event::Text(t))) => push(&mut out, OpCode::Text, t.into_bytes()),
                Ok(Some(Event::Binary(p))) => push(&mut out, OpCode::Binary, p),
                Ok(Some(Event::Ping(p))) => push(&mut out, OpCode::Pong, p),
                Ok(Some(Event::Pong(_))) => {}
                Ok(Some(Event::Close(_))) | Err(_) => {
                    out.extend_from_slice(&Frame::close(None).to_vec());
                    stream.write_all(&out).await?;
                    return Ok(());
                }
                Ok(None) => break,
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

fn push(out: &mut Vec<u8>, op: OpCode, payload: bytes::Bytes) {
    let f = Frame::new(op, true, false, payload);
    out.extend_from_slice(f.header());
    out.extend_from_slice(f.payload());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{connect, echo, idle, Common};

    fn common(url: String) -> Common {
        Common {
            url,
            warmup: 0.1,
            duration: 0.4,
            sources: 0,
            connect_concurrency: 16,
            pid: Some(std::process::id()),
            json: false,
            label: None,
            threads: None,
            quiet: true,
        }
    }

    /// The scenarios end to end against the sink on loopback: bounded (under
    /// a second each) and checked for traffic and zero errors.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scenarios_run_against_the_sink() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws/echo", listener.local_addr().unwrap());
        let server = tokio::spawn(serve_on(listener, Duration::from_secs(30)));

        let opts = echo::EchoOpts {
            conns: 8,
            size: 100,
            depth: 2,
            binary: false,
            count: 0,
            // The io_uring engine has its own tests (echo_uring.rs).
            engine: echo::Engine::Tokio,
        };
        let r = echo::run(&common(url.clone()), &opts).await.unwrap();
        assert_eq!((r.connections, r.errors), (8, 0), "{}", r.table());
        assert!(r.ops > 0 && r.latency.is_some(), "{}", r.table());
        assert!(r.server_cpu_us_per_op().is_some());
        assert_eq!(r.engine, Some("tokio"));

        // A fixed workload ends the window early, with exactly that count.
        let fixed = echo::EchoOpts {
            count: 50,
            binary: true,
            ..opts
        };
        let mut c = common(url.clone());
        c.warmup = 0.0;
        c.duration = 30.0;
        let r = echo::run(&c, &fixed).await.unwrap();
        assert_eq!((r.ops, r.errors), (8 * 50, 0), "{}", r.table());
        assert!(r.duration_s < 10.0);

        for close in [false, true] {
            let r = connect::run(&common(url.clone()), 4, close, 0)
                .await
                .unwrap();
            assert!(r.ops > 0, "{}", r.table());
            assert_eq!(r.errors, 0, "{}", r.table());
            // A fixed number of handshakes ends the window early: the 30
            // begun in the window, plus at most one per client begun before.
            let mut c = common(url.clone());
            c.warmup = 0.0;
            c.duration = 30.0;
            let r = connect::run(&c, 4, close, 30).await.unwrap();
            assert!((30..=34).contains(&r.ops), "{}", r.table());
            assert_eq!(r.errors, 0, "{}", r.table());
            assert!(r.duration_s < 10.0, "{}", r.table());
            let attempts = r.extra["attempts"].as_u64().unwrap();
            assert!(attempts >= r.ops, "{}", r.table());
        }

        let r = idle::run(&common(url), 20).await.unwrap();
        assert_eq!((r.connections, r.errors), (20, 0), "{}", r.table());
        assert!(r.extra.contains_key("rss_per_conn_b"));
        server.abort();
    }

    #[test]
    fn finds_the_key() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: abc==\r\n\r\nrest";
        assert_eq!(request_key(head), Some(("abc==".into(), head.len() - 4)));
        assert_eq!(request_key(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(request_key(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
    }
}
