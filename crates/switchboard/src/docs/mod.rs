//! API documents generated from the route table: OpenAPI 3.1 for the HTTP
//! routes (each WebSocket route present as its upgrade `GET`), AsyncAPI 3.0
//! for the WebSocket and SSE routes, and an offline HTML page for both.
//!
//! Routes carry an optional [`RouteDoc`] (summary, tags, parameters, bodies
//! and messages, whose schemas `schemars` derives from Rust types); routes
//! without one are still listed. The documents are built once, when the app
//! starts serving, and served from memory at `GET /openapi.json`,
//! `GET /asyncapi.json` and `GET /docs` (paths set by [`DocsConfig`]); only
//! the AsyncAPI `servers` (host and `ws`/`wss`) are filled in per request.
//! Nothing here touches sockets or runs on the message path.
//!
//! ```
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//! use switchboard::{App, DocsConfig, Json, MessageDoc, RouteDoc, WebSocket};
//!
//! #[derive(Serialize, Deserialize, JsonSchema)]
//! struct Chat {
//!     /// Who wrote it.
//!     user: String,
//!     text: String,
//! }
//!
//! let app = App::new()
//!     .docs_config(DocsConfig::new().title("Real-Time API").version("1.0.0"))
//!     .get("/health", || async { "ok" })
//!     .doc(RouteDoc::new().summary("Liveness").tag("ops").response_content(200, "alive", "text/plain"))
//!     .websocket("/ws/chat", |ws: WebSocket| async move { ws.accept().await.map(drop) })
//!     .doc(
//!         RouteDoc::new()
//!             .summary("Chat")
//!             .receives(MessageDoc::json::<Chat>("chat").summary("A message to post"))
//!             .sends(MessageDoc::json::<Chat>("chat").summary("A message posted")),
//!     );
//! ```

mod asyncapi;
mod openapi;
mod page;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use schemars::{generate::SchemaSettings, JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;

use crate::{
    app::App,
    extract::{FromRequestParts, Rejection, RequestContext},
    response::{IntoResponse, Response},
};

/// Produces a type's schema in a generator (a `$ref` for named types).
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema + ?Sized>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// Settings for the generated API documents: on or off, their metadata,
/// and where they are served.
///
/// ```
/// use switchboard::{App, DocsConfig};
/// let app = App::new().docs_config(
///     DocsConfig::new()
///         .title("Real-Time API")
///         .version("2.1.0")
///         .description("Chat rooms over WebSockets and SSE."),
/// );
/// // Or no documents at all:
/// let quiet = App::new().docs(false);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct DocsConfig {
    enabled: bool,
    title: String,
    version: String,
    description: Option<String>,
    openapi_path: String,
    asyncapi_path: String,
    page_path: String,
}

impl Default for DocsConfig {
    fn default() -> Self {
        DocsConfig {
            enabled: true,
            title: "Switchboard API".into(),
            version: "0.1.0".into(),
            description: None,
            openapi_path: "/openapi.json".into(),
            asyncapi_path: "/asyncapi.json".into(),
            page_path: "/docs".into(),
        }
    }
}

impl DocsConfig {
    /// The defaults: enabled, title "Switchboard API", version "0.1.0",
    /// served at `/openapi.json`, `/asyncapi.json` and `/docs`.
    pub fn new() -> Self {
        DocsConfig::default()
    }

    /// Serve the documents (default: on, as the seeds'
    /// `include_websocket_docs=True`).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The API's title (`info.title`).
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// The API's version (`info.version`), not Switchboard's.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// A description (Markdown) for `info.description`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Where the OpenAPI document is served (default `/openapi.json`).
    pub fn openapi_path(mut self, path: impl Into<String>) -> Self {
        self.openapi_path = path.into();
        self
    }

    /// Where the AsyncAPI document is served (default `/asyncapi.json`).
    pub fn asyncapi_path(mut self, path: impl Into<String>) -> Self {
        self.asyncapi_path = path.into();
        self
    }

    /// Where the HTML page is served (default `/docs`).
    pub fn page_path(mut self, path: impl Into<String>) -> Self {
        self.page_path = path.into();
        self
    }
}

