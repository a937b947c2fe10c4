//! The demo server's chat: the seeds' chat application, as a page a person
//! opens in a browser (`GET /`, `GET /chat`) and the socket it talks to
//! (`WS /ws/chat`).
//!
//! The protocol is the seeds' JSON one (see `docs/chat.md`): the server
//! greets with `welcome`; the client sends `join_room`, `leave_room` and
//! `chat_message`; the server answers `room_joined` (with the members
//! present, then the room's recent messages replayed) and `room_left`, and
//! tells the room `user_joined`, `user_left` and `chat_message`. Anything
//! else gets `{"type": "error", "message": "Unknown message type"}` and the
//! socket stays open.
//!
//! The chat has its own [`Hub`] (the [`ChatHub`] state), so the page's rooms
//! never mix with the raw relay rooms of `WS /ws/rooms/{room}`: a relay
//! client may send anything, and the page only understands this protocol.
//! Only chat messages go into the rooms' history; presence notices are sent
//! to the members present and are not replayed, because a late joiner gets
//! the member list in `room_joined` instead.
//!
//! The page (HTML, CSS, JS in `assets/`) is embedded with `include_str!`:
//! no build step, nothing fetched from elsewhere. This module must not
//! touch the other demo routes.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard::{
    http::{header, HeaderMap, HeaderValue},
    hub::{Hub, HubConfig, Member},
    App, Error, Html, IntoResponse, MessageDoc, RateLimit, RateLimitPolicy, RouteDoc, Socket,
    State, WebSocket, WsConfig,
};

/// The page, its script and its style, embedded in the binary.
const PAGE_HTML: &str = include_str!("../assets/chat.html");
const PAGE_JS: &str = include_str!("../assets/chat.js");
const PAGE_CSS: &str = include_str!("../assets/chat.css");

/// Messages kept per room: the same 100 as the demo's relay rooms.
const HISTORY: usize = 100;
/// Messages a late joiner is shown (the seeds replay the last 50).
const REPLAY: usize = 50;
/// Rooms kept for their history once empty. A message is at most
/// [`MAX_MESSAGE_CHARS`] characters (≤ 8 KiB of UTF-8 plus its envelope),
/// so history is bounded by about 256 × 100 × 8.5 KiB ≈ 210 MiB in the
/// worst case and is a few hundred KiB for a real conversation; the hub
/// evicts the least recently used empty room beyond this.
const MAX_HISTORY_ROOMS: usize = 256;
/// Longest chat message, in characters (Discord allows 2000, Slack 4000
/// for a message; a chat line longer than this is a paste, not a line).
const MAX_MESSAGE_CHARS: usize = 2000;
/// Longest display name, in characters; longer names are cut.
const MAX_NAME_CHARS: usize = 32;
/// Longest room name, in characters (it also appears in the page's URL).
const MAX_ROOM_CHARS: usize = 40;
/// Rooms one connection may be in at once: the page uses one; the
/// protocol allows a few, but a client must not fill the hub's tables.
const MAX_ROOMS_PER_CONNECTION: usize = 8;
/// Largest incoming WebSocket message: a longest message of 4-byte
/// characters with JSON escapes fits well under it.
const MAX_FRAME_BYTES: usize = 16 * 1024;

/// The chat's hub, a state of its own beside the relay rooms' [`Hub`].
#[derive(Debug, Clone)]
pub(crate) struct ChatHub {
    hub: Hub,
    /// Message ids are `{boot}-{seq}`: the boot nonce keeps ids from a
    /// previous run of the server (still shown in open pages) from being
    /// taken for new ones after a restart.
    boot: Arc<str>,
    /// Next message sequence number; ids only need to be unique.
    seq: Arc<AtomicU64>,
}

impl ChatHub {
    pub(crate) fn new() -> ChatHub {
        let config = HubConfig::default()
            .history(HISTORY)
            .max_history_rooms(MAX_HISTORY_ROOMS);
        ChatHub {
            hub: Hub::with_config(config),
            boot: format!("{:x}", random_u64() & 0xffff_ffff).into(),
            seq: Arc::new(AtomicU64::new(1)),
        }
    }

    fn next_id(&self) -> String {
        format!("{}-{}", self.boot, self.seq.fetch_add(1, Ordering::Relaxed))
    }
}

