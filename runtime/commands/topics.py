"""`iotrt topics [GRAPH]`: the topics of a running graph, who publishes and who listens."""

from __future__ import annotations

import argparse
import sys

from iotrt.control import ControlError, call, control_address


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", nargs="?", metavar="GRAPH",
                        help="graph file or name (default: the only running graph)")
    parser.add_argument("--addresses", action="store_true", help="also print each address")


def topics_of(graph: str | None) -> dict[str, dict]:
    return call(control_address(graph), "topics")["topics"]


def run(args: argparse.Namespace) -> int:
    try:
        topics = topics_of(args.graph)
    except ControlError as exc:
        print(f"iotrt topics: {exc}", file=sys.stderr)
        return 1
    width = max(map(len, topics))
    for topic, info in sorted(topics.items()):
        subs = ", ".join(info["subscribers"]) or "-"
        extra = f"  {info['address']}" if args.addresses else ""
        print(f"{topic.ljust(width)}  -> {subs}{extra}")
    return 0
