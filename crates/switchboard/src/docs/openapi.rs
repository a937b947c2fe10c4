//! The OpenAPI 3.1 document: HTTP routes as operations, each WebSocket
//! route as its upgrade `GET` (handshake headers, 101 and the refusals the
//! upgrade path really answers), schemas in `components.schemas` (JSON
//! Schema 2020-12, OpenAPI 3.1's dialect).
//!
//! Builds a `serde_json::Value` and nothing else; no I/O.

use std::collections::HashSet;

use http::Method;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::{
    channel_ids, generator, ident, pattern_params, template, DocsConfig, Op, ParamDoc, RouteDoc,
    SchemaFn,
};

/// The name of the error body schema (`{"error", "status"}`), chosen not to
/// collide with an application's own `Error` type.
const ERROR_SCHEMA: &str = "SwitchboardError";

pub(super) fn build(
    cfg: &DocsConfig,
    http_ops: &[(Method, Op<'_>)],
    ws_ops: &[(Op<'_>, &[String])],
) -> Value {
    let mut g = generator(SchemaSettings::draft2020_12());
    let mut paths = Map::new();
    let mut used_ids = HashSet::new();
    let mut auth = false;
    let mut errors = false;
    for (method, op) in http_ops {
        let id = unique(
            &mut used_ids,
            op.doc.operation_id.clone().unwrap_or_else(|| {
                format!(
                    "{}_{}",
                    method.as_str().to_ascii_lowercase(),
                    ident(op.pattern)
                )
            }),
        );
        auth |= op.doc.bearer_auth;
        errors |= op.doc.responses.iter().any(|r| r.framework_error);
        let operation = http_operation(&mut g, method, op, id);
        let item = paths
            .entry(template(op.pattern))
            .or_insert_with(|| json!({}));
        item[method.as_str().to_ascii_lowercase()] = operation;
    }
    let ids = channel_ids(ws_ops.iter().map(|(op, _)| op.pattern));
    for ((op, protocols), channel) in ws_ops.iter().zip(&ids) {
        auth |= op.doc.bearer_auth;
        errors = true;
        let item = paths
            .entry(template(op.pattern))
            .or_insert_with(|| json!({}));
        let websocket = ws_extension(cfg, op.doc, protocols, channel);
        if let Some(get) = item.get_mut("get") {
            // The path also has an HTTP GET: the same operation upgrades
            // when the request asks for it.
            get["responses"]["101"] = switching_protocols(protocols);
            get["x-websocket"] = websocket;
        } else {
            let id = unique(
                &mut used_ids,
                op.doc
                    .operation_id
                    .clone()
                    .unwrap_or_else(|| format!("ws_{}", ident(op.pattern))),
            );
            item["get"] = ws_operation(&mut g, op, protocols, id, websocket);
        }
    }
    let mut schemas = g.take_definitions(true);
    if errors {
        schemas.insert(
            ERROR_SCHEMA.into(),
            json!({
                "type": "object",
                "description": "The JSON body of every error Switchboard answers itself.",
                "properties": {
                    "error": {"type": "string", "description": "What went wrong."},
                    "status": {"type": "integer", "description": "The HTTP status, repeated."}
                },
                "required": ["error", "status"]
            }),
        );
    }
    let mut components = Map::new();
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
                    "description": "A JWT in `Authorization: Bearer <token>`. WebSocket \
                        clients that cannot set headers (browsers) may instead offer the \
                        subprotocol `bearer.<token>` or use the `token` query parameter."
                },
                "tokenQuery": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "The same JWT in the `token` query parameter."
                }
            }),
        );
    }
    let mut info = json!({"title": cfg.title, "version": cfg.version});
    if let Some(d) = &cfg.description {
        info["description"] = json!(d);
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": info,
        "paths": paths,
    });
    if !components.is_empty() {
        doc["components"] = Value::Object(components);
    }
    doc
}

fn unique(used: &mut HashSet<String>, id: String) -> String {
    let mut candidate = id.clone();
    let mut n = 2;
    while !used.insert(candidate.clone()) {
        candidate = format!("{id}_{n}");
        n += 1;
    }
    candidate
}

/// Summary, description, tags, deprecation and security, shared by every
/// kind of operation.
fn common(op: &Op<'_>, id: String, default_tags: &[&str]) -> Map<String, Value> {
    let doc = op.doc;
    let mut o = Map::new();
    o.insert("operationId".into(), json!(id));
    if let Some(s) = &doc.summary {
        o.insert("summary".into(), json!(s));
    }
    if let Some(d) = &doc.description {
        o.insert("description".into(), json!(d));
    }
    if !doc.tags.is_empty() {
        o.insert("tags".into(), json!(doc.tags));
    } else if !default_tags.is_empty() {
        o.insert("tags".into(), json!(default_tags));
    }
    if doc.deprecated {
        o.insert("deprecated".into(), json!(true));
    }
    if doc.bearer_auth {
        o.insert(
            "security".into(),
            json!([{"bearerAuth": []}, {"tokenQuery": []}]),
        );
    }
    o
}

