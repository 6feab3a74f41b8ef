"""`iotrt mqtt forget GRAPH`: remove a graph's device from Home Assistant.

Home Assistant keeps a discovered device as long as its retained discovery configs stay on the
broker. Each node whose SPEC declares `forget` (the Home Assistant bridge) clears what it left
there, with its own params (broker, TLS, credentials); this verb finds those nodes in the
graph, checks that the graph is stopped (a running bridge would publish everything again), and
calls each one.
"""

from __future__ import annotations

import argparse
import sys

from iotrt.control import ControlError, call
from iotrt.errors import ConfigError, IotrtError, SupervisionError
from iotrt.graph import load_graph


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Guide: docs/home-assistant.md. Exit status: 0 ok, 1 failed."
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    forget = sub.add_parser("forget", help="clear the graph's retained Home Assistant "
                                           "discovery configs and states from the broker",
                            description="Clear every retained MQTT topic the graph's nodes "
                                        "left on their broker (Home Assistant discovery "
                                        "configs and states), so Home Assistant deletes the "
                                        "device. Stop the graph first.")
    forget.add_argument("graph", metavar="GRAPH", help="graph file")
    forget.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="give up on the broker after this long (default 10)")


def run(args: argparse.Namespace) -> int:
    graph = load_graph(args.graph, check_node_files=False)
    nodes = [n for n in graph.nodes.values() if n.spec is not None and n.spec.forget is not None]
    if not nodes:
        raise ConfigError(f"{args.graph}: nothing to forget: no node of this graph leaves "
                          f"retained topics on a broker (a Home Assistant bridge does)")
    try:
        call(graph.control_address, "ps", timeout_s=1.0)
        raise SupervisionError(f"graph '{graph.name}' is running and its bridge would publish the "
                               f"configs again: stop it first (iotrt down {args.graph})")
    except ControlError:
        pass    # not running: good
    status = 0
    for n in nodes:
        try:
            summary = n.spec.forget(n.params, graph.name, args.timeout)
        except IotrtError as exc:
            print(f"iotrt mqtt: node '{n.id}': {exc}", file=sys.stderr)
            status = max(status, exc.exit_code)
            continue
        print(f"node '{n.id}': {summary}")
    return status
