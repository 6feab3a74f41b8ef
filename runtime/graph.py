"""The YAML graph: loading and validating a graph file, with file:line errors.

`load_graph(path)` reads a graph file, checks everything that can be checked before a process
starts (keys, types, node kinds, params against each node's SPEC, wiring, paths) and returns a
`Graph`, or raises `GraphError` listing every problem found. The file format is documented in
docs/graph.md; a short example:

    name: door
    nodes:
      - id: cam
        kind: camera
        params: {source: sim, fps: 15}
      - id: faces
        kind: detector
        inputs: {image: {from: cam/image, queue: 1}}
      - id: rules
        kind: rules
        inputs: {faces: faces/detections}
      - id: door
        kind: lock
        commands: {commands: rules/lock}     # command input <- rule node's command output
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from iotrt.errors import ConfigError
from iotrt.graphmodel import EVENTS_TOPIC, Graph, NodeDef, Wire
from iotrt.graphschema import GraphReader
from iotrt.spec import load_spec
from iotrt.yamlcheck import Checker, Issue

# the model lives in iotrt.graphmodel (the schema builds it); this is its public door
__all__ = ["EVENTS_TOPIC", "Graph", "GraphError", "NodeDef", "Wire", "load_graph"]


class GraphError(ConfigError):
    """A graph file that cannot run; `.issues` lists every problem with its file:line."""

    def __init__(self, issues: list[Issue]):
        self.issues = list(issues)
        count = f"{len(self.issues)} problem{'s' if len(self.issues) != 1 else ''}"
        super().__init__(f"invalid graph ({count}):\n" + "\n".join(f"  {i}" for i in self.issues))


def load_graph(
    path: str | Path,
    environ: Mapping[str, str] | None = None,
    spec_loader: Callable[[str], Any] | None = None,
    check_node_files: bool = False,
) -> Graph:
    """Read and validate a graph file; raise GraphError with every problem found.

    `spec_loader(target) -> NodeSpec` defaults to `iotrt.spec.load_spec`. `check_node_files`
    also checks the files nodes read (each SPEC's `check_files`): `iotrt validate` and `iotrt up` do;
    `iotrt reload`, `down` and `events` must work while a rules file is broken, so they do not.
    """
    path = Path(path)
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GraphError([Issue(str(path), 1, f"cannot read the graph file: {exc}")]) from exc
    check = Checker(path)
    root = check.compose(text, environ)
    graph = None
    if root is not None:
        graph = GraphReader(check, path, environ, spec_loader or load_spec).read(root)
    issues = sorted(check.issues, key=lambda i: i.line)
    if graph is not None and check_node_files:
        issues += _node_file_issues(graph)
    if issues or graph is None:
        raise GraphError(issues)
    graph.notes = sorted(check.notes, key=lambda i: i.line)
    return graph


def _node_file_issues(graph: Graph) -> list[Issue]:
    """Problems in the files nodes read (a rules node's rules file), at their own file:line,
    from each SPEC's `check_files`. Relative paths in params are relative to the graph file,
    the nodes' working directory."""
    issues: list[Issue] = []
    for n in graph.nodes.values():
        if n.spec is not None and n.spec.check_files is not None:
            issues += n.spec.check_files(n.params, graph.path.parent, node=n, graph=graph)
    return issues


