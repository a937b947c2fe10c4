//! WebSocket routes: the upgrade, the socket API, the writer, the
//! heartbeat, outgoing compression, event style.

pub(crate) mod compress;
pub(crate) mod config;
pub(crate) mod events;
pub(crate) mod headers;
pub(crate) mod heartbeat;
pub(crate) mod message;
pub(crate) mod signal;
pub(crate) mod socket;
pub(crate) mod upgrade;
pub(crate) mod writer;

pub use config::{OriginCheck, OriginPolicy, WsConfig};
pub use events::WsEvents;
pub use message::Message;
pub use socket::{Receiver, Sender, Socket};
pub use upgrade::{Accept, WebSocket};
