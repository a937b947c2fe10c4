#!/usr/bin/env python3
"""Opens a page in headless Chromium with a net-log and waits, in real time,
until the page's WebSocket has received a frame; then closes the browser so
that the net-log is complete.

Role: the browser half of conformance/tls-browser/run. It used to be
`chromium --dump-dom --virtual-time-budget`, which ends as soon as virtual
time runs out: once the socket is open nothing holds virtual time back, so
the browser sometimes quit between the server's first frame reaching the
network stack and the WebSocket layer reading it (the net-log then showed
the data on the h2 stream and no frame; 3 runs of 54 here). Waiting on
Playwright's `framereceived` event removes that race; netlog_check.py still
decides what went over the wire.

Exits 0 when a frame arrived within the timeout, 1 when none did (the
net-log is written all the same), 2 on a setup error.

Usage: drive.py --url URL --netlog PATH --spki HASH
                [--chromium /usr/bin/chromium] [--timeout S]
Needs: pip install playwright (no browser download: Debian's chromium).
"""

import argparse
import sys
import tempfile

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
except ImportError as exc:  # pragma: no cover - setup problem
    print("drive.py: needs playwright (pip install playwright): %s" % exc)
    sys.exit(2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--netlog", required=True)
    ap.add_argument("--spki", required=True, help="base64 SHA-256 of the server key's SPKI")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds for each wait")
    opts = ap.parse_args()
    ms = opts.timeout * 1000

    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        # Trusts exactly the server's key (no --ignore-certificate-errors).
        "--ignore-certificate-errors-spki-list=" + opts.spki,
        "--host-resolver-rules=MAP localhost 127.0.0.1, EXCLUDE localhost",
        "--log-net-log=" + opts.netlog,
        "--net-log-capture-mode=Everything",
    ]
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        try:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=opts.chromium, headless=True, args=args
            )
        except PlaywrightError as exc:
            print("drive.py: cannot start %s: %s" % (opts.chromium, exc))
            return 2
        page = context.new_page()
        errors, sockets, frames = [], [], []
        page.on("pageerror", lambda e: errors.append(str(e)))

        def opened(ws):
            # Registered as the socket appears, before any of its frames.
            sockets.append(ws.url)
            ws.on("framereceived", lambda _payload: frames.append(ws.url))

        page.on("websocket", opened)
        ok = False
        try:
            page.goto(opts.url, timeout=ms)
            # Bounded: at most `timeout` seconds in 50 ms steps.
            for _ in range(max(1, int(ms / 50))):
                if frames:
                    break
                page.wait_for_timeout(50)
            ok = bool(frames)
            if ok:
                print("drive.py: %s received a frame" % frames[0])
            else:
                print("drive.py: no frame received within %gs (sockets: %s)" % (opts.timeout, sockets or "none"))
        except PlaywrightError as exc:
            print("drive.py: %s" % str(exc).splitlines()[0])
        # Closing the browser finishes the net-log.
        context.close()
    for e in errors:
        print("drive.py: script error on the page: %s" % e)
    return 0 if ok and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
