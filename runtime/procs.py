"""One node process: how the supervisor starts it, hears it end, and forwards its output.

A node is exec'd as `python -m iotrt.launch` in a process group of its own (so a Ctrl-C in the
terminal reaches only the supervisor, which then stops the nodes in order, and a signal to the
node's process group also reaches anything the node spawned), in the supervisor's session: with
CONFIG_SCHED_AUTOGROUP (most distribution kernels) the scheduler shares CPU equally between
sessions and applies nice only within one, so a session per node made `nice:` between nodes
moot, and on a busy machine gave a graph a CPU share that grew with its number of processes
(its process groups looked slower than one process per node: bench/footprint.py).

The supervisor learns of a node process's end through a pidfd (readable when the process
exits), and reads its stdout/stderr through non-blocking pipes, all in the supervisor's one
select() loop: no thread per node. Lines are forwarded through the supervisor's OutputPump, so
a stalled log reader cannot block that loop.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from typing import TextIO

from iotrt.config import THREAD_ENV
from iotrt.graph import Graph
from iotrt.outpump import OutputPump
from iotrt.protocol import ENV_CONFIG, ENV_SUPERVISOR_PID
from iotrt.sdnotify import SYSTEMD_ONLY_ENV

log = logging.getLogger("iotrt.supervisor")

LINE_MAX = 65536       # a longer line without a newline is forwarded in pieces


def node_env(graph: Graph, process: str, log_level: str, base: dict[str, str]) -> dict[str, str]:
    """The environment of one node process (a node alone, or a process group)."""
    members = [graph.nodes[nid] for nid in graph.processes()[process]]
    env = {k: v for k, v in base.items() if k not in SYSTEMD_ONLY_ENV}
    for n in members:             # the graph checked that members agree on each key
        env.update(n.env)
    for name in THREAD_ENV:       # the graph decides, not whatever the shell had
        env[name] = str(max(n.threads for n in members))
    # glibc gives each thread that allocates its own malloc arena (up to 8 per core), and
    # freed frames stay in them: a process group's perception process measured 144 MB PSS
    # with the default and 79 MB with one arena. Two keep lock contention low.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    # A fixed mmap threshold: frames (~1 MB each, 30 a second) are mmapped and returned to the
    # kernel when freed. glibc's default raises the threshold after the first such free, and
    # frames then churn through the heap, whose RSS saws up by tens of MB between trims.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    config = (graph.node_config(members[0].id, log_level) if len(members) == 1
              else graph.process_config(process, log_level))
    # default=str: a param YAML typed as a date or a timestamp travels as its text
    env[ENV_CONFIG] = json.dumps(config, default=str)
    env[ENV_SUPERVISOR_PID] = str(os.getpid())
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the supervisor as they are written
    if graph.optimize:             # the graph's `optimize:` (the supervisor itself is not affected)
        env["PYTHONOPTIMIZE"] = str(graph.optimize)
    return env


class NodeProcess:
    """A running node process: its Popen, its pidfd and its output pipes (non-blocking fds)."""

    def __init__(self, graph: Graph, process: str, env: dict[str, str], pump: OutputPump):
        self.id = process
        self.pump = pump
        n = graph.nodes[graph.processes()[process][0]]   # cpus and nice agree in a group
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "iotrt.launch"],
            cwd=graph.path.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # its own process group (a terminal's Ctrl-C reaches only the supervisor, and a
            # signal to the group reaches whatever the node spawned), in the supervisor's
            # session: see the module docstring
            process_group=0,
        )
        self.pid = self.popen.pid
        try:
            # Set from here rather than in the child (preexec_fn is unsafe with threads); the
            # child has only just exec'd the interpreter, and threads it starts later inherit both.
            if n.cpus:
                os.sched_setaffinity(self.pid, n.cpus)
            if n.nice is not None:
                try:
                    os.setpriority(os.PRIO_PROCESS, self.pid, n.nice)
                except PermissionError:
                    log.warning("%s: cannot set nice %d without CAP_SYS_NICE; running at default",
                                self.id, n.nice)
            self.pidfd = os.pidfd_open(self.pid)
        except BaseException:
            # A child we cannot track must not live on holding the node's sockets: the
            # supervisor will count this spawn as failed and start another.
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()
            raise
        self.pipes: dict[int, tuple[TextIO, bytearray]] = {}
        for pipe, sink in ((self.popen.stdout, sys.stdout), (self.popen.stderr, sys.stderr)):
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self.pipes[fd] = (sink, bytearray())

    def signal(self, signum: int) -> None:
        """Signal the node's whole process group (it leads its own session)."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass    # already gone; its pidfd will (or did) report the exit

    def reap(self) -> int:
        """The exit status once the pidfd said the process ended (subprocess convention:
        negative = killed by that signal)."""
        os.close(self.pidfd)
        self.pidfd = -1
        return self.popen.wait()

    def forward(self, fd: int) -> bool:
        """Forward what is available on `fd`, each line prefixed by the node id. False at EOF."""
        sink, buf = self.pipes[fd]
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if chunk:
            buf += chunk
            lines = buf.split(b"\n")
            buf[:] = lines.pop()
            if len(buf) > LINE_MAX:
                lines.append(bytes(buf))
                buf.clear()
        else:
            lines = [bytes(buf)] if buf else []
        if lines:
            # through the pump: a log reader that stops reading never blocks the supervisor,
            # and the pipe is still drained (its lines are dropped and counted instead)
            prefix = f"{self.id} | "
            self.pump.write(sink, "".join(prefix + ln.decode("utf-8", "replace") + "\n"
                                          for ln in lines), len(lines))
        if not chunk:
            del self.pipes[fd]
            return False
        return True

    def close_pipes(self) -> None:
        for fd in list(self.pipes):
            self.forward(fd)
        for pipe in (self.popen.stdout, self.popen.stderr):
            pipe.close()
        self.pipes.clear()


def terminate_all(procs: list[NodeProcess], grace_s: float) -> None:
    """Last-resort cleanup (the supervisor's loop failed): TERM, wait, KILL, reap."""
    for p in procs:
        p.signal(signal.SIGTERM)
    for p in procs:
        try:
            p.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            p.signal(signal.SIGKILL)
            p.popen.wait()
