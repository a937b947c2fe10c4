//! API documents: OpenAPI 3.1 and AsyncAPI 3.0 generated from the routes
//! and their `RouteDoc`s, the offline `/docs` page, and switching them off.
//! (The documents are checked by independent validators in
//! conformance/apidocs/run.)

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard::{
    testing::TestClient, App, DocsConfig, Json, MessageDoc, Query, RouteDoc, StatusCode, WebSocket,
    WsConfig,
};

/// A chat message.
#[derive(Serialize, Deserialize, JsonSchema)]
struct Chat {
    /// Who wrote it.
    user: String,
    /// The text.
    text: String,
}

#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(dead_code)] // only its schema is used
enum ServerEvent {
    /// Someone joined.
    UserJoined { user: String },
    /// A chat message.
    ChatMessage(Chat),
}

#[derive(Deserialize, JsonSchema)]
#[allow(dead_code)] // only `page` is read
struct Filter {
    /// Page number, from 1.
    page: u32,
    /// Search text.
    q: Option<String>,
}

async fn ws_noop(ws: WebSocket) -> Result<(), switchboard::Error> {
    let mut s = ws.accept().await?;
    while let Some(m) = s.recv_message().await? {
        s.send(m).await?;
    }
    Ok(())
}

fn app() -> App {
    App::new()
        .docs_config(
            DocsConfig::new()
                .title("Real-Time API")
                .version("2.0.0")
                .description("Test <b>docs</b>"),
        )
        .get("/health", || async { "ok" })
        .doc(
            RouteDoc::new()
                .summary("Liveness")
                .tag("ops")
                .response_content(200, "alive", "text/plain"),
        )
        .post("/api/chat", |Json(c): Json<Chat>| async move { Json(c) })
        .doc(
            RouteDoc::new()
                .summary("Post a chat message")
                .tag("chat")
                .request_body::<Chat>()
                .response::<Chat>(200, "The message as stored")
                .bearer_auth(),
        )
        .get("/search", |Query(f): Query<Filter>| async move {
            format!("{}", f.page)
        })
        .doc(RouteDoc::new().query::<Filter>())
        .get("/files/{*path}", || async { "file" })
        .websocket_with(
            "/ws/rooms/{room}",
            WsConfig::default().protocols(["chat.v2", "chat.v1"]),
            ws_noop,
        )
        .doc(
            RouteDoc::new()
                .summary("Room chat")
                .tag("chat")
                .path_param::<String>("room", "The room to join")
                .query_param::<String>("name", "Display name", false)
                .receives(MessageDoc::json::<Chat>("chat").summary("Post to the room"))
                .sends(MessageDoc::json::<ServerEvent>("event").summary("Room events"))
                .sends(MessageDoc::binary("blob"))
                .bearer_auth(),
        )
        .websocket("/ws/echo", ws_noop)
        .get("/events/{room}", || async { "stream" })
        .doc(
            RouteDoc::new()
                .summary("Room events over SSE")
                .sse()
                .sends(MessageDoc::text("message").summary("A text message")),
        )
        .get("/secret", || async { "hidden" })
        .doc(RouteDoc::new().hidden())
}