/// What a message's payload is.
#[derive(Clone, Copy)]
enum Payload {
    Json(SchemaFn),
    Text,
    Binary,
}

/// One kind of message on a WebSocket route (either direction) or one
/// event of an SSE route, for the AsyncAPI document.
///
/// ```
/// use schemars::JsonSchema;
/// use switchboard::MessageDoc;
///
/// #[derive(serde::Serialize, JsonSchema)]
/// struct Joined { user: String }
///
/// let msg = MessageDoc::json::<Joined>("user_joined").summary("Someone joined the room");
/// let raw = MessageDoc::text("text").description("Any UTF-8 text, relayed unchanged");
/// ```
#[derive(Clone)]
#[must_use]
pub struct MessageDoc {
    name: String,
    summary: Option<String>,
    description: Option<String>,
    payload: Payload,
}

impl std::fmt::Debug for MessageDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let payload = match self.payload {
            Payload::Json(_) => "json",
            Payload::Text => "text",
            Payload::Binary => "binary",
        };
        f.debug_struct("MessageDoc")
            .field("name", &self.name)
            .field("payload", &payload)
            .finish_non_exhaustive()
    }
}

impl MessageDoc {
    fn with(name: impl Into<String>, payload: Payload) -> Self {
        MessageDoc {
            name: name.into(),
            summary: None,
            description: None,
            payload,
        }
    }

    /// A JSON text message whose payload has `T`'s schema.
    pub fn json<T: JsonSchema>(name: impl Into<String>) -> Self {
        MessageDoc::with(name, Payload::Json(schema_of::<T>))
    }

    /// A text message with any content (`text/plain`).
    pub fn text(name: impl Into<String>) -> Self {
        MessageDoc::with(name, Payload::Text)
    }

    /// A binary message (`application/octet-stream`).
    pub fn binary(name: impl Into<String>) -> Self {
        MessageDoc::with(name, Payload::Binary)
    }

    /// A one-line summary.
    pub fn summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(summary.into());
        self
    }

    /// A longer description (Markdown).
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
}

#[derive(Clone)]
struct ParamDoc {
    name: String,
    description: Option<String>,
    required: bool,
    schema: SchemaFn,
}

#[derive(Clone)]
struct ResponseDoc {
    status: u16,
    description: String,
    content_type: Option<String>,
    schema: Option<SchemaFn>,
    /// The body is Switchboard's own error JSON (`{"error", "status"}`).
    framework_error: bool,
}

/// Documentation for one route: what the OpenAPI and AsyncAPI documents
/// say about it. Attach it with [`App::doc`] right after adding the route.
///
/// HTTP routes use the request and response parts; WebSocket routes use
/// [`sends`](RouteDoc::sends) and [`receives`](RouteDoc::receives) for the
/// messages each way; an SSE route ([`sse`](RouteDoc::sse)) uses `sends`
/// for its events. Parameters, tags and auth apply to all.
#[derive(Clone, Default)]
#[must_use]
pub struct RouteDoc {
    summary: Option<String>,
    description: Option<String>,
    tags: Vec<String>,
    operation_id: Option<String>,
    deprecated: bool,
    hidden: bool,
    bearer_auth: bool,
    sse: bool,
    path_params: Vec<ParamDoc>,
    query_params: Vec<ParamDoc>,
    query_struct: Option<SchemaFn>,
    request_body: Option<(String, Option<SchemaFn>)>,
    responses: Vec<ResponseDoc>,
    sends: Vec<MessageDoc>,
    receives: Vec<MessageDoc>,
}

impl std::fmt::Debug for RouteDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteDoc")
            .field("summary", &self.summary)
            .field("tags", &self.tags)
            .field("sends", &self.sends)
            .field("receives", &self.receives)
            .finish_non_exhaustive()
    }
}

impl RouteDoc {
    /// Empty documentation (the route is listed with defaults).
    pub fn new() -> Self {
        RouteDoc::default()
    }

