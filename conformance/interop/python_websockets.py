#!/usr/bin/env python3
"""Interop test: the Python `websockets` client against a running Switchboard server.

Role: proves that a widely used third-party client library talks to the
server. The server is given by --url (ws://127.0.0.1:PORT); it must serve
GET /health -> 200 "ok" and WS /ws/echo, which echoes every text and binary
message unchanged.

The WebSocket checks run twice, once with the client's default
(permessage-deflate offered) and once with compression=None, each on fresh
connections: text echo (ASCII and multi-byte UTF-8), binary echo, empty
messages, a 1 MiB binary message, 100 pipelined messages in order, ping gets
pong, and a normal close with code 1000 answered by the server with 1000.
With permessage-deflate offered, two more checks (issue 4): the server
must accept it, understand the client's compressed messages and compress
its echoes (RSV1 frames and their size, counted on the wire side of the
client's extension); and an offer naming all four RFC 7692 parameters must
be answered as the RFC requires, then carry compressed traffic.
The HTTP checks run once: GET /health, and the server rejecting invalid
handshakes with a 4xx status. Every check is bounded by --timeout seconds.

Ends with the line `interop: N passed, M failed`; exits 1 on any failure,
2 on a usage or setup error.

Usage: python_websockets.py --url ws://127.0.0.1:PORT [--timeout S] [--mode both|deflate|none]
Needs websockets >= 13 (the asyncio client API): pip install websockets
"""

import argparse
import asyncio
import base64
import os
import sys
import time
import urllib.parse

try:
    import websockets
    from websockets.asyncio.client import connect
    from websockets.extensions.permessage_deflate import (
        ClientPerMessageDeflateFactory,
        PerMessageDeflate,
    )
except ImportError as exc:  # pragma: no cover - setup problem, not a test failure
    print("python_websockets.py: needs websockets >= 13 (pip install websockets): %s" % exc)
    sys.exit(2)

MiB = 1 << 20
UTF8_SAMPLE = "héllo wörld — κόσμε — 日本語 — 🦀🚀 — \u00a0\u2028\ufeff end"


class CheckFailed(Exception):
    pass


def expect(cond, message):
    if not cond:
        raise CheckFailed(message)


def describe(value, limit=16):
    """Short description of a message for failure output."""
    kind = "text" if isinstance(value, str) else "binary"
    size = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
    shown = repr(value[:limit]) + ("..." if len(value) > limit else "")
    return "%s of %d bytes %s" % (kind, size, shown)


def expect_echo(sent, got, what="echo"):
    if type(got) is not type(sent):
        raise CheckFailed("%s: sent %s, got %s" % (what, describe(sent), describe(got)))
    if got != sent:
        diff = next((i for i, (a, b) in enumerate(zip(sent, got)) if a != b), min(len(sent), len(got)))
        raise CheckFailed("%s mismatch: sent %s, got %s; first difference at index %d"
                          % (what, describe(sent), describe(got), diff))


