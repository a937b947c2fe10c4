//! An HTTP JSON API and a JSON WebSocket route in one app.
//!
//! Shows: typed path parameters (`Path<u64>`, a 400 naming the parameter
//! when it does not parse), query parameters (`Query<T>`), shared state
//! (`App::state` + `State<T>`: an in-memory item store behind a `Mutex`),
//! JSON bodies in and out (`Json<T>`, with 415/400/413 rejections for free),
//! status codes and a 404 for missing items; and the seeds' room route,
//! `/ws/{room}`, which greets with JSON and echoes every JSON message
//! tagged with the room, answering invalid JSON with an error message
//! instead of dropping the connection.
//!
//! ```text
//! cargo run -p example-json-api        # listens on 127.0.0.1:3000
//! curl -X POST localhost:3000/items -H 'content-type: application/json' \
//!      -d '{"name": "lamp", "price_cents": 1999}'
//! curl 'localhost:3000/items?limit=10&name_contains=la'
//! curl localhost:3000/items/1
//! websocat ws://127.0.0.1:3000/ws/lobby  # then type {"text": "hi"}
//! cargo test -p example-json-api
//! ```

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchboard::{
    error_response, App, Error, Json, Path, Query, Response, State, StatusCode, WebSocket,
};

/// One stored item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
    price_cents: u64,
}

/// The body of `POST /items` and `PUT /items/{id}`: an item without its id.
#[derive(Debug, Deserialize)]
struct NewItem {
    name: String,
    price_cents: u64,
}

/// Query parameters of `GET /items`; all optional.
#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<usize>,
    offset: Option<usize>,
    name_contains: Option<String>,
}

/// The shared store. `App::state` needs `Clone + Send + Sync`; the `Arc`
/// makes clones share one map, and the std `Mutex` is fine because no lock
/// is held across an `.await`.
#[derive(Debug, Clone, Default)]
struct Store {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    items: BTreeMap<u64, Item>,
}

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A handler that panicked while holding the lock cannot leave the
        // map half-updated (each critical section is one insert/remove).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The framework's JSON error body (`{"error": ..., "status": 404}`), the
/// same shape its own rejections use.
fn not_found(id: u64) -> Response {
    error_response(StatusCode::NOT_FOUND, &format!("item {id} not found"))
}

async fn list_items(State(store): State<Store>, Query(p): Query<ListParams>) -> Json<Vec<Item>> {
    let inner = store.lock();
    let items = inner
        .items
        .values()
        .filter(|i| p.name_contains.as_ref().is_none_or(|s| i.name.contains(s)))
        .skip(p.offset.unwrap_or(0))
        .take(p.limit.unwrap_or(100).min(100))
        .cloned()
        .collect();
    Json(items)
}

async fn create_item(
    State(store): State<Store>,
    Json(new): Json<NewItem>,
) -> (StatusCode, Json<Item>) {
    let mut inner = store.lock();
    inner.next_id += 1;
    let item = Item {
        id: inner.next_id,
        name: new.name,
        price_cents: new.price_cents,
    };
    inner.items.insert(item.id, item.clone());
    (StatusCode::CREATED, Json(item))
}

async fn get_item(State(store): State<Store>, Path(id): Path<u64>) -> Result<Json<Item>, Response> {
    store
        .lock()
        .items
        .get(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| not_found(id))
}

async fn update_item(
    State(store): State<Store>,
    Path(id): Path<u64>,
    Json(new): Json<NewItem>,
) -> Result<Json<Item>, Response> {
    let mut inner = store.lock();
    let item = inner.items.get_mut(&id).ok_or_else(|| not_found(id))?;
    item.name = new.name;
    item.price_cents = new.price_cents;
    Ok(Json(item.clone()))
}

async fn delete_item(
    State(store): State<Store>,
    Path(id): Path<u64>,
) -> Result<StatusCode, Response> {
    match store.lock().items.remove(&id) {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(not_found(id)),
    }
}

/// The seeds' room route: greet, then echo each JSON message with the room.
async fn room(ws: WebSocket, Path(room): Path<String>) -> Result<(), Error> {
    let mut ws = ws.accept().await?;
    ws.send_json(&json!({"message": format!("Welcome to {room}!")}))
        .await?;
    loop {
        match ws.recv_json::<Value>().await {
            Ok(Some(message)) => {
                ws.send_json(&json!({"room": room, "message": message}))
                    .await?
            }
            // The peer closed; the framework already answered its close frame.
            Ok(None) => return Ok(()),
            // Invalid JSON: tell the client, keep the socket open.
            Err(e) if e.is_json() => ws.send_json(&json!({"error": e.to_string()})).await?,
            Err(e) => return Err(e),
        }
    }
}

