"""Actuator command round trip: client -> actuator -> ack, against raw NNG in the same run.

    python bench/actuators.py [-n 1000] [--json out.json]

For a burst of N commands sent back to back from this process, it prints p50/p99 round-trip
latency of:

1. raw pynng Req0 -> Rep0 echo in another process (the reference: what NNG itself costs);
2. the acknowledged command channel, iotrt.command, to a server that acks at once: each id is
   written to its append-only id store before the handler sees it and put on disk by the
   store's syncer thread (group commit, one fdatasync for what was written since the last);
   target p50 <= 1.0 ms and p99 <= 3 ms (it cost 3.3 / 12.5 ms with two fsyncs per id);
3. the door lock actuator node (sim driver) under the real supervisor (`iotrt up`), which writes
   each command to the journal (SQLite WAL, synchronous=FULL) before the lock acks it: the full
   path a rule's unlock takes;
4. the same lock node launched alone with no journal (what the durable journal write costs).

All sockets are ipc:// in a temporary folder. Each stage is a fresh set of processes.
Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

PAYLOAD = {"action": "unlock", "duration_s": 5.0, "rule": "owner_unlock", "person": "ana"}

_RAW_ECHO = textwrap.dedent("""
    import sys, pynng
    with pynng.Rep0(listen=sys.argv[1]) as sock:
        print("listening", flush=True)
        while True:
            sock.send(sock.recv())
""")

_CHANNEL_ECHO = textwrap.dedent("""
    import sys
    from iotrt.command import CommandServer
    with CommandServer(sys.argv[1], store_path=sys.argv[2]) as server:
        print("listening", flush=True)
        while True:
            server.recv().reply({"state": "unlocked"})
""")

class Stage:
    """The processes of one measurement; all killed on exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen] = []

    def spawn(self, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env,
                                cwd=self.root)
        self.procs.append(proc)
        return proc

    def expect(self, proc: subprocess.Popen, line: str) -> None:
        got = proc.stdout.readline().strip()
        if got != line:
            raise RuntimeError(f"expected {line!r} from {proc.args[:3]}, got {got!r} "
                               f"(exit status {proc.poll()})")

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def _percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]


def _burst_raw(address: str, n: int) -> list[float]:
    import pynng

    from iotrt.codec import pack, unpack

    times = []
    with pynng.Req0(dial=address, recv_timeout=5000, send_timeout=5000) as sock:
        for i in range(n + 50):
            body = pack({"id": uuid.uuid4().hex, "src": "bench", "t_ns": time.monotonic_ns(),
                         "data": PAYLOAD})
            t0 = time.perf_counter()
            sock.send(body)
            unpack(sock.recv())
            if i >= 50:  # the first 50 warm up the connection and the caches
                times.append(time.perf_counter() - t0)
    return times


def _burst_commands(address: str, n: int, commands: list[dict]) -> list[float]:
    from iotrt.command import CommandClient

    times = []
    with CommandClient(address, src="bench") as client:
        for i in range(n + 50):
            t0 = time.perf_counter()
            ack = client.call(commands[i % len(commands)], timeout_s=5.0, retries=2)
            if not ack.get("ok"):
                raise RuntimeError(f"command refused: {ack}")
            if i >= 50:
                times.append(time.perf_counter() - t0)
    return times


LOCK_PARAMS = {"max_unlock_s": 30.0}
TARGET_P50_MS, TARGET_P99_MS = 1.0, 3.0  # the command channel (issue 19)


def _wait_file(path: Path, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.stat().st_size):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[:4]} did not start (exit status {proc.poll()})")
        time.sleep(0.05)


