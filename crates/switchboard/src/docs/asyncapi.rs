//! The AsyncAPI 3.0 document: one channel per WebSocket route (WebSocket
//! bindings, parameters, messages) with a `send` and a `receive` operation,
//! and one channel per SSE route with a `send` operation; payload schemas
//! in `components.schemas` (JSON Schema draft 7, AsyncAPI's default schema
//! format).
//!
//! Operations take the server's view, as AsyncAPI 3.0 defines them:
//! `send` is what the server sends to clients, `receive` what it accepts
//! from them. Builds a `serde_json::Value`; no I/O.

use http::Method;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::{
    channel_ids, generator, ident,
    openapi::{query_params, QueryDialect},
    pattern_params, template, DocsConfig, MessageDoc, Op, Payload, RouteDoc,
};

/// The WebSocket bindings version this document follows.
const WS_BINDING: &str = "0.1.0";
/// The HTTP bindings version (SSE operations).
const HTTP_BINDING: &str = "0.3.0";

pub(super) fn build(
    cfg: &DocsConfig,
    http_ops: &[(Method, Op<'_>)],
    ws_ops: &[(Op<'_>, &[String])],
) -> Value {
    let mut g = generator(SchemaSettings::draft07());
    let sse_ops: Vec<&Op<'_>> = http_ops
        .iter()
        .filter(|(m, op)| *m == Method::GET && op.doc.sse)
        .map(|(_, op)| op)
        .collect();
    let ids = channel_ids(
        ws_ops
            .iter()
            .map(|(op, _)| op.pattern)
            .chain(sse_ops.iter().map(|op| op.pattern)),
    );
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut auth = false;
    let mut servers = Map::new();
    if !ws_ops.is_empty() {
        servers.insert(
            "ws".into(),
            server(
                "ws",
                "WebSocket routes (HTTP/1.1 upgrade, or RFC 8441 over HTTP/2).",
            ),
        );
    }
    if !sse_ops.is_empty() {
        servers.insert("http".into(), server("http", "Server-Sent Events routes."));
    }
    for ((op, protocols), id) in ws_ops.iter().zip(&ids) {
        auth |= op.doc.bearer_auth;
        let doc = op.doc;
        let default = [
            MessageDoc::text("text").summary("Any text message"),
            MessageDoc::binary("binary").summary("Any binary message"),
        ];
        let sends: &[MessageDoc] = if doc.sends.is_empty() && doc.receives.is_empty() {
            &default
        } else {
            &doc.sends
        };
        let receives: &[MessageDoc] = if doc.sends.is_empty() && doc.receives.is_empty() {
            &default
        } else {
            &doc.receives
        };
        let mut messages = Map::new();
        let send_refs = add_messages(&mut g, &mut messages, id, sends, "send", false);
        let receive_refs = add_messages(&mut g, &mut messages, id, receives, "receive", false);
        let mut channel = channel_base(op, "ws");
        channel.insert("messages".into(), Value::Object(messages));
        let mut binding = json!({"method": "GET", "bindingVersion": WS_BINDING});
        if let Some(query) = query_schema(&mut g, doc) {
            binding["query"] = query;
        }
        if !protocols.is_empty() {
            binding["headers"] = json!({
                "type": "object",
                "properties": {
                    "Sec-WebSocket-Protocol": {
                        "type": "string",
                        "description": format!(
                            "Subprotocols offered, comma-separated; the server selects the first it supports ({}).",
                            protocols.join(", ")
                        )
                    }
                }
            });
        }
        channel.insert("bindings".into(), json!({ "ws": binding }));
        channels.insert(id.clone(), Value::Object(channel));
        if !send_refs.is_empty() {
            operations.insert(
                format!("{id}_send"),
                operation(
                    op,
                    id,
                    "send",
                    &send_refs,
                    "Messages the server sends on this socket.",
                ),
            );
        }
        if !receive_refs.is_empty() {
            operations.insert(
                format!("{id}_receive"),
                operation(
                    op,
                    id,
                    "receive",
                    &receive_refs,
                    "Messages the server accepts on this socket.",
                ),
            );
        }
    }
    for (op, id) in sse_ops.iter().zip(&ids[ws_ops.len()..]) {
        auth |= op.doc.bearer_auth;
        let default = [MessageDoc::text("message").summary("An event")];
        let sends: &[MessageDoc] = if op.doc.sends.is_empty() {
            &default
        } else {
            &op.doc.sends
        };
        let mut messages = Map::new();
        let refs = add_messages(&mut g, &mut messages, id, sends, "send", true);
        let mut channel = channel_base(op, "http");
        channel.insert("messages".into(), Value::Object(messages));
        channels.insert(id.clone(), Value::Object(channel));
        let mut o = operation(
            op,
            id,
            "send",
            &refs,
            "Events the server streams (text/event-stream).",
        );
        let mut binding = json!({"method": "GET", "bindingVersion": HTTP_BINDING});
        if let Some(query) = query_schema(&mut g, op.doc) {
            binding["query"] = query;
        }
        o["bindings"] = json!({ "http": binding });
        operations.insert(format!("{id}_send"), o);
    }
    let mut components = Map::new();
    let schemas = g.take_definitions(true);
    if !schemas.is_empty() {
        components.insert("schemas".into(), Value::Object(schemas));
    }
    if auth {
        components.insert(
            "securitySchemes".into(),
            json!({
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT in `Authorization: Bearer <token>`, or offered as \
                        the WebSocket subprotocol `bearer.<token>` (browsers cannot set headers)."
                },
                "tokenQuery": {
                    "type": "httpApiKey",
                    "in": "query",
                    "name": "token",
                    "description": "The same JWT in the `token` query parameter."
                }
            }),
        );
    }
    let mut info = json!({"title": cfg.title, "version": cfg.version});
    let mut description = cfg.description.clone().unwrap_or_default();
    if !description.is_empty() {
        description.push_str("\n\n");
    }
    description.push_str(&format!(
        "Socket and stream routes of this API. The HTTP routes, including each WebSocket \
         route's upgrade request, are in the OpenAPI document at `{}`.",
        cfg.openapi_path
    ));
    info["description"] = json!(description);
    let mut doc = json!({
        "asyncapi": "3.0.0",
        "info": info,
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
    });
    if !servers.is_empty() {
        doc["servers"] = Value::Object(servers);
    }
    if !components.is_empty() {
        doc["components"] = Value::Object(components);
    }
    doc
}

fn server(protocol: &str, description: &str) -> Value {
    // The host is filled in per request (`with_servers`).
    json!({"host": "localhost", "protocol": protocol, "description": description})
}

/// The document with its servers pointing at `host`, over TLS or not.
pub(super) fn with_servers(base: &Value, secure: bool, host: &str) -> Value {
    let mut doc = base.clone();
    if let Some(servers) = doc.get_mut("servers").and_then(Value::as_object_mut) {
        for (name, server) in servers.iter_mut() {
            let protocol = match (name.as_str(), secure) {
                ("ws", false) => "ws",
                ("ws", true) => "wss",
                (_, false) => "http",
                (_, true) => "https",
            };
            server["host"] = json!(host);
            server["protocol"] = json!(protocol);
        }
    }
    doc
}

fn channel_base(op: &Op<'_>, server: &str) -> Map<String, Value> {
    let doc = op.doc;
    let mut c = Map::new();
    c.insert("address".into(), json!(template(op.pattern)));
    if let Some(s) = &doc.summary {
        c.insert("title".into(), json!(s));
    }
    if let Some(d) = &doc.description {
        c.insert("description".into(), json!(d));
    }
    c.insert(
        "servers".into(),
        json!([{ "$ref": format!("#/servers/{server}") }]),
    );
    let params = pattern_params(op.pattern);
    if !params.is_empty() {
        let mut out = Map::new();
        for (name, catch_all) in params {
            let described = doc
                .path_params
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.description.clone());
            let mut p = json!({});
            match (described, catch_all) {
                (Some(d), _) => p["description"] = json!(d),
                (None, true) => p["description"] = json!("The rest of the path (may contain `/`)."),
                (None, false) => {}
            }
            out.insert(name, p);
        }
        c.insert("parameters".into(), Value::Object(out));
    }
    if !doc.tags.is_empty() {
        let tags: Vec<Value> = doc.tags.iter().map(|t| json!({ "name": t })).collect();
        c.insert("tags".into(), json!(tags));
    }
    c
}

/// Adds `msgs` to the channel's messages and returns the operation's
/// references to them. A message both sent and received is listed once;
/// two different messages with one name get keys suffixed with their
/// direction.
fn add_messages(
    g: &mut schemars::SchemaGenerator,
    messages: &mut Map<String, Value>,
    channel: &str,
    msgs: &[MessageDoc],
    direction: &str,
    sse: bool,
) -> Vec<Value> {
    let mut refs = Vec::new();
    for m in msgs {
        let message = {
            let (content_type, payload) = match m.payload {
                Payload::Json(f) => ("application/json", Value::from(f(g))),
                Payload::Text => ("text/plain", json!({"type": "string"})),
                Payload::Binary => (
                    "application/octet-stream",
                    json!({"type": "string", "format": "binary"}),
                ),
            };
            let mut v = json!({
                "name": m.name,
                "contentType": content_type,
                "payload": payload,
            });
            if let Some(s) = &m.summary {
                v["summary"] = json!(s);
            }
            if let Some(d) = &m.description {
                v["description"] = json!(d);
            }
            if sse {
                v["x-sse-event"] = json!(m.name);
            }
            v
        };
        let base = ident(&m.name);
        let mut key = base.clone();
        let mut n = 1;
        while messages
            .get(&key)
            .is_some_and(|existing| *existing != message)
        {
            key = if n == 1 {
                format!("{base}_{direction}")
            } else {
                format!("{base}_{direction}_{n}")
            };
            n += 1;
        }
        messages.entry(key.clone()).or_insert(message);
        refs.push(json!({ "$ref": format!("#/channels/{channel}/messages/{key}") }));
    }
    refs
}

fn operation(op: &Op<'_>, channel: &str, action: &str, refs: &[Value], summary: &str) -> Value {
    let doc: &RouteDoc = op.doc;
    let mut o = json!({
        "action": action,
        "channel": { "$ref": format!("#/channels/{channel}") },
        "summary": summary,
        "messages": refs,
    });
    if doc.bearer_auth {
        o["security"] = json!([
            { "$ref": "#/components/securitySchemes/bearerAuth" },
            { "$ref": "#/components/securitySchemes/tokenQuery" }
        ]);
    }
    if !doc.tags.is_empty() {
        let tags: Vec<Value> = doc.tags.iter().map(|t| json!({ "name": t })).collect();
        o["tags"] = json!(tags);
    }
    o
}

/// The query string as an object schema (WebSocket and HTTP bindings
/// require `type: object`).
fn query_schema(g: &mut schemars::SchemaGenerator, doc: &RouteDoc) -> Option<Value> {
    let params = query_params(doc, QueryDialect::AsyncApi, g);
    if params.is_empty() {
        return None;
    }
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, req, mut schema, description) in params {
        if let (Some(d), Some(obj)) = (description, schema.as_object_mut()) {
            obj.entry("description").or_insert(json!(d));
        }
        if req {
            required.push(name.clone());
        }
        properties.insert(name, schema);
    }
    let mut s = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        s["required"] = json!(required);
    }
    Some(s)
}