/// Path parameters (every `{name}` of the pattern) and query parameters.
pub(super) fn parameters(
    g: &mut schemars::SchemaGenerator,
    pattern: &str,
    doc: &RouteDoc,
) -> Vec<Value> {
    let mut out = Vec::new();
    for (name, catch_all) in pattern_params(pattern) {
        let documented = doc.path_params.iter().find(|p| p.name == name);
        let schema = documented.map_or_else(|| json!({"type": "string"}), |p| (p.schema)(g).into());
        let description = match (documented.and_then(|p| p.description.clone()), catch_all) {
            (Some(d), _) => Some(d),
            (None, true) => Some("The rest of the path (may contain `/`).".to_owned()),
            (None, false) => None,
        };
        let mut p = json!({"name": name, "in": "path", "required": true, "schema": schema});
        if let Some(d) = description {
            p["description"] = json!(d);
        }
        out.push(p);
    }
    for (name, required, schema, description) in query_params(doc, QueryDialect::OpenApi, g) {
        let mut p = json!({"name": name, "in": "query", "required": required, "schema": schema});
        if let Some(d) = description {
            p["description"] = json!(d);
        }
        out.push(p);
    }
    out
}

/// Which schema dialect a query parameter's schema is generated in.
#[derive(Clone, Copy)]
pub(super) enum QueryDialect {
    OpenApi,
    AsyncApi,
}

/// Query parameters: `(name, required, schema, description)`, from
/// [`RouteDoc::query`] (each field of the struct) and
/// [`RouteDoc::query_param`].
pub(super) fn query_params(
    doc: &RouteDoc,
    dialect: QueryDialect,
    g: &mut schemars::SchemaGenerator,
) -> Vec<(String, bool, Value, Option<String>)> {
    let mut out = Vec::new();
    if let Some(f) = doc.query_struct {
        // Inline, so the struct's own properties are at hand.
        let settings = match dialect {
            QueryDialect::OpenApi => SchemaSettings::draft2020_12(),
            QueryDialect::AsyncApi => SchemaSettings::draft07(),
        };
        let mut inline = settings
            .with(|s| {
                s.inline_subschemas = true;
                s.meta_schema = None;
            })
            .into_generator();
        let schema: Value = f(&mut inline).into();
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let description = prop
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                out.push((
                    name.clone(),
                    required.contains(&name.as_str()),
                    prop.clone(),
                    description,
                ));
            }
        }
    }
    for ParamDoc {
        name,
        description,
        required,
        schema,
    } in &doc.query_params
    {
        out.push((
            name.clone(),
            *required,
            schema(g).into(),
            description.clone(),
        ));
    }
    out
}

fn content(g: &mut schemars::SchemaGenerator, ct: &str, schema: Option<SchemaFn>) -> Value {
    let schema = match schema {
        Some(f) => Some(Value::from(f(g))),
        None if ct.starts_with("text/") => Some(json!({"type": "string"})),
        None => None,
    };
    match schema {
        Some(s) => json!({ ct: {"schema": s} }),
        None => json!({ ct: {} }),
    }
}

fn http_operation(
    g: &mut schemars::SchemaGenerator,
    method: &Method,
    op: &Op<'_>,
    id: String,
) -> Value {
    let doc = op.doc;
    let mut o = common(op, id, &[]);
    let params = parameters(g, op.pattern, doc);
    if !params.is_empty() {
        o.insert("parameters".into(), json!(params));
    }
    if let Some((ct, schema)) = &doc.request_body {
        o.insert(
            "requestBody".into(),
            json!({"required": true, "content": content(g, ct, *schema)}),
        );
    }
    let mut responses = Map::new();
    for r in &doc.responses {
        let mut v = json!({"description": r.description});
        if r.framework_error {
            v = error(&r.description);
        } else if let Some(ct) = &r.content_type {
            v["content"] = content(g, ct, r.schema);
        }
        responses.insert(r.status.to_string(), v);
    }
    if doc.sse {
        responses.entry("200").or_insert_with(|| {
            json!({
                "description": "A Server-Sent Events stream (see the AsyncAPI document).",
                "content": {"text/event-stream": {"schema": {"type": "string"}}}
            })
        });
        let events: Vec<&str> = doc.sends.iter().map(|m| m.name.as_str()).collect();
        o.insert("x-sse-events".into(), json!(events));
    }
    if responses.is_empty() {
        let description = if *method == Method::POST {
            "Successful response"
        } else {
            "OK"
        };
        responses.insert("200".into(), json!({ "description": description }));
    }
    o.insert("responses".into(), Value::Object(responses));
    Value::Object(o)
}

