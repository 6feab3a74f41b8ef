"""`iotrt reload [NODE]`: ask the nodes that reload their files (or one named node) to re-read
them (SIGHUP), and wait for each such node's answer.

A node whose SPEC is `reloadable` (a rules node) answers in the graph's journal with an event
named after what it reloads: `rules_reloaded` (the field `rules` lists what was loaded) or
`rules_reload_failed` (with the problems at file:line; the running rules stay). Other nodes
journal nothing on reload: for them the signal being sent is all there is to report.
"""

from __future__ import annotations

import argparse
import sys
import time

from iotrt.control import ControlError, call
from iotrt.errors import SupervisionError
from iotrt.graph import Graph, GraphError, load_graph
from iotrt.journal import JournalError, JournalReader
from iotrt.verbs._graph import add_graph_argument, control_address, is_graph_file, journal_path, selected_graph

RELOADED, FAILED = "_reloaded", "_reload_failed"   # the kinds of answers: `rules_reloaded`, ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", nargs="?", help="node id (default: every node that reloads its files, e.g. "
                             "rules nodes)")
    add_graph_argument(parser)
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="how long to wait for the nodes' answers (default 10)")


def run(args: argparse.Namespace) -> int:
    try:
        name = selected_graph(args)
        graph = graph_file(name)
        address = graph.control_address if graph else control_address(name)
        ps = call(address, "ps")
        path = graph.journal_path if graph else journal_path(name or ps["graph"])
        with JournalReader(path) as reader:
            after = reader.last_id()
        reply = call(address, "reload", node=args.node)
    except (ControlError, JournalError) as exc:
        print(f"iotrt reload: {exc}", file=sys.stderr)
        return 1
    nodes = reply["nodes"]
    if not nodes:
        raise SupervisionError("no running node to reload")
    answering = {row["node"] for row in ps["nodes"] if row.get("reloadable")}
    waiting = [n for n in nodes if n in answering]
    others = [n for n in nodes if n not in waiting]
    if others:
        print(f"reload sent to {', '.join(others)}")
    try:
        answers = wait_answers(path, after, set(waiting), args.timeout)
    except JournalError as exc:
        print(f"iotrt reload: {exc}", file=sys.stderr)
        return 1
    ok = True
    for node in waiting:
        event = answers.get(node)
        if event is None:
            ok = False
            print(f"iotrt reload: {node} did not answer within {args.timeout:g}s "
                  f"(see 'iotrt events --node {node}')", file=sys.stderr)
        elif event.kind.endswith(RELOADED):
            what = event.kind.removesuffix(RELOADED)          # "rules"
            loaded = event.fields.get(what)
            n = len(loaded) if isinstance(loaded, list) else None
            count = "" if n is None else f"{n} {what if n != 1 else what.removesuffix('s')} "
            print(f"{node}: reloaded {count}from {event.fields.get('file')}")
        else:
            ok = False
            what = event.kind.removesuffix(FAILED)
            problems = event.fields.get("problems") or []
            print(f"iotrt reload: {node}: reload of {event.fields.get('file')} failed; the running "
                  f"{what} stay:", *(f"  {p}" for p in problems), sep="\n", file=sys.stderr)
    return 0 if ok else 1


def graph_file(name: str | None) -> Graph | None:
    """The graph file `name` names, loaded once, its notes (e.g. a former kind name) printed to
    stderr as `iotrt validate` prints them; None for a graph's name or the only running graph."""
    if not name or not is_graph_file(name):
        return None
    try:
        graph = load_graph(name)
    except GraphError as exc:
        raise ControlError(str(exc)) from exc
    for note in graph.notes:
        print(note, file=sys.stderr)
    return graph


def wait_answers(path, after: int, nodes: set[str], timeout_s: float) -> dict:
    """node -> its first reload answer journaled after id `after`, for each node of `nodes`
    that answers within `timeout_s`."""
    answers: dict = {}
    deadline = time.monotonic() + timeout_s
    with JournalReader(path) as reader:
        for event in reader.follow(poll_s=0.1, after_id=after,
                                   stop=lambda: answers.keys() >= nodes
                                   or time.monotonic() > deadline):
            if event.kind.endswith((RELOADED, FAILED)) and event.node in nodes:
                answers.setdefault(event.node, event)
    return answers
