"""Web node benchmark: what watching the door costs the door.

    python bench/web.py [--seconds 20] [--fps 30]

One `iotrt up` of the door graph (configs/door.yaml) on the sim camera (640x480 at --fps), the
web node on a free port and in a process of its own (the shipped graph groups it with the clip
recorder, whose CPU would hide it; the copy in a temporary folder drops its `process:` line).
Three windows of --seconds each, in one run:
1. nobody looks: detector rate (detections/s, read from the bus) and the web node's CPU (from
   /proc);
2. one viewer of the live video at 10 fps (an MJPEG client reading every frame);
3. nobody looks again (the viewer left: the web node must be back to idle).
The detector's reference rate is the mean of windows 1 and 3 (after a 5 s warm-up), so a drift
of the machine's load during the run does not pass for the viewer's cost.

Targets: with the viewer, the detector's rate drops <= 5 % against window 1 and the web node
uses <= 15 % of one core; with no viewer it uses <= 0.5 %.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import psutil

from iotrt.bus import Subscriber
from iotrt.control import call
from iotrt.graph import load_graph
from iotrt.journal import JournalError, JournalReader

ROOT = Path(__file__).resolve().parents[1]
VIEWER_FPS = 10


def wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def listening_url(journal: Path) -> str | None:
    try:
        with JournalReader(journal) as j:
            evs = j.query(kind="web_listening")
    except JournalError:
        return None
    return evs[-1].fields["url"] if evs else None


class Viewer:
    """One MJPEG client reading every frame in a thread."""

    def __init__(self, url: str, token: str):
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
        self.conn.request("GET", f"/video/cam/image?fps={VIEWER_FPS}",
                          headers={"Authorization": f"Bearer {token}"})
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            raise SystemExit(f"video: HTTP {self.resp.status}")
        self.frames = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        fp = self.resp.fp
        try:
            while not self.stop.is_set():
                line = fp.readline()
                if not line:
                    return
                if line.startswith(b"--"):
                    length = 0
                    while h := fp.readline().strip():
                        k, _, v = h.decode().partition(":")
                        length = int(v) if k.lower() == "content-length" else length
                    fp.read(length)
                    self.frames += 1
        except (OSError, ValueError):
            # close() closes the response under a read in progress (ValueError: I/O operation
            # on closed file): the viewer left. Before that, the error is the stream's.
            if not self.stop.is_set():
                raise

    def close(self) -> None:
        self.stop.set()
        self.resp.close()
        self.conn.close()
        self.thread.join(5)


def alone(configs: Path, into: Path) -> Path:
    """A copy of the configs folder whose door graph runs the web node in its own process."""
    shutil.copytree(configs, into)
    door = into / "door.yaml"
    text = door.read_text()
    block = re.search(r"^  - id: web\n(?:    .*\n|\n)*", text, re.M)
    if block is None:
        raise SystemExit(f"{configs / 'door.yaml'} has no web node")
    door.write_text(text[:block.start()]
                    + re.sub(r"^    process: .*\n", "", block.group(0), flags=re.M)
                    + text[block.end():])
    return door


def window(det: Subscriber, web: psutil.Process, seconds: float) -> tuple[float, float]:
    """(detections per second, web node CPU % of one core) over `seconds`."""
    while det.recv_nowait() is not None:
        pass
    c0, t0, n = web.cpu_times(), time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        if det.recv(timeout_s=0.2) is not None:
            n += 1
    wall = time.monotonic() - t0
    c1 = web.cpu_times()
    return n / wall, 100.0 * ((c1.user - c0.user) + (c1.system - c0.system)) / wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each window")
    ap.add_argument("--fps", type=float, default=30.0, help="camera frame rate")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="iotrt-web-") as tmp:
        graph_path = alone(ROOT / "configs", Path(tmp) / "configs")
        env = dict(os.environ, IOTRT_STATE_DIR=f"{tmp}/state", IOTRT_RUNTIME_DIR=f"{tmp}/run",
                   CAMERA_SOURCE="sim", CAMERA_FPS=str(args.fps), WEB_PORT="0")
        graph = load_graph(graph_path, environ=env)
        proc = subprocess.Popen([sys.executable, "-m", "iotrt", "up", str(graph_path)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        det = Subscriber(graph.topics()["faces/detections"], queue=256)
        try:
            url = wait(lambda: listening_url(graph.journal_path), 120, "the web node")
            token = (graph.state_dir / "web.token").read_text().strip()
            needed = {"cam", "faces", "web"}
            rows = wait(lambda: (r := call(graph.control_address, "ps")["nodes"])
                        and needed <= {n["node"] for n in r if n["state"] == "running"} and r,
                        120, f"{', '.join(sorted(needed))} running")
            web_row = next(n for n in rows if n["node"] == "web")
            if sum(n["pid"] == web_row["pid"] for n in rows) > 1:
                raise SystemExit("the web node shares its process: its CPU cannot be told apart")
            web = psutil.Process(web_row["pid"])
            wait(lambda: det.recv(timeout_s=0.5) is not None, 60, "detections")
            print(f"door graph, sim camera 640x480 @ {args.fps:g} fps, web at {url}, "
                  f"{os.cpu_count()} CPUs; windows of {args.seconds:g} s", flush=True)
            window(det, web, 5.0)                      # warm-up: caches, first clients
            rate1, idle_cpu = window(det, web, args.seconds)
            viewer = Viewer(url, token)
            try:
                wait(lambda: viewer.frames > 0, 20, "the first video frame")
                f0 = viewer.frames
                rate, view_cpu = window(det, web, args.seconds)
                got = (viewer.frames - f0) / args.seconds
            finally:
                viewer.close()
            rate3, after_cpu = window(det, web, args.seconds)
        finally:
            det.close()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    ref_rate = (rate1 + rate3) / 2
    drop = 100.0 * (1 - rate / ref_rate) if ref_rate else float("nan")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"
    print(f"{'window':40s} {'detector/s':>10s} {'vs ref':>8s} {'web CPU %':>10s}")
    print(f"{'1. nobody looks':40s} {rate1:10.2f} {rate1 / ref_rate:8.3f} {idle_cpu:10.2f}")
    print(f"{f'2. one viewer at {VIEWER_FPS} fps ({got:.1f} fps seen)':40s} {rate:10.2f} "
          f"{rate / ref_rate:8.3f} {view_cpu:10.2f}")
    print(f"{'3. nobody looks again':40s} {rate3:10.2f} {rate3 / ref_rate:8.3f} "
          f"{after_cpu:10.2f}")
    print(f"reference (mean of 1 and 3): {ref_rate:.2f} detections/s")
    print(f"detector rate drop with a viewer: {drop:.1f} % (target <= 5 %: {verdict(drop <= 5)})")
    print(f"web node with a viewer: {view_cpu:.1f} % of a core (target <= 15 %: "
          f"{verdict(view_cpu <= 15)})")
    idle = max(idle_cpu, after_cpu)
    print(f"web node with no viewer: {idle:.2f} % of a core (target <= 0.5 %: "
          f"{verdict(idle <= 0.5)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
