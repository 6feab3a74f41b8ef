"""Helpers for the supervisor's multi-process tests: write a graph, run `iotrt up` on it as a real
process, wait for conditions with deadlines, and always clean up every process started."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

TEST_NODE = Path(__file__).parent / "graphs" / "nodes" / "testnode.py"


def wait_for(predicate, timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def marker_pids(marker: Path) -> list[int]:
    if not marker.exists():
        return []
    return [int(line.split()[0]) for line in marker.read_text().splitlines() if line.strip()]


def marker_starts(marker: Path) -> list[float]:
    return [float(line.split()[1]) for line in marker.read_text().splitlines() if line.strip()]


class Up:
    """A running `iotrt up GRAPH` with its combined output in a log file."""

    def __init__(self, graph: Path, env: dict, log: Path):
        self.graph, self.log = graph, log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotrt", "up", str(graph)], env=env,
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
            raise AssertionError(f"supervisor still running after {timeout:g}s:\n{self.text}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture
def h():
    """The helpers above, for test modules (pytest's importlib mode cannot import conftest)."""
    return SimpleNamespace(wait_for=wait_for, alive=alive, marker_pids=marker_pids,
                           marker_starts=marker_starts)


@pytest.fixture
def env(tmp_path):
    """Environment for `iotrt up`: a short private runtime root (ipc paths are limited to 107
    bytes, pytest's tmp_path can be long) and a state root in tmp_path."""
    run_root = Path(tempfile.mkdtemp(prefix="iotrt-t", dir="/tmp"))
    e = dict(os.environ)
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        e.pop(k, None)
    e["IOTRT_RUNTIME_DIR"] = str(run_root)
    e["IOTRT_STATE_DIR"] = str(tmp_path / "state")
    yield e
    shutil.rmtree(run_root, ignore_errors=True)


@pytest.fixture
def graph_file(tmp_path):
    """write(text) -> path of a graph file; `{node}` in the text is the test node's path."""
    def write(text: str, name: str = "g.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text).replace("{node}", str(TEST_NODE)))
        return p
    return write


@pytest.fixture
def up(env, tmp_path):
    """up(graph_path, **extra_env) -> Up; every supervisor and node started is killed at the end."""
    started: list[Up] = []

    def start(graph: Path, **extra: str) -> Up:
        u = Up(graph, {**env, **extra}, tmp_path / f"up{len(started)}.log")
        started.append(u)
        return u

    yield start
    for u in started:
        u.close()
    for marker in tmp_path.glob("*.pids"):      # safety net: no node may outlive a test
        for pid in marker_pids(marker):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