def _lock_supervised(stage: Stage) -> str:
    """`iotrt up` a one-node graph; returns the lock's command address."""
    from iotrt.graph import load_graph

    root = stage.root
    env = {**os.environ, "IOTRT_RUNTIME_DIR": str(root / "run"),
           "IOTRT_STATE_DIR": str(root / "state")}
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(key, None)
    path = root / "bench.yaml"
    path.write_text(f"name: bench\nnodes:\n  - id: door\n    kind: lock\n"
                    f"    params: {json.dumps(LOCK_PARAMS)}\n")
    graph = load_graph(path, environ=env)
    up = subprocess.Popen([sys.executable, "-m", "iotrt", "up", str(path), "--log-level",
                           "WARNING"], env=env, cwd=root, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    stage.procs.append(up)
    _wait_file(graph.state_dir / "door.lock.jsonl", up)
    return graph.command_address("door", "commands")


def _lock_alone(stage: Stage) -> str:
    """The lock launched as the supervisor would, but with no supervisor and no journal."""
    root = stage.root
    cmd = f"ipc://{root}/door.cmd"
    config = {"graph": "bench", "id": "door", "kind": "lock", "target": "iotrt.nodes.action.lock",
              "params": {**LOCK_PARAMS, "sim_file": str(root / "door.jsonl")},
              "outputs": {"state": {"address": f"ipc://{root}/door.state", "topic": "door/state"}},
              "commands_in": {"commands": {"address": cmd}},
              "supervisor": None, "journal": None,
              "state_dir": str(root), "runtime_dir": str(root), "log_level": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "iotrt.launch"], cwd=root,
                            env={**os.environ, "IOTRT_NODE_CONFIG": json.dumps(config)})
    stage.procs.append(proc)
    _wait_file(root / "door.jsonl", proc)
    return cmd


def run(n: int) -> list[dict]:
    commands = [PAYLOAD, {"action": "lock"}]
    results = []
    stages = [
        ("raw pynng Req0/Rep0", "raw"),
        ("command channel (ids on disk)", "channel"),
        ("lock under iotrt up, journaled", "lock"),
        ("lock alone, no journal", "lock-alone"),
    ]
    for label, key in stages:
        print(f"  {label}: {n} commands ...", file=sys.stderr, flush=True)
        root = Path(tempfile.mkdtemp(prefix="iotrt-bench-", dir="/tmp"))
        try:
            with Stage(root) as stage:
                address = f"ipc://{root}/srv"
                if key == "raw":
                    stage.expect(stage.spawn([sys.executable, "-c", _RAW_ECHO, address]),
                                 "listening")
                    times = _burst_raw(address, n)
                elif key == "channel":
                    stage.expect(stage.spawn([sys.executable, "-c", _CHANNEL_ECHO, address,
                                              str(root / "ids")]), "listening")
                    times = _burst_commands(address, n, commands)
                else:
                    address = _lock_supervised(stage) if key == "lock" else _lock_alone(stage)
                    times = _burst_commands(address, n, commands)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        p50, p99 = _percentiles(times)
        results.append({"stage": label, "n": len(times), "p50_ms": p50 * 1e3,
                        "p99_ms": p99 * 1e3})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="commands per burst (default 1000)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    print(f"command round trip, {args.n} commands back to back, ipc:// on one host "
          f"({os.cpu_count()} cores)", flush=True)
    results = run(args.n)
    ref = results[0]
    print(f"{'stage':34} {'p50 ms':>8} {'p99 ms':>8} {'p50 x raw':>10} {'p99 x raw':>10}")
    for r in results:
        print(f"{r['stage']:34} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} "
              f"{r['p50_ms'] / ref['p50_ms']:10.1f} {r['p99_ms'] / ref['p99_ms']:10.1f}")
    channel = results[1]
    met = [channel["p50_ms"] <= TARGET_P50_MS, channel["p99_ms"] <= TARGET_P99_MS]
    print(f"\ntargets for the command channel: p50 {channel['p50_ms']:.3f} ms <= "
          f"{TARGET_P50_MS} ms {'met' if met[0] else 'MISSED'}; p99 {channel['p99_ms']:.3f} ms "
          f"<= {TARGET_P99_MS} ms {'met' if met[1] else 'MISSED'} (load average "
          f"{os.getloadavg()[0]:.1f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
