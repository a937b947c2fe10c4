//! The `/docs` page: both documents rendered to one self-contained HTML
//! page at startup: HTTP operations, socket channels with their messages,
//! schemas, and a small WebSocket console.
//!
//! Everything the page needs is in it (inline CSS and script); it loads
//! nothing from any other host, so it works with no network. It renders
//! from the generated JSON documents, not from the route table, so the page
//! shows exactly what the documents say.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::DocsConfig;

const STYLE: &str = r#"
:root { --fg:#1d2430; --muted:#5b6675; --line:#dde2e8; --bg:#f6f8fa; --accent:#2457c5; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); }
header { padding:24px 32px; border-bottom:1px solid var(--line); background:var(--bg); }
header h1 { margin:0 0 4px; font-size:26px; }
main { display:flex; gap:32px; padding:24px 32px; }
nav { flex:0 0 240px; position:sticky; top:16px; align-self:flex-start; font-size:14px; max-height:95vh; overflow:auto; }
nav a { display:block; color:var(--fg); text-decoration:none; padding:2px 0; word-break:break-all; }
nav h3 { margin:16px 0 4px; font-size:12px; text-transform:uppercase; color:var(--muted); }
section.content { flex:1; min-width:0; }
h2 { border-bottom:1px solid var(--line); padding-bottom:4px; margin-top:32px; }
.op { border:1px solid var(--line); border-radius:6px; margin:16px 0; padding:12px 16px; }
.op h4 { margin:0; font-size:16px; font-family:ui-monospace,monospace; word-break:break-all; }
.badge { display:inline-block; min-width:64px; text-align:center; border-radius:4px; padding:1px 6px; margin-right:8px;
  color:#fff; font:bold 12px ui-monospace,monospace; vertical-align:middle; }
.GET{background:#2f7d32}.POST{background:#1f5fbf}.PUT{background:#a45d00}.PATCH{background:#6b4bb8}
.DELETE{background:#b3261e}.WS{background:#00796b}.SSE{background:#8a4f00}.SEND{background:#455a64}.RECEIVE{background:#5d4037}
.muted { color:var(--muted); }
.tag { display:inline-block; background:var(--bg); border:1px solid var(--line); border-radius:10px; padding:0 8px; font-size:12px; margin-right:4px; }
table { border-collapse:collapse; width:100%; margin:8px 0; font-size:14px; }
th, td { border-bottom:1px solid var(--line); text-align:left; padding:4px 8px; vertical-align:top; }
th { font-size:12px; color:var(--muted); text-transform:uppercase; }
code, pre { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:13px; }
pre { background:var(--bg); padding:8px; border-radius:4px; overflow:auto; }
details { margin:4px 0; } summary { cursor:pointer; }
.console textarea, .console input { font:13px ui-monospace,monospace; }
.console textarea { width:100%; display:block; margin-top:6px; }
.console label { display:inline-block; margin:6px 12px 0 0; }
.console .log { height:160px; overflow:auto; background:#111; color:#ddd; padding:6px; border-radius:4px; white-space:pre-wrap; font:12px ui-monospace,monospace; }
.console button { margin:4px 4px 4px 0; }
"#;

const SCRIPT: &str = r#"
document.querySelectorAll('.console').forEach(function (box) {
  var ws = null;
  var log = box.querySelector('.log');
  function line(s) { log.textContent += s + '\n'; log.scrollTop = log.scrollHeight; }
  box.querySelector('.connect').onclick = function () {
    if (ws) { ws.close(); }
    var path = box.dataset.address;
    box.querySelectorAll('input[data-param]').forEach(function (i) {
      path = path.replace('{' + i.dataset.param + '}', encodeURIComponent(i.value));
    });
    var query = box.querySelector('input.query').value;
    var url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + path + (query ? '?' + query : '');
    var protocol = box.querySelector('input.protocol').value;
    line('connecting to ' + url);
    try { ws = protocol ? new WebSocket(url, protocol.split(/\s*,\s*/)) : new WebSocket(url); }
    catch (e) { line('error: ' + e); return; }
    ws.binaryType = 'arraybuffer';
    ws.onopen = function () { line('open' + (ws.protocol ? ' (subprotocol ' + ws.protocol + ')' : '')); };
    ws.onmessage = function (e) {
      line('< ' + (typeof e.data === 'string' ? e.data : '[binary ' + e.data.byteLength + ' bytes]'));
    };
    ws.onclose = function (e) { line('closed ' + e.code + (e.reason ? ' ' + e.reason : '')); ws = null; };
    ws.onerror = function () { line('error'); };
  };
  box.querySelector('.send').onclick = function () {
    var text = box.querySelector('textarea').value;
    if (ws && ws.readyState === 1) { ws.send(text); line('> ' + text); } else { line('not connected'); }
  };
  box.querySelector('.close').onclick = function () { if (ws) { ws.close(1000); } };
});
"#;

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn anchor(kind: &str, name: &str) -> String {
    let mut out = String::from(kind);
    out.push('-');
    for c in name.chars() {
        out.push(if c.is_ascii_alphanumeric() { c } else { '-' });
    }
    out
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A one-line description of a schema's type, with `$ref`s linked to the
/// schema section.
fn type_label(schema: &Value) -> String {
    if schema == &Value::Bool(true) || schema.as_object().is_some_and(Map::is_empty) {
        return "any".into();
    }
    if let Some(r) = str_at(schema, "$ref") {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#{}\">{}</a>", anchor("schema", name), esc(name));
    }
    if let Some(c) = schema.get("const") {
        return format!("<code>{}</code>", esc(&c.to_string()));
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        let items: Vec<String> = e
            .iter()
            .map(|v| format!("<code>{}</code>", esc(&v.to_string())))
            .collect();
        return items.join(" | ");
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(list) = schema.get(key).and_then(Value::as_array) {
            let sep = if key == "allOf" { " &amp; " } else { " | " };
            let items: Vec<String> = list.iter().map(type_label).collect();
            return items.join(sep);
        }
    }
    let types: Vec<String> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => vec!["object".into()],
    };
    let labels: Vec<String> = types
        .iter()
        .map(|t| match t.as_str() {
            "array" => match schema.get("items") {
                Some(items) => format!("array of {}", type_label(items)),
                None => "array".into(),
            },
            t => match str_at(schema, "format") {
                Some(f) => format!("{} ({})", esc(t), esc(f)),
                None => esc(t),
            },
        })
        .collect();
    labels.join(" | ")
}

/// A property table for an object schema, or its type label.
fn schema_view(out: &mut String, schema: &Value) {
    let props = schema.get("properties").and_then(Value::as_object);
    match props {
        Some(props) if !props.is_empty() => {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            out.push_str(
                "<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Description</th></tr>",
            );
            for (name, prop) in props {
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(name),
                    type_label(prop),
                    if required.contains(&name.as_str()) {
                        "yes"
                    } else {
                        ""
                    },
                    esc(str_at(prop, "description").unwrap_or_default())
                );
            }
            out.push_str("</table>");
        }
        _ => {
            let _ = write!(out, "<p>Type: {}</p>", type_label(schema));
        }
    }
}

fn raw_json(out: &mut String, label: &str, v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let _ = write!(
        out,
        "<details><summary class=\"muted\">{}</summary><pre>{}</pre></details>",
        esc(label),
        esc(&text)
    );
}

fn tags(out: &mut String, v: &Value) {
    if let Some(tags) = v.get("tags").and_then(Value::as_array) {
        for t in tags {
            let name = t.as_str().or_else(|| str_at(t, "name")).unwrap_or_default();
            let _ = write!(out, "<span class=\"tag\">{}</span>", esc(name));
        }
    }
}

fn http_section(out: &mut String, nav: &mut String, openapi: &Value) {
    let Some(paths) = openapi.get("paths").and_then(Value::as_object) else {
        return;
    };
    out.push_str("<h2 id=\"http\">HTTP routes</h2>");
    let _ = write!(nav, "<h3>HTTP routes</h3>");
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for (method, op) in item {
            let method = method.to_ascii_uppercase();
            let is_ws = op.get("x-websocket").is_some();
            let badge = if op.get("x-sse-events").is_some() {
                "SSE".to_owned()
            } else if is_ws && op.get("responses").and_then(|r| r.get("200")).is_none() {
                "WS".to_owned()
            } else {
                method.clone()
            };
            let id = anchor("op", &format!("{method} {path}"));
            let _ = write!(
                nav,
                "<a href=\"#{id}\"><span class=\"badge {badge}\">{badge}</span>{}</a>",
                esc(path)
            );
            let _ = write!(
                out,
                "<div class=\"op\" id=\"{id}\"><h4><span class=\"badge {badge}\">{badge}</span>{}</h4>",
                esc(path)
            );
            if let Some(s) = str_at(op, "summary") {
                let _ = write!(out, "<p><strong>{}</strong></p>", esc(s));
            }
            tags(out, op);
            if let Some(d) = str_at(op, "description") {
                let _ = write!(out, "<p>{}</p>", esc(d));
            }
            if op.get("security").is_some() {
                out.push_str("<p class=\"muted\">Requires a JWT: <code>Authorization: Bearer</code>, <code>?token=</code>, or (WebSocket) the subprotocol <code>bearer.&lt;token&gt;</code>.</p>");
            }
            if let Some(ws) = op.get("x-websocket") {
                let channel = str_at(ws, "asyncapi")
                    .and_then(|a| a.rsplit('/').next())
                    .unwrap_or_default();
                let _ = write!(
                    out,
                    "<p>WebSocket endpoint: upgrade with <code>GET</code> (RFC 6455), or over HTTP/2 an extended <code>CONNECT</code> (RFC 8441). Messages: <a href=\"#{}\">channel {}</a>.</p>",
                    anchor("channel", channel),
                    esc(channel)
                );
            }
            if let Some(params) = op.get("parameters").and_then(Value::as_array) {
                out.push_str("<table><tr><th>Parameter</th><th>In</th><th>Type</th><th>Required</th><th>Description</th></tr>");
                for p in params {
                    let _ = write!(
                        out,
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(str_at(p, "name").unwrap_or_default()),
                        esc(str_at(p, "in").unwrap_or_default()),
                        p.get("schema").map(type_label).unwrap_or_default(),
                        if p.get("required") == Some(&Value::Bool(true)) { "yes" } else { "" },
                        esc(str_at(p, "description").unwrap_or_default())
                    );
                }
                out.push_str("</table>");
            }
            if let Some(content) = op
                .get("requestBody")
                .and_then(|b| b.get("content"))
                .and_then(Value::as_object)
            {
                for (ct, media) in content {
                    let _ = write!(
                        out,
                        "<p><strong>Request body</strong> <code>{}</code></p>",
                        esc(ct)
                    );
                    if let Some(s) = media.get("schema") {
                        schema_view(out, s);
                    }
                }
            }
            if let Some(responses) = op.get("responses").and_then(Value::as_object) {
                out.push_str("<table><tr><th>Status</th><th>Description</th><th>Body</th></tr>");
                for (status, r) in responses {
                    let body = r
                        .get("content")
                        .and_then(Value::as_object)
                        .map(|c| {
                            c.iter()
                                .map(|(ct, m)| match m.get("schema") {
                                    Some(s) => {
                                        format!("<code>{}</code> {}", esc(ct), type_label(s))
                                    }
                                    None => format!("<code>{}</code>", esc(ct)),
                                })
                                .collect::<Vec<_>>()
                                .join("<br>")
                        })
                        .unwrap_or_default();
                    let _ = write!(
                        out,
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                        esc(status),
                        esc(str_at(r, "description").unwrap_or_default()),
                        body
                    );
                }
                out.push_str("</table>");
            }
            raw_json(out, "OpenAPI operation", op);
            out.push_str("</div>");
        }
    }
}

/// Resolves a local `$ref` (`#/a/b/c`) in `doc`.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match str_at(v, "$ref").and_then(|r| r.strip_prefix("#/")) {
        Some(pointer) => doc.pointer(&format!("/{pointer}")).unwrap_or(v),
        None => v,
    }
}

fn channel_section(out: &mut String, nav: &mut String, asyncapi: &Value) {
    let Some(channels) = asyncapi.get("channels").and_then(Value::as_object) else {
        return;
    };
    if channels.is_empty() {
        return;
    }
    let operations = asyncapi
        .get("operations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    out.push_str("<h2 id=\"channels\">Sockets and streams</h2>");
    out.push_str("<p class=\"muted\">From the AsyncAPI document. <em>send</em>: the server sends it; <em>receive</em>: the server accepts it.</p>");
    let _ = write!(nav, "<h3>Sockets and streams</h3>");
    for (id, channel) in channels {
        let address = str_at(channel, "address").unwrap_or_default();
        let is_ws = channel.get("bindings").and_then(|b| b.get("ws")).is_some();
        let kind = if is_ws { "WS" } else { "SSE" };
        let aid = anchor("channel", id);
        let _ = write!(
            nav,
            "<a href=\"#{aid}\"><span class=\"badge {kind}\">{kind}</span>{}</a>",
            esc(address)
        );
        let _ = write!(
            out,
            "<div class=\"op\" id=\"{aid}\"><h4><span class=\"badge {kind}\">{kind}</span>{}</h4>",
            esc(address)
        );
        if let Some(t) = str_at(channel, "title") {
            let _ = write!(out, "<p><strong>{}</strong></p>", esc(t));
        }
        tags(out, channel);
        if let Some(d) = str_at(channel, "description") {
            let _ = write!(out, "<p>{}</p>", esc(d));
        }
        let mut params = Vec::new();
        if let Some(ps) = channel.get("parameters").and_then(Value::as_object) {
            out.push_str("<table><tr><th>Path parameter</th><th>Description</th></tr>");
            for (name, p) in ps {
                params.push(name.clone());
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td></tr>",
                    esc(name),
                    esc(str_at(p, "description").unwrap_or_default())
                );
            }
            out.push_str("</table>");
        }
        let binding = channel.get("bindings").and_then(|b| b.get("ws"));
        if let Some(q) = binding.and_then(|b| b.get("query")) {
            out.push_str("<p><strong>Query</strong></p>");
            schema_view(out, q);
        }
        if let Some(h) = binding.and_then(|b| b.get("headers")) {
            out.push_str("<p><strong>Handshake headers</strong></p>");
            schema_view(out, h);
        }
        for (_, op) in operations
            .iter()
            .filter(|(_, op)| str_at(&op["channel"], "$ref") == Some(&format!("#/channels/{id}")))
        {
            let action = str_at(op, "action").unwrap_or_default();
            let badge = action.to_ascii_uppercase();
            let _ = write!(
                out,
                "<p><span class=\"badge {badge}\">{}</span>{}</p>",
                esc(action),
                esc(str_at(op, "summary").unwrap_or_default())
            );
            if op.get("security").is_some() {
                out.push_str("<p class=\"muted\">Requires a JWT (header, <code>?token=</code> or subprotocol <code>bearer.&lt;token&gt;</code>).</p>");
            }
            for r in op
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let m = resolve(asyncapi, r);
                let payload = m.get("payload").map(|p| resolve(asyncapi, p));
                let is_object = payload
                    .and_then(|p| p.get("properties"))
                    .and_then(Value::as_object)
                    .is_some_and(|p| !p.is_empty());
                // A schema by name, or a plain type, fits on the line.
                let inline = match (m.get("payload"), is_object) {
                    (Some(p), false) => format!(" · {}", type_label(p)),
                    (Some(p), true) if p.get("$ref").is_some() => format!(" · {}", type_label(p)),
                    _ => String::new(),
                };
                let _ = write!(
                    out,
                    "<div style=\"margin-left:16px\"><p><code>{}</code> <span class=\"muted\">{}</span>{inline} {}</p>",
                    esc(str_at(m, "name").unwrap_or_default()),
                    esc(str_at(m, "contentType").unwrap_or_default()),
                    str_at(m, "summary").map(|s| format!("— {}", esc(s))).unwrap_or_default()
                );
                if let Some(d) = str_at(m, "description") {
                    let _ = write!(out, "<p>{}</p>", esc(d));
                }
                if let (Some(p), true) = (payload, is_object) {
                    schema_view(out, p);
                }
                out.push_str("</div>");
            }
        }
        if is_ws {
            console(out, address, &params);
        }
        raw_json(out, "AsyncAPI channel", channel);
        out.push_str("</div>");
    }
}