/// The application, shared by `main` and the tests.
fn app() -> App {
    App::new()
        .state(Store::default())
        // Bodies above 64 KiB get 413 before any handler runs.
        .max_body_size(64 * 1024)
        .get("/items", list_items)
        .post("/items", create_item)
        .get("/items/{id}", get_item)
        .put("/items/{id}", update_item)
        .delete("/items/{id}", delete_item)
        .websocket("/ws/{room}", room)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    app().serve(addr).await
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use switchboard::{testing::TestClient, StatusCode};

    use super::{app, Item};

    async fn create(client: &TestClient, name: &str, price_cents: u64) -> Item {
        let res = client
            .post("/items")
            .json(&json!({"name": name, "price_cents": price_cents}))
            .send()
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "{}", res.text());
        res.json()
    }

    #[tokio::test]
    async fn create_then_get_update_delete() {
        let client = TestClient::new(app());
        let lamp = create(&client, "lamp", 1999).await;
        assert_eq!(lamp.id, 1);

        let res = client.get("/items/1").send().await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.header("content-type"), Some("application/json"));
        assert_eq!(res.json::<Item>(), lamp);

        let res = client
            .put("/items/1")
            .json(&json!({"name": "desk lamp", "price_cents": 2499}))
            .send()
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.json::<Item>().name, "desk lamp");

        assert_eq!(
            client.delete("/items/1").send().await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            client.get("/items/1").send().await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn missing_item_is_a_404_with_a_json_body() {
        let client = TestClient::new(app());
        let res = client.get("/items/42").send().await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            res.json::<Value>(),
            json!({"error": "item 42 not found", "status": 404})
        );
        let res = client.delete("/items/42").send().await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn query_params_filter_and_page() {
        let client = TestClient::new(app());
        for name in ["lamp", "table", "lampshade", "chair"] {
            create(&client, name, 100).await;
        }
        let names = |res: switchboard::testing::TestResponse| -> Vec<String> {
            res.json::<Vec<Item>>()
                .into_iter()
                .map(|i| i.name)
                .collect()
        };
        let all = client.get("/items").send().await;
        assert_eq!(names(all), ["lamp", "table", "lampshade", "chair"]);
        let lamps = client.get("/items?name_contains=lamp").send().await;
        assert_eq!(names(lamps), ["lamp", "lampshade"]);
        let page = client.get("/items?offset=1&limit=2").send().await;
        assert_eq!(names(page), ["table", "lampshade"]);
        // A query value that does not parse is a 400 naming the problem.
        let res = client.get("/items?limit=many").send().await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(
            res.text().contains("invalid query string"),
            "{}",
            res.text()
        );
    }

    #[tokio::test]
    async fn bad_input_is_rejected_before_the_handler_runs() {
        let client = TestClient::new(app());
        // A path parameter that is not a u64: 400 naming the parameter.
        let res = client.get("/items/abc").send().await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(res.text().contains("`id`"), "{}", res.text());
        // Not JSON: 415.
        let res = client.post("/items").body("name=lamp").send().await;
        assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // JSON of the wrong shape: 400.
        let res = client.post("/items").json(&json!({"name": 1})).send().await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(res.text().contains("invalid JSON body"), "{}", res.text());
        // Over the 64 KiB body limit: 413.
        let huge = json!({"name": "x".repeat(70_000), "price_cents": 1});
        let res = client.post("/items").json(&huge).send().await;
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // A method the route does not have: 405 with an Allow header.
        let res = client.post("/items/1").send().await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.header("allow"), Some("GET, PUT, DELETE"));
    }

    #[tokio::test]
    async fn room_greets_and_echoes_json() {
        let client = TestClient::new(app());
        let mut ws = client.websocket_connect("/ws/lobby").await.unwrap();
        assert_eq!(
            ws.recv_json::<Value>().await.unwrap(),
            Some(json!({"message": "Welcome to lobby!"}))
        );
        ws.send_json(&json!({"text": "hi"})).await.unwrap();
        assert_eq!(
            ws.recv_json::<Value>().await.unwrap(),
            Some(json!({"room": "lobby", "message": {"text": "hi"}}))
        );
    }

    #[tokio::test]
    async fn room_answers_invalid_json_and_stays_open() {
        let client = TestClient::new(app());
        let mut ws = client.websocket_connect("/ws/lobby").await.unwrap();
        ws.recv_json::<Value>().await.unwrap(); // the greeting
        ws.send_text("{not json").await.unwrap();
        let reply = ws.recv_json::<Value>().await.unwrap().unwrap();
        assert!(reply["error"].as_str().unwrap().contains("invalid JSON"));
        ws.send_json(&json!(42)).await.unwrap();
        assert_eq!(
            ws.recv_json::<Value>().await.unwrap(),
            Some(json!({"room": "lobby", "message": 42}))
        );
    }
}
