"""Supervisor benchmark: time from `iotrt up` to every node ready, and the supervisor's idle CPU.

    python bench/startup.py [--nodes 4,16] [--runs 3] [--idle-s 5]

For each size N it writes a graph of N small nodes in 4 layers, like sensing -> perception ->
rules -> actuators (each node publishes a counter at 10 Hz and subscribes to one node of the
layer before, so the bus is live and the start order has 4 steps), runs `python -m iotrt up` with a fake
systemd NOTIFY_SOCKET, and times spawn -> READY=1: what systemd would see. The reference,
measured in the same run, is the floor no supervisor can beat: N bare interpreters started at
once, each importing the node runtime (`import iotrt.node`) and exiting. The ratio says how
much the supervisor (dependency order, ready handshakes, sockets) adds on top of Python start-up.

With the largest N it then leaves the graph running for --idle-s seconds and reports the
supervisor's CPU % (heartbeats, watchdog pings, timers), next to a node's own idle CPU %.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

NODE = '''
from iotrt import Node
from iotrt.spec import NodeSpec, Param

SPEC = NodeSpec(doc="bench node", inputs={"in": "counter"}, outputs={"out": "counter"},
                params=[Param("period_s", float, 0.1, "publish period")])


def main(node):
    node.timer("tick", node.params["period_s"])
    n = 0
    for event in node:
        if event.kind == "timer":
            node.publish("out", {"n": n})
            n += 1


if __name__ == "__main__":
    main(Node())
'''


LAYERS = 4


def write_graph(folder: Path, n: int) -> Path:
    (folder / "bench_node.py").write_text(NODE)
    width = max(1, n // LAYERS)
    lines = [f"name: bench{n}", "nodes:"]
    for i in range(n):
        lines += [f"  - id: n{i}", "    run: bench_node.py"]
        if i >= width:   # fed by the node of the same column one layer up
            lines.append(f"    inputs: {{in: n{i - width}/out}}")
    path = folder / f"bench{n}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def reference(n: int) -> float:
    """N interpreters importing the node runtime, started together: seconds until all exit.

    Each in its own session and with one thread per pool, as the supervisor starts nodes: with
    the kernel's autogroup scheduling, a session is a scheduling group of its own, so on a busy
    machine N sessions get far more CPU than N processes in one session would.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", "import iotrt.node"], env=env,
                              start_new_session=True) for _ in range(n)]
    for p in procs:
        p.wait()
    return time.monotonic() - t0


class Run:
    """`iotrt up` on a graph with a fake systemd notify socket."""

    def __init__(self, graph: Path, work: Path):
        self.notify_path = work / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.run_root = Path(tempfile.mkdtemp(prefix="iotrt-b", dir="/tmp"))
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path),
                   IOTRT_RUNTIME_DIR=str(self.run_root), IOTRT_STATE_DIR=str(work / "state"))
        self.log = open(work / "up.log", "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "iotrt", "up", str(graph)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> float:
        self.sock.settimeout(timeout)
        while True:
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                self.log.flush()
                tail = Path(self.log.name).read_text()[-2000:]
                raise SystemExit(f"no READY=1 within {timeout:g}s; supervisor log:\n{tail}") from None
            if "READY=1" in msg.splitlines():
                return time.monotonic() - self.t0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.log.close()
        self.notify_path.unlink()
        shutil.rmtree(self.run_root, ignore_errors=True)


def cpu_percent(procs: list[psutil.Process], seconds: float) -> list[float]:
    before = [p.cpu_times() for p in procs]
    time.sleep(seconds)   # the measurement window itself, not a wait for a condition
    after = [p.cpu_times() for p in procs]
    return [100.0 * ((a.user + a.system) - (b.user + b.system)) / seconds
            for a, b in zip(after, before)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="4,16", help="graph sizes (default 4,16)")
    ap.add_argument("--runs", type=int, default=3, help="runs per size; medians are printed")
    ap.add_argument("--idle-s", type=float, default=5.0, help="idle CPU window (default 5 s)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.nodes.split(",")]
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {args.runs} runs per size")
    print(f"{'nodes':>5}  {'up -> all ready':>15}  {'reference':>9}  {'ratio':>5}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            work = Path(tmp) / f"n{n}"
            work.mkdir()
            graph = write_graph(work, n)
            ups, refs = [], []
            for r in range(args.runs):
                refs.append(reference(n))
                run = Run(graph, work)
                try:
                    ups.append(run.wait_ready())
                    idle = n == max(sizes) and r == args.runs - 1
                    if idle:
                        sup = psutil.Process(run.proc.pid)
                        nodes = sup.children()
                        time.sleep(1.0)   # let start-up work (first heartbeats, psutil) settle
                        usage = cpu_percent([sup, *nodes], args.idle_s)
                finally:
                    run.stop()
            up, ref = statistics.median(ups), statistics.median(refs)
            print(f"{n:>5}  {up:>14.2f}s  {ref:>8.2f}s  {up / ref:>5.2f}")
        print(f"\nidle with {max(sizes)} nodes over {args.idle_s:g}s: supervisor "
              f"{usage[0]:.2f}% CPU; a node {statistics.median(usage[1:]):.2f}% (median); "
              f"ratio supervisor/node {usage[0] / max(1e-9, statistics.median(usage[1:])):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