/// The chat's socket settings: small messages, and a message rate that a
/// person typing never reaches (10/s sustained, bursts of 20) while a
/// flooding script gets errors instead of the room's attention.
fn chat_ws_config() -> WsConfig {
    WsConfig::default()
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .rate_limit(RateLimit::new(10.0, 20).policy(RateLimitPolicy::Drop))
}

/// Adds the chat page (`GET /`, `GET /chat`), its assets and `WS /ws/chat`
/// to `app`, with the chat's own hub as state.
pub(crate) fn routes(app: App) -> App {
    let page_doc = |summary: &str| {
        RouteDoc::new()
            .summary(summary)
            .description(
                "The seeds' chat application as a page: type a message and press Enter. \
                 `?room=NAME` picks the room (default `general`), `?name=NAME` the display \
                 name (default: generated). See docs/chat.md.",
            )
            .tag("chat")
            .query_param::<String>("room", "The room to open (default `general`)", false)
            .query_param::<String>("name", "Display name (default: generated)", false)
            .response_content(200, "The chat page", "text/html")
    };
    app.state(ChatHub::new())
        .get("/", page)
        .doc(page_doc("The chat page"))
        .get("/chat", page)
        .doc(page_doc("The chat page (same as `GET /`)"))
        .get("/assets/chat.js", || async {
            asset("text/javascript; charset=utf-8", PAGE_JS)
        })
        .doc(RouteDoc::new().hidden())
        .get("/assets/chat.css", || async {
            asset("text/css; charset=utf-8", PAGE_CSS)
        })
        .doc(RouteDoc::new().hidden())
        .websocket_with("/ws/chat", chat_ws_config(), chat_socket)
        .doc(
            RouteDoc::new()
                .summary("Chat socket (the seeds' chat protocol)")
                .description(
                    "JSON text messages, each with a `type`. The server sends `welcome` \
                     first; the client sends `join_room`, `leave_room` and `chat_message`; \
                     the server answers `room_joined` (members, then the room's recent \
                     messages), `room_left`, and tells the room `user_joined`, \
                     `user_left` and `chat_message`. Anything else gets an `error` \
                     (\"Unknown message type\") and the socket stays open. At most 10 \
                     messages a second (bursts of 20) and 16 KiB a message. See \
                     docs/chat.md.",
                )
                .tag("chat")
                .query_param::<String>("name", "Display name (default: generated)", false)
                .receives(
                    MessageDoc::json::<ClientMsg>("client_message")
                        .summary("join_room, leave_room or chat_message"),
                )
                .sends(
                    MessageDoc::json::<ServerMsg<'static>>("server_message").summary(
                        "welcome, room_joined, room_left, user_joined, user_left, \
                     chat_message or error",
                    ),
                ),
        )
}

/// Headers for every page response: always revalidate (a restarted server
/// may serve a newer page), and a policy allowing only our own script,
/// style and socket.
fn page_headers(content_type: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; \
             img-src 'self' data:; connect-src 'self' ws: wss:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h
}

async fn page() -> impl IntoResponse {
    (page_headers("text/html; charset=utf-8"), Html(PAGE_HTML))
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (page_headers(content_type), body)
}

/// What a client may send.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMsg {
    /// Join a room: `room_joined` follows, then the room's recent messages.
    JoinRoom {
        /// 1 to 40 letters, digits, `-`, `_` or `.`.
        room: String,
    },
    /// Leave a room: `room_left` follows.
    LeaveRoom {
        /// A room this connection is in.
        room: String,
    },
    /// Say something in a room this connection has joined.
    ChatMessage {
        /// The room.
        room: String,
        /// 1 to 2000 characters (spaces around it are trimmed).
        message: String,
    },
}

/// A member as presence reports it.
#[derive(Debug, Serialize, JsonSchema)]
struct MemberInfo {
    /// The member's connection.
    connection_id: String,
    /// Its display name.
    name: String,
}

