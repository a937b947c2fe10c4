//! Connection signals that cost nothing to poll: "killed" (end the
//! connection now), "going away" (the server is shutting down: send close
//! 1001) and "forced" (the shutdown deadline passed: drop the handler).
//!
//! Each is a flag plus the waker of the task that waits for it. Every
//! connection's reader, writer and handler wait on these on *every* poll,
//! i.e. for every message; a `CancellationToken` (or any `Notify`-based
//! future) takes a mutex on each poll of a waiting future, which the echo
//! profile showed as one of the largest costs per message
//! (docs/BENCHMARKS.md). Here a poll is an `AtomicWaker` registration and
//! an atomic load. The app reaches its live connections through a registry
//! ([`Signals`]) touched once when a connection starts and once when it
//! ends: a slab (an index into a vector with a free list), which costs a
//! few instructions where a hash map keyed by a connection id paid for
//! hashing on both ends of every handshake.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, Weak,
    },
    task::{Context, Poll, Waker},
};

use futures_util::task::AtomicWaker;
use slab::Slab;

use crate::ws::heartbeat::Beat;

/// The app's side: its shutdown flags and its live connections.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    going_away: AtomicBool,
    forced: AtomicBool,
    conns: Mutex<Slab<Weak<ConnSignal>>>,
}

impl Signals {
    /// A connection's signals, registered so that shutdown reaches them;
    /// a connection that starts after a shutdown began gets it at once.
    pub(crate) fn register(self: &Arc<Self>) -> Arc<ConnSignal> {
        let conn = Arc::new_cyclic(|weak: &Weak<ConnSignal>| {
            let key = self.lock().insert(weak.clone());
            let mut conn = ConnSignal::default();
            conn.registry = Some((Arc::downgrade(self), key));
            conn
        });
        if self.going_away.load(Ordering::SeqCst) {
            conn.go_away();
        }
        if self.forced.load(Ordering::SeqCst) {
            conn.force();
        }
        conn
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Weak<ConnSignal>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> Vec<Arc<ConnSignal>> {
        self.lock()
            .iter()
            .filter_map(|(_, c)| c.upgrade())
            .collect()
    }

    /// Graceful shutdown began: every connection sends close 1001.
    pub(crate) fn go_away(&self) {
        self.going_away.store(true, Ordering::SeqCst);
        for conn in self.live() {
            conn.go_away();
        }
    }

    /// The shutdown deadline passed: every connection is cut and its
    /// handler dropped.
    pub(crate) fn force(&self) {
        self.forced.store(true, Ordering::SeqCst);
        for conn in self.live() {
            conn.force();
        }
    }

    /// Live connections (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// One connection's signals.
#[derive(Debug, Default)]
pub(crate) struct ConnSignal {
    /// Where to deregister on drop: the registry and this connection's key
    /// in it (`None`: a client connection).
    registry: Option<(Weak<Signals>, usize)>,
    killed: AtomicBool,
    going_away: AtomicBool,
    forced: AtomicBool,
    /// The reading side (the handler's `recv`).
    reader: AtomicWaker,
    /// The writer task (or, before it exists, what spawns it: see
    /// `writer.rs`).
    pub(crate) writer: AtomicWaker,
    /// The task running the handler (waits for `forced`).
    handler: AtomicWaker,
    /// What the peer was heard to send, for the heartbeat (here rather
    /// than in the writer's state so the app's ticker can read it without
    /// holding the connection alive, see heartbeat.rs).
    pub(crate) beat: Beat,
}

impl Drop for ConnSignal {
    fn drop(&mut self) {
        if let Some((registry, key)) = &self.registry {
            if let Some(registry) = registry.upgrade() {
                // Its own key, taken at registration: vacated once, here.
                registry.lock().try_remove(*key);
            }
        }
    }
}

impl ConnSignal {
    /// A connection no app shutdown reaches (a client's).
    pub(crate) fn standalone() -> Arc<Self> {
        Arc::new(ConnSignal::default())
    }

    /// Ends the connection now: the writer stops, `recv` reports the
    /// disconnect.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.reader.wake();
        self.writer.wake();
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    fn go_away(&self) {
        self.going_away.store(true, Ordering::SeqCst);
        self.writer.wake();
    }

    fn force(&self) {
        self.forced.store(true, Ordering::SeqCst);
        self.handler.wake();
        self.kill();
    }

    pub(crate) fn is_going_away(&self) -> bool {
        self.going_away.load(Ordering::SeqCst)
    }

    /// The killed flag, for the reading side.
    pub(crate) fn killed(&self) -> Watch<'_> {
        Watch {
            flag: &self.killed,
            waker: &self.reader,
        }
    }

    /// The killed flag, for the writer task (it re-registers its waker: a
    /// wake-up for work may have used it up).
    pub(crate) fn killed_writer(&self) -> Watch<'_> {
        Watch {
            flag: &self.killed,
            waker: &self.writer,
        }
    }

