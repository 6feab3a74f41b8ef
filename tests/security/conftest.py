"""Fixtures for the attack tests: a second local user (`nobody`), shared sticky folders like /tmp,
and processes that never leak."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import Up, up_env


@pytest.fixture
def other_user():
    """(uid, gid) of a second local user; the tests that play that user need root to do so."""
    if os.getuid() != 0:
        pytest.skip("playing a second local user needs root (chown, setuid)")
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


@pytest.fixture
def as_other(other_user):
    """as_other(argv) -> CompletedProcess: run a command as the second user."""
    uid, gid = other_user

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                               *argv], capture_output=True, text=True, timeout=30)
    return run


@pytest.fixture
def shared_tmp():
    """A root-owned, world-writable sticky folder under /tmp: a private /tmp of our own."""
    d = Path(tempfile.mkdtemp(prefix="iotrt-s", dir="/tmp"))
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def up(tmp_path):
    """up(graph, runtime_root, **extra_env) -> Up; every supervisor started is killed at the end."""
    started: list[Up] = []

    def start(graph: Path, runtime_root: Path, **extra: str) -> Up:
        env = up_env(runtime_root, tmp_path / "state")
        env.update(extra)
        u = Up(graph, env, tmp_path / f"up{len(started)}.log")
        started.append(u)
        return u
    yield start
    for u in started:
        u.close()