/// What the server sends.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMsg<'a> {
    /// First message on every connection.
    Welcome {
        /// This connection's id (as in presence and chat messages).
        connection_id: &'a str,
        /// The display name the server uses for this connection.
        name: &'a str,
        /// A greeting.
        message: &'a str,
    },
    /// The answer to `join_room`.
    RoomJoined {
        /// The room.
        room: &'a str,
        /// Everyone in the room now, this connection included.
        members: Vec<MemberInfo>,
        /// How many recent `chat_message`s follow (replayed history).
        history: usize,
    },
    /// The answer to `leave_room`.
    RoomLeft {
        /// The room.
        room: &'a str,
    },
    /// Someone else joined a room this connection is in.
    UserJoined {
        /// Their connection.
        connection_id: &'a str,
        /// Their display name.
        name: &'a str,
        /// The room.
        room: &'a str,
    },
    /// Someone else left a room this connection is in (or disconnected).
    UserLeft {
        /// Their connection.
        connection_id: &'a str,
        /// Their display name.
        name: &'a str,
        /// The room.
        room: &'a str,
    },
    /// A message in a room this connection is in (its own included).
    ChatMessage {
        /// Unique, also across server restarts.
        id: &'a str,
        /// The sender's connection.
        connection_id: &'a str,
        /// The sender's display name.
        name: &'a str,
        /// The room.
        room: &'a str,
        /// The text.
        message: &'a str,
        /// Milliseconds since the Unix epoch, when the server relayed it.
        ts: u64,
    },
    /// The last message was refused; the socket stays open.
    Error {
        /// Why, e.g. "Unknown message type".
        message: &'a str,
    },
}

impl ServerMsg<'_> {
    fn to_text(&self) -> String {
        // These types always serialize (string keys, no maps).
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Parses a client message; the error is the text of the `error` reply.
fn parse(text: &str) -> Result<ClientMsg, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("Error processing message: {e}"))?;
    match value.get("type").and_then(|t| t.as_str()) {
        Some("join_room" | "leave_room" | "chat_message") => {
            serde_json::from_value(value).map_err(|e| format!("Error processing message: {e}"))
        }
        _ => Err("Unknown message type".to_owned()),
    }
}

/// A room name as given, if acceptable: 1 to 40 letters, digits, `-`, `_`
/// or `.` (it appears in URLs and in the page's heading).
fn valid_room(room: &str) -> Result<&str, String> {
    let n = room.chars().count();
    if (1..=MAX_ROOM_CHARS).contains(&n)
        && room
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(room)
    } else {
        Err(format!(
            "Invalid room name: use 1 to {MAX_ROOM_CHARS} letters, digits, '-', '_' or '.'"
        ))
    }
}

/// The display name from `?name=`: control characters dropped, spaces
/// trimmed, cut to 32 characters; a generated one when that leaves nothing.
fn display_name(given: Option<&str>) -> String {
    let cleaned: String = given
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let name: String = cleaned.trim().chars().take(MAX_NAME_CHARS).collect();
    let name = name.trim_end().to_owned();
    if name.is_empty() {
        generated_name()
    } else {
        name
    }
}

/// A friendly random name such as `quiet-otter-42`.
fn generated_name() -> String {
    const ADJECTIVES: [&str; 16] = [
        "amber", "brave", "calm", "clever", "eager", "gentle", "happy", "jolly", "kind", "lively",
        "lucky", "merry", "quiet", "swift", "sunny", "witty",
    ];
    const ANIMALS: [&str; 16] = [
        "badger", "beaver", "crane", "dolphin", "falcon", "fox", "heron", "koala", "lynx",
        "marten", "otter", "owl", "panda", "puffin", "robin", "wren",
    ];
    let r = random_u64();
    let adjective = ADJECTIVES[(r % 16) as usize];
    let animal = ANIMALS[((r >> 8) % 16) as usize];
    format!("{adjective}-{animal}-{}", (r >> 16) % 90 + 10)
}

/// A random number from the standard library's per-process hash keys
/// (good enough for names and nonces; nothing here is a secret).
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(now().as_nanos());
    h.finish()
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// One connection's view of the chat.
struct Session<'a> {
    chat: &'a ChatHub,
    member: &'a Member,
    id: String,
    name: String,
}