    /// The forced-shutdown flag, for the handler's task.
    pub(crate) fn forced(&self) -> Watch<'_> {
        Watch {
            flag: &self.forced,
            waker: &self.handler,
        }
    }
}

/// One flag of a connection's signal and the waker its watcher registers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch<'a> {
    flag: &'a AtomicBool,
    waker: &'a AtomicWaker,
}

impl Watch<'_> {
    /// Whether the flag is set (a load; registers nothing).
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Ready once the flag is set. Registers the waiting task's waker, then
    /// looks at the flag (in that order, so a flag set in between still
    /// wakes it).
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        self.ready()
    }

    /// As `poll`, for a watcher that keeps what it last registered in
    /// `registered`. Only for the reader's and the handler's watches: their
    /// wakers are woken by nothing but the flag (which stays set), so a
    /// registered waker stays in place until the flag is set, and only a
    /// task change (the receiver moved to another task) needs a new one.
    /// Saves an `AtomicWaker` registration (two compare-and-swaps) per wait,
    /// i.e. per message on a busy connection.
    pub(crate) fn poll_cached(
        &self,
        cx: &mut Context<'_>,
        registered: &mut Option<Waker>,
    ) -> Poll<()> {
        if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker.register(cx.waker());
            *registered = Some(cx.waker().clone());
        }
        self.ready()
    }

    fn ready(&self) -> Poll<()> {
        if self.is_set() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Runs `fut` unless `signal` is set first (then `None`). The flag is
/// looked at before each poll of `fut`, so it wins a tie; the waker is
/// registered only when `fut` has to wait (a future that is ready at once,
/// the common case for a receive with data in the buffer, costs one load).
///
/// `registered`, for the reader's and the handler's watches only (see
/// [`Watch::poll_cached`]), outlives the call and remembers the waker
/// registered last, so a task that waits again and again registers it once;
/// `None` registers on every wait (the writer, whose waker other wake-ups
/// use up).
///
/// A struct future rather than an `async fn`: an `async fn` keeps its
/// argument and the pinned copy it polls side by side, twice the inner
/// future's size in every future that awaits it (the writer task and every
/// handler parked in `recv`, i.e. memory per idle connection).
pub(crate) fn unless<'w, 'r, F: Future>(
    fut: F,
    signal: Watch<'w>,
    registered: Option<&'r mut Option<Waker>>,
) -> Unless<'w, 'r, F> {
    Unless {
        fut,
        signal,
        registered,
    }
}

pin_project_lite::pin_project! {
    /// The future [`unless`] returns.
    pub(crate) struct Unless<'w, 'r, F> {
        #[pin]
        fut: F,
        signal: Watch<'w>,
        registered: Option<&'r mut Option<Waker>>,
    }
}

impl<F: Future> Future for Unless<'_, '_, F> {
    type Output = Option<F::Output>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.signal.is_set() {
            return Poll::Ready(None);
        }
        match this.fut.poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending => match this.registered.as_deref_mut() {
                Some(registered) => this.signal.poll_cached(cx, registered),
                None => this.signal.poll(cx),
            }
            .map(|()| None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_reaches_live_connections_and_late_ones() {
        let app = Arc::new(Signals::default());
        let a = app.register();
        let b = app.register();
        assert_eq!(app.len(), 2);
        drop(b);
        assert_eq!(app.len(), 1, "a dropped connection deregisters");
        app.go_away();
        assert!(a.is_going_away() && !a.is_killed());
        let late = app.register();
        assert!(late.is_going_away(), "a connection after go_away gets it");
        app.force();
        assert!(a.is_killed() && late.is_killed());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(a.forced().poll(&mut cx).is_ready());
        assert!(app.register().is_killed());
    }

    #[test]
    fn a_cached_registration_is_renewed_for_a_new_task_and_still_wakes() {
        use std::sync::atomic::AtomicUsize;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let conn = ConnSignal::standalone();
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let (wa, wb) = (Waker::from(Arc::clone(&a)), Waker::from(Arc::clone(&b)));
        let mut registered = None;
        let watch = conn.killed();
        assert!(watch
            .poll_cached(&mut Context::from_waker(&wa), &mut registered)
            .is_pending());
        assert!(watch
            .poll_cached(&mut Context::from_waker(&wa), &mut registered)
            .is_pending());
        // The receiver moved to another task: that one must be woken.
        assert!(watch
            .poll_cached(&mut Context::from_waker(&wb), &mut registered)
            .is_pending());
        conn.kill();
        assert_eq!(b.0.load(Ordering::SeqCst), 1, "the current task is woken");
        assert_eq!(a.0.load(Ordering::SeqCst), 0);
        assert!(watch
            .poll_cached(&mut Context::from_waker(&wb), &mut registered)
            .is_ready());
    }

    #[test]
    fn kill_wakes_the_reader() {
        let conn = ConnSignal::standalone();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(conn.killed().poll(&mut cx).is_pending());
        conn.kill();
        assert!(conn.killed().poll(&mut cx).is_ready());
        assert!(!conn.is_going_away());
    }
}