fn console(out: &mut String, address: &str, params: &[String]) {
    let _ = write!(
        out,
        "<details class=\"console\" data-address=\"{}\"><summary>Try it: WebSocket console</summary>",
        esc(address)
    );
    for p in params {
        let _ = write!(
            out,
            "<label>{} <input data-param=\"{}\" placeholder=\"{}\"></label>",
            esc(p),
            esc(p),
            esc(p)
        );
    }
    out.push_str(
        "<label>query <input class=\"query\" placeholder=\"a=1&amp;b=2\"></label>\
         <label>subprotocols <input class=\"protocol\" placeholder=\"chat, v2\"></label>\
         <button class=\"connect\">Connect</button><button class=\"close\">Close</button>\
         <textarea rows=\"3\" placeholder=\"message to send\"></textarea>\
         <button class=\"send\">Send</button><div class=\"log\"></div></details>",
    );
}

fn schema_section(out: &mut String, nav: &mut String, openapi: &Value, asyncapi: &Value) {
    let mut schemas: Vec<(&String, &Value)> = Vec::new();
    for doc in [openapi, asyncapi] {
        if let Some(s) = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            for (name, schema) in s {
                if !schemas.iter().any(|(n, _)| *n == name) {
                    schemas.push((name, schema));
                }
            }
        }
    }
    if schemas.is_empty() {
        return;
    }
    schemas.sort_by(|a, b| a.0.cmp(b.0));
    out.push_str("<h2 id=\"schemas\">Schemas</h2>");
    let _ = write!(nav, "<h3>Schemas</h3>");
    for (name, schema) in schemas {
        let id = anchor("schema", name);
        let _ = write!(nav, "<a href=\"#{id}\">{}</a>", esc(name));
        let _ = write!(out, "<div class=\"op\" id=\"{id}\"><h4>{}</h4>", esc(name));
        if let Some(d) = str_at(schema, "description") {
            let _ = write!(out, "<p>{}</p>", esc(d));
        }
        schema_view(out, schema);
        raw_json(out, "JSON Schema", schema);
        out.push_str("</div>");
    }
}

