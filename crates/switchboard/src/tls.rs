//! TLS (feature `tls`): `https://` and `wss://` with rustls, ALPN `h2` and
//! `http/1.1`, and WebSockets over HTTP/2 (RFC 8441 extended CONNECT).
//!
//! Each accepted TCP connection is handed to its own task, which peeks at
//! the first byte (a plaintext HTTP request gets a 400 telling the client
//! to use `https://`), runs the TLS handshake under the app's handshake
//! timeout, then serves HTTP/1.1 (with upgrades) or HTTP/2 depending on the
//! protocol ALPN selected. HTTP/2 connections advertise
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL`, so a browser that loaded the page over
//! h2 opens its sockets as streams of the same connection; each such stream
//! goes through the same route table, handshake checks, middleware and
//! handlers as an HTTP/1.1 upgrade, and the same sans-IO engine runs on it.
//!
//! This module does not parse HTTP or frames, and never blocks the accept
//! loop: a client that stalls its handshake holds only its own task.

use std::{fmt, future::Future, io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use hyper::{rt::Executor, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, ToSocketAddrs},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::{
    app::{App, AppShared},
    server::{shutdown_signal, spawn_http1, Secure},
};

/// TLS settings for [`App::serve_tls`]: a certificate chain and private key
/// (PEM), and which protocols to offer through ALPN.
///
/// ```no_run
/// use switchboard::{App, TlsConfig};
///
/// # async fn run() -> std::io::Result<()> {
/// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
/// App::new()
///     .get("/health", || async { "ok" })
///     .serve_tls("127.0.0.1:8443", tls)
///     .await
/// # }
/// ```
#[must_use]
pub struct TlsConfig {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    http2: bool,
    websockets_over_http2: bool,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("TlsConfig")
            .field("certs", &self.certs.len())
            .field("http2", &self.http2)
            .field("websockets_over_http2", &self.websockets_over_http2)
            .finish_non_exhaustive()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl TlsConfig {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1) from files.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> io::Result<TlsConfig> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        TlsConfig::from_pem(&cert_pem, &key_pem)
            .map_err(|e| invalid(format!("{} / {}: {e}", cert.display(), key.display())))
    }

    /// Parses a PEM certificate chain (leaf first) and a PEM private key,
    /// and checks that they make a usable server configuration.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<TlsConfig> {
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("invalid certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(invalid(
                "no CERTIFICATE found in the certificate PEM".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| invalid(format!("no usable private key in the key PEM: {e}")))?;
        let config = TlsConfig {
            certs,
            key,
            http2: true,
            websockets_over_http2: true,
        };
        // Fail now, not at the first connection, on a key that does not
        // match the certificate or an unsupported key type.
        config.server_config()?;
        Ok(config)
    }

    /// Offer HTTP/2 through ALPN (default: on). Off: every connection
    /// speaks HTTP/1.1, and WebSockets use the HTTP/1.1 upgrade.
    pub fn http2(mut self, enabled: bool) -> Self {
        self.http2 = enabled;
        self
    }

    /// Accept WebSockets over HTTP/2 (RFC 8441; default: on): HTTP/2
    /// connections advertise `SETTINGS_ENABLE_CONNECT_PROTOCOL`. Off: an
    /// extended CONNECT is reset with `PROTOCOL_ERROR` by the HTTP/2 layer,
    /// and clients fall back to a separate HTTP/1.1 connection.
    pub fn websockets_over_http2(mut self, enabled: bool) -> Self {
        self.websockets_over_http2 = enabled;
        self
    }

    fn server_config(&self) -> io::Result<Arc<ServerConfig>> {
        // An explicit provider: no process-wide default to install, and no
        // panic when another crate enables a second provider.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS configuration: {e}")))?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| invalid(format!("certificate and key do not fit: {e}")))?;
        config.alpn_protocols = if self.http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Arc::new(config))
    }
}

impl App {
    /// Binds `addr` and serves HTTPS and WSS (HTTP/1.1 and HTTP/2) until
    /// SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn serve_tls(self, addr: impl ToSocketAddrs, tls: TlsConfig) -> io::Result<()> {
        let listener = TcpListener::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "switchboard listening (TLS)");
        self.serve_tls_with_shutdown(listener, tls, shutdown_signal())
            .await
    }

    /// Serves HTTPS and WSS on `listener` until `signal` resolves, then
    /// shuts down gracefully.
    pub async fn serve_tls_with_shutdown(
        self,
        listener: TcpListener,
        tls: TlsConfig,
        signal: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let acceptor = TlsAcceptor::from(tls.server_config()?);
        let connect_protocol = tls.websockets_over_http2;
        self.run(listener, signal, move |shared, stream, remote| {
            spawn_tls(shared, acceptor.clone(), stream, remote, connect_protocol)
        })
        .await
    }
}

