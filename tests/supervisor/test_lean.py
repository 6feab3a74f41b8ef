"""Lean imports (issue 12): the supervisor process and a light node (the lock) never import numpy
or cv2; no process of the door graph loads OpenSSL's TLS (pynng's asyncio, which imports ssl,
is deferred) except the action group, whose web page serves HTTP; a Home Assistant bridge
with no broker ends instead of reading frames; `iotrt up` validates the graph (which imports
node modules), then execs a lean supervisor with the same pid. Read from the running graph's
/proc/PID/maps: what a process has loaded, not what a test believes it imports."""

from __future__ import annotations

import os
import ssl  # noqa: F401 - loaded in this process: the check below must find it here
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
    for name, pid in (("supervisor", u.proc.pid), *procs.items()):
        if name != "action":     # web's http.server imports http.client, which imports ssl
            assert _TLS not in _maps(pid), f"{name} loaded the ssl module (OpenSSL's TLS)"
    assert _TLS in _maps(os.getpid())          # the check can see a loaded ssl
    assert psutil.Process(u.proc.pid).cmdline()[1:3] == ["-m", "iotrt.supervise"]
    # the bridge has no broker (MQTT_HOST unset): it ended and reads no frames, while the
    # snapshot node next to it in the action process does
    u.wait_log("node homeassistant is done (returned by itself); its process runs on")
    rows = h.wait_for(lambda: (r := _ps(graph)) and (rows := {n["node"]: n for n in r["nodes"]})
                      and rows["snapshot"]["in_per_s"] > 0 and rows, 60, "snapshot reading frames")
    assert rows["homeassistant"]["process"] == rows["snapshot"]["process"] == "action"
    assert rows["homeassistant"]["in_per_s"] == 0


_TLS = "/_ssl."         # the ssl module's extension (_ssl.cpython-3XX-....so)


def _ps(graph):
    try:
        return call(graph.control_address, "ps")
    except ControlError:      # not answering yet
        return None


def test_the_lean_entry_refuses_to_run_by_hand():
    out = subprocess.run([sys.executable, "-m", "iotrt.supervise", "x.yaml", "INFO"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "started by 'iotrt up GRAPH'" in out.stderr
