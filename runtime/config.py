"""The environment variables iotrt reads and the defaults they override, in one place.

Ours:

    IOTRT_RUNTIME_DIR   the root of the graphs' socket folders (see `runtime_root`)
    IOTRT_STATE_DIR     the root of the graphs' state: journal, node state (`state_root`)
    IOTRT_THREADS       a node process's thread budget, set by the supervisor (`THREAD_ENV`)
    IOTRT_NODE_CONFIG   a node process's config, JSON (iotrt.protocol), set by the supervisor
    IOTRT_SUPERVISOR_PID  the supervisor a node process dies with (iotrt.launch)
    IOTRT_SPECS         the node SPECs handed to the lean supervisor (iotrt.supervise)

Others' that we honour: systemd's RUNTIME_DIRECTORY and STATE_DIRECTORY, XDG_RUNTIME_DIR,
XDG_STATE_HOME, HOME, OMP_NUM_THREADS. A graph file reads any variable as ${NAME:-default}
(iotrt.yamlcheck). This module imports only the standard library: every layer may use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

ENV_RUNTIME_DIR = "IOTRT_RUNTIME_DIR"
ENV_STATE_DIR = "IOTRT_STATE_DIR"
ENV_THREADS = "IOTRT_THREADS"
ENV_CONFIG = "IOTRT_NODE_CONFIG"
ENV_SUPERVISOR_PID = "IOTRT_SUPERVISOR_PID"
ENV_SPECS = "IOTRT_SPECS"

# -- where graphs live -------------------------------------------------------------------------

SYSTEM_RUNTIME_ROOT = Path("/run/iotrt")   # the system service's (systemd RuntimeDirectory=iotrt)
CONTROL_NAME = "ctl"                       # a running graph's control socket, in its folder


def named_runtime_roots(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """The socket roots the environment names, the one to use first: $IOTRT_RUNTIME_DIR alone
    when it is set (who sets it means that root and no other), else those of systemd's
    $RUNTIME_DIRECTORY and $XDG_RUNTIME_DIR/iotrt that are set. Empty when none is: then
    iotrt.rundir makes a private root."""
    if environ.get(ENV_RUNTIME_DIR):
        return [Path(environ[ENV_RUNTIME_DIR])]
    roots = []
    if environ.get("RUNTIME_DIRECTORY"):          # set by systemd's RuntimeDirectory=
        roots.append(Path(environ["RUNTIME_DIRECTORY"].split(":")[0]))
    if environ.get("XDG_RUNTIME_DIR"):
        roots.append(Path(environ["XDG_RUNTIME_DIR"]) / "iotrt")
    return roots


def state_root(environ: Mapping[str, str] = os.environ) -> Path:
    """The state root: $IOTRT_STATE_DIR, systemd's $STATE_DIRECTORY, $XDG_STATE_HOME/iotrt,
    else ~/.local/state/iotrt."""
    if environ.get(ENV_STATE_DIR):
        return Path(environ[ENV_STATE_DIR])
    if environ.get("STATE_DIRECTORY"):            # set by systemd's StateDirectory=
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME") or Path.home())
                                                / ".local" / "state")
    return Path(base) / "iotrt"


# -- thread pools ------------------------------------------------------------------------------

# What sizes a node process's thread pools: OpenMP, OpenBLAS, MKL, OpenCV (read when imported)
# and ours (the engine backends, cv2.setNumThreads). The supervisor sets each from the graph's
# `threads:` of the process, whatever the shell had.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "OPENCV_FOR_THREADS_NUM", ENV_THREADS)


def shared_threads(processes: int) -> int:
    """A process's threads when the graph does not say: the cores this process may run on,
    shared out among the graph's processes (five processes each using every core of a
    2-core board only fight each other)."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, processes))

