"""Helpers shared by the multi-process tests: wait for a condition with a deadline, tell whether
a process is alive, and run `iotrt up GRAPH` as a real process.

How to import it: pytest runs with `--import-mode=importlib`, which puts no test folder on
sys.path and gives conftest modules names nothing else can import. pyproject.toml's
`[tool.pytest.ini_options] pythonpath = ["tests"]` puts this folder on sys.path instead, so
conftest files and test modules alike write `from helpers import wait_for`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

# Variables systemd sets for the service itself; an `iotrt up` under test must not see them.
_SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def wait_for(predicate, timeout: float = 10.0, what: str = "condition", poll: float = 0.02):
    """Poll `predicate` until it returns something truthy (returned) or `timeout` s pass
    (AssertionError naming `what`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def up_env(runtime_dir: Path | str, state_dir: Path | str) -> dict:
    """This process's environment for `iotrt up`, with private runtime and state roots."""
    env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARS}
    env["IOTRT_RUNTIME_DIR"] = str(runtime_dir)
    env["IOTRT_STATE_DIR"] = str(state_dir)
    return env


class Up:
    """A running `iotrt up GRAPH` with its combined output in a log file."""

    def __init__(self, graph: Path, env: dict, log: Path, prefix: tuple[str, ...] = ()):
        """`prefix`: a command that execs `iotrt up` (e.g. setpriv dropping a capability)."""
        self.graph, self.log = graph, log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "iotrt", "up", str(graph)], env=env,
            stdout=self._out, stderr=subprocess.STDOUT, cwd=graph.parent,
        )

    @property
    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, needle: str, timeout: float = 20.0, count: int = 1) -> None:
        wait_for(lambda: self.text.count(needle) >= count, timeout,
                 f"{count}x {needle!r} in the supervisor log:\n{self.text}")

    def wait_exit(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor still running after {timeout:g}s:\n{self.text}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
