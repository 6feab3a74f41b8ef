"""`iotrt reload [NODE]`: ask rule nodes (or one named node) to re-read their files (SIGHUP), and
wait for each rules node's answer.

A rules node answers in the graph's journal: `rules_reloaded` (with the rule ids) or
`rules_reload_failed` (with the problems at file:line; the running rules stay). Other nodes
journal nothing on reload: for them the signal being sent is all there is to report.
"""

from __future__ import annotations

import argparse
import sys
import time

from iotrt.commands._graph import add_graph_argument, journal_path, selected_graph
from iotrt.control import ControlError, call, control_address
from iotrt.errors import SupervisionError
from iotrt.journal import JournalError, JournalReader

ANSWERS = ("rules_reloaded", "rules_reload_failed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node", nargs="?", help="node id (default: every node of kind 'rules')")
    add_graph_argument(parser)
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="how long to wait for the rules nodes' answers (default 10)")


def run(args: argparse.Namespace) -> int:
    try:
        graph = selected_graph(args)
        address = control_address(graph)
        ps = call(address, "ps")
        path = journal_path(graph if graph else ps["graph"])
        with JournalReader(path) as reader:
            after = reader.last_id()
        reply = call(address, "reload", node=args.node)
    except (ControlError, JournalError) as exc:
        print(f"iotrt reload: {exc}", file=sys.stderr)
        return 1
    nodes = reply["nodes"]
    if not nodes:
        raise SupervisionError("no running node to reload")
    kinds = {row["node"]: row["kind"] for row in ps["nodes"]}
    waiting = [n for n in nodes if kinds.get(n) == "rules"]
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
        elif event.kind == "rules_reloaded":
            n = len(event.fields.get("rules") or [])
            print(f"{node}: reloaded {n} rule{'s' if n != 1 else ''} from "
                  f"{event.fields.get('file')}")
        else:
            ok = False
            problems = event.fields.get("problems") or []
            print(f"iotrt reload: {node}: reload of {event.fields.get('file')} failed; the running "
                  f"rules stay:", *(f"  {p}" for p in problems), sep="\n", file=sys.stderr)
    return 0 if ok else 1


def wait_answers(path, after: int, nodes: set[str], timeout_s: float) -> dict:
    """node -> its first reload answer journaled after id `after`, for each node of `nodes`
    that answers within `timeout_s`."""
    answers: dict = {}
    deadline = time.monotonic() + timeout_s
    with JournalReader(path) as reader:
        for event in reader.follow(poll_s=0.1, after_id=after,
                                   stop=lambda: answers.keys() >= nodes
                                   or time.monotonic() > deadline):
            if event.kind in ANSWERS and event.node in nodes:
                answers.setdefault(event.node, event)
    return answers
