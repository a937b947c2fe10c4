#!/usr/bin/env python3
"""Reads a Chromium net-log (--log-net-log) and checks that the page's
WebSocket went over HTTP/2 as an RFC 8441 extended CONNECT.

Checks, each printed as ok/FAIL, closing with `tls-browser: N passed, M failed`:
- the server's HTTP/2 SETTINGS enabled the extended CONNECT protocol (8 = 1);
- Chromium sent `:method: CONNECT` with `:protocol: websocket` on an HTTP/2
  session, for the expected path;
- that session is the one the page itself was loaded on;
- the CONNECT stream was answered `:status: 200`;
- the WebSocket reached CONNECTED and received at least one frame.

Usage: netlog_check.py NETLOG.json WS_PATH
"""

import json
import sys


def load(path):
    raw = open(path, encoding="utf-8").read()
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        # A log cut short (the browser killed at the time budget) lacks the
        # closing brackets.
        return json.loads(raw.rstrip().rstrip(",") + "]}")


def main():
    path, ws_path = sys.argv[1], sys.argv[2]
    log = load(path)
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    events = [(names.get(e["type"], "?"), e) for e in log["events"]]
    passed = failed = 0

    def check(name, ok, detail=""):
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok   {name}" + (f": {detail}" if detail else ""))
        else:
            failed += 1
            print(f"FAIL {name}" + (f": {detail}" if detail else ""))

    settings = {
        e["source"]["id"]
        for t, e in events
        if t == "HTTP2_SESSION_RECV_SETTING"
        and e["params"]["id"].startswith("8 ")
        and e["params"]["value"] == 1
    }
    check("server SETTINGS_ENABLE_CONNECT_PROTOCOL = 1", bool(settings))

    connect = [
        e
        for t, e in events
        if t == "HTTP2_SESSION_SEND_HEADERS"
        and ":method: CONNECT" in e["params"]["headers"]
        and ":protocol: websocket" in e["params"]["headers"]
        and f":path: {ws_path}" in e["params"]["headers"]
    ]
    check(f"extended CONNECT :protocol websocket for {ws_path}", bool(connect))
    if connect:
        session = connect[0]["source"]["id"]
        stream = connect[0]["params"].get("stream_id")
        page_on_session = any(
            t == "HTTP2_SESSION_SEND_HEADERS"
            and e["source"]["id"] == session
            and ":method: GET" in e["params"]["headers"]
            for t, e in events
        )
        check("on the h2 connection the page was loaded over", page_on_session and session in settings)
        answered = [
            e
            for t, e in events
            if t == "HTTP2_SESSION_RECV_HEADERS"
            and e["source"]["id"] == session
            and e["params"].get("stream_id") == stream
        ]
        status = answered[0]["params"]["headers"][0] if answered else "no answer"
        check("CONNECT answered :status: 200", status == ":status: 200", status)
    connected = any(
        t == "WEBSOCKET_STATE_CHANGED" and e["params"].get("new_state") == "CONNECTED"
        for t, e in events
    )
    frames = sum(1 for t, _ in events if t == "WEBSOCKET_RECV_FRAME_HEADER")
    check("WebSocket connected and received frames", connected and frames > 0, f"{frames} frames")
    print(f"tls-browser: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