    /// A one-line summary.
    pub fn summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(summary.into());
        self
    }

    /// A longer description (Markdown).
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Adds a tag (routes are grouped by tag on the docs page).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds several tags.
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// The `operationId` (default: derived from method and path).
    pub fn operation_id(mut self, id: impl Into<String>) -> Self {
        self.operation_id = Some(id.into());
        self
    }

    /// Marks the route deprecated.
    pub fn deprecated(mut self) -> Self {
        self.deprecated = true;
        self
    }

    /// Leaves the route out of the documents.
    pub fn hidden(mut self) -> Self {
        self.hidden = true;
        self
    }

    /// The route needs a JWT ([`JwtAuth`](crate::auth::JwtAuth)): an
    /// `Authorization: Bearer` header, a `token` query parameter, or (on
    /// WebSocket routes) a `bearer.<jwt>` subprotocol entry.
    pub fn bearer_auth(mut self) -> Self {
        self.bearer_auth = true;
        self
    }

    /// The route is a Server-Sent Events stream (`text/event-stream`): it
    /// goes into the AsyncAPI document too, with its [`sends`](Self::sends)
    /// as the events.
    pub fn sse(mut self) -> Self {
        self.sse = true;
        self
    }

    /// Documents a path parameter (`{name}` in the pattern) with `T`'s
    /// schema. Undocumented parameters are strings.
    pub fn path_param<T: JsonSchema>(
        mut self,
        name: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.path_params.push(ParamDoc {
            name: name.into(),
            description: Some(description.into()),
            required: true,
            schema: schema_of::<T>,
        });
        self
    }

    /// Documents one query parameter with `T`'s schema.
    pub fn query_param<T: JsonSchema>(
        mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        required: bool,
    ) -> Self {
        self.query_params.push(ParamDoc {
            name: name.into(),
            description: Some(description.into()),
            required,
            schema: schema_of::<T>,
        });
        self
    }

    /// Documents the query string as `T` (the type a [`Query<T>`](crate::Query)
    /// extractor reads): each field becomes a query parameter.
    pub fn query<T: JsonSchema>(mut self) -> Self {
        self.query_struct = Some(schema_of::<T>);
        self
    }

    /// The request body: JSON with `T`'s schema.
    pub fn request_body<T: JsonSchema>(mut self) -> Self {
        self.request_body = Some(("application/json".into(), Some(schema_of::<T>)));
        self
    }

    /// The request body: any content of `content_type`.
    pub fn request_content(mut self, content_type: impl Into<String>) -> Self {
        self.request_body = Some((content_type.into(), None));
        self
    }

    /// A response: JSON with `T`'s schema.
    pub fn response<T: JsonSchema>(mut self, status: u16, description: impl Into<String>) -> Self {
        self.responses.push(ResponseDoc {
            status,
            description: description.into(),
            content_type: Some("application/json".into()),
            schema: Some(schema_of::<T>),
            framework_error: false,
        });
        self
    }

    /// A response with a body of `content_type` (e.g. `text/plain`).
    pub fn response_content(
        mut self,
        status: u16,
        description: impl Into<String>,
        content_type: impl Into<String>,
    ) -> Self {
        self.responses.push(ResponseDoc {
            status,
            description: description.into(),
            content_type: Some(content_type.into()),
            schema: None,
            framework_error: false,
        });
        self
    }

    /// A response without a body.
    pub fn response_empty(mut self, status: u16, description: impl Into<String>) -> Self {
        self.responses.push(ResponseDoc {
            status,
            description: description.into(),
            content_type: None,
            schema: None,
            framework_error: false,
        });
        self
    }

    /// An error response with Switchboard's JSON error body
    /// (`{"error": "...", "status": 400}`), as extractor rejections and
    /// [`error_response`](crate::error_response) produce.
    pub fn error_response(mut self, status: u16, description: impl Into<String>) -> Self {
        self.responses.push(ResponseDoc {
            status,
            description: description.into(),
            content_type: Some("application/json".into()),
            schema: None,
            framework_error: true,
        });
        self
    }

    /// A message the server sends (WebSocket) or an event it emits (SSE).
    pub fn sends(mut self, message: MessageDoc) -> Self {
        self.sends.push(message);
        self
    }

    /// A message the server accepts from the client (WebSocket).
    pub fn receives(mut self, message: MessageDoc) -> Self {
        self.receives.push(message);
        self
    }
}

