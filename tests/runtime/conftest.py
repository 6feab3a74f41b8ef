"""Fixtures for the runtime tests: short private directories and processes that never leak."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture
def rundir():
    """A short 0700 directory for ipc sockets (pytest's tmp_path can exceed 107 bytes)."""
    d = tempfile.mkdtemp(prefix="iotrt-t-", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Proc:
    """A child process whose stdout lines are collected by a thread, for condition waits."""

    def __init__(self, argv: list[str], env: dict | None = None, cwd: str | None = None):
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})}, cwd=cwd,
        )
        self.lines: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def json_lines(self) -> list:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out

    def wait_for(self, predicate, timeout_s: float = 10.0, what: str = "condition"):
        """Poll `predicate(self)` until it returns a truthy value or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate(self)
            if value:
                return value
            if self.popen.poll() is not None and not predicate(self):
                time.sleep(0.05)  # let the reader threads drain the pipes
                if not predicate(self):
                    break
            time.sleep(0.01)
        raise AssertionError(
            f"timed out waiting for {what}; exit={self.popen.poll()}\n"
            f"stdout: {self.lines[-20:]}\nstderr: {self.err[-30:]}"
        )

    def wait_line(self, text: str, timeout_s: float = 10.0):
        return self.wait_for(lambda p: text in p.lines, timeout_s, f"line {text!r}")

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait_exit(self, timeout_s: float = 10.0) -> int:
        rc = self.popen.wait(timeout_s)
        for t in self._threads:
            t.join(2)
        return rc

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)


@pytest.fixture
def spawn():
    """spawn(argv, env=None) -> Proc; every process is killed at teardown, pass or fail."""
    procs: list[Proc] = []

    def start(argv, env=None, cwd=None) -> Proc:
        p = Proc(argv, env, cwd)
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            p.kill()


@pytest.fixture
def peer(spawn):
    """peer(role, *args) runs tests/runtime/peer.py in a fresh interpreter."""

    def start(role: str, *args) -> Proc:
        return spawn([sys.executable, str(HERE / "peer.py"), role, *map(str, args)])

    return start
