"""Issue 13 item 4: a frozen lock process (SIGSTOP) must not hold the door open past its cap.

The re-lock timer lives in the lock's process, so freezing that process froze the re-lock: a
5 s unlock stayed open 13 s (the heartbeat timeout, then SIGTERM, then the stop grace) against
`max_unlock_s: 10`. The lock now reports each unlock's end to the supervisor before it opens;
the supervisor SIGKILLs a lock that has not re-locked by then (+0.5 s), so the kernel releases
the GPIO line (wired: released = locked) and the restarted lock starts locked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from helpers import Up, alive, up_env, wait_for

from iotrt.command import CommandClient
from iotrt.graph import load_graph
from iotrt.journal import JournalReader
from iotrt.node import TestNode

GRAPH = """
    name: frozen
    supervisor:
      backoff: {initial_s: 0.1}
    nodes:
      - id: door
        kind: lock
        params: {max_unlock_s: 10}
        restart: always
"""


@pytest.fixture
def root():
    path = Path(tempfile.mkdtemp(prefix="iotrt-frz-", dir="/tmp"))   # short ipc paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_frozen_lock_is_locked_by_its_deadline(root):
    g = root / "g.yaml"
    g.write_text(textwrap.dedent(GRAPH))
    env = up_env(root / "run", root / "state")
    graph = load_graph(g, environ=env)
    record = graph.state_dir / "door.lock.jsonl"
    up = Up(g, env, root / "up.log")
    pids: set[int] = set()
    try:
        first = wait_for(lambda: _rows(record), 30, "the lock to start")[0]
        pids.add(first["pid"])
        with CommandClient(graph.command_address("door", "commands")) as client:
            ack = client.call({"action": "unlock", "duration_s": 5}, timeout_s=2.0)
        t_unlock = time.monotonic()
        assert ack["ok"] and ack["state"] == "unlocked"
        os.kill(first["pid"], signal.SIGSTOP)              # frozen, re-lock timer and all
        wait_for(lambda: not alive(first["pid"]), 7.0, "the supervisor's backstop kill")
        killed_after = time.monotonic() - t_unlock
        assert killed_after <= 6.0, f"killed {killed_after:.2f}s after a 5 s unlock"
        back = wait_for(lambda: next((r for r in _rows(record) if r["pid"] != first["pid"]),
                                     None), 11 - killed_after, "the restarted lock, locked")
        pids.add(back["pid"])
        assert back["locked"] is True
        assert back["mono_ns"] / 1e9 - t_unlock <= 11.0
        up.wait_log("missed its safety deadline")
        with JournalReader(graph.journal_path) as reader:
            states = [e.fields for e in reader.query(kind="lifecycle", node="door")]
        assert any("missed its safety deadline" in s["reason"] for s in states)
    finally:
        up.close()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_an_unlock_is_refused_when_the_backstop_cannot_be_armed():
    from iotrt.nodes.action import lock

    t = TestNode(lock, params={"sim_file": "/dev/null"})
    t.fake.deadline = lambda in_s: False               # the supervisor did not acknowledge
    t.feed_command("commands", {"action": "unlock", "duration_s": 3}).run()
    assert t.acks[-1]["ok"] is False and "backstop" in t.acks[-1]["error"]


def test_the_lock_arms_before_unlocking_and_disarms_after_relocking(tmp_path):
    from iotrt.nodes.action.lock import Lock, SimLock

    calls: list = []
    clock = [0.0]
    lk = Lock(SimLock(tmp_path / "l.jsonl"), 10.0, clock=lambda: clock[0])
    lk.deadline = lambda in_s: calls.append((in_s, lk.locked)) or True
    lk.apply({"action": "unlock", "duration_s": 30})
    assert calls == [(10.0, True)]                     # capped, and reported while still locked
    clock[0] = 10.0
    lk.check()
    assert calls[-1] == (None, True)
