"""The door end to end under `iotrt up`: faces -> the real rules node -> the lock. Kill the rules
node right after it unlocked the door: the lock re-locks on time by itself."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil

FACES = Path(__file__).parent / "graph_nodes" / "faces.py"

RULES = """
rules:
  - id: owner_unlock
    trigger: {message: faces}
    condition: any(f.name == "owner" and f.score >= 0.8 for f in msg.faces)
    actions:
      - command: lock
        args: {action: unlock, duration_s: 1.5}
"""

GRAPH = f"""
    name: e2e
    supervisor:
      heartbeat_s: 0.5
    nodes:
      - id: cam
        run: {FACES}
      - id: rules
        kind: rules
        params: {{rules: e2e.rules.yaml}}
        inputs: {{faces: cam/faces}}
        restart: never        # stays dead: nobody will ever send "lock"
        critical: false       # ... and the graph keeps running without it
      - id: door
        kind: lock
        commands: {{commands: rules/lock}}
"""


def _node_pid(supervisor_pid: int, node_id: str) -> int | None:
    for child in psutil.Process(supervisor_pid).children():
        try:
            config = json.loads(child.environ().get("IOTRT_NODE_CONFIG", "{}"))
        except (psutil.Error, json.JSONDecodeError):
            continue
        if config.get("id") == node_id:
            return child.pid
    return None


def test_rule_node_killed_after_unlocking_the_lock_relocks_on_time(supervised, h):
    sup = supervised(GRAPH, files={"e2e.rules.yaml": RULES})
    rows = lambda: h.read_jsonl(sup.graph.state_dir / "door.lock.jsonl")  # noqa: E731
    # the pid first: the kill must follow the unlock at once, well within its 1.5 s
    rules_pid = h.wait_for(lambda: _node_pid(sup.proc.pid, "rules"), timeout=60,
                           what="the rules node's pid")
    opened = h.wait_for(lambda: next((r for r in rows() if not r["locked"]), None),
                        timeout=60, what="the rules node to unlock the door")
    os.kill(rules_pid, signal.SIGKILL)
    killed_at = time.monotonic_ns()
    closed = h.wait_for(
        lambda: next((r for r in rows() if r["locked"] and r["mono_ns"] > opened["mono_ns"]),
                     None), timeout=10, what="the lock to re-lock")
    held = (closed["mono_ns"] - opened["mono_ns"]) / 1e9
    assert 1.5 <= held < 2.5, held
    assert killed_at < closed["mono_ns"]  # the rules node was dead before the re-lock
    assert all(r["locked"] for r in rows() if r["mono_ns"] > closed["mono_ns"])
    # The decision trail is in the journal: the rule fired, the lock applied it and re-locked.
    h.wait_for(lambda: sup.journal(kind="actuator_state"), timeout=10, what="the re-lock event")
    assert sup.journal(kind="rule_fired", rule="owner_unlock")
    (applied,) = sup.journal(kind="command_applied", node="door")
    assert applied.fields["src"] == "rules" and applied.fields["result"]["state"] == "unlocked"
