#!/usr/bin/env python3
"""Turns bench/run's JSON lines into the tables of docs/BENCHMARKS.md.

Usage: bench/report.py RESULTS.jsonl OUT.md "COMMAND"

Medians over runs per (scenario, cell, server); ratios are Switchboard's
median divided by each peer's median (above 1.0: Switchboard is ahead; for
memory, the peer's bytes per connection divided by Switchboard's, so above
1.0 is ahead too). Only the part of OUT between the `bench:begin` and
`bench:end` markers is replaced; the prose around it is kept.
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections import defaultdict

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
ORDER = ["switchboard", "axum", "fastws", "bun", "node", "sink"]
NAMES = {"switchboard": "Switchboard", "axum": "axum", "fastws": "fastwebsockets",
         "bun": "Bun (uWS)", "node": "Node ws", "sink": "sink (tool ceiling)"}


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=10).stdout.strip().splitlines()[0]
    except Exception:
        return "?"


def machine():
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("free -g | awk '/Mem:/{print $2}'")
    return [
        f"- Machine: {cpu}, {os.cpu_count()} cores, {mem} GiB, Linux {platform.release()}",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Toolchain: {sh('rustc --version')}; Bun {sh('cd bench/peers/bun && node_modules/.bin/bun --version')}; "
        f"Node {sh('node --version')}",
        f"- Load average when the report was written: {open('/proc/loadavg').read().split()[0:3]}"
        " (other builds share this machine: see the noise note below)",
    ]


def fmt(v):
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}x"


def main():
    results, out, command = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = [json.loads(l) for l in open(results) if l.strip()]
    # cell -> server -> list of reports
    cells = defaultdict(lambda: defaultdict(list))
    for r in rows:
        p = r["params"]
        if r["scenario"] == "echo":
            key = ("echo", p["size"], p["conns"])
        elif r["scenario"] == "broadcast":
            key = ("broadcast", p["size"], p["subscribers"])
        elif r["scenario"] == "connect":
            key = ("connect", "close" if p["close"] else "reset", p["concurrency"])
        else:
            key = ("idle", p["conns"], 0)
        cells[key][r["server"]].append(r)
    servers = [s for s in ORDER if any(s in c for c in cells.values())]
    peers = [s for s in servers if s != "switchboard"]

    def med(reports, f):
        vals = [f(r) for r in reports]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    def tput(rs):
        return med(rs, lambda r: r["ops_per_s"])

    def p99(rs):
        return med(rs, lambda r: (r.get("latency") or {}).get("p99_us"))

    lines = [BEGIN, "", *machine(), f"- Command: `{command}`",
             f"- Runs per cell: {max((len(v) for c in cells.values() for v in c.values()), default=0)}"
             " (medians shown); server pinned to core 0, load tool to core 1"]
    engines = sorted({r["engine"] for r in rows if r["scenario"] == "echo" and r.get("engine")})
    if engines:
        lines.append(f"- Load tool's echo engine: {', '.join(engines)}")
    lines.append("")
    checks = []

    def cpu(rs):
        return med(rs, lambda r: r.get("server_cpu_us_per_op"))

    def table(kind, title, unit, label_a, label_b):
        keys = sorted(k for k in cells if k[0] == kind)
        if not keys:
            return
        here = [s for s in servers if any(s in cells[k] for k in keys)]
        hp = [s for s in here if s not in ("switchboard", "sink")]
        lines.append(f"### {title}")
        lines.append("")
        lines.append(f"Throughput ({unit}, median of runs) and Switchboard's ratio to each peer:")
        lines.append("")
        head = f"| {label_a} | {label_b} | " + " | ".join(NAMES[s] for s in here)
        head += " | " + " | ".join(f"vs {NAMES[s]}" for s in hp) + " |"
        lines.append(head)
        lines.append("|" + "---|" * (2 + len(here) + len(hp)))
        found = []
        for k in keys:
            c = cells[k]
            t = {s: tput(c.get(s, [])) for s in here}
            u = {s: cpu(c.get(s, [])) for s in here}
            row = f"| {k[1]} | {k[2]} | " + " | ".join(fmt(t[s]) for s in here)
            row += " | " + " | ".join(ratio(t.get("switchboard"), t[s]) for s in hp) + " |"
            lines.append(row)
            found.append((k, t, u))
        lines.append("")
        lines.append("Server CPU per operation (µs, user + kernel, median; lower is better) and "
                     "Switchboard's efficiency ratio (peer's µs / Switchboard's µs):")
        lines.append("")
        head = f"| {label_a} | {label_b} | " + " | ".join(NAMES[s] for s in here)
        head += " | " + " | ".join(f"vs {NAMES[s]}" for s in hp) + " |"
        lines.append(head)
        lines.append("|" + "---|" * (2 + len(here) + len(hp)))
        for k, t, u in found:
            row = f"| {k[1]} | {k[2]} | " + " | ".join(
                "–" if u[s] is None else f"{u[s]:.2f}" for s in here)
            row += " | " + " | ".join(ratio(u[s], u.get("switchboard")) for s in hp) + " |"
            lines.append(row)
        lines.append("")
        lines.append("Busy cores during the window, server / load tool (median of runs; 1.00 = "
                     "a whole core). A server at its core's limit is measured at its capacity; "
                     "one well below it while the tool's core is full was held back by the tool:")
        lines.append("")
        lines.append(f"| {label_a} | {label_b} | " + " | ".join(NAMES[s] for s in here) + " |")
        lines.append("|" + "---|" * (2 + len(here)))
        for k, t, u in found:
            c = cells[k]

            def busy(rs):
                sv = med(rs, lambda r: r.get("server_cpu"))
                cl = med(rs, lambda r: r.get("client_cpu"))
                return "–" if sv is None or cl is None else f"{sv:.2f} / {cl:.2f}"
            lines.append(f"| {k[1]} | {k[2]} | " + " | ".join(busy(c.get(s, [])) for s in here) + " |")
        lines.append("")
        lines.append("p99 latency (µs, median of runs):")
        lines.append("")
        lines.append(f"| {label_a} | {label_b} | " + " | ".join(NAMES[s] for s in here) + " |")
        lines.append("|" + "---|" * (2 + len(here)))
        for k, t, u in found:
            c = cells[k]
            lines.append(f"| {k[1]} | {k[2]} | " + " | ".join(fmt(p99(c.get(s, []))) for s in here) + " |")
        lines.append("")
        for k, t, u in found:
            yield k, t, u

    def want(name, got, bound, ok, cpu_ratio=None):
        eff = "–" if cpu_ratio is None else f"{cpu_ratio:.2f}x"
        checks.append(f"| {name} | {got} | {eff} | {bound} | {'met' if ok else '**missed**'} |")

    def eff(u, peer):
        if u.get(peer) and u.get("switchboard"):
            return u[peer] / u["switchboard"]
        return None

    for k, t, u in table("echo", "Echo (messages echoed per second; text; 1 in flight per connection)",
                         "msg/s", "size B", "conns"):
        sb = t.get("switchboard")
        if k[2] in (100, 1000) and sb:
            for peer, bound in (("fastws", 1.0), ("axum", 1.3), ("bun", 0.9)):
                if t.get(peer):
                    r = sb / t[peer]
                    want(f"echo {k[1]} B × {k[2]}: vs {NAMES[peer]}", f"{r:.2f}x", f"≥ {bound}x",
                         r >= bound, eff(u, peer))
    for k, t, u in table("broadcast", "Broadcast (deliveries per second; one publisher, closed loop, window 8)",
                         "deliv/s", "size B", "subscribers"):
        sb = t.get("switchboard")
        if k[2] >= 10000 and sb:
            for peer, bound in (("axum", 2.0), ("bun", 0.9)):
                if t.get(peer):
                    r = sb / t[peer]
                    want(f"broadcast {k[1]} B × {k[2]}: vs {NAMES[peer]}", f"{r:.2f}x", f"≥ {bound}x",
                         r >= bound, eff(u, peer))
    for k, t, u in table("connect", "Handshakes per second (64 clients in flight)", "hs/s", "end", "in flight"):
        sb = t.get("switchboard")
        if sb and t.get("fastws"):
            r = sb / t["fastws"]
            want(f"handshakes ({k[1]}): vs fastwebsockets", f"{r:.2f}x", "≥ 1.0x", r >= 1.0,
                 eff(u, "fastws"))

    idle = sorted(k for k in cells if k[0] == "idle")
    if idle:
        lines.append("### Memory: server RSS growth per idle connection (fresh server per run)")
        lines.append("")
        mem = [s for s in servers if s != "sink"]
        lines.append("| conns | " + " | ".join(NAMES[s] for s in mem) + " |")
        lines.append("|---|" + "---|" * len(mem))
        for k in idle:
            c = cells[k]
            b = {s: med(c.get(s, []), lambda r: r["extra"].get("rss_per_conn_b")) for s in mem}
            lines.append(f"| {k[1]} | " + " | ".join(
                "–" if b[s] is None else f"{b[s]:,.0f} B" for s in mem) + " |")
            if b.get("switchboard") is not None:
                v = b["switchboard"]
                want(f"idle RSS per connection at {k[1]}", f"{v:,.0f} B", "≤ 8,192 B (aim 4,096)", v <= 8192)
        lines.append("")
    if checks:
        lines += ["### Targets (issue 6)", "",
                  "Throughput ratio as measured (the target), and the CPU-efficiency ratio "
                  "(peer's server CPU per op / Switchboard's) beside it:", "",
                  "| target | throughput ratio | CPU-efficiency ratio | wanted | |",
                  "|---|---|---|---|---|", *checks, ""]
    lines += [f"Raw results: `{os.path.relpath(results)}` (one JSON object per run).", "", END]
    block = "\n".join(lines)

    if os.path.exists(out):
        text = open(out).read()
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    else:
        text = "# Benchmarks\n\n" + block + "\n"
    open(out, "w").write(text)


if __name__ == "__main__":
    main()
