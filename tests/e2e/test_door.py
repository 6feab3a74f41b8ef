"""The product as a user meets it: `iotrt up configs/door.yaml` on the sim camera.

Within one cycle of the simulated doorstep the journal (read with `iotrt events`, as a user
would) must show a face seen, the owner recognised, the unlock rule firing, the lock unlocking
and re-locking by itself, and a visitor announced (rule, notification, snapshot) without an
unlock; then SIGTERM stops the graph cleanly and leaves no node process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOOR = ROOT / "configs" / "door.yaml"


def events(env: dict) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "iotrt", "events", str(DOOR), "--json", "-n", "100000"],
                         env=env, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:      # no journal yet: the supervisor is still starting
        return []
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def seen(evs: list[dict]) -> dict[str, bool]:
    def any_of(kind, node=None, **fields):
        return any(e["kind"] == kind and (node is None or e["node"] == node)
                   and all(pred(e["fields"].get(k)) for k, pred in fields.items()) for e in evs)

    return {
        "face detected": any_of("faces_seen", "who", faces=lambda n: (n or 0) > 0),
        "owner recognised": any_of("faces_seen", "who", known=lambda k: "owner" in (k or [])),
        "unlock rule fired": any_of("rule_fired", "rules", rule=lambda r: r == "unlock_for_enrolled"),
        "lock unlocked": any_of("command_applied", "lock",
                                result=lambda r: (r or {}).get("state") == "unlocked"),
        "lock re-locked on time": any_of("actuator_state", "lock", locked=lambda v: v is True,
                                         cause=lambda c: c == "timeout"),
        "visitor rule fired": any_of("rule_fired", "rules", rule=lambda r: r == "visitor"),
        "visitor notified": any_of("command_applied", "doorbell"),
        "visitor snapshot": any_of("command_applied", "snapshot",
                                   result=lambda r: str((r or {}).get("path", "")).endswith(".jpg")),
    }


@pytest.fixture
def door_env(tmp_path):
    run_dir = Path("/tmp") / f"iotrt-e2e-{os.getpid()}"     # short: ipc paths max 107 bytes
    env = dict(os.environ, IOTRT_STATE_DIR=str(tmp_path / "state"),
               IOTRT_RUNTIME_DIR=str(run_dir), CAMERA_SOURCE="sim", CAMERA_FPS="15",
               WEB_PORT="0")   # any free port: other graphs may run on this machine
    yield env
    subprocess.run(["rm", "-rf", str(run_dir)], check=False)


def test_door_graph_end_to_end(door_env):
    proc = subprocess.Popen([sys.executable, "-m", "iotrt", "up", str(DOOR)], env=door_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    node_pids: set[int] = set()
    try:
        deadline = time.monotonic() + 150
        status: dict[str, bool] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            evs = events(door_env)
            status = seen(evs)
            if all(status.values()):
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"iotrt up exited early:\n{proc.stdout.read()[-4000:]}"
        assert all(status.values()), f"missing from iotrt events: " \
            f"{[k for k, v in status.items() if not v]}"

        # The visitor never opened the door: every unlock was for an enrolled person.
        evs = events(door_env)
        unlocks = [e for e in evs if e["kind"] == "command_applied" and e["node"] == "lock"
                   and e["fields"]["command"].get("action") == "unlock"]
        assert unlocks and all(e["fields"]["command"].get("who") == "owner" for e in unlocks)
        node_pids = {e["fields"]["pid"] for e in evs
                     if e["kind"] == "lifecycle" and e["fields"].get("pid")}

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        out = proc.stdout.read()
        assert "sim" in out.lower()
        alive = [p for p in node_pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"node processes left after SIGTERM: {alive}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in node_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