/// The body of the 400 answering a plaintext HTTP request on the TLS port
/// (nginx answers "The plain HTTP request was sent to HTTPS port" alike).
const PLAIN_HTTP_BODY: &str = "this port speaks TLS: use https:// or wss:// (not http://, ws://)\n";

/// Most bytes read and discarded after answering a plaintext request, so
/// the close does not reset the connection before the client reads the 400.
const PLAIN_HTTP_DRAIN: usize = 16 * 1024;

fn spawn_tls(
    shared: &Arc<AppShared>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    connect_protocol: bool,
) {
    let shared2 = Arc::clone(shared);
    let timeout = shared.config.handshake_timeout;
    let force = shared.force_close.clone();
    shared.tracker.spawn(async move {
        let handshake = async {
            let mut first = [0u8; 1];
            let n = stream.peek(&mut first).await?;
            // 0x16: a TLS handshake record. An ASCII letter: a plaintext
            // request line ("GET / HTTP/1.1").
            if n == 1 && first[0].is_ascii_uppercase() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    PlainHttp(stream),
                ));
            }
            acceptor.accept(stream).await
        };
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, handshake) => r,
            _ = force.cancelled() => return,
        };
        let tls = match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                if let Some(plain) = e
                    .into_inner()
                    .and_then(|inner| inner.downcast::<PlainHttp>().ok())
                {
                    tracing::debug!(%remote, "plaintext HTTP on the TLS port; answered 400");
                    answer_plain_http(plain.0).await;
                } else {
                    tracing::debug!(%remote, "TLS handshake failed");
                }
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, ?timeout, "TLS handshake timed out");
                return;
            }
        };
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            spawn_h2(&shared2, tls, remote, connect_protocol);
        } else {
            spawn_http1(&shared2, tls, remote, true);
        }
    });
}

/// A plaintext connection, carried out of the handshake future in its error.
struct PlainHttp(TcpStream);

impl fmt::Debug for PlainHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainHttp")
    }
}

impl fmt::Display for PlainHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("plaintext HTTP request on the TLS port")
    }
}

impl std::error::Error for PlainHttp {}

async fn answer_plain_http(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{PLAIN_HTTP_BODY}",
            PLAIN_HTTP_BODY.len()
        );
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 1024];
        let mut drained = 0;
        while drained < PLAIN_HTTP_DRAIN {
            match stream.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Runs hyper's HTTP/2 per-stream tasks on the app's task tracker, so a
/// graceful shutdown waits for them like for every other connection task.
#[derive(Clone)]
struct TrackedExec(TaskTracker);

impl<F> Executor<F> for TrackedExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// Serves one HTTP/2 connection; WebSockets arrive as extended CONNECT
/// streams when `connect_protocol` is on.
fn spawn_h2<I>(shared: &Arc<AppShared>, io: I, remote: SocketAddr, connect_protocol: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let mut builder = http2::Builder::new(TrackedExec(shared.tracker.clone()));
    builder
        .timer(TokioTimer::new())
        // The same bound as HTTP/1.1's request head limit.
        .max_header_list_size(u32::try_from(shared.config.max_header_bytes).unwrap_or(u32::MAX))
        // Streams per connection: every HTTP/2 WebSocket holds one, and a
        // page rarely opens more than a few; hyper's default (200) bounds
        // what one client can make us track.
        .max_concurrent_streams(200);
    if connect_protocol {
        builder.enable_connect_protocol();
    }
    let svc_shared = Arc::clone(shared);
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let shared = Arc::clone(&svc_shared);
        req.extensions_mut().insert(Secure);
        async move { Ok::<_, std::convert::Infallible>(shared.handle(req, remote).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let going_away = shared.going_away.clone();
    let force = shared.force_close.clone();
    shared.tracker.spawn(async move {
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = going_away.cancelled() => {
                // GOAWAY: no new streams; open ones (sockets closing with
                // 1001) finish.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = force.cancelled() => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(%remote, error = %e, "h2 connection ended with an error");
        }
    });
}
