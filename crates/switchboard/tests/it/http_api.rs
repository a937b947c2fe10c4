//! HTTP routes, extractors, rejections and responses.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use serde::Deserialize;
use serde_json::{json, Value};
use switchboard::{
    testing::TestClient, App, ClientAddr, HeaderMap, Json, Path, Query, State, StatusCode,
};

#[derive(Deserialize)]
struct Page {
    page: u32,
    q: Option<String>,
}

fn app() -> App {
    App::new()
        .state(Arc::new(AtomicUsize::new(7)))
        .get("/health", || async { "ok" })
        .post("/api/echo", |Json(v): Json<Value>| async move { Json(v) })
        .get("/items/{id}", |Path(id): Path<u32>| async move {
            Json(json!({ "id": id }))
        })
        .get(
            "/rooms/{room}/users/{user}",
            |Path((room, user)): Path<(String, u64)>| async move { format!("{room}:{user}") },
        )
        .get("/search", |Query(p): Query<Page>| async move {
            format!("{} {:?}", p.page, p.q)
        })
        .get("/ua", |h: HeaderMap| async move {
            h.get("user-agent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned()
        })
        .get("/count", |State(n): State<Arc<AtomicUsize>>| async move {
            n.fetch_add(1, Ordering::SeqCst).to_string()
        })
        .get("/missing-state", |State(_): State<String>| async {
            "unreachable"
        })
        .get("/addr", |ClientAddr(a): ClientAddr| async move {
            a.ip().to_string()
        })
        .get("/files/{*path}", |Path(p): Path<String>| async move { p })
        .get("/created", || async {
            let mut h = HeaderMap::new();
            h.insert("x-id", "42".parse().unwrap());
            (StatusCode::CREATED, h, Json(json!({"ok": true})))
        })
        .get("/panic", || async {
            if true {
                panic!("boom");
            }
            "never"
        })
        .post("/text", |body: String| async move { body.to_uppercase() })
        .max_body_size(1024)
}

#[tokio::test]
async fn text_and_json_routes() {
    let c = TestClient::new(app());
    let r = c.get("/health").send().await;
    assert_eq!((r.status(), r.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = c.post("/api/echo").json(&json!({"a": [1, 2]})).send().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>(), json!({"a": [1, 2]}));
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn typed_path_params_and_clear_400() {
    let c = TestClient::new(app());
    assert_eq!(
        c.get("/items/5").send().await.json::<Value>(),
        json!({"id": 5})
    );
    let r = c.get("/items/abc").send().await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json();
    assert_eq!(
        body["error"],
        "invalid path parameter `id`: expected u32, got \"abc\""
    );
    assert_eq!(
        c.get("/rooms/general/users/9").send().await.text(),
        "general:9"
    );
    assert_eq!(c.get("/files/a/b/c.txt").send().await.text(), "a/b/c.txt");
}

#[tokio::test]
async fn query_headers_state_addr() {
    let c = TestClient::new(app());
    assert_eq!(
        c.get("/search?page=2&q=rust").send().await.text(),
        "2 Some(\"rust\")"
    );
    let r = c.get("/search?page=x").send().await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().contains("invalid query string"), "{}", r.text());
    assert_eq!(
        c.get("/ua")
            .header("user-agent", "tester")
            .send()
            .await
            .text(),
        "tester"
    );
    assert_eq!(c.get("/count").send().await.text(), "7");
    assert_eq!(c.get("/count").send().await.text(), "8");
    let r = c.get("/missing-state").send().await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.text().contains("was not registered"));
    assert_eq!(c.get("/addr").send().await.text(), "127.0.0.1");
}

#[tokio::test]
async fn status_headers_tuple() {
    let c = TestClient::new(app());
    let r = c.get("/created").send().await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.header("x-id"), Some("42"));
    assert_eq!(r.json::<Value>(), json!({"ok": true}));
}

#[tokio::test]
async fn not_found_and_method_not_allowed_have_bodies() {
    let c = TestClient::new(app());
    let r = c.get("/nope").send().await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>()["error"], "no route for GET /nope");
    let r = c.delete("/health").send().await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("GET"));
    assert!(r.text().contains("method DELETE not allowed on /health"));
}

#[tokio::test]
async fn json_body_rejections() {
    let c = TestClient::new(app());
    let r = c.post("/api/echo").body("{}").send().await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(r.text().contains("application/json"));
    let r = c
        .post("/api/echo")
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().contains("invalid JSON body"), "{}", r.text());
    let big = json!({"x": "y".repeat(2000)});
    let r = c.post("/api/echo").json(&big).send().await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.text().contains("1024 bytes"));
    let r = c.post("/text").body("héllo").send().await;
    assert_eq!(r.text(), "HÉLLO");
}

#[tokio::test]
async fn handler_panic_is_500_and_server_keeps_serving() {
    let c = TestClient::new(app());
    let r = c.get("/panic").send().await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(c.get("/health").send().await.text(), "ok");
}

#[tokio::test]
async fn lifecycle_hooks_run() {
    let started = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(AtomicUsize::new(0));
    let (s, t) = (started.clone(), stopped.clone());
    let app = App::new()
        .on_startup(move || {
            let s = s.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
            }
        })
        .on_shutdown(move || {
            let t = t.clone();
            async move {
                t.fetch_add(1, Ordering::SeqCst);
            }
        });
    let c = TestClient::new(app);
    c.startup().await;
    assert_eq!(started.load(Ordering::SeqCst), 1);
    c.shutdown().await;
    assert_eq!(stopped.load(Ordering::SeqCst), 1);
}

#[test]
#[should_panic(expected = "registered twice")]
fn duplicate_routes_are_a_programming_error() {
    let _ = App::new()
        .get("/a", || async { "" })
        .get("/a", || async { "" });
}
