"""Graph-running fixtures shared by the supervisor's and the security tests: write a graph (with
the supervisor's test node), run `iotrt up` on it as a real process (`Up`), and always clean up
every process started. Test modules import the fixtures they use by name:

    from graphrun import env, graph_file, h, up  # noqa: F401 (pytest fixtures)
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import Up, alive, up_env, wait_for

TEST_NODE = Path(__file__).parent / "supervisor" / "graphs" / "nodes" / "testnode.py"


def marker_pids(marker: Path) -> list[int]:
    if not marker.exists():
        return []
    return [int(line.split()[0]) for line in marker.read_text().splitlines() if line.strip()]


def marker_starts(marker: Path) -> list[float]:
    return [float(line.split()[1]) for line in marker.read_text().splitlines() if line.strip()]


def marker_spawns(marker: Path) -> list[float]:
    """When each incarnation's process was created (before its start-up), 10 ms ticks."""
    return [float(line.split()[2]) for line in marker.read_text().splitlines() if line.strip()]


@pytest.fixture
def h():
    """The helpers, for test modules (pytest's importlib mode cannot import conftest)."""
    return SimpleNamespace(wait_for=wait_for, alive=alive, marker_pids=marker_pids,
                           marker_starts=marker_starts, marker_spawns=marker_spawns)


@pytest.fixture
def env(tmp_path):
    """Environment for `iotrt up`: a short private runtime root (ipc paths are limited to 107
    bytes, pytest's tmp_path can be long) and a state root in tmp_path."""
    run_root = Path(tempfile.mkdtemp(prefix="iotrt-t", dir="/tmp"))
    yield up_env(run_root, tmp_path / "state")
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
    """up(graph_path, prefix=(), **extra_env) -> Up; every supervisor and node started is
    killed at the end."""
    started: list[Up] = []

    def start(graph: Path, prefix: tuple[str, ...] = (), **extra: str) -> Up:
        u = Up(graph, {**env, **extra}, tmp_path / f"up{len(started)}.log", prefix)
        started.append(u)
        return u

    yield start
    for u in started:
        u.close()
    for marker in tmp_path.glob("*.pids"):      # safety net: no node may outlive a test
        for pid in marker_pids(marker):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
