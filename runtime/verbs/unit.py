"""`iotrt unit GRAPH`: write the systemd unit that runs a graph as a service."""

from __future__ import annotations

import argparse
import math
import sys
from importlib import resources
from pathlib import Path

from iotrt.graph import Graph, load_graph
from iotrt.supervisor import START_SLOT_S

DEVICE_GROUPS = ("video", "gpio", "dialout", "i2c")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", metavar="GRAPH", help="graph YAML file (an absolute path is "
                        "written into the unit; keep the file where the service user can read it)")
    parser.add_argument("-o", "--output", metavar="PATH",
                        help="write here (e.g. /etc/systemd/system/iotrt-NAME.service); default stdout")
    parser.add_argument("--user", default="iotrt", help="the service user (default: iotrt)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter with iotrt installed (default: this one, %(default)s)")
    parser.add_argument("--writable", action="append", default=[], metavar="DIR",
                        help="a folder the nodes may write besides the state folder "
                             "(e.g. where model artifacts cache their backend choice); repeatable")
    parser.epilog = "See docs/deploy.md for the whole installation (deploy/install.sh does it all)."


def unit_name(graph: Graph) -> str:
    return f"iotrt-{graph.name}.service"


def dependency_levels(graph: Graph) -> int:
    """How many rounds of 'start, wait for ready' the start-up takes (cycles count once)."""
    deps = graph.dependencies()   # acyclic: a cycle's members do not depend on each other
    level: dict[str, int] = {}
    for start in deps:            # iterative depth-first: a long chain must not hit the stack
        todo = [start]
        while todo:
            nid = todo[-1]
            waiting = [d for d in deps[nid] if d not in level]
            if waiting:
                todo.extend(waiting)
                continue
            todo.pop()
            level[nid] = 1 + max((level[d] for d in deps[nid]), default=0)
    return max(level.values(), default=1)


def render(graph: Graph, user: str = "iotrt", python: str = sys.executable,
           writable: list[str] = ()) -> str:
    p = graph.policy
    template = resources.files("iotrt.deploy").joinpath("iotrt.service").read_text()
    longest_start = max((n.start_timeout_s for n in graph.nodes.values()), default=p.start_timeout_s)
    extra = "".join(f"ReadWritePaths={Path(w).resolve()}\n" for w in writable)
    return template.format(
        name=graph.name,
        graph=graph.path,
        unit=unit_name(graph),
        user=user,
        python=python,
        workdir=graph.path.parent,
        backoff_max_s=p.backoff.max_s,
        watchdog_s=math.ceil(max(10.0, p.backoff.max_s + 10.0, 4 * p.heartbeat_s)),
        # each dependency level waits for its slowest start; a process may also wait for a
        # start slot (one per CPU, freed after START_SLOT_S at the latest), on one CPU behind
        # every other process
        start_s=math.ceil(dependency_levels(graph) * longest_start
                          + len(graph.processes()) * START_SLOT_S + 10),
        grace_s=p.stop_grace_s,
        stop_s=math.ceil(p.stop_grace_s + 10),
        groups=" ".join(DEVICE_GROUPS),
        extra=extra,
    )


def run(args: argparse.Namespace) -> int:
    graph = load_graph(args.graph)
    for note in graph.notes:        # stderr: stdout may be the unit itself
        print(note, file=sys.stderr)
    text = render(graph, args.user, args.python, args.writable)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}; then: sudo systemctl daemon-reload && "
              f"sudo systemctl enable --now {unit_name(graph)}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