/// Every `$ref` in `doc` points at something in `doc`.
fn check_refs(doc: &Value, v: &Value, path: &str) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let pointer = r
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("non-local $ref {r}"));
                assert!(
                    doc.pointer(pointer).is_some(),
                    "dangling $ref {r} at {path}"
                );
            }
            for (k, child) in m {
                check_refs(doc, child, &format!("{path}/{k}"));
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                check_refs(doc, child, &format!("{path}/{i}"));
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn openapi_describes_http_and_websocket_routes() {
    let client = TestClient::new(app());
    let res = client.get("/openapi.json").send().await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = res.json();
    check_refs(&doc, &doc, "");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Real-Time API");
    assert_eq!(doc["info"]["version"], "2.0.0");
    let paths = doc["paths"].as_object().unwrap();
    // The documents do not list themselves; hidden routes are left out.
    for absent in ["/openapi.json", "/asyncapi.json", "/docs", "/secret"] {
        assert!(!paths.contains_key(absent), "{absent} listed");
    }

    let health = &paths["/health"]["get"];
    assert_eq!(health["summary"], "Liveness");
    assert_eq!(health["tags"][0], "ops");
    assert!(health["responses"]["200"]["content"]["text/plain"].is_object());

    // Schemas come from the Rust types (doc comments included).
    let chat = &paths["/api/chat"]["post"];
    assert_eq!(
        chat["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Chat"
    );
    assert_eq!(chat["security"][0]["bearerAuth"], serde_json::json!([]));
    let chat_schema = &doc["components"]["schemas"]["Chat"];
    assert_eq!(
        chat_schema["properties"]["user"]["description"],
        "Who wrote it."
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );

    // A query struct becomes one parameter per field.
    let params = paths["/search"]["get"]["parameters"].as_array().unwrap();
    let page = params.iter().find(|p| p["name"] == "page").unwrap();
    assert_eq!(
        (page["in"].as_str(), page["required"].as_bool()),
        (Some("query"), Some(true))
    );
    let q = params.iter().find(|p| p["name"] == "q").unwrap();
    assert_eq!(q["required"], false);
    assert_eq!(q["description"], "Search text.");

    // Catch-all parameters are templated like the others.
    let files = &paths["/files/{path}"]["get"];
    assert_eq!(files["parameters"][0]["in"], "path");

    // A WebSocket route is its upgrade GET: handshake headers, 101, refusals.
    let ws = &paths["/ws/rooms/{room}"]["get"];
    assert_eq!(ws["summary"], "Room chat");
    assert!(ws["responses"]["101"]["headers"]["Sec-WebSocket-Accept"].is_object());
    assert_eq!(
        ws["responses"]["101"]["headers"]["Sec-WebSocket-Protocol"]["schema"]["enum"],
        serde_json::json!(["chat.v2", "chat.v1"])
    );
    for status in ["400", "401", "403", "426", "429", "503"] {
        assert!(ws["responses"][status].is_object(), "missing {status}");
    }
    let names: Vec<&str> = ws["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for expected in [
        "room",
        "name",
        "Upgrade",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert_eq!(
        ws["x-websocket"]["asyncapi"],
        "/asyncapi.json#/channels/ws_rooms_room"
    );
    assert_eq!(ws["x-websocket"]["receives"][0], "chat");
    // Undocumented WebSocket routes are listed too.
    assert_eq!(paths["/ws/echo"]["get"]["summary"], "WebSocket /ws/echo");

    // The SSE route is an event stream.
    let sse = &paths["/events/{room}"]["get"];
    assert!(sse["responses"]["200"]["content"]["text/event-stream"].is_object());
}

#[tokio::test]
async fn asyncapi_describes_channels_operations_and_messages() {
    let client = TestClient::new(app());
    let res = client
        .get("/asyncapi.json")
        .header("host", "chat.example:8443")
        .send()
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let doc: Value = res.json();
    check_refs(&doc, &doc, "");
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "Real-Time API");
    // Servers name the host the client used; plain TCP means ws/http.
    assert_eq!(doc["servers"]["ws"]["host"], "chat.example:8443");
    assert_eq!(doc["servers"]["ws"]["protocol"], "ws");
    assert_eq!(doc["servers"]["http"]["protocol"], "http");

    let room = &doc["channels"]["ws_rooms_room"];
    assert_eq!(room["address"], "/ws/rooms/{room}");
    assert_eq!(
        room["parameters"]["room"]["description"],
        "The room to join"
    );
    assert_eq!(room["servers"][0]["$ref"], "#/servers/ws");
    let binding = &room["bindings"]["ws"];
    assert_eq!(binding["method"], "GET");
    assert_eq!(binding["query"]["properties"]["name"]["type"], "string");
    assert!(
        binding["headers"]["properties"]["Sec-WebSocket-Protocol"]["description"]
            .as_str()
            .unwrap()
            .contains("chat.v2")
    );
    assert_eq!(
        room["messages"]["chat"]["payload"]["$ref"],
        "#/components/schemas/Chat"
    );
    assert_eq!(
        room["messages"]["blob"]["contentType"],
        "application/octet-stream"
    );
    // A tagged enum keeps its variants.
    let event = &doc["components"]["schemas"]["ServerEvent"];
    assert_eq!(event["oneOf"].as_array().unwrap().len(), 2);

    // The server's view: `receive` is what clients send.
    let ops = doc["operations"].as_object().unwrap();
    let recv = &ops["ws_rooms_room_receive"];
    assert_eq!(recv["action"], "receive");
    assert_eq!(recv["channel"]["$ref"], "#/channels/ws_rooms_room");
    assert_eq!(
        recv["messages"][0]["$ref"],
        "#/channels/ws_rooms_room/messages/chat"
    );
    let send = &ops["ws_rooms_room_send"];
    assert_eq!(send["action"], "send");
    assert_eq!(send["messages"].as_array().unwrap().len(), 2);
    assert_eq!(
        send["security"][0]["$ref"],
        "#/components/securitySchemes/bearerAuth"
    );

    // An undocumented socket: any text or binary, both ways.
    let echo = &doc["channels"]["ws_echo"];
    assert!(echo["messages"]["text"].is_object() && echo["messages"]["binary"].is_object());
    assert_eq!(ops["ws_echo_receive"]["action"], "receive");

    // The SSE route is a channel on the HTTP server with a GET binding.
    let events = &doc["channels"]["events_room"];
    assert_eq!(events["servers"][0]["$ref"], "#/servers/http");
    assert_eq!(ops["events_room_send"]["bindings"]["http"]["method"], "GET");
    assert!(!ops.contains_key("events_room_receive"));

    // HTTP-only routes are not channels.
    assert!(doc["channels"].get("health").is_none());
}

#[tokio::test]
async fn docs_page_renders_offline() {
    let client = TestClient::new(app());
    let res = client.get("/docs").send().await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.header("content-type").unwrap().starts_with("text/html"));
    let html = res.text();
    assert!(html.starts_with("<!doctype html>"));
    for needle in [
        "Real-Time API",
        "/ws/rooms/{room}",
        "/api/chat",
        "Room chat",
        "Post a chat message",
        "id=\"schema-Chat\"",
        "Who wrote it.",
        "WebSocket console",
        "href=\"/openapi.json\"",
        "href=\"/asyncapi.json\"",
    ] {
        assert!(html.contains(needle), "page lacks {needle:?}");
    }
    // Text from the application is escaped.
    assert!(html.contains("Test &lt;b&gt;docs&lt;/b&gt;"));
    // Nothing is loaded from elsewhere: no external scripts, styles,
    // images or fonts (the page works with no network).
    for forbidden in ["src=", "<link", "@import", "url(", "http://", "https://"] {
        assert!(!html.contains(forbidden), "page contains {forbidden:?}");
    }
}

#[tokio::test]
async fn docs_can_be_switched_off() {
    let client = TestClient::new(app().docs(false));
    for path in ["/openapi.json", "/asyncapi.json", "/docs"] {
        let res = client.get(path).send().await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(client.get("/health").send().await.text(), "ok");
}

#[tokio::test]
async fn application_routes_win_over_docs_routes() {
    let client = TestClient::new(
        App::new()
            .get("/docs", || async { "my docs" })
            .docs_config(DocsConfig::new().openapi_path("/api/v1/openapi.json")),
    );
    assert_eq!(client.get("/docs").send().await.text(), "my docs");
    let doc: Value = client.get("/api/v1/openapi.json").send().await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        client.get("/openapi.json").send().await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn http_get_and_websocket_on_one_path_share_an_operation() {
    let client = TestClient::new(
        App::new()
            .get("/live", || async { "poll" })
            .doc(RouteDoc::new().summary("Poll or upgrade"))
            .websocket("/live", ws_noop),
    );
    let doc: Value = client.get("/openapi.json").send().await.json();
    let op = &doc["paths"]["/live"]["get"];
    assert_eq!(op["summary"], "Poll or upgrade");
    assert!(op["responses"]["200"].is_object() && op["responses"]["101"].is_object());
    assert!(op["x-websocket"].is_object());
}

#[test]
#[should_panic(expected = "add a route first")]
fn doc_before_any_route_panics() {
    let _ = App::new().doc(RouteDoc::new());
}
