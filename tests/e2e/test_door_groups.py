"""The shipped door graph with its process groups (issue 12): a kill -9 of the perception group
during an unlock never leaves the lock open past its time (the lock runs alone and re-locks by
itself), the supervisor restarts the group, and the owner is let in again afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import alive, wait_for

from iotrt.control import ControlError, call
from iotrt.graph import load_graph

ROOT = Path(__file__).resolve().parents[2]
DOOR = ROOT / "configs" / "door.yaml"
UNLOCK_S = 5.0          # door.rules.yaml's unlock duration


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _ps(graph) -> dict | None:
    try:
        return call(graph.control_address, "ps")
    except ControlError:
        return None


def _openssl(pid: int) -> set[str]:
    """The OpenSSL libraries the process maps (libssl, libcrypto)."""
    with open(f"/proc/{pid}/maps") as f:
        return {lib for line in f for lib in ("libssl", "libcrypto") if f"/{lib}.so" in line}


def test_killing_perception_during_an_unlock_never_holds_the_door_open(tmp_path):
    run_dir = Path("/tmp") / f"iotrt-grp-{os.getpid()}"       # short: ipc paths max 107 bytes
    env = dict(os.environ, IOTRT_STATE_DIR=str(tmp_path / "state"),
               IOTRT_RUNTIME_DIR=str(run_dir), CAMERA_SOURCE="sim", CAMERA_FPS="15",
               WEB_PORT="0")   # any free port: other graphs may hold 8080
    graph = load_graph(DOOR, environ=env)
    record = graph.state_dir / "lock.lock.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "iotrt", "up", str(DOOR)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: set[int] = set()
    try:
        opened = wait_for(lambda: next((r for r in _rows(record) if r["locked"] is False), None),
                          150, "the owner's first unlock")
        processes = {p["process"]: p for p in _ps(graph)["processes"]}
        # Lean imports: OpenSSL only where TLS is spoken or a token made or checked (the web
        # node makes one at its first start): none in the camera's and the lock's processes,
        # and no libssl in the action process (no TLS configured, nobody scraped /metrics).
        assert _openssl(processes["sensing"]["pid"]) == set()
        assert _openssl(processes["lock"]["pid"]) == set()
        assert "libssl" not in _openssl(processes["action"]["pid"])
        perception = processes["perception"]
        pids.add(perception["pid"])
        os.kill(perception["pid"], signal.SIGKILL)            # mid-unlock
        killed_at = time.monotonic_ns()
        assert killed_at - opened["mono_ns"] < UNLOCK_S * 1e9, "killed after the unlock ended"
        relock = wait_for(lambda: next((r for r in _rows(record) if r["locked"]
                                        and r["mono_ns"] > opened["mono_ns"]), None),
                          UNLOCK_S + 5, "the lock to re-lock by itself")
        assert (relock["mono_ns"] - opened["mono_ns"]) / 1e9 <= UNLOCK_S + 1.0
        back = wait_for(lambda: (r := _ps(graph)) and next(
            (p for p in r["processes"] if p["process"] == "perception"
             and p["state"] == "running" and p["pid"] != perception["pid"]), None),
            60, "the perception group restarted")
        pids.add(back["pid"])
        wait_for(lambda: any(r["locked"] is False and r["mono_ns"] > killed_at
                             for r in _rows(record)), 120, "the owner let in again")
        assert all(p["state"] == "running" for p in _ps(graph)["processes"])
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)
