"""`iotrt ps [GRAPH]`: the nodes of a running graph, their state, resources and message rates."""

from __future__ import annotations

import argparse
import json
import sys

from iotrt.control import ControlError, call, control_address

COLUMNS = ("NODE", "STATE", "PID", "RESTARTS", "UPTIME", "CPU%", "RSS", "IN/s", "OUT/s", "DROPS")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", nargs="?", metavar="GRAPH",
                        help="graph file or name (default: the only running graph)")
    parser.add_argument("--json", action="store_true", help="print the raw reply as JSON")


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


def format_table(reply: dict) -> str:
    rows = [COLUMNS]
    notes = []
    for r in reply["nodes"]:
        rows.append((
            r["node"] + ("" if r["critical"] else " (nc)"), r["state"],
            str(r["pid"] or "-"), str(r["restarts"]), _duration(r["uptime_s"]),
            "-" if r["cpu_pct"] is None else f"{r['cpu_pct']:.1f}", _bytes(r["rss_bytes"]),
            f"{r['in_per_s']:.1f}", f"{r['out_per_s']:.1f}", str(r["drops"]),
        ))
        if r["state"] != "running" and r["reason"]:
            notes.append(f"  {r['node']}: {r['reason']}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [f"graph {reply['graph']}: {reply['state']}, supervisor pid {reply['pid']}, "
             f"up {_duration(reply['uptime_s'])}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + notes)


def run(args: argparse.Namespace) -> int:
    try:
        reply = call(control_address(args.graph), "ps")
    except ControlError as exc:
        print(f"iotrt ps: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2) if args.json else format_table(reply))
    return 0
