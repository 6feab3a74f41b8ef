"""`iotrt validate GRAPH...`: check graph files without starting anything."""

from __future__ import annotations

import argparse
import sys

from iotrt.graph import GraphError, load_graph


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graphs", nargs="+", metavar="GRAPH", help="graph YAML file(s)")
    parser.epilog = ("Prints OK, or every problem as file:line: message, and exits 1 if any "
                     "graph is invalid. The graph format is described in docs/graph.md.")


def run(args: argparse.Namespace) -> int:
    status = 0
    for path in args.graphs:
        try:
            graph = load_graph(path, check_node_files=True)
        except GraphError as exc:
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            print(f"{path}: INVALID ({len(exc.issues)} problem{'s' * (len(exc.issues) != 1)})",
                  file=sys.stderr)
            status = 1
            continue
        for note in graph.notes:
            print(note, file=sys.stderr)
        print(f"{path}: OK (graph '{graph.name}', {len(graph.nodes)} nodes, "
              f"sockets in {graph.runtime_dir}, state in {graph.state_dir})")
    return status
