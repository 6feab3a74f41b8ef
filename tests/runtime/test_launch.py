"""Nodes as real processes started like the supervisor does: `python -m iotrt.launch`."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pynng
import pytest

from iotrt.bus import Subscriber, short_ipc_address
from iotrt.codec import Envelope, encode
from iotrt.command import CommandClient, CommandServer
from iotrt.protocol import ENV_CONFIG, ENV_SUPERVISOR_PID, NodeConfig, parse_message

HERE = Path(__file__).resolve().parent


def launch(spawn, config: NodeConfig, **env):
    return spawn([sys.executable, "-m", "iotrt.launch"],
                 env={ENV_CONFIG: config.to_json(), "PYTHONPATH": str(HERE), **env})


class FakeSupervisor:
    """The supervisor's Pull0 and journal server, collecting what nodes send."""

    def __init__(self, rundir: Path):
        self.address = short_ipc_address(rundir, "g", "_sup", "pull")
        self.journal_address = short_ipc_address(rundir, "g", "_sup", "journal")
        self.pull = pynng.Pull0(listen=self.address, recv_timeout=100)
        self.journal = CommandServer(self.journal_address)
        self.messages: list[dict] = []
        self.arrivals: list[float] = []  # when each message was taken off the socket
        self.records: list[dict] = []

    def pump(self) -> None:
        while True:
            try:
                self.messages.append(parse_message(self.pull.recv(block=False)))
                self.arrivals.append(time.monotonic())
            except pynng.TryAgain:
                break
        cmd = self.journal.recv_nowait()
        if cmd is not None:
            self.records.append(cmd.data)
            cmd.reply()

    def wait(self, predicate, timeout_s=10.0, what="message"):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump()
            found = [m for m in self.messages if predicate(m)]
            if found:
                return found
            time.sleep(0.005)
        raise AssertionError(f"timed out waiting for {what}; got {self.messages[-5:]}")

    def close(self):
        self.pull.close()
        self.journal.close()


@pytest.fixture
def sup(rundir):
    s = FakeSupervisor(rundir)
    try:
        yield s
    finally:
        s.close()


def relay_config(rundir: Path, sup: FakeSupervisor, **kw) -> NodeConfig:
    a = lambda port: {"address": short_ipc_address(rundir, "g", "relay", port)}  # noqa: E731
    return NodeConfig.from_json(json.dumps({
        "graph": "g", "id": "relay", "target": "sample_nodes:relay",
        "params": {"tag": "T"},
        "inputs": {"in": {**a("upstream"), "topic": "up/out", "queue": 16}},
        "outputs": {"out": {**a("out"), "topic": "relay/out"}},
        "commands_in": {"cmd": a("cmd")},
        "supervisor": sup.address, "journal": sup.journal_address,
        "heartbeat_s": 0.1, "runtime_dir": str(rundir), "state_dir": str(rundir / "state"),
        **kw,
    }))


def test_node_process_protocol_end_to_end(rundir, sup, spawn):
    cfg = relay_config(rundir, sup)
    upstream = pynng.Pub0(listen=cfg.inputs["in"].address)
    out = Subscriber(cfg.outputs["out"].address, queue=16)
    node = launch(spawn, cfg)
    try:
        ready = sup.wait(lambda m: m["type"] == "ready", what="ready")[0]
        assert ready["id"] == "relay" and ready["pid"] == node.popen.pid
        deadline = time.monotonic() + 10
        while not (upstream.pipes and out.connected):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        # a corrupted message, then a valid one: the node counts the first and relays the second
        upstream.send(b"\x93\x01garbage")
        upstream.send(encode(Envelope("up/out", 0, 12345, "up", [["up", 1]], {"x": 1})))
        env = out.recv(timeout_s=10)
        assert env.data == {"tag": "T", "data": {"x": 1}}
        assert env.stamp_ns == 12345  # the capture time travels with the data
        assert [hop[0] for hop in env.trace] == ["up", "relay"]
        hb = sup.wait(lambda m: m["type"] == "heartbeat"
                      and m["stats"]["in"]["in"]["msgs"] == 1, what="heartbeat")[-1]
        assert hb["stats"]["in"]["in"] == {"msgs": 1, "drops": 0, "bad": 1}
        assert hb["stats"]["out"]["out"] == {"msgs": 1}
        # a command is journaled synchronously, then acknowledged
        with CommandClient(cfg.commands_in["cmd"].address) as client:
            result = {}
            import threading

            t = threading.Thread(target=lambda: result.update(client.call({"unlock": 5},
                                                                           id="c1")))
            t.start()
            deadline = time.monotonic() + 10
            while t.is_alive():
                sup.pump()
                assert time.monotonic() < deadline
                time.sleep(0.005)
        assert result == {"id": "c1", "ok": True, "result": {"unlock": 5}}
        assert sup.records[0]["kind"] == "command_applied"
        assert sup.records[0]["fields"] == {"id": "c1"}
        # SIGHUP is a reload event
        node.signal(signal.SIGHUP)
        env = out.recv(timeout_s=10)
        assert env.data == {"tag": "reloaded"}
        # SIGTERM: the loop ends and the process exits 0
        node.signal(signal.SIGTERM)
        assert node.wait_exit(10) == 0
    finally:
        upstream.close()
        out.close()


