"""The files a graph is made of, for deploy/install.sh: `python -m iotrt.deploy.graphfiles GRAPH`
prints, one per line and relative to the graph's folder, the graph file itself, the node files
it runs (`run: my_nodes/facecount.py`) and every file a node parameter names that exists
(a rules file and its Python rule files, a face gallery, a model). Only files inside the graph's
folder are listed; one named elsewhere (an absolute path) stays where it is and is reported on
stderr. Exit status 1 with the problems when the graph is invalid.
"""

from __future__ import annotations

import sys
from pathlib import Path

from iotrt.graph import Graph, GraphError, load_graph


def _named(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return []


def graph_files(graph: Graph) -> tuple[list[Path], list[Path]]:
    """(files inside the graph's folder, relative to it; files named outside it)."""
    base = graph.path.parent.resolve()
    inside: list[Path] = [Path(graph.path.name)]
    outside: list[Path] = []
    for n in graph.nodes.values():
        names = [n.target] if n.kind is None else []
        for value in n.params.values():
            names += _named(value)
        for name in names:
            if not name or "\0" in name:
                continue
            path = (base / name).resolve()
            if not path.is_file():
                continue
            if path.is_relative_to(base):
                rel = path.relative_to(base)
                if rel not in inside:
                    inside.append(rel)
            elif path not in outside:
                outside.append(path)
    return inside, outside


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m iotrt.deploy.graphfiles GRAPH", file=sys.stderr)
        return 2
    try:
        graph = load_graph(argv[0])
    except GraphError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    inside, outside = graph_files(graph)
    for path in outside:
        print(f"note: {path} is outside the graph's folder: not copied, used where it is",
              file=sys.stderr)
    print("\n".join(map(str, inside)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
