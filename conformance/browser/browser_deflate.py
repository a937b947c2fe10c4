#!/usr/bin/env python3
"""Browser interop: Chromium's own WebSocket against a running Switchboard server.

Role: proves that a browser negotiates permessage-deflate (RFC 7692) with the
server and that compressed messages flow both ways (issue 4). The server is
given by --url (http://127.0.0.1:PORT); it must serve GET /health -> "ok",
WS /ws/echo (echoes every message) and WS /ws/rooms/{room} (relays every
message to the other members of the room), with compression enabled.

The page is loaded through a small byte-counting TCP proxy run by this
script, so the WebSocket traffic of the page crosses it: the checks compare
the bytes on the wire with the bytes of the messages, which is the only way
to see from outside that frames really were compressed. The checks:
  - `ws.extensions` names permessage-deflate and the 101 answer is valid;
  - text (JSON, multi-byte UTF-8), binary, small and empty messages echo
    unchanged;
  - ~750 KB of compressible messages cross the wire in well under a third of
    that, in each direction;
  - a room broadcast (the hub's shared compressed frame) reaches a second
    socket of the page intact.

Ends with `browser: N passed, M failed`; exits 1 on failure, 2 on setup error.

Usage: browser_deflate.py --url http://127.0.0.1:PORT [--chromium /usr/bin/chromium] [--timeout S]
Needs: pip install playwright (no browser download: Debian's chromium is used).
"""

import argparse
import asyncio
import sys
import time
import urllib.parse

try:
    from playwright.async_api import async_playwright
except ImportError as exc:  # pragma: no cover - setup problem
    print("browser_deflate.py: needs playwright (pip install playwright): %s" % exc)
    sys.exit(2)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# Runs in the page. Every check resolves to {ok, detail}; `wsUrl` is the
# proxy's ws:// base.
PAGE_SCRIPT = r"""
async (wsUrl) => {
  const open = (path) => new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl + path);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("could not open " + path));
  });
  const next = (ws) => new Promise((resolve, reject) => {
    ws.onmessage = (e) => resolve(e.data);
    ws.onclose = (e) => reject(new Error("closed " + e.code + " " + e.reason));
  });
  const same = (a, b) => {
    if (typeof a === "string") return a === b;
    const x = new Uint8Array(a), y = new Uint8Array(b);
    return x.length === y.length && x.every((v, i) => v === y[i]);
  };
  const results = {};
  const echo = await open("/ws/echo");
  results.extensions = echo.extensions;
  const messages = [];
  for (let i = 0; i < 40; i++) {
    const items = [];
    for (let j = 0; j < 400; j++) items.push({id: j, name: "item-" + j, seq: i});
    messages.push(JSON.stringify({type: "update", items}));
  }
  messages.push("κόσμε 🦀 — 日本語 ".repeat(2000));
  const bin = new Uint8Array(100000);
  for (let i = 0; i < bin.length; i++) bin[i] = (i * 7) % 13;
  messages.push(bin.buffer);
  messages.push("small");
  messages.push("");
  let payload = 0, bad = [];
  for (const [i, m] of messages.entries()) {
    payload += typeof m === "string" ? new TextEncoder().encode(m).length : m.byteLength;
    const got = next(echo);
    echo.send(m);
    if (!same(m, await got)) bad.push(i);
  }
  results.echo = {count: messages.length, payload, bad};
  // Broadcast through the hub: a sends, b receives the shared frame.
  const room = "browser-" + Math.random().toString(36).slice(2);
  const a = await open("/ws/rooms/" + room), b = await open("/ws/rooms/" + room);
  await new Promise((r) => setTimeout(r, 200));  // both joined
  const relayed = messages[3];
  const got = next(b);
  a.send(relayed);
  results.broadcast = {ok: same(relayed, await got), extensions: b.extensions};
  for (const ws of [echo, a, b]) ws.close(1000, "done");
  return results;
}
"""


class Proxy:
    """A TCP proxy that counts bytes in each direction."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.up = 0    # browser -> server
        self.down = 0  # server -> browser
        self.server = None

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader, writer):
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pump(src, dst, attr):
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    setattr(self, attr, getattr(self, attr) + len(data))
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                try:
                    dst.close()
                except Exception:
                    pass

        await asyncio.gather(pump(reader, t_writer, "up"), pump(t_reader, writer, "down"))

    def close(self):
        if self.server:
            self.server.close()


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, label, detail=""):
        print("%s  %-58s %s" % ("PASS" if ok else "FAIL", label, detail), flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1


async def run(args):
    url = urllib.parse.urlsplit(args.url)
    proxy = Proxy(url.hostname, url.port)
    port = await proxy.start()
    base = "http://127.0.0.1:%d" % port
    checks = Checks()
    start = time.monotonic()
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page()
            handshakes = []
            cdp = await page.context.new_cdp_session(page)
            await cdp.send("Network.enable")
            cdp.on("Network.webSocketHandshakeResponseReceived",
                   lambda e: handshakes.append(e["response"]))
            resp = await page.goto(base + "/health")
            checks.check(resp is not None and resp.status == 200, "page served by the server",
                         "GET /health -> %s" % (resp.status if resp else "none"))
            version = browser.version
            up0, down0 = proxy.up, proxy.down
            results = await asyncio.wait_for(
                page.evaluate(PAGE_SCRIPT, "ws://127.0.0.1:%d" % port), args.timeout)
            up, down = proxy.up - up0, proxy.down - down0
        finally:
            await browser.close()
    proxy.close()

    ext = results.get("extensions", "")
    checks.check(ext.startswith("permessage-deflate"), "ws.extensions names permessage-deflate",
                 repr(ext))
    status = [h.get("status") for h in handshakes]
    answered = [
        v for h in handshakes for k, v in h.get("headers", {}).items()
        if k.lower() == "sec-websocket-extensions"
    ]
    checks.check(bool(status) and all(s == 101 for s in status) and len(answered) == len(status),
                 "every handshake 101 with Sec-WebSocket-Extensions",
                 "%d handshakes, answer %r" % (len(status), answered[:1]))
    echo = results.get("echo", {})
    checks.check(not echo.get("bad") and echo.get("count", 0) > 0,
                 "text, UTF-8, binary, small, empty messages echo unchanged",
                 "%d messages, mismatches %s" % (echo.get("count", 0), echo.get("bad")))
    payload = echo.get("payload", 0)
    # The echo traffic dominates both counts (headers and the room test are
    # small next to it).
    checks.check(0 < up * 3 < payload, "browser -> server compressed on the wire",
                 "%d payload bytes sent as %d wire bytes (%.1fx)" % (payload, up, payload / max(up, 1)))
    checks.check(0 < down * 3 < payload, "server -> browser compressed on the wire",
                 "%d payload bytes echoed as %d wire bytes (%.1fx)"
                 % (payload, down, payload / max(down, 1)))
    b = results.get("broadcast", {})
    checks.check(bool(b.get("ok")) and str(b.get("extensions", "")).startswith("permessage-deflate"),
                 "room broadcast (shared compressed frame) arrives intact", repr(b))
    print("browser: %s, %.1f s" % (version, time.monotonic() - start))
    print("browser: %d passed, %d failed" % (checks.passed, checks.failed))
    return 1 if checks.failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="http://127.0.0.1:PORT of the server")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="browser executable")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for the page script")
    args = ap.parse_args()
    try:
        return asyncio.run(run(args))
    except Exception as exc:  # browser failed to start, page script threw, ...
        print("browser: error: %s: %s" % (type(exc).__name__, exc))
        print("browser: 0 passed, 1 failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
