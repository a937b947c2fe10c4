//! Cross-node requests: cluster stats and "close connection X on node Y".
//!
//! A request is a [`Control`] message published on the control channel (to
//! every node) or on one node's channel; answers come back as `Reply`
//! messages on the requester's node channel and are matched by request id.
//! The requester waits at most `request_timeout`, then reports who did not
//! answer. Requests in flight are capped (`MAX_PENDING`); incoming ones are
//! served by one worker task through a small bounded queue, and dropped
//! when it is full (the requester then times out) — a flood of requests
//! cannot grow memory or starve room traffic.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use switchboard::{
    hub::{BackplaneError, ConnId},
    CloseFrame,
};
use tokio::sync::{mpsc, watch};

use crate::{backplane::Shared, wire::Control};

/// Most requests this node waits on at once.
const MAX_PENDING: usize = 256;

/// Incoming requests queued for the worker.
pub(crate) const JOB_QUEUE: usize = 64;

/// An answer: the node that sent it and its body.
pub(crate) type Answer = (String, serde_json::Value);

/// Requests this node is waiting on.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, mpsc::Sender<Answer>>>,
}

/// Removes a pending request when its waiter is done (or dropped).
pub(crate) struct Pending<'a> {
    requests: &'a Requests,
    pub(crate) id: u64,
    pub(crate) answers: mpsc::Receiver<Answer>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.requests.lock().remove(&self.id);
    }
}

impl Requests {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Answer>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new request expecting up to `answers` answers.
    pub(crate) fn register(&self, answers: usize) -> Result<Pending<'_>, BackplaneError> {
        let mut pending = self.lock();
        if pending.len() >= MAX_PENDING {
            return Err(BackplaneError("too many cluster requests in flight".into()));
        }
        // Bounded by the number of nodes that may answer; extra answers
        // (a node answering twice) are dropped.
        let (tx, rx) = mpsc::channel(answers.max(1));
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        pending.insert(id, tx);
        Ok(Pending {
            requests: self,
            id,
            answers: rx,
        })
    }

    /// Routes an answer to its waiter (if it still waits).
    pub(crate) fn answer(&self, id: u64, from: String, body: serde_json::Value) {
        if let Some(tx) = self.lock().get(&id) {
            let _ = tx.try_send((from, body));
        }
    }
}

/// A request from another node, for the worker.
#[derive(Debug)]
pub(crate) enum Job {
    Stats {
        id: u64,
        from: String,
    },
    Close {
        id: u64,
        from: String,
        conn: u64,
        frame: CloseFrame,
    },
}

/// Serves other nodes' requests, one at a time.
pub(crate) async fn worker(
    shared: Arc<Shared>,
    mut jobs: mpsc::Receiver<Job>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let job = tokio::select! {
            j = jobs.recv() => match j { Some(j) => j, None => return },
            _ = shutdown.changed() => return,
        };
        let sink = shared.sink.get();
        let (id, to, body) = match job {
            Job::Stats { id, from } => {
                let stats = sink.and_then(|s| s.local_stats());
                (id, from, serde_json::to_value(stats).unwrap_or_default())
            }
            Job::Close {
                id,
                from,
                conn,
                frame,
            } => {
                let closed = sink.is_some_and(|s| s.close_local(ConnId(conn), &frame));
                (id, from, serde_json::json!({ "closed": closed }))
            }
        };
        let reply = Control::Reply {
            id,
            from: shared.config.node_id.clone(),
            body,
        };
        if let Err(e) = shared
            .send_control(&shared.keys.node_channel(&to), &reply)
            .await
        {
            tracing::debug!(error = %e, "cluster reply not sent");
        }
    }
}