def test_script_target_reads_the_same_config(rundir, sup, spawn, tmp_path):
    script = tmp_path / "ticker.py"
    script.write_text(
        "from iotrt import Node\n"
        "from iotrt.node import NodeSpec, Param\n"
        "SPEC = NodeSpec(outputs={'ticks': 'n'}, params=[Param('period', float, 0.01)])\n"
        "node = Node(spec=SPEC)\n"
        "node.timer('tick', node.params['period'])\n"
        "n = 0\n"
        "for event in node:\n"
        "    n += 1\n"
        "    node.publish('ticks', n)\n"
    )
    address = short_ipc_address(rundir, "g", "ticker", "ticks")
    cfg = NodeConfig(id="ticker", target=str(script), params={"period": 0.01},
                     outputs={"ticks": {"address": address}}, supervisor=sup.address)
    cfg = NodeConfig.from_json(cfg.to_json())
    with Subscriber(address) as sub:
        node = launch(spawn, cfg)
        env = sub.recv(timeout_s=10)
        assert env is not None and env.topic == "ticker/ticks" and isinstance(env.data, int)
        node.signal(signal.SIGTERM)
        assert node.wait_exit(10) == 0
    assert sup.wait(lambda m: m["type"] == "ready")


def test_node_dies_with_its_supervisor(rundir, spawn, tmp_path):
    """PR_SET_PDEATHSIG: SIGKILL the parent, the node goes too."""
    cfg = NodeConfig(id="orphan", target="sample_nodes:relay")
    parent_code = (
        "import os, subprocess, sys, time\n"
        f"env = dict(os.environ, {ENV_SUPERVISOR_PID}=str(os.getpid()))\n"
        "p = subprocess.Popen([sys.executable, '-m', 'iotrt.launch'], env=env)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(3600)\n"
    )
    parent = spawn([sys.executable, "-c", parent_code],
                   env={ENV_CONFIG: cfg.to_json(), "PYTHONPATH": str(HERE)})
    child = int(parent.wait_for(lambda p: p.lines and p.lines[0], what="child pid"))
    try:
        os.kill(child, 0)
        parent.kill()
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "node outlived its supervisor"
            time.sleep(0.01)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_node_exits_at_once_when_supervisor_already_gone(spawn):
    cfg = NodeConfig(id="late", target="sample_nodes:relay")
    node = launch(spawn, cfg, **{ENV_SUPERVISOR_PID: "1" if os.getppid() != 1 else "2"})
    assert node.wait_exit(10) == 0


def test_bad_config_is_reported(spawn):
    node = spawn([sys.executable, "-m", "iotrt.launch"], env={ENV_CONFIG: '{"id": ""}'})
    assert node.wait_exit(10) == 2
    assert any("'id' must be a non-empty string" in line for line in node.err)


def test_script_node_removes_its_shared_memory_on_stop(rundir, spawn, tmp_path):
    from iotrt import shm

    script = tmp_path / "frames.py"
    script.write_text(
        "import numpy as np\n"
        "from iotrt import Node\n"
        "from iotrt.node import NodeSpec\n"
        "SPEC = NodeSpec(outputs={'image': 'frame'})\n"
        "node = Node(spec=SPEC)\n"
        "node.timer('t', 0.01)\n"
        "for event in node:\n"
        "    node.publish('image', np.zeros((480, 640, 3), np.uint8))\n"
    )
    address = short_ipc_address(rundir, "g", "frames", "image")
    cfg = NodeConfig.from_json(NodeConfig(
        id="frames", target=str(script), outputs={"image": {"address": address}}).to_json())
    prefix = shm.segment_prefix(address)
    with Subscriber(address) as sub:
        node = launch(spawn, cfg)
        env = sub.recv(timeout_s=10)
        assert env is not None and env.data.shape == (480, 640, 3)
        assert any(n.startswith(prefix) for n in os.listdir(shm.SHM_DIR))
        node.signal(signal.SIGTERM)
        assert node.wait_exit(10) == 0
    assert not any(n.startswith(prefix) for n in os.listdir(shm.SHM_DIR))


def test_heartbeats_stop_while_the_loop_is_stuck_in_user_code(rundir, sup, spawn):
    cfg = relay_config(rundir, sup, heartbeat_s=0.05)
    upstream = pynng.Pub0(listen=cfg.inputs["in"].address)
    out = Subscriber(cfg.outputs["out"].address)
    node = launch(spawn, cfg)
    try:
        sup.wait(lambda m: m["type"] == "ready", what="ready")
        deadline = time.monotonic() + 10
        while not (upstream.pipes and out.connected):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        sup.wait(lambda m: m["type"] == "heartbeat", what="first heartbeat")
        start = len(sup.messages)
        end = time.monotonic() + 0.3
        while time.monotonic() < end:  # regular beats first
            sup.pump()
            time.sleep(0.002)
        upstream.send(encode(Envelope("up/out", 0, 1, "up", [], {"sleep": 1.0})))
        while out.recv_nowait() is None:  # pump continuously until the handler returns
            sup.pump()
            assert time.monotonic() < deadline, "the stuck handler never returned"
            time.sleep(0.002)
        end = time.monotonic() + 0.3
        while time.monotonic() < end:  # and a little after: heartbeats resume
            sup.pump()
            time.sleep(0.002)
        node.signal(signal.SIGTERM)
        assert node.wait_exit(10) == 0
    finally:
        upstream.close()
        out.close()
    beats = [t for m, t in zip(sup.messages[start:], sup.arrivals[start:])
             if m["type"] == "heartbeat"]
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert max(gaps) >= 0.8  # silence while the handler slept 1 s (period 0.05 s)
    assert sum(g < 0.2 for g in gaps) >= 4  # regular beats before and after it
