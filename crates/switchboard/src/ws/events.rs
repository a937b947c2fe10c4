//! The event style: a type with `on_connect` / `on_message` /
//! `on_disconnect` instead of a receive loop, as in the seeds'
//! `WebSocketEndpoint` classes.

use std::future::Future;

use switchboard_proto::CloseFrame;

use crate::{
    error::Error,
    ws::{message::Message, socket::Socket, upgrade::WebSocket},
};

/// Callbacks for one WebSocket route; register with
/// [`App::websocket_events`](crate::App::websocket_events).
///
/// The framework accepts the socket, calls `on_connect`, then
/// `on_message` for every data message, and `on_disconnect` once with the
/// close frame (or the error) that ended the connection. An `Err` from a
/// callback closes the socket with 1011.
///
/// ```
/// use switchboard::{Error, Message, Socket, WsEvents};
///
/// struct Echo;
///
/// impl WsEvents for Echo {
///     async fn on_message(&self, ws: &mut Socket, msg: Message) -> Result<(), Error> {
///         ws.send(msg).await
///     }
/// }
/// ```
pub trait WsEvents: Send + Sync + 'static {
    /// Decides whether to accept (default: accept with the route's
    /// subprotocol choice). Return `None` after rejecting.
    fn on_upgrade(
        &self,
        ws: WebSocket,
    ) -> impl Future<Output = Result<Option<Socket>, Error>> + Send {
        async move { ws.accept().await.map(Some) }
    }

    /// Called once after accepting.
    fn on_connect(&self, _ws: &mut Socket) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }

    /// Called for every text or binary message.
    fn on_message(
        &self,
        ws: &mut Socket,
        msg: Message,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Called once when the connection ends: `close` is the peer's close
    /// frame (code 1005 if it had none, 1006 if the connection dropped).
    fn on_disconnect(
        &self,
        _ws: &mut Socket,
        _close: CloseFrame,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Runs an event handler over one connection.
pub(crate) async fn run<E: WsEvents>(events: &E, ws: WebSocket) -> Result<(), Error> {
    let Some(mut socket) = events.on_upgrade(ws).await? else {
        return Ok(());
    };
    let result = async {
        events.on_connect(&mut socket).await?;
        while let Some(msg) = socket.recv_message().await? {
            events.on_message(&mut socket, msg).await?;
        }
        Ok::<(), Error>(())
    }
    .await;
    let close = match (&result, socket.close_frame()) {
        (_, Some(frame)) => frame.clone(),
        (Err(e), None) => CloseFrame::new(
            e.close_code()
                .unwrap_or(switchboard_proto::CloseCode::INTERNAL_ERROR),
            e.to_string(),
        ),
        (Ok(()), None) => CloseFrame::new(switchboard_proto::CloseCode::NORMAL, ""),
    };
    events.on_disconnect(&mut socket, close).await;
    match result {
        Err(e) if e.is_disconnect() || e.is_protocol() => Ok(()),
        other => other,
    }
}
