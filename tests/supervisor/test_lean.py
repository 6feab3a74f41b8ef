"""Lean imports (issue 12): the supervisor process and a light node (the lock) never import numpy
or cv2; `iotrt up` validates the graph (which imports node modules), then execs a lean
supervisor with the same pid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from iotrt.control import ControlError, call
from iotrt.graph import load_graph

DOOR = Path(__file__).resolve().parents[2] / "configs" / "door.yaml"


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_supervisor_and_lock_processes_load_neither_numpy_nor_cv2(up, env, h):
    u = up(DOOR, CAMERA_SOURCE="sim", CAMERA_FPS="5", WEB_PORT="0")
    graph = load_graph(DOOR, environ={**env, "CAMERA_SOURCE": "sim"})
    reply = h.wait_for(lambda: (r := _ps(graph)) and r["state"] == "running" and r, 120,
                       "the door graph running")
    assert reply["pid"] == u.proc.pid                   # exec kept the pid systemd knows
    procs = {p["process"]: p["pid"] for p in reply["processes"]}
    for name, pid in (("supervisor", u.proc.pid), ("lock", procs["lock"])):
        maps = _maps(pid)
        assert "numpy" not in maps and "cv2" not in maps, f"{name} maps numpy or cv2"
    assert "cv2" in _maps(procs["perception"])          # the check can see a loaded cv2
    assert psutil.Process(u.proc.pid).cmdline()[1:3] == ["-m", "iotrt.supervise"]


def _ps(graph):
    try:
        return call(graph.control_address, "ps")
    except ControlError:      # not answering yet
        return None


def test_the_lean_entry_refuses_to_run_by_hand():
    out = subprocess.run([sys.executable, "-m", "iotrt.supervise", "x.yaml", "INFO"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "started by 'iotrt up GRAPH'" in out.stderr
