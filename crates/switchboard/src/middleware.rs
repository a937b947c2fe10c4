//! Middleware: checks that run before a handler, able to refuse the
//! request or attach state to it.
//!
//! A [`Middleware`] sees the request head ([`RequestContext`]) and either
//! lets it through (possibly after inserting extensions, e.g. the verified
//! token claims) or refuses it with a [`Reject`]: an HTTP error, or — for
//! WebSocket routes, as the seeds do — accepting and immediately closing
//! with a close code. Auth ([`JwtAuth`](crate::auth::JwtAuth)) is one.
//!
//! Middleware is synchronous on purpose: it runs on every handshake, and
//! what it does (verify a signature, check a counter) needs no I/O; async
//! work belongs in the handler. This is not `tower`: Switchboard's routes
//! are not `tower::Service`s, and a handshake check needs the WebSocket
//! close-code outcome that tower layers cannot express.

use switchboard_proto::CloseFrame;

use crate::extract::{Rejection, RequestContext};

/// How a middleware refuses a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// Answer with an HTTP error (no upgrade).
    Http(Rejection),
    /// WebSocket routes: accept, then close at once with this code and
    /// reason (browsers cannot read HTTP error bodies of failed upgrades,
    /// but they do see close codes). On HTTP routes this becomes a 403.
    Close(CloseFrame),
}

impl From<Rejection> for Reject {
    fn from(r: Rejection) -> Reject {
        Reject::Http(r)
    }
}

/// A check that runs before handlers.
pub trait Middleware: Send + Sync + 'static {
    /// Inspects (and may annotate) the request; `Err` refuses it.
    fn before(&self, cx: &mut RequestContext) -> Result<(), Reject>;
}

impl<F> Middleware for F
where
    F: Fn(&mut RequestContext) -> Result<(), Reject> + Send + Sync + 'static,
{
    fn before(&self, cx: &mut RequestContext) -> Result<(), Reject> {
        self(cx)
    }
}
