"""`iotrt topics [-g GRAPH]`: the topics of a running graph, who publishes and who listens, their
rates, and the command wires (a rules node's command output -> an actuator's command input)."""

from __future__ import annotations

import argparse

from iotrt.control import call
from iotrt.graph import Graph, GraphError, load_graph
from iotrt.verbs._graph import add_graph_argument, control_address, is_graph_file, running_graph_file, selected_graph


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("RATE/s is the publishing node's output rate as 'iotrt ps' reports it, "
                     "shown for nodes with one output; for a node with several outputs it is "
                     "'-' (measure one topic with 'iotrt hz TOPIC').")
    add_graph_argument(parser, positional=True)
    parser.add_argument("--addresses", action="store_true", help="also print each address")


def topic_rates(topics: dict[str, dict], ps: dict) -> dict[str, str]:
    """topic -> its rate: the publisher's OUT/s when that node publishes this one topic only."""
    per_node: dict[str, list[str]] = {}
    for topic in topics:
        per_node.setdefault(topic.split("/", 1)[0], []).append(topic)
    out: dict[str, str] = {}
    for row in ps["nodes"]:
        mine = per_node.get(row["node"], [])
        if len(mine) == 1:
            out[mine[0]] = f"{row['out_per_s']:.1f}"
    return out


def command_wires(graph: Graph) -> list[tuple[str, str]]:
    """(rules/lock, door.commands) for every command wire of the graph."""
    return sorted((f"{w.node}/{w.output}", f"{n.id}.{cin}")
                  for n in graph.nodes.values() for cin, wires in n.commands.items() for w in wires)


def _graph_for_wires(name: str | None, pid: int) -> Graph | None:
    if name and is_graph_file(name):
        try:
            return load_graph(name)
        except GraphError:
            return None
    return running_graph_file(pid)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def run(args: argparse.Namespace) -> int:
    name = selected_graph(args)
    address = control_address(name)
    topics = call(address, "topics")["topics"]
    ps = call(address, "ps")
    rates = topic_rates(topics, ps)
    head = ("TOPIC", "RATE/s", "SUBSCRIBERS") + (("ADDRESS",) if args.addresses else ())
    rows = [head]
    for topic, info in sorted(topics.items()):
        rows.append((topic, rates.get(topic, "-"), ", ".join(info["subscribers"]) or "-")
                    + ((info["address"],) if args.addresses else ()))
    print("\n".join(_table(rows)))
    graph = _graph_for_wires(name, ps["pid"])
    if graph is None:
        print("\n(command wires: give the graph file, -g GRAPH.yaml, to list them)")
        return 0
    wires = command_wires(graph)
    if wires:
        print("\n" + "\n".join(_table([("COMMAND OUTPUT", "-> ACTUATOR INPUT")]
                                      + [(src, f"-> {dst}") for src, dst in wires])))
    return 0
