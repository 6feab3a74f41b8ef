"""`iotrt down [GRAPH]`: stop a running graph and wait until its supervisor has exited."""

from __future__ import annotations

import argparse
import time

import psutil

from iotrt.control import call
from iotrt.errors import SupervisionError
from iotrt.verbs._graph import add_graph_argument, control_address, selected_graph


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_graph_argument(parser, positional=True)
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="how long to wait for the supervisor to exit (default 30)")


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run(args: argparse.Namespace) -> int:
    address = control_address(selected_graph(args))
    reply = call(address, "stop")
    pid = reply["pid"]
    print(f"stopping (supervisor pid {pid}) ...", flush=True)
    start = time.monotonic()
    while time.monotonic() - start < args.timeout:
        if not _running(pid):
            print(f"stopped in {time.monotonic() - start:.1f}s")
            return 0
        time.sleep(0.05)
    raise SupervisionError(f"the supervisor (pid {pid}) is still running after {args.timeout:g}s")
