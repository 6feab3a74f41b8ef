"""`python -m iotrt.launch`: the process entry the supervisor execs for every node.

Reads the NodeConfig from IOTRT_NODE_CONFIG (see iotrt.protocol), ties the process's life to
the supervisor's, sizes thread pools, sets up logging, and runs the node's target. Exit status:
0 when the node returned (normally after a stop request), 1 when it raised, 2 on a bad config.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import runpy
import signal
import sys

from iotrt.protocol import ENV_CONFIG, ENV_SUPERVISOR_PID, ENV_THREADS, ConfigError, NodeConfig

PR_SET_PDEATHSIG = 1


def bind_to_supervisor() -> None:
    """Die with the supervisor: PR_SET_PDEATHSIG=SIGKILL, then close the race where the
    supervisor died before prctl ran (we would already have been re-parented)."""
    expected = os.environ.get(ENV_SUPERVISOR_PID)
    if not expected:
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(expected):
        os._exit(0)  # the supervisor is already gone: nothing to run for


def size_thread_pools() -> None:
    """OpenCV reads OPENCV_FOR_THREADS_NUM when (if) it is imported; the others read theirs."""
    threads = os.environ.get(ENV_THREADS)
    if threads:
        os.environ.setdefault("OPENCV_FOR_THREADS_NUM", threads)


def run_target(config: NodeConfig) -> None:
    from iotrt.node import Node
    from iotrt.spec import load_spec

    target = config.target
    if target.endswith(".py"):
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
        runpy.run_path(target, run_name="__main__")
        return
    module_name, _, func_name = target.partition(":")
    module = importlib.import_module(module_name)
    entry = getattr(module, func_name or "main")
    node = Node(config, spec=load_spec(target))
    try:
        entry(node)
    finally:
        node.close()


def main() -> int:
    bind_to_supervisor()
    size_thread_pools()
    try:
        config = NodeConfig.from_env()
    except ConfigError as exc:
        print(f"iotrt.launch: {exc}", file=sys.stderr)
        return 2
    if config is None:
        print(f"iotrt.launch: {ENV_CONFIG} is not set; this entry is run by the supervisor "
              f"(try 'iotrt up GRAPH')", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger(f"iotrt.node.{config.id}")
    if not config.target:
        log.error("no target in the node config")
        return 2
    try:
        run_target(config)
    except KeyboardInterrupt:
        return 0
    except Exception:
        # The node's own code failed: the traceback goes to the log (the supervisor forwards
        # it) and the exit status tells the supervisor to apply the restart policy.
        log.exception("node %r failed", config.id)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
