"""Home Assistant bridge: event -> MQTT publish latency, and the bridge's CPU at the door's rates.

    python bench/mqtt.py [--seconds 20] [--json out.json]

A graph under the real supervisor (`iotrt up`) with a real mosquitto on a free loopback port:

- a feeder node plays the door graph at its rates: camera frames 640x480 RGB at 30 fps (the
  bridge keeps the newest for its snapshot), identity `faces` at 30 Hz (the name changes every
  second, so the who/faces sensors really publish), the lock's `state` at 1 Hz (as the lock node
  republishes it), and a rules event every 0.5 s carrying its send time;
- the `homeassistant` bridge node, wired to all of them (each event also makes a JPEG snapshot);
- this process subscribes to the broker and times each event from the feeder's publish to its
  arrival over MQTT (one host, one monotonic clock).

Reference, measured in the same run: the same feeder process publishing each event straight to
the broker with paho (no graph, no bridge): what MQTT itself costs. Bridge CPU is the bridge
process's user+system time over the measured window, in % of one core; target <= 2 %. A third
stage runs the bridge with no host (off, as the door graph ships): what it costs doing nothing.
Progress goes to stderr, the table to stdout. Needs mosquitto (Debian: apt install mosquitto).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
from paho.mqtt import client as mqtt

from iotrt.control import call
from iotrt.graph import load_graph

CPU_TARGET_PCT = 2.0
EVENT_PERIOD_S = 0.5   # the feeder's "event" timer below

FEEDER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from iotrt import Node
    from iotrt.node import NodeSpec, Param

    SPEC = NodeSpec(outputs={"image": "", "faces": "", "state": "", "events": ""},
                    params=[Param("direct_port", int, 0)])
    node = Node(spec=SPEC)
    direct = None
    if node.params["direct_port"]:
        from paho.mqtt import client as mqtt
        direct = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        direct.connect("127.0.0.1", node.params["direct_port"])
        direct.loop_start()
    node.timer("frame", 1 / 30)
    node.timer("lock", 1.0)
    node.timer("event", 0.5)
    n = 0
    for event in node:
        now = time.monotonic_ns()
        if event.timer == "frame":
            n += 1
            frame = node.loan("image", (480, 640, 3))
            frame[:] = n % 255
            node.publish("image", frame, stamp_ns=now)
            name = ("ana", "unknown", "none")[(n // 30) % 3]
            faces = [] if name == "none" else [{"name": name, "score": 0.9, "known": name == "ana",
                                                 "box": [1, 2, 3, 4]}]
            node.publish("faces", {"faces": faces}, stamp_ns=now)
        elif event.timer == "lock":
            node.publish("state", {"locked": (n // 60) % 2 == 0, "relock_in_s": None,
                                   "cause": "periodic"}, stamp_ns=now)
        elif event.timer == "event":
            if direct is not None:
                direct.publish("bench/direct", json.dumps({"sent_ns": now}), qos=1)
            else:
                node.publish("events", {"event": "visitor", "sent_ns": now}, stamp_ns=now)
""")

GRAPH = """
name: mqttbench
supervisor: {{heartbeat_s: 1.0}}
nodes:
  - id: door
    run: feeder.py
    params: {{direct_port: {direct}}}
    outputs: [image, faces, state, events]
{bridge}
"""