impl Session<'_> {
    /// Sends `msg` to every member of `room` but this one, outside the
    /// room's history (presence notices are not replayed).
    fn tell_others(&self, room: &str, msg: &ServerMsg<'_>) {
        let text = msg.to_text();
        for m in self.chat.hub.members(room) {
            if m.conn != self.member.id() {
                self.chat.hub.send_to(m.conn, text.clone());
            }
        }
    }

    fn members(&self, room: &str) -> Vec<MemberInfo> {
        self.chat
            .hub
            .members(room)
            .into_iter()
            .map(|m| MemberInfo {
                connection_id: m.conn.to_string(),
                name: m.meta["name"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    async fn join(&self, ws: &Socket, room: &str) -> Result<(), Error> {
        if let Err(message) = valid_room(room) {
            return send_error(ws, &message).await;
        }
        let rooms = self.member.rooms();
        if !rooms.iter().any(|r| r == room) && rooms.len() >= MAX_ROOMS_PER_CONNECTION {
            let message =
                format!("Too many rooms: leave one first (at most {MAX_ROOMS_PER_CONNECTION})");
            return send_error(ws, &message).await;
        }
        let added = self.member.join(room).added;
        // Joining first, then replaying, may show a message sent in
        // between twice (live and replayed), never not at all; the page
        // drops repeats by message id.
        let history = self.chat.hub.history_last(room, REPLAY).len();
        ws.send_json(&ServerMsg::RoomJoined {
            room,
            members: self.members(room),
            history,
        })
        .await?;
        self.member.replay_last(room, REPLAY);
        if added {
            self.tell_others(
                room,
                &ServerMsg::UserJoined {
                    connection_id: &self.id,
                    name: &self.name,
                    room,
                },
            );
        }
        Ok(())
    }

    fn announce_left(&self, room: &str) {
        self.tell_others(
            room,
            &ServerMsg::UserLeft {
                connection_id: &self.id,
                name: &self.name,
                room,
            },
        );
    }

    async fn leave(&self, ws: &Socket, room: &str) -> Result<(), Error> {
        if self.member.leave(room) {
            self.announce_left(room);
        }
        ws.send_json(&ServerMsg::RoomLeft { room }).await
    }

    async fn say(&self, ws: &Socket, room: &str, message: &str) -> Result<(), Error> {
        if !self.chat.hub.is_member(self.member.id(), room) {
            let error = format!("Not in room {room}: send join_room first");
            return send_error(ws, &error).await;
        }
        let message = message.trim();
        if message.is_empty() {
            return send_error(ws, "Empty message").await;
        }
        if message.chars().count() > MAX_MESSAGE_CHARS {
            let error = format!("Message too long (at most {MAX_MESSAGE_CHARS} characters)");
            return send_error(ws, &error).await;
        }
        let id = self.chat.next_id();
        let msg = ServerMsg::ChatMessage {
            id: &id,
            connection_id: &self.id,
            name: &self.name,
            room,
            message,
            ts: u64::try_from(now().as_millis()).unwrap_or(u64::MAX),
        };
        // Everyone in the room, the sender included, in one order; kept in
        // the room's history for late joiners.
        self.chat.hub.broadcast_to(room, msg.to_text());
        Ok(())
    }

    /// Serves the socket until the peer closes.
    async fn run(&self, ws: &mut Socket) -> Result<(), Error> {
        loop {
            let text = match ws.recv_text().await {
                Ok(Some(text)) => text,
                Ok(None) => return Ok(()),
                Err(e) if e.is_rate_limited() => {
                    send_error(ws, "Too many messages: slow down").await?;
                    continue;
                }
                Err(e) if e.is_wrong_type() => {
                    send_error(ws, "Binary messages are not part of the chat protocol").await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match parse(&text) {
                Ok(ClientMsg::JoinRoom { room }) => self.join(ws, &room).await?,
                Ok(ClientMsg::LeaveRoom { room }) => self.leave(ws, &room).await?,
                Ok(ClientMsg::ChatMessage { room, message }) => {
                    self.say(ws, &room, &message).await?;
                }
                Err(message) => send_error(ws, &message).await?,
            }
        }
    }
}

async fn send_error(ws: &Socket, message: &str) -> Result<(), Error> {
    ws.send_json(&ServerMsg::Error { message }).await
}

/// `WS /ws/chat?name=NAME`: one chat connection.
async fn chat_socket(ws: WebSocket, State(chat): State<ChatHub>) -> Result<(), Error> {
    let name = display_name(ws.query_param("name"));
    let mut ws = ws.accept().await?;
    let member = chat
        .hub
        .connect_with_meta(ws.sender(), json!({ "name": name }));
    let session = Session {
        chat: &chat,
        member: &member,
        id: member.id().to_string(),
        name,
    };
    let result = async {
        ws.send_json(&ServerMsg::Welcome {
            connection_id: &session.id,
            name: &session.name,
            message: "Welcome to the chat!",
        })
        .await?;
        session.run(&mut ws).await
    }
    .await;
    // However the connection ended (close, reset, shutdown), tell each room
    // this member was in that it left; dropping `member` then removes it
    // from the hub.
    for room in member.rooms() {
        member.leave(&room);
        session.announce_left(&room);
    }
    match result {
        // A peer that vanished is how browsers end chats: not a failure.
        Err(e) if e.is_disconnect() || e.is_io() => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    //! The chat protocol through the in-process test client: the seeds'
    //! tests (welcome, join, chat, unknown type) and presence, history and
    //! bad input on top.

    use serde_json::{json, Value};
    use switchboard::{testing::TestClient, App, Socket};

    use super::{display_name, valid_room, MAX_MESSAGE_CHARS, REPLAY};

    fn client() -> TestClient {
        TestClient::new(super::routes(App::new()))
    }

    async fn next(ws: &mut Socket) -> Value {
        let m = tokio::time::timeout(std::time::Duration::from_secs(5), ws.recv_json())
            .await
            .expect("a message within 5 s");
        m.unwrap().expect("the socket is open")
    }

    /// The next message of type `kind`, skipping others.
    async fn next_of(ws: &mut Socket, kind: &str) -> Value {
        loop {
            let m = next(ws).await;
            if m["type"] == kind {
                return m;
            }
        }
    }

    async fn connect(c: &TestClient, name: &str) -> (Socket, Value) {
        let mut ws = c
            .websocket_connect(&format!("/ws/chat?name={name}"))
            .await
            .unwrap();
        let welcome = next(&mut ws).await;
        assert_eq!(welcome["type"], "welcome");
        (ws, welcome)
    }

    /// Connects, joins `room`, and returns the socket and `room_joined`.
    async fn join(c: &TestClient, name: &str, room: &str) -> (Socket, Value) {
        let (mut ws, _) = connect(c, name).await;
        ws.send_json(&json!({"type": "join_room", "room": room}))
            .await
            .unwrap();
        let joined = next(&mut ws).await;
        assert_eq!(joined["type"], "room_joined", "{joined}");
        assert_eq!(joined["room"], room);
        (ws, joined)
    }

    async fn say(ws: &mut Socket, room: &str, message: &str) {
        ws.send_json(&json!({"type": "chat_message", "room": room, "message": message}))
            .await
            .unwrap();
    }

    fn names(members: &Value) -> Vec<String> {
        let mut v: Vec<String> = members
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn welcome_names_the_connection() {
        let c = client();
        let (_ws, welcome) = connect(&c, "ann").await;
        assert_eq!(welcome["name"], "ann");
        assert_eq!(welcome["message"], "Welcome to the chat!");
        assert!(welcome["connection_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
        // No name: a generated one, different per connection (usually).
        let mut ws = c.websocket_connect("/ws/chat").await.unwrap();
        let welcome = next(&mut ws).await;
        let name = welcome["name"].as_str().unwrap();
        assert_eq!(name.split('-').count(), 3, "{name}");
        // Percent-encoded names arrive decoded.
        let mut ws = c
            .websocket_connect("/ws/chat?name=J%C3%BCrgen%20K")
            .await
            .unwrap();
        assert_eq!(next(&mut ws).await["name"], "Jürgen K");
    }

    #[test]
    fn display_names_are_cleaned() {
        assert_eq!(display_name(Some("  bob  ")), "bob");
        assert_eq!(display_name(Some("a\u{0}b\nc")), "abc");
        assert_eq!(display_name(Some(&"x".repeat(100))).chars().count(), 32);
        assert_ne!(display_name(Some(" \t ")), "");
        assert_ne!(display_name(None), "");
    }

    #[test]
    fn room_names_are_checked() {
        for ok in ["general", "a", "rust-lang_2.0", "café", &"r".repeat(40)] {
            assert!(valid_room(ok).is_ok(), "{ok}");
        }
        for bad in ["", " ", "a b", "a/b", "<script>", &"r".repeat(41)] {
            assert!(valid_room(bad).is_err(), "{bad}");
        }
    }

    /// The seeds' `test_websocket_chat_room`, with the presence notice.
    #[tokio::test]
    async fn members_of_a_room_see_each_others_messages() {
        let c = client();
        let (mut ann, joined) = join(&c, "ann", "general").await;
        assert_eq!(joined["history"], 0);
        assert_eq!(names(&joined["members"]), ["ann"]);
        let (mut bob, joined) = join(&c, "bob", "general").await;
        assert_eq!(names(&joined["members"]), ["ann", "bob"]);
        let notice = next(&mut ann).await;
        assert_eq!(notice["type"], "user_joined");
        assert_eq!(notice["name"], "bob");
        assert_eq!(notice["room"], "general");
        let bob_entry = joined["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "bob")
            .unwrap();
        assert_eq!(notice["connection_id"], bob_entry["connection_id"]);

        say(&mut ann, "general", "Hello everyone!").await;
        let mut ids = Vec::new();
        for ws in [&mut ann, &mut bob] {
            let m = next(ws).await;
            assert_eq!(m["type"], "chat_message");
            assert_eq!(m["message"], "Hello everyone!");
            assert_eq!(m["name"], "ann");
            assert_eq!(m["room"], "general");
            assert!(m["ts"].as_u64().is_some_and(|t| t > 1_600_000_000_000));
            ids.push(m["id"].clone());
        }
        // One message, one id, the same for everyone.
        assert_eq!(ids[0], ids[1]);
        say(&mut bob, "general", "  hi ann  ").await;
        assert_eq!(next(&mut ann).await["message"], "hi ann");
        let m = next(&mut bob).await;
        assert_eq!(m["message"], "hi ann");
        assert_ne!(m["id"], ids[0]);
    }

    #[tokio::test]
    async fn rooms_are_separate() {
        let c = client();
        let (mut ann, _) = join(&c, "ann", "general").await;
        let (mut bob, _) = join(&c, "bob", "random").await;
        say(&mut bob, "random", "only random").await;
        assert_eq!(next(&mut bob).await["message"], "only random");
        say(&mut ann, "general", "only general").await;
        // Ann's next message is her own, not bob's.
        assert_eq!(next(&mut ann).await["message"], "only general");
        // A member of two rooms hears both.
        bob.send_json(&json!({"type": "join_room", "room": "general"}))
            .await
            .unwrap();
        assert_eq!(next_of(&mut bob, "room_joined").await["room"], "general");
        assert_eq!(next(&mut ann).await["type"], "user_joined");
        say(&mut ann, "general", "both").await;
        assert_eq!(
            next_of(&mut bob, "chat_message").await["message"],
            "only general"
        );
        assert_eq!(next_of(&mut bob, "chat_message").await["message"], "both");
    }

    #[tokio::test]
    async fn leaving_and_disconnecting_tell_the_room() {
        let c = client();
        let (mut ann, _) = join(&c, "ann", "general").await;
        let (mut bob, _) = join(&c, "bob", "general").await;
        let (mut cat, _) = join(&c, "cat", "general").await;
        assert_eq!(next_of(&mut ann, "user_joined").await["name"], "bob");
        assert_eq!(next_of(&mut ann, "user_joined").await["name"], "cat");
        assert_eq!(next_of(&mut bob, "user_joined").await["name"], "cat");

        // leave_room: room_left to the leaver, user_left to the others.
        bob.send_json(&json!({"type": "leave_room", "room": "general"}))
            .await
            .unwrap();
        assert_eq!(
            next(&mut bob).await,
            json!({"type": "room_left", "room": "general"})
        );
        for ws in [&mut ann, &mut cat] {
            let m = next(ws).await;
            assert_eq!(
                (m["type"].as_str(), m["name"].as_str()),
                (Some("user_left"), Some("bob"))
            );
        }
        // Messages no longer reach bob; sending to the room is refused.
        say(&mut bob, "general", "still here?").await;
        let e = next(&mut bob).await;
        assert_eq!(e["type"], "error");
        assert_eq!(e["message"], "Not in room general: send join_room first");

        // Closing the socket is leaving, too.
        cat.close(1000, "").await.unwrap();
        let m = next(&mut ann).await;
        assert_eq!(
            (m["type"].as_str(), m["name"].as_str()),
            (Some("user_left"), Some("cat"))
        );
        // And dropping it without a close frame.
        drop(bob);
        let (_dan, joined) = join(&c, "dan", "general").await;
        assert_eq!(names(&joined["members"]), ["ann", "dan"]);
    }

    #[tokio::test]
    async fn late_joiners_see_members_and_recent_messages() {
        let c = client();
        let (mut ann, _) = join(&c, "ann", "general").await;
        let (mut bob, _) = join(&c, "bob", "general").await;
        next_of(&mut ann, "user_joined").await;
        // Two connections' messages have no order between them until the
        // server has broadcast the first: wait for it before the second.
        say(&mut ann, "general", "first").await;
        assert_eq!(next_of(&mut ann, "chat_message").await["message"], "first");
        say(&mut bob, "general", "second").await;
        assert_eq!(next_of(&mut ann, "chat_message").await["message"], "second");

        let (mut cat, joined) = join(&c, "cat", "general").await;
        assert_eq!(names(&joined["members"]), ["ann", "bob", "cat"]);
        assert_eq!(joined["history"], 2);
        // The recent messages follow room_joined, oldest first; presence
        // notices are not part of history.
        let a = next(&mut cat).await;
        let b = next(&mut cat).await;
        assert_eq!(
            (
                a["type"].as_str(),
                a["name"].as_str(),
                a["message"].as_str()
            ),
            (Some("chat_message"), Some("ann"), Some("first"))
        );
        assert_eq!(
            (
                b["type"].as_str(),
                b["name"].as_str(),
                b["message"].as_str()
            ),
            (Some("chat_message"), Some("bob"), Some("second"))
        );
        // Then live traffic.
        let notice = next(&mut ann).await;
        assert_eq!(
            (notice["type"].as_str(), notice["name"].as_str()),
            (Some("user_joined"), Some("cat"))
        );
        say(&mut ann, "general", "welcome cat").await;
        assert_eq!(next(&mut cat).await["message"], "welcome cat");
    }

    #[tokio::test]
    async fn history_replays_only_the_last_messages() {
        let c = client();
        let total = REPLAY + 10;
        // Several senders, each within its rate limit's burst.
        let per_sender = 15;
        let mut senders = Vec::new();
        for s in 0..total.div_ceil(per_sender) {
            senders.push(join(&c, &format!("s{s}"), "busy").await.0);
        }
        for i in 0..total {
            let ws = &mut senders[i / per_sender];
            let text = format!("m{i}");
            say(ws, "busy", &text).await;
            // Wait for it to come back, so the order is the sending order.
            while next_of(ws, "chat_message").await["message"] != text.as_str() {}
        }
        let (mut bob, joined) = join(&c, "bob", "busy").await;
        assert_eq!(joined["history"], REPLAY);
        for i in (total - REPLAY)..total {
            assert_eq!(next(&mut bob).await["message"], format!("m{i}"));
        }
        // History outlives the room's members.
        drop(senders);
        drop(bob);
        let (mut cat, joined) = join(&c, "cat", "busy").await;
        assert_eq!(joined["history"], REPLAY);
        assert_eq!(
            next(&mut cat).await["message"],
            format!("m{}", total - REPLAY)
        );
    }

    #[tokio::test]
    async fn joining_twice_is_harmless() {
        let c = client();
        let (mut ann, _) = join(&c, "ann", "general").await;
        let (mut bob, _) = join(&c, "bob", "general").await;
        next_of(&mut ann, "user_joined").await;
        bob.send_json(&json!({"type": "join_room", "room": "general"}))
            .await
            .unwrap();
        let again = next(&mut bob).await;
        assert_eq!(again["type"], "room_joined");
        assert_eq!(names(&again["members"]), ["ann", "bob"]);
        // No second user_joined: ann's next message is a chat message.
        say(&mut bob, "general", "once").await;
        assert_eq!(next(&mut ann).await["type"], "chat_message");
    }

    /// The seeds' `test_websocket_error_handling`, and other bad input:
    /// each gets an error and the socket stays usable.
    #[tokio::test]
    async fn bad_input_gets_errors_and_the_socket_stays_open() {
        let c = client();
        let (mut ws, _) = join(&c, "ann", "general").await;
        let long = "x".repeat(MAX_MESSAGE_CHARS + 1);
        let cases: Vec<(Value, &str)> = vec![
            (json!({"type": "invalid_type"}), "Unknown message type"),
            (json!({"message": "no type"}), "Unknown message type"),
            (json!({"type": 7}), "Unknown message type"),
            (
                json!({"type": "chat_message", "room": "general"}),
                "Error processing message: missing field `message`",
            ),
            (
                json!({"type": "join_room", "room": "a b"}),
                "Invalid room name: use 1 to 40 letters, digits, '-', '_' or '.'",
            ),
            (
                json!({"type": "chat_message", "room": "general", "message": "   "}),
                "Empty message",
            ),
            (
                json!({"type": "chat_message", "room": "general", "message": long}),
                "Message too long (at most 2000 characters)",
            ),
            (
                json!({"type": "chat_message", "room": "elsewhere", "message": "x"}),
                "Not in room elsewhere: send join_room first",
            ),
        ];
        for (input, expected) in cases {
            ws.send_json(&input).await.unwrap();
            let e = next(&mut ws).await;
            assert_eq!(
                e,
                json!({"type": "error", "message": expected}),
                "for {input}"
            );
        }
        ws.send_text("{not json").await.unwrap();
        let e = next(&mut ws).await;
        assert_eq!(e["type"], "error");
        assert!(e["message"]
            .as_str()
            .unwrap()
            .starts_with("Error processing message"));
        ws.send_bytes(&b"\x00\x01"[..]).await.unwrap();
        assert_eq!(
            next(&mut ws).await["message"],
            "Binary messages are not part of the chat protocol"
        );
        // Still in the room, still chatting.
        say(&mut ws, "general", "still here").await;
        assert_eq!(next(&mut ws).await["message"], "still here");
    }

    #[tokio::test]
    async fn a_connection_is_in_a_bounded_number_of_rooms() {
        let c = client();
        let (mut ws, _) = connect(&c, "ann").await;
        for i in 0..super::MAX_ROOMS_PER_CONNECTION {
            ws.send_json(&json!({"type": "join_room", "room": format!("r{i}")}))
                .await
                .unwrap();
            assert_eq!(next(&mut ws).await["type"], "room_joined");
        }
        ws.send_json(&json!({"type": "join_room", "room": "one-more"}))
            .await
            .unwrap();
        let e = next(&mut ws).await;
        assert_eq!(e["type"], "error");
        assert!(e["message"].as_str().unwrap().starts_with("Too many rooms"));
    }

    #[tokio::test]
    async fn floods_are_refused_with_an_error() {
        let c = client();
        let (mut ws, _) = join(&c, "ann", "general").await;
        for i in 0..40 {
            say(&mut ws, "general", &format!("m{i}")).await;
        }
        let mut chats = 0;
        let mut refused = 0;
        for _ in 0..40 {
            let m = next(&mut ws).await;
            match m["type"].as_str() {
                Some("chat_message") => chats += 1,
                Some("error") => {
                    assert_eq!(m["message"], "Too many messages: slow down");
                    refused += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // The burst (20, one spent on join_room) passes; the rest is refused.
        assert!(
            chats >= 15 && refused >= 10,
            "{chats} sent, {refused} refused"
        );
    }

    #[tokio::test]
    async fn the_chat_is_in_the_api_documents() {
        let c = client();
        let asyncapi: Value = c.get("/asyncapi.json").send().await.json();
        let text = asyncapi.to_string();
        for word in [
            "/ws/chat",
            "join_room",
            "room_joined",
            "user_left",
            "chat_message",
        ] {
            assert!(text.contains(word), "asyncapi.json lacks {word}");
        }
        let openapi: Value = c.get("/openapi.json").send().await.json();
        let paths = openapi["paths"].as_object().unwrap();
        for path in ["/", "/chat", "/ws/chat"] {
            assert!(paths.contains_key(path), "openapi.json lacks {path}");
        }
        // The page's assets are not API.
        assert!(!paths.contains_key("/assets/chat.js"));
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served() {
        let c = client();
        for path in ["/", "/chat", "/?room=random"] {
            let res = c.get(path).send().await;
            assert_eq!(res.status(), 200, "{path}");
            assert_eq!(res.header("content-type"), Some("text/html; charset=utf-8"));
            assert_eq!(res.header("cache-control"), Some("no-cache"));
            assert!(res.header("content-security-policy").is_some());
            let html = res.text();
            assert!(html.contains("<title>Switchboard chat</title>"));
            assert!(html.contains(r#"src="/assets/chat.js""#));
            assert!(html.contains(r#"href="/assets/chat.css""#));
        }
        let js = c.get("/assets/chat.js").send().await;
        assert_eq!(js.status(), 200);
        assert_eq!(
            js.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        let js = js.text();
        // The page speaks this module's protocol.
        for word in [
            "/ws/chat",
            "welcome",
            "join_room",
            "leave_room",
            "room_joined",
            "chat_message",
            "user_joined",
            "user_left",
            "error",
        ] {
            assert!(js.contains(word), "chat.js lacks {word}");
        }
        let css = c.get("/assets/chat.css").send().await;
        assert_eq!(css.status(), 200);
        assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
        // Nothing on the page is loaded from elsewhere.
        for asset in [super::PAGE_HTML, super::PAGE_JS, super::PAGE_CSS] {
            for remote in ["src=\"http", "href=\"http", "url(http", "@import", "//cdn"] {
                assert!(!asset.contains(remote), "{remote}");
            }
        }
    }
}
