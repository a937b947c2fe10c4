#!/usr/bin/env python3
"""End-to-end: the demo server's chat page (GET /) in real headless Chromium.

Role: proves that a person can use the chat: pages in separate browser
contexts (separate cookies and storage, like separate people) open the page,
type a message and press Enter, and see each other's messages; a late joiner
sees the room's history and the others see it join; closing a page shows
"left" on the others; after the server is killed and started again on the
same port, the pages reconnect by themselves, say so, and chat again. It also
checks the room field and the default room, and that no page threw a script
error. It takes the screenshot of the chat that the docs and README show.

This script owns the server process (it must kill and restart it): give it
the release binary with --bin and a free loopback port with --port.

Ends with `browser: N passed, M failed`; exits 1 on failure, 2 on setup error.

Usage: chat_e2e.py --bin target/release/switchboard --port PORT
                   [--chromium /usr/bin/chromium] [--screenshot docs/chat.png]
                   [--timeout S] [--headed]
Needs: pip install playwright (no browser download: Debian's chromium is used).
"""

import argparse
import atexit
import base64
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import uuid

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError as exc:  # pragma: no cover - setup problem
    print("chat_e2e.py: needs playwright (pip install playwright): %s" % exc)
    sys.exit(2)

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


class Server:
    """The switchboard binary on 127.0.0.1:PORT, which can be killed and restarted."""

    def __init__(self, binary, port, log_path):
        self.binary = binary
        self.port = port
        self.log_path = log_path
        self.proc = None
        self.starts = 0

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def healthy(self):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            return opener.open(self.url + "/health", timeout=2).status == 200
        except Exception:
            return False

    def start(self, timeout=30.0):
        """Starts the server and waits for GET /health; retries while the port
        is not free again yet, and makes sure it is our process that answers."""
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path, "ab") as log:
                log.write(b"--- start %d ---\n" % self.starts)
                log.flush()
                self.proc = subprocess.Popen(
                    [self.binary, "serve", "--bind", "127.0.0.1:%d" % self.port],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.healthy():
                    time.sleep(0.1)
                    if self.proc.poll() is None:
                        return
                time.sleep(0.1)
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(
                    "server did not start on port %d within %ss (port taken by another "
                    "process?): see %s" % (self.port, timeout, self.log_path)
                )
            time.sleep(0.3)  # it exited (e.g. the port is not free yet): retry

    def kill(self):
        """Kills the server at once (SIGKILL): no close frames, like a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class Person:
    """One page in its own browser context."""

    def __init__(self, browser, url, label, errors, viewport):
        self.label = label
        self.context = browser.new_context(viewport=viewport)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: errors.append("%s: page error: %s" % (label, e)))
        self.page.on("console", lambda m: self._console(m, errors))
        self.page.goto(url)

    def _console(self, msg, errors):
        # Chromium logs every refused WebSocket connection as a console
        # error; while the server is down that is expected.
        if msg.type == "error" and "WebSocket connection to" not in msg.text:
            errors.append("%s: console error: %s" % (self.label, msg.text))

    def say(self, text, typed=False):
        box = self.page.locator("#message")
        if typed:
            box.press_sequentially(text, delay=5)
        else:
            box.fill(text)
        box.press("Enter")

    def chat_texts(self):
        return self.page.locator("#messages .msg.chat .text")

    def notices(self):
        return self.page.locator("#messages .msg.notice")

    def members(self):
        return self.page.locator("#members li")

    def status(self):
        return self.page.locator("#status")

    def expect_message(self, text, timeout):
        expect(self.page.locator("#messages .msg.chat .text", has_text=text)).to_have_count(
            1, timeout=timeout
        )

    def expect_notice(self, text, timeout):
        expect(self.page.locator("#messages .msg.notice", has_text=text).last).to_be_visible(
            timeout=timeout
        )

    def expect_connected(self, timeout):
        expect(self.status()).to_have_attribute("data-state", "connected", timeout=timeout)
        expect(self.status()).to_have_text("Connected", timeout=timeout)

    def close(self):
        self.context.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True, help="the switchboard release binary")
    ap.add_argument("--port", type=int, required=True, help="a free loopback port")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--screenshot", default="", help="where to save the chat screenshot (PNG)")
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds per expectation")
    ap.add_argument("--headed", action="store_true", help="show the browser (needs a display)")
    args = ap.parse_args()

    if not os.access(args.bin, os.X_OK):
        print("chat_e2e.py: server binary %s not found" % args.bin)
        return 2
    if not os.access(args.chromium, os.X_OK):
        print("chat_e2e.py: chromium %s not found" % args.chromium)
        return 2

    t = args.timeout * 1000  # playwright counts milliseconds
    log_path = os.path.join(tempfile.mkdtemp(prefix="switchboard-chat-e2e."), "server.log")
    server = Server(args.bin, args.port, log_path)
    atexit.register(server.stop)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    results = []  # (name, ok, detail)
    errors = []  # script errors seen on the pages
    room = "launch"  # the server is ours and fresh: no other traffic
    people = {}
    shots = {}

    def check(name, fn):
        started = time.monotonic()
        try:
            fn()
            results.append((name, True, ""))
            print("ok   %-44s %5.1fs" % (name, time.monotonic() - started), flush=True)
        except Exception as exc:  # a failed expectation or a broken page
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            results.append((name, False, detail))
            print("FAIL %-44s %5.1fs\n     %s" % (name, time.monotonic() - started,
                                                   detail.replace("\n", "\n     ")), flush=True)

    try:
        server.start()
    except Exception as exc:
        print("chat_e2e.py: could not start the server: %s" % exc)
        return 2

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=args.chromium, args=CHROMIUM_ARGS, headless=not args.headed
        )
        viewport = {"width": 760, "height": 640}

        def join(label, query):
            people[label] = Person(browser, "%s/%s" % (server.url, query), label, errors, viewport)
            return people[label]

        # 1. Two people chat. The first gives no name (one is generated)
        #    and types straight away: no other step than Enter.
        def two_pages_chat():
            a = join("a", "?room=%s" % room)
            a.say("Hi! Is anyone here?", typed=True)
            b = join("b", "?room=%s&name=Bob" % room)
            for x in (a, b):
                x.expect_connected(t)
            a.expect_message("Hi! Is anyone here?", t)
            b.expect_message("Hi! Is anyone here?", t)  # b joined late: history
            b.say("Hello! Bob here, the release build is green.")
            a.expect_message("the release build is green", t)
            b.expect_message("the release build is green", t)
            a.say("Great, shipping it then.")
            b.expect_message("shipping it then", t)
            # The generated name is shown to the person and to the others.
            generated = a.page.locator("#name").input_value()
            assert generated and len(generated.split("-")) == 3, "generated name %r" % generated
            expect(b.page.locator("#members li", has_text=generated)).to_have_count(1, timeout=t)
            expect(a.members()).to_have_count(2, timeout=t)
            expect(b.members()).to_have_count(2, timeout=t)
            a.expect_notice("Bob joined", t)
            # One's own messages are marked as such.
            expect(a.page.locator("#messages .msg.chat.mine")).to_have_count(2, timeout=t)
            expect(b.page.locator("#messages .msg.chat.mine")).to_have_count(1, timeout=t)

        # 2. A third person joins late: sees the history and is announced.
        def late_joiner_sees_history():
            c = join("c", "?room=%s&name=Carol" % room)
            c.expect_connected(t)
            expect(c.chat_texts()).to_have_text(
                [
                    "Hi! Is anyone here?",
                    "Hello! Bob here, the release build is green.",
                    "Great, shipping it then.",
                ],
                timeout=t,
            )
            c.expect_notice("You joined #%s as Carol" % room, t)
            expect(c.members()).to_have_count(3, timeout=t)
            for x in (people["a"], people["b"]):
                x.expect_notice("Carol joined", t)
                expect(x.members()).to_have_count(3, timeout=t)
            c.say("Hi all, just catching up on what I missed.")
            for x in (people["a"], people["b"], c):
                x.expect_message("catching up on what I missed", t)
            people["b"].say("Welcome, Carol!")
            for x in (people["a"], c):
                x.expect_message("Welcome, Carol!", t)
            shots["a"] = people["a"].page.screenshot()
            shots["c"] = c.page.screenshot()

        # 3. Closing a page shows "left" on the others.
        def closing_a_page_shows_left():
            people.pop("c").close()
            for x in (people["a"], people["b"]):
                x.expect_notice("Carol left", t)
                expect(x.members()).to_have_count(2, timeout=t)
                expect(x.page.locator("#members li", has_text="Carol")).to_have_count(0)

        # 4. The server goes away and comes back: the pages reconnect alone.
        def server_restart_reconnects():
            a, b = people["a"], people["b"]
            server.kill()
            for x in (a, b):
                expect(x.status()).to_have_attribute("data-state", "reconnecting", timeout=t)
                expect(x.status()).to_contain_text("Reconnecting…", timeout=t)
                x.expect_notice("Connection lost: reconnecting…", t)
            # Typed while the server is down: kept, and sent once back.
            a.say("Typed while the server was down.")
            a.expect_notice("your message will be sent when the connection is back", t)
            time.sleep(2.0)  # a few refused attempts: the backoff grows
            server.start()
            for x in (a, b):
                x.expect_connected(t + 20000)  # the backoff may be mid-wait
                x.expect_notice("Reconnected", t)
                expect(x.members()).to_have_count(2, timeout=t)
            b.expect_message("Typed while the server was down.", t)
            a.expect_message("Typed while the server was down.", t)
            a.say("Back after the restart?")
            b.expect_message("Back after the restart?", t)
            b.say("Yes, reconnected by itself.")
            a.expect_message("reconnected by itself", t)
            # What was on the page is still there, shown once.
            expect(a.page.locator("#messages .msg.chat .text", has_text="Is anyone here")).to_have_count(1)

        # 5. The room comes from ?room= or the room field; / is `general`.
        def room_field_and_default_room():
            d = join("d", "")
            d.expect_connected(t)
            expect(d.page.locator("#room-name")).to_have_text("general", timeout=t)
            other = "e2e-other-" + uuid.uuid4().hex[:6]
            e = join("e", "chat?room=%s&name=Erin" % other)
            e.expect_connected(t)
            d.page.locator("#room").fill(other)
            d.page.locator("#room").press("Enter")
            expect(d.page.locator("#room-name")).to_have_text(other, timeout=t)
            assert ("room=" + other) in d.page.url, d.page.url
            e.expect_notice("joined", t)
            d.say("Found the other room.")
            e.expect_message("Found the other room.", t)
            # The first room did not get it.
            time.sleep(0.3)
            expect(people["a"].page.locator("#messages .msg.chat .text", has_text="Found the other room")).to_have_count(0)
            for label in ("d", "e"):
                people.pop(label).close()

        # 6. No page threw a script error along the way.
        def no_script_errors():
            assert not errors, "\n".join(errors)

        for name, fn in [
            ("two pages chat in a room", two_pages_chat),
            ("a late joiner sees history and is announced", late_joiner_sees_history),
            ("closing a page shows 'left' on the others", closing_a_page_shows_left),
            ("server restart: pages reconnect and chat", server_restart_reconnects),
            ("room field and default room", room_field_and_default_room),
            ("no script errors on the pages", no_script_errors),
        ]:
            check(name, fn)

        if args.screenshot and "a" in shots and "c" in shots:
            save_side_by_side(browser, shots["a"], shots["c"], args.screenshot)
            print("screenshot: %s" % args.screenshot)

        for x in list(people.values()):
            x.close()
        browser.close()

    if not server.alive():
        results.append(("server still running at the end", False, "it died"))
    server.stop()
    passed = sum(1 for r in results if r[1])
    failed = len(results) - passed
    if failed:
        print("server log: %s" % log_path)
    else:
        shutil.rmtree(os.path.dirname(log_path), ignore_errors=True)
    print("browser: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


def save_side_by_side(browser, left_png, right_png, path):
    """Two page screenshots next to each other, as one PNG (drawn by the browser)."""
    page = browser.new_page(viewport={"width": 1580, "height": 680})
    img = "data:image/png;base64,%s"
    page.set_content(
        """<!doctype html><body style="margin:0;background:#c9d1e3;display:flex;gap:20px;
        padding:20px;box-sizing:border-box">
        <img style="border-radius:8px;box-shadow:0 2px 12px rgba(0,0,0,.25)" src="%s">
        <img style="border-radius:8px;box-shadow:0 2px 12px rgba(0,0,0,.25)" src="%s">
        </body>"""
        % (img % base64.b64encode(left_png).decode(), img % base64.b64encode(right_png).decode())
    )
    page.wait_for_load_state("load")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    page.screenshot(path=path)
    page.close()


if __name__ == "__main__":
    sys.exit(main())
