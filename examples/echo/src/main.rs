//! The smallest useful Switchboard server: a WebSocket route that echoes
//! every text and binary message unchanged, and an HTTP health check.
//!
//! Shows: `App::get`, `App::websocket`, `WebSocket::accept`,
//! `Socket::recv_message` / `Socket::send`, and that the close handshake
//! needs no code of your own (the loop ends when the peer closes; the
//! framework answers its close frame).
//!
//! ```text
//! cargo run -p example-echo                  # listens on 127.0.0.1:3000
//! cargo run -p example-echo -- 0.0.0.0:9000  # or on another address
//! curl http://127.0.0.1:3000/health
//! websocat ws://127.0.0.1:3000/ws/echo       # any WebSocket client will do
//! cargo test -p example-echo                 # the tests below, no port needed
//! ```

use switchboard::{App, Error, WebSocket};

/// Echoes messages until the peer closes. Returning `Ok` closes with 1000;
/// returning an error (or panicking) would close with 1011.
async fn echo(ws: WebSocket) -> Result<(), Error> {
    let mut ws = ws.accept().await?;
    while let Some(msg) = ws.recv_message().await? {
        ws.send(msg).await?;
    }
    Ok(())
}

/// The application, shared by `main` and the tests.
fn app() -> App {
    App::new()
        .get("/health", || async { "ok" })
        .websocket("/ws/echo", echo)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    // Serves until Ctrl-C / SIGTERM, then shuts down gracefully (open
    // sockets get close code 1001).
    app().serve(addr).await
}

#[cfg(test)]
mod tests {
    use switchboard::{testing::TestClient, CloseCode, Message, StatusCode};

    use super::app;

    #[tokio::test]
    async fn health_answers_ok() {
        let client = TestClient::new(app());
        let res = client.get("/health").send().await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.text(), "ok");
    }

    #[tokio::test]
    async fn echoes_text_and_binary_unchanged() {
        let client = TestClient::new(app());
        let mut ws = client.websocket_connect("/ws/echo").await.unwrap();

        ws.send_text("hello").await.unwrap();
        assert_eq!(ws.recv().await.unwrap(), Message::text("hello"));

        ws.send_bytes(vec![0u8, 1, 2, 255]).await.unwrap();
        assert_eq!(
            ws.recv_bytes().await.unwrap().as_deref(),
            Some(&[0u8, 1, 2, 255][..])
        );

        // Larger than one read buffer and one in-memory pipe chunk.
        let big = "x".repeat(200_000);
        ws.send_text(big.clone()).await.unwrap();
        assert_eq!(ws.recv_text().await.unwrap(), Some(big));
    }

    #[tokio::test]
    async fn close_handshake_completes_with_our_code() {
        let client = TestClient::new(app());
        let mut ws = client.websocket_connect("/ws/echo").await.unwrap();
        ws.close(CloseCode::NORMAL, "done").await.unwrap();
        // The server echoed our close frame.
        let frame = ws.close_frame().unwrap();
        assert_eq!(
            (frame.code, frame.reason.as_str()),
            (CloseCode::NORMAL, "done")
        );
        assert!(!ws.is_open());
    }

    #[tokio::test]
    async fn plain_get_on_the_websocket_route_is_a_400() {
        let client = TestClient::new(app());
        let res = client.get("/ws/echo").send().await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }
}
