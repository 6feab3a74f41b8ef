"""`iotrt graph GRAPH`: draw a graph's nodes and wires as Mermaid or Graphviz DOT."""

from __future__ import annotations

import argparse
import sys

from iotrt.graph import Graph, load_graph


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", metavar="GRAPH", help="graph YAML file")
    parser.add_argument("--format", choices=("mermaid", "dot"), default="mermaid",
                        help="mermaid (paste into Markdown) or dot (| dot -Tsvg); default mermaid")
    parser.epilog = "Data wires are solid arrows labelled with the topic; command wires are dashed."


def _label(graph: Graph, nid: str) -> str:
    n = graph.nodes[nid]
    return f"{nid}\\n({n.kind})" if n.kind else f"{nid}\\n({n.target.rsplit('/', 1)[-1]})"


def _edges(graph: Graph):
    """(from node, to node, label, is_command) for every wire."""
    for n in graph.nodes.values():
        for name, w in n.inputs.items():
            label = w.output if name == w.output else f"{w.output} → {name}"
            yield w.node, n.id, label, False
        for wires in n.commands.values():
            for w in wires:
                yield w.node, n.id, w.output, True


def mermaid(graph: Graph) -> str:
    ids = {nid: f"n{i}" for i, nid in enumerate(graph.nodes)}
    lines = ["flowchart LR"]
    for nid in graph.nodes:
        label = _label(graph, nid).replace("\\n", "<br/>")
        lines.append(f'  {ids[nid]}["{label}"]')
    for src, dst, label, command in _edges(graph):
        arrow = f"-. {label} .->" if command else f"-- {label} -->"
        lines.append(f"  {ids[src]} {arrow} {ids[dst]}")
    return "\n".join(lines)


def dot(graph: Graph) -> str:
    lines = [f'digraph "{graph.name}" {{', "  rankdir=LR;", "  node [shape=box];"]
    for nid in graph.nodes:
        lines.append(f'  "{nid}" [label="{_label(graph, nid)}"];')
    for src, dst, label, command in _edges(graph):
        style = ", style=dashed" if command else ""
        lines.append(f'  "{src}" -> "{dst}" [label="{label}"{style}];')
    lines.append("}")
    return "\n".join(lines)


FORMATS = {"mermaid": mermaid, "dot": dot}


def run(args: argparse.Namespace) -> int:
    graph = load_graph(args.graph)
    for note in graph.notes:        # stderr: stdout is the drawing, for a pipe or a file
        print(note, file=sys.stderr)
    print(FORMATS[args.format](graph))
    return 0