BRIDGE = """
  - id: homeassistant
    kind: homeassistant
    params:
      host: 127.0.0.1
      port: {port}
      device_id: mqttbench
      event_types: [visitor]
    inputs:
      lock: door/state
      events: door/events
      faces: door/faces
      image: {{from: door/image, queue: 1}}
    outputs: [commands]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"bench/mqtt.py: timed out waiting for {what}")


class Latencies:
    """Subscribes to a topic; records (arrival - sent_ns) of each JSON message, in ms."""

    def __init__(self, port: int, topic: str) -> None:
        self.ms: list[float] = []
        self.recording = False
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait(self.subscribed.is_set, 10, f"a subscription to {topic}")

    def _message(self, client, userdata, msg) -> None:
        now = time.monotonic_ns()
        if self.recording:
            self.ms.append((now - json.loads(msg.payload)["sent_ns"]) / 1e6)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def stage(tmp: Path, port: int, seconds: float, direct: bool, off: bool = False) -> dict:
    label = ("direct paho publish (reference)" if direct else
             "bridge off (no host)" if off else "feeder -> bridge node -> MQTT")
    print(f"  {label}: {seconds:g} s ...", file=sys.stderr, flush=True)
    folder = tmp / ("direct" if direct else "off" if off else "bridge")
    folder.mkdir()
    (folder / "feeder.py").write_text(FEEDER)
    graph = folder / "mqttbench.yaml"
    bridge = BRIDGE.format(port=port)
    if off:
        bridge = bridge.replace("host: 127.0.0.1", 'host: ""')
    graph.write_text(GRAPH.format(direct=port if direct else 0, bridge="" if direct else bridge))
    env = {**os.environ, "IOTRT_RUNTIME_DIR": str(folder / "run"),
           "IOTRT_STATE_DIR": str(folder / "state")}
    env.pop("NOTIFY_SOCKET", None)
    topic = "bench/direct" if direct else "iotrt/mqttbench/event/events"
    sub = Latencies(port, topic)
    log = open(folder / "up.log", "w")
    up = subprocess.Popen([sys.executable, "-m", "iotrt", "up", str(graph)], env=env,
                          stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    try:
        ctl = load_graph(graph, environ=env).control_address
        wait(lambda: "nodes up in" in (folder / "up.log").read_text(), 60, "the graph")
        time.sleep(2.0)     # warm-up: connections made, discovery published, first snapshot
        node = "door" if direct else "homeassistant"
        pid = next(r["pid"] for r in call(ctl, "ps")["nodes"] if r["node"] == node)
        proc = psutil.Process(pid)
        c0, t0 = proc.cpu_times(), time.monotonic()
        sub.recording = True
        time.sleep(seconds)     # the measurement window: rates are the feeder's own timers
        sub.recording = False
        c1, t1 = proc.cpu_times(), time.monotonic()
        cpu = 100 * ((c1.user - c0.user) + (c1.system - c0.system)) / (t1 - t0)
    finally:
        up.terminate()
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        log.close()
        sub.close()
    if off:
        return {"stage": label, "cpu_pct": cpu, "process": node}
    # At least 5 events, or half of what the window holds if it is shorter (a smoke run's 1 s
    # holds 2): fewer means the path is broken, not slow.
    need = max(1, min(5, int(seconds / EVENT_PERIOD_S) // 2))
    if len(sub.ms) < need:
        # the log's folder is deleted on the way out: its tail goes into the message
        tail = (folder / "up.log").read_text()[-3000:]
        raise SystemExit(f"bench/mqtt.py: only {len(sub.ms)} events arrived; iotrt up's log "
                         f"ends:\n{tail}")
    return {"stage": label, "events": len(sub.ms), "p50_ms": pct(sub.ms, 50),
            "p99_ms": pct(sub.ms, 99), "cpu_pct": cpu, "process": node}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window per stage")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if mosquitto is None:
        print("bench/mqtt.py: needs mosquitto (apt install mosquitto)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="iotrt-mqtt-bench-") as tmp:
        port = free_port()
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            wait(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 10, "mosquitto")
            ref = stage(Path(tmp), port, args.seconds, direct=True)
            bridge = stage(Path(tmp), port, args.seconds, direct=False)
            off = stage(Path(tmp), port, args.seconds, direct=False, off=True)
        finally:
            broker.kill()
            broker.wait()
    print(f"event -> MQTT latency and bridge CPU, door rates (frames 640x480 and faces at 30 Hz, "
          f"lock state 1 Hz, an event every {EVENT_PERIOD_S:g} s), {args.seconds:g} s per stage, "
          f"one host")
    print(f"{'stage':34} {'events':>6} {'p50 ms':>8} {'p99 ms':>8} {'p50 x ref':>10} "
          f"{'p99 x ref':>10}")
    for r in (ref, bridge):
        print(f"{r['stage']:34} {r['events']:6d} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['p50_ms'] / ref['p50_ms']:10.2f} {r['p99_ms'] / ref['p99_ms']:10.2f}")
    met = bridge["cpu_pct"] <= CPU_TARGET_PCT
    print(f"bridge CPU: {bridge['cpu_pct']:.2f} % of one core (target <= {CPU_TARGET_PCT:g} %: "
          f"{'met' if met else 'MISSED'}); the feeder, for scale: {ref['cpu_pct']:.2f} %")
    print(f"bridge off (host empty, inputs still wired): {off['cpu_pct']:.2f} % of one core")
    if args.json:
        args.json.write_text(json.dumps({"reference": ref, "bridge": bridge, "off": off,
                                         "cpu_target_pct": CPU_TARGET_PCT, "met": met},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