class Interop:
    def __init__(self, base, echo_url, timeout):
        self.base = base          # http://host:port
        self.echo_url = echo_url  # ws://host:port/ws/echo
        self.timeout = timeout
        self.passed = 0
        self.failed = 0
        self.failures = []

    # ------------------------------------------------------------ plumbing --

    def open(self, compression):
        return connect(
            self.echo_url,
            compression=compression,
            max_size=16 * MiB,
            open_timeout=self.timeout,
            close_timeout=self.timeout,
            ping_interval=None,   # no keepalive pings interfering with checks
            proxy=None,           # loopback: never go through an env proxy
        )

    async def run_check(self, label, coro_fn):
        start = time.monotonic()
        try:
            note = await asyncio.wait_for(coro_fn(), self.timeout)
        except asyncio.TimeoutError:
            self.record(False, label, "timed out after %ss" % self.timeout, start)
        except CheckFailed as exc:
            self.record(False, label, str(exc), start)
        except Exception as exc:  # connection errors, protocol errors, ...
            self.record(False, label, "%s: %s" % (type(exc).__name__, exc), start)
        else:
            self.record(True, label, note, start)

    def record(self, ok, label, detail, start):
        ms = (time.monotonic() - start) * 1000
        line = "%s  %-56s %7.1f ms" % ("PASS" if ok else "FAIL", label, ms)
        if detail:
            line += "  " + detail
        print(line, flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append("%s: %s" % (label, detail))

    async def raw_http(self, request):
        """Send a raw HTTP/1.1 request; return (status, headers dict, body start)."""
        url = urllib.parse.urlsplit(self.base)
        reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
        try:
            writer.write(request.encode("latin-1"))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            expect(len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit(),
                   "bad status line %r" % lines[0])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = b""
            length = headers.get("content-length")
            if length and length.isdigit() and int(length) > 0:
                body = await reader.readexactly(min(int(length), 4096))
            return int(parts[1]), headers, body
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:
                pass

    def upgrade_request(self, path, version="13", key=None, with_key=True):
        host = urllib.parse.urlsplit(self.base).netloc
        lines = [
            "GET %s HTTP/1.1" % path,
            "Host: %s" % host,
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: %s" % version,
        ]
        if with_key:
            lines.append("Sec-WebSocket-Key: %s" % (key or base64.b64encode(os.urandom(16)).decode()))
        return "\r\n".join(lines) + "\r\n\r\n"

    # ------------------------------------------------------- HTTP checks --

    async def http_checks(self):
        path = urllib.parse.urlsplit(self.echo_url).path or "/"
        host = urllib.parse.urlsplit(self.base).netloc

        async def health():
            status, _, body = await self.raw_http(
                "GET /health HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host)
            expect(status == 200, "GET /health answered %d, expected 200" % status)
            expect(body.strip() == b"ok", "GET /health body %r, expected 'ok'" % body[:60])

        async def plain_get():
            status, _, _ = await self.raw_http(
                "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host))
            expect(status != 101, "server switched protocols without an Upgrade header")
            expect(400 <= status < 500, "answered %d, expected a 4xx status" % status)
            return "status %d" % status

        async def bad_version():
            status, headers, _ = await self.raw_http(self.upgrade_request(path, version="8"))
            expect(status != 101, "server accepted Sec-WebSocket-Version: 8")
            expect(400 <= status < 500, "answered %d, expected a 4xx status (426)" % status)
            note = "status %d" % status
            if status == 426 and "sec-websocket-version" in headers:
                note += ", Sec-WebSocket-Version: %s" % headers["sec-websocket-version"]
            else:
                note += " (RFC 6455 4.4 suggests 426 with a Sec-WebSocket-Version header)"
            return note

        async def missing_key():
            status, _, _ = await self.raw_http(self.upgrade_request(path, with_key=False))
            expect(status != 101, "server accepted a handshake without Sec-WebSocket-Key")
            expect(400 <= status < 500, "answered %d, expected a 4xx status" % status)
            return "status %d" % status

        await self.run_check("GET /health -> 200 ok", health)
        await self.run_check("reject GET %s without Upgrade (4xx)" % path, plain_get)
        await self.run_check("reject Sec-WebSocket-Version: 8 (4xx)", bad_version)
        await self.run_check("reject handshake without Sec-WebSocket-Key (4xx)", missing_key)

    # -------------------------------------------------- WebSocket checks --

    async def ws_checks(self, compression):
        tag = "[compression=%s] " % ("None" if compression is None else repr(compression))

        async def echo_one(*messages):
            async with self.open(compression) as ws:
                for msg in messages:
                    await ws.send(msg)
                    expect_echo(msg, await ws.recv())

        async def handshake():
            async with self.open(compression) as ws:
                status = ws.response.status_code
                expect(status == 101, "handshake status %d, expected 101" % status)
                ext = ws.response.headers.get("Sec-WebSocket-Extensions")
                return "extensions: %s" % (ext or "none")

        async def text_ascii():
            await echo_one("Hello, Switchboard!", "x" * 200)

        async def text_utf8():
            await echo_one(UTF8_SAMPLE, "€" * 30000)

        async def binary():
            await echo_one(bytes(range(256)), b"\x00\xff" * 5000)

        async def empty():
            await echo_one("", b"")

        async def one_mib():
            payload = os.urandom(MiB)
            await echo_one(payload)

        async def pipelined():
            sent = []
            for i in range(100):
                msg = "msg-%03d" % i if i % 2 == 0 else ("bin-%03d" % i).encode()
                sent.append(msg)
            async with self.open(compression) as ws:
                for msg in sent:
                    await ws.send(msg)
                got = [await ws.recv() for _ in sent]
            for i, (s, g) in enumerate(zip(sent, got)):
                expect_echo(s, g, "message #%d of 100" % i)

        async def ping_pong():
            async with self.open(compression) as ws:
                pong = await ws.ping(b"interop-ping")
                latency = await pong
                # The connection must still echo after a ping.
                await ws.send("after ping")
                expect_echo("after ping", await ws.recv())
                return "pong after %.1f ms" % (latency * 1000 if isinstance(latency, float) else 0)

        async def close_1000():
            ws = await self.open(compression)
            await ws.send("before close")
            expect_echo("before close", await ws.recv())
            await ws.close(1000, "interop done")
            await ws.wait_closed()
            proto = ws.protocol
            rcvd = proto.close_rcvd
            expect(rcvd is not None,
                   "no close frame received from the server (connection dropped; close_code=%s)"
                   % ws.close_code)
            expect(not proto.close_rcvd_then_sent,
                   "the server closed first with code %s %r instead of answering the client's close"
                   % (rcvd.code, rcvd.reason))
            expect(proto.close_sent is not None and proto.close_sent.code == 1000,
                   "client did not send close 1000")
            expect(rcvd.code == 1000,
                   "server answered close with code %s %r, expected 1000" % (rcvd.code, rcvd.reason))
            return "server replied close %d" % rcvd.code

        async def compressed_exchange():
            # Count, on the wire side of the client's deflate extension, the
            # frames that arrive with RSV1 and their compressed size.
            async with self.open(compression) as ws:
                ext = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
                expect(ext.startswith("permessage-deflate"),
                       "server did not accept permessage-deflate (answered %r)" % ext)
                pmd = [e for e in ws.protocol.extensions if isinstance(e, PerMessageDeflate)]
                expect(len(pmd) == 1, "client has no active permessage-deflate extension")
                wire = {"in": 0, "in_rsv1": 0, "out_rsv1": 0}
                decode, encode = pmd[0].decode, pmd[0].encode

                def counting_decode(frame, *, max_size=None):
                    if frame.rsv1:
                        wire["in_rsv1"] += 1
                        wire["in"] += len(frame.data)
                    return decode(frame, max_size=max_size)

                def counting_encode(frame):
                    frame = encode(frame)
                    wire["out_rsv1"] += int(frame.rsv1)
                    return frame

                pmd[0].decode, pmd[0].encode = counting_decode, counting_encode
                sent = 0
                for i in range(10):
                    msg = '{"seq": %d, "items": [%s]}' % (
                        i, ", ".join('{"id": %d, "name": "item-%d"}' % (j, j) for j in range(300)))
                    sent += len(msg)
                    await ws.send(msg)
                    expect_echo(msg, await ws.recv(), "compressed echo #%d" % i)
                expect(wire["out_rsv1"] == 10, "client compressed %d of 10 messages" % wire["out_rsv1"])
                expect(wire["in_rsv1"] == 10,
                       "server compressed %d of 10 echoes (RSV1 frames)" % wire["in_rsv1"])
                expect(wire["in"] * 3 < sent,
                       "echoes not smaller: %d wire bytes for %d bytes of text" % (wire["in"], sent))
                return "%s; %d text bytes arrived as %d compressed bytes (%.1fx)" % (
                    ext, sent, wire["in"], sent / max(wire["in"], 1))

        async def four_parameters():
            factory = ClientPerMessageDeflateFactory(
                server_no_context_takeover=True,
                client_no_context_takeover=True,
                server_max_window_bits=10,
                client_max_window_bits=12,
            )
            async with connect(self.echo_url, compression=None, extensions=[factory],
                               max_size=16 * MiB, open_timeout=self.timeout,
                               close_timeout=self.timeout, ping_interval=None,
                               proxy=None) as ws:
                ext = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
                params = [p.strip() for p in ext.split(";")]
                expect(params[:1] == ["permessage-deflate"], "not accepted: %r" % ext)
                expect("server_no_context_takeover" in params,
                       "server_no_context_takeover was asked for but not answered: %r" % ext)
                expect("server_max_window_bits=10" in params,
                       "server_max_window_bits=10 was asked for but not answered: %r" % ext)
                for i in range(20):
                    msg = ("window %d " % i) * (200 + 50 * i)
                    await ws.send(msg)
                    expect_echo(msg, await ws.recv(), "echo #%d" % i)
                return ext

        await self.run_check(tag + "handshake 101", handshake)
        await self.run_check(tag + "text echo (ASCII)", text_ascii)
        await self.run_check(tag + "text echo (multi-byte UTF-8)", text_utf8)
        await self.run_check(tag + "binary echo", binary)
        await self.run_check(tag + "empty text and binary messages", empty)
        await self.run_check(tag + "1 MiB binary message", one_mib)
        await self.run_check(tag + "100 pipelined messages in order", pipelined)
        await self.run_check(tag + "ping gets pong", ping_pong)
        await self.run_check(tag + "close 1000 answered with 1000", close_1000)
        if compression == "deflate":
            await self.run_check(tag + "permessage-deflate: compressed both ways", compressed_exchange)
            await self.run_check(tag + "permessage-deflate: all four parameters", four_parameters)


def parse_url(url):
    """Return (http base, ws echo url) from ws://host:port[/path]."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "http") or not parts.hostname or not parts.port:
        raise ValueError("expected ws://HOST:PORT, got %r" % url)
    path = parts.path if parts.path not in ("", "/") else "/ws/echo"
    return "http://%s" % parts.netloc, "ws://%s%s" % (parts.netloc, path)


async def main_async(args):
    base, echo_url = parse_url(args.url)
    print("interop: websockets %s against %s (timeout %ss per check)"
          % (websockets.__version__, echo_url, args.timeout), flush=True)
    t = Interop(base, echo_url, args.timeout)
    await t.http_checks()
    if args.mode in ("both", "deflate"):
        await t.ws_checks("deflate")
    if args.mode in ("both", "none"):
        await t.ws_checks(None)
    if t.failures:
        print("\nfailed checks:")
        for f in t.failures:
            print("  - " + f)
    print("interop: %d passed, %d failed" % (t.passed, t.failed))
    return 1 if t.failed or not t.passed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="ws://127.0.0.1:PORT (path defaults to /ws/echo)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per check (default 10)")
    ap.add_argument("--mode", choices=("both", "deflate", "none"), default="both",
                    help="compression modes to run the WebSocket checks in (default both)")
    args = ap.parse_args()
    try:
        parse_url(args.url)
    except ValueError as exc:
        ap.error(str(exc))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
