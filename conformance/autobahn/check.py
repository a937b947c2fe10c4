#!/usr/bin/env python3
"""Checker for Autobahn TestSuite (fuzzingclient) results.

Role: reads the report index.json that `wstest -m fuzzingclient` writes into
its outdir, prints per-group counts of `behavior` and `behaviorClose` as
tables, lists every failing case with what went wrong (taken from the case's
own report JSON), and ends with the line

    autobahn: N passed, M failed

A case passes when behavior is OK, NON-STRICT or INFORMATIONAL and
behaviorClose is OK or INFORMATIONAL. Exit status: 0 when every case passed,
1 when any case failed, when no case ran, or when the report is missing or
unreadable.

Usage: check.py [OUTDIR] [--agent NAME]
       (OUTDIR defaults to conformance/autobahn/reports/servers)
"""

import argparse
import json
import os
import sys
from collections import Counter, defaultdict

PASS_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASS_CLOSE = {"OK", "INFORMATIONAL"}
# Column order for the tables; anything else Autobahn reports is appended.
KNOWN = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED",
         "WRONG CODE", "UNCLEAN", "FAILED BY CLIENT"]
DEFAULT_OUTDIR = os.path.join("conformance", "autobahn", "reports", "servers")


def case_key(case_id):
    """Sort "9.10.2" after "9.2.1": compare the dotted parts as numbers."""
    parts = []
    for p in case_id.split("."):
        parts.append((0, int(p), "") if p.isdigit() else (1, 0, p))
    return parts


def group_of(case_id):
    return case_id.split(".", 1)[0]


def passed(res):
    return (res.get("behavior") in PASS_BEHAVIOR
            and res.get("behaviorClose") in PASS_CLOSE)


def columns(counters):
    seen = set()
    for c in counters:
        seen.update(c)
    return [k for k in KNOWN if k in seen] + sorted(seen - set(KNOWN))


def print_table(title, rows, cols, extra=None):
    """rows: list of (label, Counter); extra: list of (name, fn(label)->int)."""
    extra = extra or []
    header = ["group", "cases"] + cols + [name for name, _ in extra]
    body = []
    for label, counter in rows:
        line = [label, str(sum(counter.values()))]
        line += [str(counter.get(c, 0)) for c in cols]
        line += [str(fn(label)) for _, fn in extra]
        body.append(line)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def fmt(r):
        return "  ".join(v.rjust(w) if i else v.ljust(w)
                         for i, (v, w) in enumerate(zip(r, widths)))

    print(title)
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for r in body[:-1]:
        print(fmt(r))
    print("  ".join("-" * w for w in widths))
    print(fmt(body[-1]))
    print()


def shorten(value, limit=300):
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_failure(outdir, res):
    """Return short lines explaining a failed case, from its own report."""
    report = res.get("reportfile")
    if not report:
        return []
    try:
        with open(os.path.join(outdir, report), encoding="utf-8") as f:
            detail = json.load(f)
    except (OSError, ValueError) as e:
        return ["(could not read %s: %s)" % (report, e)]
    lines = []
    if res.get("behavior") == "UNIMPLEMENTED":
        lines.append("note:     the server did not negotiate what this case needs "
                     "(groups 12/13: permessage-deflate)")
    if detail.get("description"):
        lines.append("case:     " + shorten(detail["description"], 200))
    if detail.get("result"):
        lines.append("result:   " + shorten(detail["result"]))
    if detail.get("resultClose") and res.get("behaviorClose") not in PASS_CLOSE:
        lines.append("close:    " + shorten(detail["resultClose"]))
    if detail.get("expectation"):
        lines.append("expected: " + shorten(detail["expectation"], 200))
    if detail.get("expected") and not detail.get("expectation"):
        lines.append("expected: " + shorten(detail["expected"], 200))
    if detail.get("received"):
        lines.append("received: " + shorten(detail["received"], 200))
    lines.append("report:   " + report)
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", nargs="?", default=DEFAULT_OUTDIR,
                    help="wstest outdir holding index.json (default: %(default)s)")
    ap.add_argument("--agent", help="only check this agent (default: all in index.json)")
    args = ap.parse_args()

    index_path = os.path.join(args.outdir, "index.json")
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("check.py: cannot read Autobahn report %s: %s" % (index_path, e))
        print("autobahn: 0 passed, 0 failed")
        return 1

    agents = sorted(index)
    if args.agent:
        agents = [a for a in agents if a == args.agent]
    if not agents:
        print("check.py: no agent%s in %s" % (
            " named %r" % args.agent if args.agent else "", index_path))
        print("autobahn: 0 passed, 0 failed")
        return 1

    total_pass = total_fail = 0
    for agent in agents:
        cases = index[agent]
        by_behavior = defaultdict(Counter)
        by_close = defaultdict(Counter)
        pass_count = Counter()
        fail_count = Counter()
        failures = []
        for case_id in sorted(cases, key=case_key):
            res = cases[case_id]
            g = group_of(case_id)
            for key in (g, "total"):
                by_behavior[key][res.get("behavior", "?")] += 1
                by_close[key][res.get("behaviorClose", "?")] += 1
                (pass_count if passed(res) else fail_count)[key] += 1
            if not passed(res):
                failures.append((case_id, res))

        groups = sorted((k for k in by_behavior if k != "total"), key=case_key)
        order = groups + ["total"]
        print("== Autobahn results for agent %r (%d cases) ==" % (agent, len(cases)))
        print()
        if cases:
            print_table("behavior per group:",
                        [(g, by_behavior[g]) for g in order],
                        columns(by_behavior.values()),
                        [("passed", lambda g: pass_count[g]),
                         ("failed", lambda g: fail_count[g])])
            print_table("behaviorClose per group:",
                        [(g, by_close[g]) for g in order],
                        columns(by_close.values()))

        if failures:
            print("failing cases (%d):" % len(failures))
            for case_id, res in failures:
                print("  %-10s behavior=%s behaviorClose=%s remoteCloseCode=%s" % (
                    case_id, res.get("behavior"), res.get("behaviorClose"),
                    res.get("remoteCloseCode")))
                for line in describe_failure(args.outdir, res):
                    print("             " + line)
            print()
        total_pass += pass_count["total"]
        total_fail += fail_count["total"]

    if total_pass + total_fail == 0:
        print("check.py: no test case ran")
    print("autobahn: %d passed, %d failed" % (total_pass, total_fail))
    return 0 if total_fail == 0 and total_pass > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
