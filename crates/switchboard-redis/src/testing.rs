//! Test helpers (feature `testing`): a real `redis-server` per test and a
//! TCP proxy that injects the one fault a process signal cannot — a
//! connection that stays open but silently carries nothing.
//!
//! [`RedisServer`] starts `redis-server` (or `$REDIS_SERVER`) on a free
//! loopback port with its own temporary directory, and kills it and removes
//! the directory on drop. It can SIGKILL, SIGSTOP/SIGCONT and restart the
//! server on the same port and directory (a persistent server keeps every
//! acknowledged write across a SIGKILL; the others keep nothing). A missing
//! `redis-server` is a test *failure* with instructions, never a skip. Not
//! for production.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// How long a started server may take to answer PING (AOF loading
/// included): generous for a loaded 2-core machine, still bounded.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` process owned by a test.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// A server without persistence: a restart loses everything.
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// A server with `appendonly yes` and `appendfsync always` in its
    /// directory: a restart after a SIGKILL keeps every acknowledged write.
    ///
    /// `always`, not Redis's default `everysec`: under `everysec` Redis
    /// postpones writing its AOF buffer (for up to 2 s) while a background
    /// fsync is still running, and replies meanwhile, so a SIGKILL on a
    /// machine with a slow disk loses acknowledged writes. With `always` the
    /// AOF is written before any reply goes out.
    pub fn start_persistent() -> RedisServer {
        RedisServer::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-redis-{}-{}-{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("create the redis temp dir");
        // A free port can be taken by someone else between the probe and
        // redis binding it: retry a few times with fresh ports.
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                port,
                dir: dir.clone(),
                persistent,
                child: None,
            };
            if server.spawn() {
                return server;
            }
            server.dir = PathBuf::new(); // keep the dir for the next try
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    fn binary() -> String {
        std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
    }

    /// Starts the process; false if it did not answer PING in time.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(Self::binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", if self.persistent { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{}` not found: the Redis backplane tests need a real Redis. \
                 Install it (Debian: `apt-get install -y redis-server`; \
                 scripts/test does this) or set REDIS_SERVER to its path.",
                Self::binary()
            ),
            Err(e) => panic!("could not start {}: {e}", Self::binary()),
        };
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false; // exited: port taken, most likely
                }
            }
            if ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process still dies of SIGKILL.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory (after [`kill`]).
    ///
    /// [`kill`]: RedisServer::kill
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`pause`](RedisServer::pause).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("redis-server is not running");
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid} failed");
    }

    /// Runs one command with a blocking client (setup and assertions).
    /// Arguments must not contain spaces.
    pub fn cli(&self, command: &str) -> String {
        let mut s = TcpStream::connect(self.addr()).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        s.write_all(format!("{command}\r\n").as_bytes())
            .expect("write to redis");
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // A paused server must be resumed to die cleanly on some
            // kernels; SIGKILL works regardless, this is belt and braces.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
        self.kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A loopback TCP proxy in front of Redis that can make the pub/sub
/// connections passing through it go silent: still open, carrying nothing
/// either way — what a half-dead NAT entry or a wedged middlebox does.
#[derive(Debug)]
pub struct FreezingProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct ProxyState {
    /// Bumped by `freeze_subscriptions`; a pub/sub connection opened before
    /// the bump goes silent.
    freeze: AtomicU64,
}

impl FreezingProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FreezingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(ProxyState::default());
        let st = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(upstream).await {
                        relay(client, server, st).await;
                    }
                });
            }
        });
        FreezingProxy {
            addr,
            state,
            accept,
        }
    }

    /// `redis://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Every pub/sub connection open now stops carrying bytes (both ways)
    /// without closing; later connections work.
    pub fn freeze_subscriptions(&self) {
        self.state.freeze.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: tokio::net::TcpStream, server: tokio::net::TcpStream, st: Arc<ProxyState>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let born = st.freeze.load(Ordering::Acquire);
    let pubsub = Arc::new(AtomicBool::new(false));
    let silent = {
        let st = Arc::clone(&st);
        let pubsub = Arc::clone(&pubsub);
        move || pubsub.load(Ordering::Acquire) && st.freeze.load(Ordering::Acquire) > born
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = {
        let silent = silent.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if buf[..n].windows(9).any(|w| w == b"SUBSCRIBE") {
                    pubsub.store(true, Ordering::Release);
                }
                if !silent() && sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = sw.shutdown().await;
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !silent() && cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}