fn header(name: &str, required: bool, schema: Value, description: &str) -> Value {
    json!({
        "name": name,
        "in": "header",
        "required": required,
        "schema": schema,
        "description": description
    })
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{ERROR_SCHEMA}")}}}
    })
}

fn switching_protocols(protocols: &[String]) -> Value {
    let mut headers = json!({
        "Upgrade": {"schema": {"type": "string", "const": "websocket"}},
        "Connection": {"schema": {"type": "string", "const": "upgrade"}},
        "Sec-WebSocket-Accept": {
            "description": "base64(SHA-1(Sec-WebSocket-Key + the RFC 6455 GUID)).",
            "schema": {"type": "string"}
        }
    });
    if !protocols.is_empty() {
        headers["Sec-WebSocket-Protocol"] = json!({
            "description": "The subprotocol selected from the client's offer.",
            "schema": {"type": "string", "enum": protocols}
        });
    }
    json!({
        "description": "Switching Protocols: the connection is now a WebSocket (RFC 6455). \
            Over HTTP/2 the same route accepts an extended CONNECT with \
            `:protocol: websocket` and answers 200 (RFC 8441).",
        "headers": headers
    })
}

fn ws_extension(cfg: &DocsConfig, doc: &RouteDoc, protocols: &[String], channel: &str) -> Value {
    let names = |msgs: &[super::MessageDoc]| -> Vec<String> {
        msgs.iter().map(|m| m.name.clone()).collect()
    };
    json!({
        "subprotocols": protocols,
        "http2": "RFC 8441 extended CONNECT (over TLS with ALPN h2)",
        "asyncapi": format!("{}#/channels/{channel}", cfg.asyncapi_path),
        "sends": names(&doc.sends),
        "receives": names(&doc.receives),
    })
}

fn ws_operation(
    g: &mut schemars::SchemaGenerator,
    op: &Op<'_>,
    protocols: &[String],
    id: String,
    websocket: Value,
) -> Value {
    let doc = op.doc;
    let mut o = common(op, id, &["websocket"]);
    if doc.summary.is_none() {
        o.insert("summary".into(), json!(format!("WebSocket {}", op.pattern)));
    }
    let mut params = parameters(g, op.pattern, doc);
    params.push(header(
        "Upgrade",
        true,
        json!({"type": "string", "const": "websocket"}),
        "Must be `websocket` (HTTP/1.1 upgrade, RFC 6455 §4.1).",
    ));
    params.push(header(
        "Connection",
        true,
        json!({"type": "string"}),
        "Must contain the token `Upgrade`.",
    ));
    params.push(header(
        "Sec-WebSocket-Key",
        true,
        json!({"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"}),
        "16 random bytes, base64-encoded.",
    ));
    params.push(header(
        "Sec-WebSocket-Version",
        true,
        json!({"type": "string", "const": "13"}),
        "The protocol version; only 13 is spoken (426 otherwise).",
    ));
    let protocol_desc = if protocols.is_empty() {
        "Subprotocols the client offers, comma-separated. This route selects none.".to_owned()
    } else {
        format!(
            "Subprotocols the client offers, comma-separated; the server selects the first \
             one it supports ({}). An offer with none of them is refused with 400.",
            protocols.join(", ")
        )
    };
    params.push(header(
        "Sec-WebSocket-Protocol",
        false,
        json!({"type": "string"}),
        &protocol_desc,
    ));
    params.push(header(
        "Sec-WebSocket-Extensions",
        false,
        json!({"type": "string"}),
        "Extensions the client offers (e.g. `permessage-deflate`).",
    ));
    o.insert("parameters".into(), json!(params));
    let mut responses = json!({
        "101": switching_protocols(protocols),
        "400": error("The handshake is malformed, or none of the offered subprotocols is supported."),
        "403": error("The origin is not allowed, or the handler refused the connection."),
        "426": {
            "description": "Unsupported `Sec-WebSocket-Version`.",
            "headers": {"Sec-WebSocket-Version": {"schema": {"type": "string", "const": "13"}}},
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{ERROR_SCHEMA}")}}}
        },
        "429": error("Too many open WebSockets from this client address."),
        "503": error("The server is shutting down or at its connection limit."),
    });
    if doc.bearer_auth {
        responses["401"] = error("The token is missing, invalid or expired.");
    }
    o.insert("responses".into(), responses);
    o.insert("x-websocket".into(), websocket);
    Value::Object(o)
}
