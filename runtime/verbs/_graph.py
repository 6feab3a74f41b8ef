"""Which graph a verb talks to: the one way every verb takes it.

Every verb that talks to a running graph accepts `-g/--graph GRAPH` (a graph file, or the name of
a running graph); the verbs that took the graph positionally before (`ps`, `topics`, `down`,
`events`) keep that form too. With exactly one running graph, none of them needs it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Mapping

from iotrt.config import state_root
from iotrt.control import ControlError, running_graphs, runtime_roots
from iotrt.graph import Graph, GraphError, load_graph
from iotrt.journal import JOURNAL_FILE

HELP = "graph file or name (default: the only running graph)"


def add_graph_argument(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """`-g/--graph GRAPH`, and with `positional` also a bare GRAPH (the same thing)."""
    if positional:
        parser.add_argument("graph_positional", nargs="?", metavar="GRAPH", help=HELP)
    parser.add_argument("-g", "--graph", metavar="GRAPH", help=HELP)


def selected_graph(args: argparse.Namespace) -> str | None:
    """The graph the arguments name, or None (the only running one). Naming two different
    graphs, one positionally and one with --graph, is a ControlError."""
    option, positional = args.graph, getattr(args, "graph_positional", None)
    if option and positional and option != positional:
        raise ControlError(f"two graphs given ('{positional}' and --graph '{option}'): give one")
    return option or positional


def control_address(graph: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The control address for a graph file, a graph name, or the only running graph."""
    if graph and (graph.endswith((".yaml", ".yml")) or Path(graph).is_file()):
        try:
            return load_graph(graph, environ=environ).control_address
        except GraphError as exc:
            raise ControlError(str(exc)) from exc
    found = running_graphs(environ)
    where = ", ".join(str(r) for r in runtime_roots(environ))
    if graph:
        if graph not in found:
            known = f" (running: {', '.join(found)})" if found else ""
            raise ControlError(f"no running graph named '{graph}' in {where}{known}")
        return f"ipc://{found[graph]}"
    if not found:
        raise ControlError(f"no running graph found in {where}; start one with 'iotrt up GRAPH'")
    if len(found) > 1:
        raise ControlError(f"several graphs are running ({', '.join(found)}); name one")
    return f"ipc://{next(iter(found.values()))}"


def is_graph_file(graph: str) -> bool:
    return graph.endswith((".yaml", ".yml")) or os.sep in graph or Path(graph).is_file()


def journal_path(graph: str | None) -> Path:
    """The journal of a graph file, a graph name, or (None) the only graph with a journal under
    the state root, or the only running one among several. ControlError says what to give."""
    if graph and is_graph_file(graph):
        try:
            return load_graph(graph).journal_path
        except GraphError as exc:
            raise ControlError(f"{exc}\n(--journal PATH reads a journal without the "
                               f"graph file)") from exc
    root = state_root()
    if graph:
        return root / graph / JOURNAL_FILE
    found = sorted(p.parent.name for p in root.glob(f"*/{JOURNAL_FILE}"))
    if len(found) == 1:
        return root / found[0] / JOURNAL_FILE
    if not found:
        raise ControlError(f"no journal under {root}: give GRAPH, --state-dir or --journal")
    running = [name for name in found if name in running_graphs()]
    if len(running) == 1:
        return root / running[0] / JOURNAL_FILE
    raise ControlError(f"several graphs under {root} have a journal ({', '.join(found)}) and "
                       f"{'several are' if running else 'none is'} running: name one")


def running_graph_file(pid: int) -> Graph | None:
    """The graph file a running supervisor (pid `pid`) runs, read from its command line
    (`iotrt up GRAPH` execs `python -m iotrt.supervise /abs/GRAPH LEVEL`); None when that cannot
    be seen (another user's process) or the file no longer loads."""
    import psutil

    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return None
    if "iotrt.supervise" not in argv[:-1]:
        return None
    try:
        return load_graph(argv[argv.index("iotrt.supervise") + 1])
    except (GraphError, OSError):
        return None