/// Which route [`App::doc`] documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DocTarget {
    Http(Method, String),
    Ws(String),
}

/// The documentation the app collects while it is built.
#[derive(Debug, Default)]
pub(crate) struct DocsState {
    pub(crate) config: DocsConfig,
    /// The route added last: the one [`App::doc`] documents.
    pub(crate) last: Option<DocTarget>,
    docs: Vec<(DocTarget, RouteDoc)>,
}

/// What the generators need to know about one route.
#[derive(Debug)]
pub(crate) struct RouteSummary {
    pub(crate) pattern: String,
    pub(crate) methods: Vec<Method>,
    /// Subprotocols of the WebSocket route, if the path has one.
    pub(crate) websocket: Option<Vec<String>>,
}

/// One documented operation, as the generators see it.
struct Op<'a> {
    pattern: &'a str,
    doc: &'a RouteDoc,
}

/// A path pattern's parameters: (name, catch-all).
fn pattern_params(pattern: &str) -> Vec<(String, bool)> {
    pattern
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|inner| match inner.strip_prefix('*') {
            Some(name) => (name.to_owned(), true),
            None => (inner.to_owned(), false),
        })
        .collect()
}

/// The pattern as an OpenAPI/AsyncAPI template (`{*rest}` → `{rest}`).
fn template(pattern: &str) -> String {
    pattern.replace("{*", "{")
}

/// A name made of `[A-Za-z0-9_-]` (the characters every key in both
/// documents allows).
fn ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            out.push(c);
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    let out = out.trim_end_matches('_').to_owned();
    if out.is_empty() {
        "root".into()
    } else {
        out
    }
}

/// Channel ids for the AsyncAPI document (and the OpenAPI links to it):
/// the pattern as an identifier, suffixed when two patterns collide. The
/// WebSocket routes come first, so both documents agree on their ids.
fn channel_ids<'a>(patterns: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut used = std::collections::HashSet::new();
    patterns
        .map(|p| {
            let base = ident(p);
            let mut candidate = base.clone();
            let mut n = 2;
            while !used.insert(candidate.clone()) {
                candidate = format!("{base}_{n}");
                n += 1;
            }
            candidate
        })
        .collect()
}

/// The generated documents and page.
#[derive(Debug)]
pub(crate) struct Generated {
    pub(crate) openapi: Value,
    pub(crate) asyncapi: Value,
    pub(crate) page: String,
}

impl DocsState {
    pub(crate) fn attach(&mut self, doc: RouteDoc) {
        let target = self
            .last
            .clone()
            .expect("App::doc documents the route added just before it; add a route first");
        self.docs.retain(|(t, _)| *t != target);
        self.docs.push((target, doc));
    }

    fn find(&self, target: &DocTarget) -> Option<&RouteDoc> {
        self.docs.iter().find(|(t, _)| t == target).map(|(_, d)| d)
    }

