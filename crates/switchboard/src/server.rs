//! The TCP server: accept loop, HTTP/1.1 connections (and, behind TLS,
//! HTTP/2 ones: see `tls`), graceful shutdown.
//!
//! Shutdown, on SIGINT/SIGTERM or the caller's signal: stop accepting, answer
//! new upgrades with 503, tell every open socket "going away" (1001) and
//! every idle keep-alive connection to close, wait for handlers up to the
//! shutdown timeout, then drop whatever is left, then run shutdown hooks.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream, ToSocketAddrs},
};

use crate::app::{App, AppShared, ServerConfig};

/// Marks requests that arrived over TLS (for `wss://` in the API docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Secure;

/// hyper's default (and most) request headers when none is configured.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The HTTP/1.1 connection settings from `config`, built once per server
/// (the builder holds the timer in an `Arc`; connections borrow it).
pub(crate) fn http1_builder(config: &ServerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.handshake_timeout)
        .max_buf_size(config.max_header_bytes)
        .keep_alive(true);
    // Setting hyper's default explicitly is not free: with a configured
    // limit hyper fills two header arrays of that size per request instead
    // of using uninitialised inline ones (measured: about 1,700
    // instructions per request at 100).
    if config.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        builder.max_headers(config.max_headers);
    }
    builder
}

/// Serves one HTTP/1.1 connection (and its upgrades) on `io`.
pub(crate) fn spawn_connection<I>(shared: &Arc<AppShared>, io: I, remote: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    spawn_http1(shared, io, remote, false);
}

/// Serves one HTTP/1.1 connection on `io`; `secure` when `io` is TLS.
pub(crate) fn spawn_http1<I>(shared: &Arc<AppShared>, io: I, remote: SocketAddr, secure: bool)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let svc_shared = Arc::clone(shared);
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let shared = Arc::clone(&svc_shared);
        if secure {
            req.extensions_mut().insert(Secure);
        }
        async move { Ok::<_, std::convert::Infallible>(shared.handle(req, remote).await) }
    });
    let conn = shared
        .http1
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let going_away = shared.going_away.clone();
    let force = shared.force_close.clone();
    // A connection that arrives while draining (the test client, or a race
    // with the listener closing) still gets its answer: 503 for upgrades.
    let arrived_draining = shared.is_draining();
    // Boxed (here and at the other per-connection spawns): tokio copies a
    // task's future into its cell and writes its whole stage again when it
    // finishes, so a large future inline cost a memcpy of it several times
    // per connection (docs/BENCHMARKS.md, handshakes).
    shared.tracker.spawn(Box::pin(async move {
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = going_away.cancelled(), if !arrived_draining => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = force.cancelled() => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%remote, error = %e, "http connection ended with an error");
        }
    }));
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

impl App {
    /// Binds `addr` and serves until SIGINT or SIGTERM, then shuts down
    /// gracefully.
    pub async fn serve(self, addr: impl ToSocketAddrs) -> io::Result<()> {
        let listener = TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "switchboard listening");
        self.serve_with_shutdown(listener, shutdown_signal()).await
    }

    /// Serves on `listener` until `signal` resolves, then shuts down
    /// gracefully (see the module docs for the sequence).
    pub async fn serve_with_shutdown(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        self.run(listener, signal, |shared, stream, remote| {
            spawn_connection(shared, stream, remote)
        })
        .await
    }

    /// The accept loop and shutdown sequence; `on_accept` serves one
    /// accepted TCP connection (plain HTTP/1.1, or TLS).
    pub(crate) async fn run(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send,
        on_accept: impl Fn(&Arc<AppShared>, TcpStream, SocketAddr),
    ) -> io::Result<()> {
        let shared = self.into_shared();
        shared.run_startup().await;
        tokio::pin!(signal);
        loop {
            tokio::select! {
                _ = &mut signal => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, remote)) => {
                        let _ = stream.set_nodelay(true);
                        on_accept(&shared, stream, remote);
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        tracing::info!("shutting down");
        shared.begin_shutdown();
        let deadline = shared.config.shutdown_timeout;
        if tokio::time::timeout(deadline, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = shared.tracker.len(),
                "shutdown deadline passed; force-closing connections"
            );
            shared.force_close_now();
            let _ = tokio::time::timeout(Duration::from_secs(1), shared.tracker.wait()).await;
        }
        shared.run_shutdown().await;
        Ok(())
    }
}
