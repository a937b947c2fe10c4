#!/usr/bin/env python3
"""Checks a running Switchboard server's API documents with independent
validators.

For each base URL given (plain http://, and https:// when the server also
runs with --tls-cert/--tls-key), fetches GET /openapi.json, /asyncapi.json
and /docs, then checks:

- openapi: valid OpenAPI 3.1 per the PyPI `openapi-spec-validator`
  (OpenAPIV31SpecValidator; JSON Schema validation of the document, $ref
  resolution, path-parameter and operationId rules).
- asyncapi: valid AsyncAPI 3.0 per npm `@asyncapi/parser` (run through
  validate_asyncapi.js), with ws/wss (and http/https) servers matching the
  scheme it was fetched over.
- consistency: every WebSocket channel of the AsyncAPI document is in the
  OpenAPI document as its upgrade GET (101 response, x-websocket link back).
- page: /docs is HTML that loads nothing from anywhere (no src=, <link>,
  url(), @import, http(s):// references) and names every documented path.

Prints one line per check and closes with `apidocs: N passed, M failed`.
Exit status 0 when nothing failed.
"""

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def fetch(url, cafile=None):
    handlers = [urllib.request.ProxyHandler({})]
    if url.startswith("https://"):
        ctx = ssl.create_default_context(cafile=cafile)
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers)
    with opener.open(url, timeout=10) as res:
        return res.status, res.headers.get("content-type", ""), res.read()


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, name, fn):
        try:
            detail = fn()
        except Exception as e:  # a failed check, whatever raised
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            return
        self.passed += 1
        print(f"ok   {name}" + (f": {detail}" if detail else ""), flush=True)


def check_openapi(doc):
    from openapi_spec_validator.validation import OpenAPIV31SpecValidator

    assert doc.get("openapi", "").startswith("3.1"), f"openapi is {doc.get('openapi')!r}"
    errors = list(OpenAPIV31SpecValidator(doc).iter_errors())
    for e in errors[:20]:
        print(f"  openapi error: {e.message} at /{'/'.join(map(str, e.path))}")
    assert not errors, f"{len(errors)} validation errors"
    ops = sum(
        1 for item in doc["paths"].values() for m in item if m in ("get", "post", "put", "patch", "delete")
    )
    return f"valid OpenAPI {doc['openapi']}, {len(doc['paths'])} paths, {ops} operations"


def check_asyncapi(raw, protocol):
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(raw)
        path = f.name
    try:
        proc = subprocess.run(
            ["node", os.path.join(HERE, "validate_asyncapi.js"), path, protocol],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.unlink(path)
    out = (proc.stdout + proc.stderr).strip()
    if out:
        print(out)
    assert proc.returncode == 0, f"@asyncapi/parser exit {proc.returncode}"
    return "valid per @asyncapi/parser"


def check_consistency(openapi, asyncapi):
    ws_channels = [
        c for c in asyncapi.get("channels", {}).values() if "ws" in c.get("bindings", {})
    ]
    assert ws_channels, "no WebSocket channels"
    for c in ws_channels:
        get = openapi["paths"].get(c["address"], {}).get("get")
        assert get, f"{c['address']} is not in the OpenAPI paths"
        assert "101" in get["responses"], f"{c['address']} has no 101 response"
        assert "x-websocket" in get, f"{c['address']} has no x-websocket link"
    return f"{len(ws_channels)} WebSocket routes in both documents"


def check_page(status, ctype, body, openapi):
    assert status == 200 and ctype.startswith("text/html"), f"{status} {ctype}"
    html = body.decode("utf-8")
    for bad in ("src=", "<link", "url(", "@import", "http://", "https://"):
        assert bad not in html, f"the page references {bad!r} (it must work offline)"
    missing = [p for p in openapi["paths"] if p.replace("&", "&amp;") not in html]
    assert not missing, f"paths missing from the page: {missing}"
    return f"{len(html)} bytes, self-contained, {len(openapi['paths'])} paths shown"


def check_base(checks, base, cafile):
    secure = base.startswith("https://")
    label = "tls " if secure else ""
    docs = {}

    def get_json(name):
        status, ctype, raw = fetch(base + "/" + name, cafile)
        assert status == 200 and ctype.startswith("application/json"), f"{status} {ctype}"
        docs[name] = (json.loads(raw), raw)

    checks.run(f"{label}fetch /openapi.json", lambda: get_json("openapi.json"))
    checks.run(f"{label}fetch /asyncapi.json", lambda: get_json("asyncapi.json"))
    if "openapi.json" in docs:
        checks.run(f"{label}openapi valid (openapi-spec-validator)", lambda: check_openapi(docs["openapi.json"][0]))
    if "asyncapi.json" in docs:
        checks.run(
            f"{label}asyncapi valid (@asyncapi/parser)",
            lambda: check_asyncapi(docs["asyncapi.json"][1], "wss" if secure else "ws"),
        )
    if "openapi.json" in docs and "asyncapi.json" in docs:
        checks.run(
            f"{label}socket routes in both documents",
            lambda: check_consistency(docs["openapi.json"][0], docs["asyncapi.json"][0]),
        )
        checks.run(
            f"{label}/docs page offline and complete",
            lambda: check_page(*fetch(base + "/docs", cafile), docs["openapi.json"][0]),
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bases", nargs="+", help="base URLs, e.g. http://127.0.0.1:8000")
    ap.add_argument("--cafile", help="CA (the self-signed cert) for https:// bases")
    args = ap.parse_args()
    checks = Checks()
    for base in args.bases:
        check_base(checks, base.rstrip("/"), args.cafile)
    print(f"apidocs: {checks.passed} passed, {checks.failed} failed")
    return 0 if checks.failed == 0 and checks.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
