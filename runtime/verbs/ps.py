"""`iotrt ps [GRAPH]`: the nodes of a running graph, the OS processes they run in (a node alone
or a process group), their state, CPU, memory (RSS and PSS) and message rates."""

from __future__ import annotations

import argparse
import json

from iotrt.control import call
from iotrt.verbs._graph import add_graph_argument, control_address, selected_graph

NODE_COLUMNS = ("NODE", "PROCESS", "STATE", "PID", "RESTARTS", "UPTIME", "IN/s", "OUT/s", "DROPS")
PROCESS_COLUMNS = ("PROCESS", "PID", "STATE", "NODES", "CPU%", "RSS", "PSS")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_graph_argument(parser, positional=True)
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


def _cpu(pct: float | None) -> str:
    return "-" if pct is None else f"{pct:.1f}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def _sum(values: list) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def format_table(reply: dict) -> str:
    nodes = [NODE_COLUMNS]
    notes = []
    for r in reply["nodes"]:
        nodes.append((
            r["node"] + ("" if r["critical"] else " (nc)"), r["process"], r["state"],
            str(r["pid"] or "-"), str(r["restarts"]), _duration(r["uptime_s"]),
            f"{r['in_per_s']:.1f}", f"{r['out_per_s']:.1f}", str(r["drops"]),
        ))
        if r["state"] != "running" and r["reason"]:
            notes.append(f"  {r['node']}: {r['reason']}")
    procs = [PROCESS_COLUMNS]
    sup = reply["supervisor"]
    rows = [{"process": "(supervisor)", "pid": reply["pid"], "state": reply["state"],
             "nodes": [], **sup}] + reply["processes"]
    for p in rows:
        procs.append((p["process"], str(p["pid"] or "-"), p["state"], ",".join(p["nodes"]) or "-",
                      _cpu(p["cpu_pct"]), _bytes(p["rss_bytes"]), _bytes(p["pss_bytes"])))
    procs.append(("total", "", f"{len(rows)} processes", "", _cpu(_sum([p["cpu_pct"] for p in rows])),
                  _bytes(_sum([p["rss_bytes"] for p in rows])),
                  _bytes(_sum([p["pss_bytes"] for p in rows]))))
    lines = [f"graph {reply['graph']}: {reply['state']}, supervisor pid {reply['pid']}, "
             f"up {_duration(reply['uptime_s'])}"]
    return "\n".join(lines + _table(nodes) + notes + [""] + _table(procs))


def run(args: argparse.Namespace) -> int:
    reply = call(control_address(selected_graph(args)), "ps")
    print(json.dumps(reply, indent=2) if args.json else format_table(reply))
    return 0
