//! Handler traits: how async closures with extractor arguments become routes.
//!
//! Generic at the edge, boxed in storage (the axum shape): [`Handler`] and
//! [`WsHandler`] are implemented by macro for closures of up to eight
//! extractor arguments; the app stores them type-erased.

use std::{future::Future, pin::Pin};

use hyper::body::Incoming;

use crate::{
    extract::{FromRequest, FromRequestParts, Rejection, RequestContext},
    response::{BoxError, IntoResponse, Response},
    ws::WebSocket,
};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An async function usable as an HTTP route handler.
///
/// Implemented for `Fn(T1, …, Tn) -> impl Future<Output = impl IntoResponse>`
/// where every `Ti` but the last is [`FromRequestParts`] and the last is
/// [`FromRequest`].
pub trait Handler<M>: Clone + Send + Sync + 'static {
    /// Runs the handler for one request.
    fn call(self, cx: RequestContext, body: Incoming) -> BoxFuture<Response>;
}

impl<F, Fut, R> Handler<()> for F
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoResponse,
{
    fn call(self, _cx: RequestContext, _body: Incoming) -> BoxFuture<Response> {
        Box::pin(async move { self().await.into_response() })
    }
}

macro_rules! impl_handler {
    ([$($ty:ident),*], $last:ident) => {
        #[allow(non_snake_case)]
        impl<F, Fut, R, M, $($ty,)* $last> Handler<(M, $($ty,)* $last,)> for F
        where
            F: Fn($($ty,)* $last) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoResponse,
            $($ty: FromRequestParts + 'static,)*
            $last: FromRequest<M> + 'static,
        {
            fn call(self, mut cx: RequestContext, body: Incoming) -> BoxFuture<Response> {
                Box::pin(async move {
                    $(
                        let $ty = match $ty::from_request_parts(&mut cx) {
                            Ok(v) => v,
                            Err(r) => return r.into_response(),
                        };
                    )*
                    let $last = match $last::from_request(&mut cx, body).await {
                        Ok(v) => v,
                        Err(r) => return r.into_response(),
                    };
                    self($($ty,)* $last).await.into_response()
                })
            }
        }
    };
}

impl_handler!([], T1);
impl_handler!([T1], T2);
impl_handler!([T1, T2], T3);
impl_handler!([T1, T2, T3], T4);
impl_handler!([T1, T2, T3, T4], T5);
impl_handler!([T1, T2, T3, T4, T5], T6);
impl_handler!([T1, T2, T3, T4, T5, T6], T7);
impl_handler!([T1, T2, T3, T4, T5, T6, T7], T8);

/// What a WebSocket handler may return: `()` or `Result<(), E>`.
///
/// An `Err` closes the socket with 1011 and is logged.
pub trait WsResult: Send {
    /// Converts into a result.
    fn into_result(self) -> Result<(), BoxError>;
}

impl WsResult for () {
    fn into_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError> + Send> WsResult for Result<(), E> {
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

pub(crate) type PreparedWs = Box<dyn FnOnce(WebSocket) -> BoxFuture<Result<(), BoxError>> + Send>;

/// An async function usable as a WebSocket route handler:
/// `Fn(WebSocket, T1, …, Tn) -> impl Future<Output = impl WsResult>`, every
/// `Ti` a [`FromRequestParts`] extractor. Extraction happens before the
/// upgrade, so a failed extractor answers with an HTTP error status.
pub trait WsHandler<M>: Clone + Send + Sync + 'static {
    /// Runs the extractors; on success returns the handler bound to them.
    #[doc(hidden)]
    fn prepare(self, cx: &mut RequestContext) -> Result<PreparedWs, Rejection>;
}

pin_project_lite::pin_project! {
    /// A WebSocket handler's future, its output made a `Result`.
    struct IntoResult<Fut> {
        #[pin]
        fut: Fut,
    }
}

impl<Fut: Future> Future for IntoResult<Fut>
where
    Fut::Output: WsResult,
{
    type Output = Result<(), BoxError>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.project().fut.poll(cx).map(WsResult::into_result)
    }
}

macro_rules! impl_ws_handler {
    ($($ty:ident),*) => {
        #[allow(non_snake_case)]
        impl<F, Fut, R, $($ty,)*> WsHandler<($($ty,)*)> for F
        where
            F: Fn(WebSocket, $($ty,)*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: WsResult,
            $($ty: FromRequestParts + 'static,)*
        {
            #[allow(unused_variables)]
            fn prepare(self, cx: &mut RequestContext) -> Result<PreparedWs, Rejection> {
                $(
                    let $ty = $ty::from_request_parts(cx)?;
                )*
                // `map`, not an `async` block awaiting the handler's future:
                // the block would hold the socket and the extractors twice
                // (as its captures and inside the handler's future) for the
                // connection's life.
                Ok(Box::new(move |ws| {
                    Box::pin(IntoResult { fut: self(ws, $($ty,)*) })
                }))
            }
        }
    };
}

impl_ws_handler!();
impl_ws_handler!(T1);
impl_ws_handler!(T1, T2);
impl_ws_handler!(T1, T2, T3);
impl_ws_handler!(T1, T2, T3, T4);
impl_ws_handler!(T1, T2, T3, T4, T5);
impl_ws_handler!(T1, T2, T3, T4, T5, T6);
impl_ws_handler!(T1, T2, T3, T4, T5, T6, T7);