    /// Builds both documents and the page from the route table.
    pub(crate) fn generate(&self, routes: &[RouteSummary]) -> Generated {
        let cfg = &self.config;
        let served = [&cfg.openapi_path, &cfg.asyncapi_path, &cfg.page_path];
        let empty = RouteDoc::default();
        let mut http_ops: Vec<(Method, Op<'_>)> = Vec::new();
        let mut ws_ops: Vec<(Op<'_>, &[String])> = Vec::new();
        for route in routes {
            if served.iter().any(|p| **p == route.pattern) {
                continue;
            }
            for m in &route.methods {
                let doc = self
                    .find(&DocTarget::Http(m.clone(), route.pattern.clone()))
                    .unwrap_or(&empty);
                if !doc.hidden {
                    http_ops.push((
                        m.clone(),
                        Op {
                            pattern: &route.pattern,
                            doc,
                        },
                    ));
                }
            }
            if let Some(protocols) = &route.websocket {
                let doc = self
                    .find(&DocTarget::Ws(route.pattern.clone()))
                    .unwrap_or(&empty);
                if !doc.hidden {
                    ws_ops.push((
                        Op {
                            pattern: &route.pattern,
                            doc,
                        },
                        protocols,
                    ));
                }
            }
        }
        let openapi = openapi::build(cfg, &http_ops, &ws_ops);
        let asyncapi = asyncapi::build(cfg, &http_ops, &ws_ops);
        let page = page::render(cfg, &openapi, &asyncapi);
        Generated {
            openapi,
            asyncapi,
            page,
        }
    }
}

/// A schema generator whose `$ref`s point into `#/components/schemas`.
fn generator(settings: SchemaSettings) -> SchemaGenerator {
    settings
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator()
}

/// How the client reached us, for the AsyncAPI `servers`.
struct Reached {
    secure: bool,
    host: String,
}

impl FromRequestParts for Reached {
    fn from_request_parts(cx: &mut RequestContext) -> Result<Self, Rejection> {
        let secure = cx.parts.extensions.get::<crate::server::Secure>().is_some();
        let host = cx
            .parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                cx.parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "localhost".into());
        Ok(Reached { secure, host })
    }
}

fn bytes_response(body: Bytes, content_type: &'static str) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (StatusCode::OK, headers, body).into_response()
}

impl App {
    /// Documents the route added just before this call (its method and
    /// path, or its WebSocket endpoint). Panics if no route was added yet.
    ///
    /// ```
    /// use switchboard::{App, RouteDoc};
    /// let app = App::new()
    ///     .get("/health", || async { "ok" })
    ///     .doc(RouteDoc::new().summary("Liveness probe").tag("ops"));
    /// ```
    pub fn doc(mut self, doc: RouteDoc) -> App {
        self.docs.attach(doc);
        self
    }

    /// Serves the API documents and page (default: on). `false` serves
    /// none of `/openapi.json`, `/asyncapi.json` and `/docs`.
    pub fn docs(mut self, enabled: bool) -> App {
        self.docs.config.enabled = enabled;
        self
    }

    /// Sets the documents' metadata and paths.
    pub fn docs_config(mut self, config: DocsConfig) -> App {
        self.docs.config = config;
        self
    }

    /// Generates the documents and adds their routes (skipping any path the
    /// application already serves with `GET`). Called when serving starts.
    pub(crate) fn install_docs(mut self, routes: &[RouteSummary]) -> App {
        if !self.docs.config.enabled {
            return self;
        }
        let generated = self.docs.generate(routes);
        let cfg = self.docs.config.clone();
        let taken = |path: &str| {
            routes
                .iter()
                .any(|r| r.pattern == path && r.methods.contains(&Method::GET))
        };
        let openapi =
            Bytes::from(serde_json::to_vec_pretty(&generated.openapi).unwrap_or_default());
        let asyncapi = Arc::new(generated.asyncapi);
        let page = Bytes::from(generated.page);
        if !taken(&cfg.openapi_path) {
            self = self.get(&cfg.openapi_path, move || {
                let body = openapi.clone();
                async move { bytes_response(body, "application/json") }
            });
        }
        if !taken(&cfg.asyncapi_path) {
            self = self.get(&cfg.asyncapi_path, move |reached: Reached| {
                let doc = Arc::clone(&asyncapi);
                async move {
                    let doc = asyncapi::with_servers(&doc, reached.secure, &reached.host);
                    let body = serde_json::to_vec_pretty(&doc).unwrap_or_default();
                    bytes_response(Bytes::from(body), "application/json")
                }
            });
        }
        if !taken(&cfg.page_path) {
            self = self.get(&cfg.page_path, move || {
                let body = page.clone();
                async move { bytes_response(body, "text/html; charset=utf-8") }
            });
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_templates() {
        assert_eq!(
            pattern_params("/a/{room}/b/{*rest}"),
            [("room".to_owned(), false), ("rest".to_owned(), true)]
        );
        assert_eq!(template("/files/{*path}"), "/files/{path}");
        assert_eq!(ident("/ws/rooms/{room}"), "ws_rooms_room");
        assert_eq!(ident("/"), "root");
        assert_eq!(ident("chat message!"), "chat_message");
    }
}
