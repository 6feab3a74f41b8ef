"""`iotrt reload [NODE]`: ask rule nodes (or one named node) to re-read their files (SIGHUP)."""

from __future__ import annotations

import argparse
import sys

from iotrt.control import ControlError, call, control_address


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", nargs="?", help="node id (default: every node of kind 'rules')")
    parser.add_argument("--graph", metavar="GRAPH",
                        help="graph file or name (default: the only running graph)")


def run(args: argparse.Namespace) -> int:
    try:
        reply = call(control_address(args.graph), "reload", node=args.node)
    except ControlError as exc:
        print(f"iotrt reload: {exc}", file=sys.stderr)
        return 1
    nodes = reply["nodes"]
    print(f"reload sent to {', '.join(nodes)}" if nodes else "no running node to reload")
    return 0 if nodes else 1