pub(super) fn render(cfg: &DocsConfig, openapi: &Value, asyncapi: &Value) -> String {
    let mut body = String::new();
    let mut nav = String::new();
    http_section(&mut body, &mut nav, openapi);
    channel_section(&mut body, &mut nav, asyncapi);
    schema_section(&mut body, &mut nav, openapi, asyncapi);
    let mut page = String::with_capacity(body.len() + nav.len() + 8 * 1024);
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} — API docs</title><style>{STYLE}</style></head><body>\
         <header><h1>{title}</h1><div class=\"muted\">version {version} · \
         <a href=\"{openapi_path}\">OpenAPI 3.1</a> · <a href=\"{asyncapi_path}\">AsyncAPI 3.0</a></div>",
        title = esc(&cfg.title),
        version = esc(&cfg.version),
        openapi_path = esc(&cfg.openapi_path),
        asyncapi_path = esc(&cfg.asyncapi_path),
    );
    if let Some(d) = &cfg.description {
        let _ = write!(page, "<p>{}</p>", esc(d));
    }
    let _ = write!(
        page,
        "</header><main><nav>{nav}</nav><section class=\"content\">{body}</section></main>\
         <script>{SCRIPT}</script></body></html>"
    );
    page
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn escapes_and_labels() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(
            type_label(&json!({"type": ["string", "null"]})),
            "string | null"
        );
        assert_eq!(
            type_label(&json!({"type": "array", "items": {"$ref": "#/components/schemas/Chat"}})),
            "array of <a href=\"#schema-Chat\">Chat</a>"
        );
        assert_eq!(
            type_label(&json!({"enum": ["a", "b"]})),
            "<code>&quot;a&quot;</code> | <code>&quot;b&quot;</code>"
        );
        assert_eq!(type_label(&json!(true)), "any");
    }
}
