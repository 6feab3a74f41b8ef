"""`iotrt up GRAPH`: validate a graph, then run it under the supervisor until stopped.

Validation imports every node module (to read its SPEC); the supervisor itself then runs as a
fresh, lean process (exec, same pid: see iotrt.supervise) that never imports numpy or cv2."""

from __future__ import annotations

import argparse
import sys

from iotrt.graph import GraphError, load_graph
from iotrt.supervise import LEVELS, exec_supervisor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", metavar="GRAPH", help="graph YAML file")
    parser.add_argument("--log-level", choices=LEVELS, default=None,
                        help="log level of the nodes (default: INFO, DEBUG with -v)")
    parser.epilog = (
        "Runs in the foreground; Ctrl-C or SIGTERM stops every node (SIGTERM, then SIGKILL "
        "after the graph's stop_grace_s). Exit codes: 0 stopped on request, 1 invalid graph or "
        "a critical node failed for good, 2 could not start (e.g. already running). Under "
        "systemd (Type=notify) it reports READY=1, WATCHDOG=1 and STATUS=.")


def run(args: argparse.Namespace) -> int:
    try:
        graph = load_graph(args.graph, check_node_files=True)
    except GraphError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"iotrt up: {args.graph} is invalid; nothing was started", file=sys.stderr)
        return 1
    for note in graph.notes:
        print(note, file=sys.stderr)
    level = args.log_level or ("DEBUG" if args.verbose else "INFO")
    specs = {n.target: n.spec for n in graph.nodes.values()}
    exec_supervisor(str(graph.path), specs, level)
