"""`python -m iotrt.launch`: the process entry the supervisor execs for every node process.

Reads the config from IOTRT_NODE_CONFIG (see iotrt.protocol), ties the process's life to
the supervisor's, sizes thread pools, sets up logging, and runs the node's target. Exit status:
0 when the node returned (normally after a stop request), 1 when it raised, 2 on a bad config.

A process group (several nodes with the same `process:`) runs each node on a thread of its own,
with its own Node and event loop; the main thread only waits and passes signals on (SIGTERM and
SIGINT stop every node, SIGHUP reloads every node). A node that raises takes the whole process
down at once (exit 1): the supervisor restarts the process, and a half-running group never
hides a dead node. A node that returns by itself (it has nothing to do, e.g. a bridge with no
broker configured) is reported done; the others run on, and the process exits 0 once all
have returned.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import runpy
import signal
import sys
import threading

from iotrt.lazy import defer_rarely_used

# e.g. pynng imports asyncio (which imports ssl and OpenSSL) for an async API no node uses:
# ~6 MB of RSS in every node process. Deferred, each is imported only if some code uses it.
defer_rarely_used()

from iotrt.command import CommandClient, CommandError  # noqa: E402 - after the deferral above
from iotrt.console import setup_logging  # noqa: E402 - after the deferral above
from iotrt.node import Node  # noqa: E402 - after the deferral above
from iotrt.protocol import (  # noqa: E402 - after the deferral above
    ENV_CONFIG,
    ENV_SUPERVISOR_PID,
    ENV_THREADS,
    ConfigError,
    NodeConfig,
    done_body,
    process_configs,
)
from iotrt.spec import NodeSpec, load_spec  # noqa: E402 - after the deferral above

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


def run_target(config: NodeConfig, started: list | None = None) -> None:
    """Run one node's target in this thread; `started` collects its Node (process groups)."""
    target = config.target
    if target.endswith(".py"):
        run_file(config, started)
        return
    module_name, _, func_name = target.partition(":")
    module = importlib.import_module(module_name)
    entry = getattr(module, func_name or "main")
    config.bind_to_thread(started)
    node = Node(config, spec=load_spec(target))
    try:
        entry(node)
    finally:
        node.close()


def run_file(config: NodeConfig, started: list | None = None) -> None:
    """Run a node file: as a script (`__main__`), then, if the script built no Node of its own
    but defines `main`, call `main(node)` with a Node made from this node's config and SPEC.
    So a file may be a script (`node = Node(...)` at top level, or under
    `if __name__ == "__main__":`) or a module with `SPEC` and `main(node)`, as docs/nodes.md
    shows; the graph validator refuses a file that is neither (iotrt.spec.check_entry)."""
    target = config.target
    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
    nodes = [] if started is None else started
    before = len(nodes)
    config.bind_to_thread(nodes)   # the script's Node() reads this node's config
    namespace = runpy.run_path(target, run_name="__main__")
    entry = namespace.get("main")
    if len(nodes) > before or not callable(entry):
        return
    spec = namespace.get("SPEC")
    node = Node(config, spec=spec if isinstance(spec, NodeSpec) else load_spec(target))
    try:
        entry(node)
    finally:
        node.close()


class Group:
    """The nodes of one process group, one thread each (see the module docstring)."""

    def __init__(self, name: str, configs: list[NodeConfig]):
        self.name, self.configs = name, configs
        self.log = logging.getLogger(f"iotrt.process.{name}")
        self.nodes: list = []            # Node objects, as their threads create them
        self.stopping = threading.Event()
        self.done = threading.Event()    # some thread ended
        self.failed: list[str] = []
        self.ended: list[str] = []

    def _run(self, config: NodeConfig) -> None:
        try:
            run_target(config, self.nodes)
        except BaseException:  # any end of a node's code ends the process
            self.log.exception("node %r failed; stopping process %r", config.id, self.name)
            self.failed.append(config.id)
        else:
            if not self.stopping.is_set():
                self._report_done(config)
            self.ended.append(config.id)
        self.done.set()

    def _report_done(self, config: NodeConfig) -> None:
        """The node returned by itself: the supervisor stops expecting its heartbeats."""
        if not config.journal:
            return
        with CommandClient(config.journal, src=config.id) as client:
            try:
                client.call(done_body(config.id), timeout_s=0.5, retries=3)
            except CommandError as exc:
                self.log.warning("could not report node %r done: %s", config.id, exc)

    def run(self) -> int:
        for sig, handler in ((signal.SIGTERM, self._stop), (signal.SIGINT, self._stop),
                             (signal.SIGHUP, self._reload)):
            signal.signal(sig, handler)
        threads = [threading.Thread(target=self._run, args=(c,), name=f"node-{c.id}", daemon=True)
                   for c in self.configs]
        for t in threads:
            t.start()
        while True:
            self.done.wait()
            self.done.clear()
            if self.failed:
                return 1
            if len(self.ended) == len(threads):
                return 0          # every node returned (after a stop, or done for good)

    def _stop(self, *_: object) -> None:
        self.stopping.set()
        for node in list(self.nodes):
            node.stop()

    def _reload(self, *_: object) -> None:
        for node in list(self.nodes):
            node._request_reload()


def main() -> int:
    bind_to_supervisor()
    size_thread_pools()
    text = os.environ.get(ENV_CONFIG)
    if text is None:
        print(f"iotrt.launch: {ENV_CONFIG} is not set; this entry is run by the supervisor "
              f"(try 'iotrt up GRAPH')", file=sys.stderr)
        return 2
    try:
        name, configs = process_configs(text)
    except ConfigError as exc:
        print(f"iotrt.launch: {exc}", file=sys.stderr)
        return 2
    config = configs[0]
    setup_logging(getattr(logging, config.log_level.upper(), logging.INFO))
    log = logging.getLogger(f"iotrt.node.{config.id}")
    if not all(c.target for c in configs):
        log.error("no target in the node config")
        return 2
    if len(configs) > 1:
        code = Group(name, configs).run()
        # daemon threads may still be inside node code: leave without waiting for them
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
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
