"""The control socket and the verbs on it (ps, topics, echo, hz, reload, down), and the journal
the supervisor writes, against a real running graph."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pynng
import pytest

from iotrt.cli import main as cli
from iotrt.codec import decode, pack, unpack
from iotrt.command import CommandClient
from iotrt.graph import load_graph
from iotrt.journal import JournalReader

DOOR = Path(__file__).parent / "graphs" / "door.yaml"


@pytest.fixture
def iotrt(env, monkeypatch, capsys):
    """iotrt(*args) -> (exit code, stdout, stderr): the CLI in this process (no interpreter
    start-up per call), seeing the same runtime folder as the supervisor under test."""
    for key in ("IOTRT_RUNTIME_DIR", "IOTRT_STATE_DIR"):
        monkeypatch.setenv(key, env[key])

    def run(*args: str) -> SimpleNamespace:
        capsys.readouterr()
        code = cli(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


def test_verbs_against_a_running_graph(up, iotrt, h):
    u = up(DOOR)
    u.wait_log("all 4 nodes up")

    ps = iotrt("ps", "--json")
    assert ps.returncode == 0, ps.stderr
    reply = json.loads(ps.stdout)
    assert reply["graph"] == "testdoor" and reply["state"] == "running"
    rows = {r["node"]: r for r in reply["nodes"]}
    assert set(rows) == {"cam", "faces", "rules", "door"}
    assert all(r["state"] == "running" and r["pid"] > 0 for r in rows.values())
    procs = {p["process"]: p for p in reply["processes"]}
    assert set(procs) == {"cam", "faces", "rules", "door"}      # one process per node here
    assert all(p["rss_bytes"] > 1e6 and p["pss_bytes"] > 1e6 for p in procs.values())
    assert 1e6 < reply["supervisor"]["rss_bytes"]
    # rates come from two heartbeats (0.5 s apart): cam publishes every 0.1 s
    h.wait_for(lambda: json.loads(iotrt("ps", "testdoor", "--json").stdout)["nodes"][0]["out_per_s"] > 5,
               10, "cam's output rate in ps")
    table = iotrt("ps", str(DOOR)).stdout          # by graph file, as a table
    assert "NODE" in table and "IN/s" in table and "faces" in table
    assert "PSS" in table and "(supervisor)" in table and "total" in table

    topics = iotrt("topics").stdout
    assert "cam/out" in topics and "faces.in" in topics and "_sup/events" in topics

    echo = iotrt("echo", "cam/out", "-n", "2", "--timeout", "5")
    assert echo.returncode == 0, echo.stderr
    assert echo.stdout.count("--- cam/out seq=") == 2 and '{"n": ' in echo.stdout

    hz = iotrt("hz", "cam/out", "--duration", "2.2")
    rate = float(hz.stdout.strip().splitlines()[-1].split()[1])
    assert 5 < rate < 15, hz.stdout                     # 10 Hz nominal, on a busy machine

    missing = iotrt("echo", "cam/nope", "--timeout", "1")
    assert missing.returncode == 1 and "no topic 'cam/nope'" in missing.stderr

    # garbage on the supervisor's sockets is answered or logged, never fatal
    graph = load_graph(DOOR)
    with pynng.Push0(send_timeout=2000) as push:
        push.dial(graph.supervisor_address, block=True)
        for junk in (b"", b"\xc1", b"\x93\x01\x02\x03"):
            push.send(junk)
    with pynng.Req0(recv_timeout=3000) as req:
        req.dial(graph.control_address, block=True)
        for junk, error in ((b"", "malformed request"), (b"\x01", "unknown request"),
                            (pack({"cmd": []}), "unknown request"),
                            (pack({"cmd": "reload", "node": ["cam"]}), "no node")):
            req.send(junk)
            assert error in unpack(req.recv())["error"]
    u.wait_log("ignored a malformed message from a node")   # rate-limited: one line per 10 s
    with CommandClient(graph.journal_address, src="test") as journal:
        ack = journal.call({"type": "record", "id": "cam", "kind": "", "fields": {}})
    assert ack["ok"] is False and "'kind' must be a non-empty string" in ack["error"]
    with CommandClient(graph.journal_address, src="test") as journal:
        ack = journal.call({"type": "record", "id": "cam", "kind": "x", "fields": {b"k": 1}})
    assert ack["ok"] is False and "cannot be stored as JSON" in ack["error"]
    assert iotrt("ps").returncode == 0

    reload = iotrt("reload", "faces")
    assert reload.returncode == 0 and "reload sent to faces" in reload.stdout
    assert iotrt("reload", "nobody").returncode == 1
    os.kill(u.proc.pid, signal.SIGHUP)       # systemctl reload: every reloadable node (SPEC)
    u.wait_log("reload: sent SIGHUP to no node")

    down = iotrt("down")
    assert down.returncode == 0, down.stderr
    assert u.wait_exit(5) == 0
    assert iotrt("ps").returncode == 1              # nothing is running any more


def test_journal_gets_lifecycle_events_and_sync_records(up, env, iotrt, h):
    u = up(DOOR)
    u.wait_log("all 4 nodes up")
    path = load_graph(DOOR, environ=env).journal_path

    def kinds():
        with JournalReader(path) as reader:
            return [e.kind for e in reader.query()]

    # the actuator journals synchronously before acking; the decider journals the ack after
    h.wait_for(lambda: {"actuated", "acked"} <= set(kinds()), 15, "actuated and acked records")
    with JournalReader(path) as reader:
        events = reader.query()
    acted = [e for e in events if e.kind == "actuated"]
    acked = [e for e in events if e.kind == "acked"]
    assert acted[0].node == "door" and acted[0].fields == {"action": "lock"}
    assert acked[0].node == "rules" and acked[0].fields["ok"] is True
    assert acted[0].id < acked[0].id
    started = [e for e in events if e.kind == "lifecycle" and e.fields["state"] == "running"]
    assert {e.node for e in started} == {"cam", "faces", "rules", "door"}

    # a second supervisor for the same graph refuses to start and leaves the first alone
    second = up(DOOR)
    assert second.wait_exit(20) == 2
    assert "graph 'testdoor' is already running" in second.text
    assert u.proc.poll() is None

    # lifecycle events on the bus: kill 'door' (restart: always) and watch it go and come back
    graph = load_graph(DOOR, environ=env)
    with pynng.Sub0(recv_timeout=15000) as sub:
        sub.subscribe(b"")
        sub.dial(graph.events_address, block=True)
        pid = json.loads(iotrt("ps", "--json").stdout)["nodes"][3]["pid"]
        os.kill(pid, signal.SIGKILL)
        seen = []
        while ("door", "running") not in seen:
            env_ = decode(sub.recv())
            assert env_.topic == "_sup/events"
            seen.append((env_.data["node"], env_.data["state"]))
    assert seen[-3:] == [("door", "backoff"), ("door", "starting"), ("door", "running")]
    u.proc.terminate()
    assert u.wait_exit() == 0


def test_echo_summarises_arrays_and_bytes():
    import numpy as np

    from iotrt.verbs.echo import summarise

    msg = {"image": np.zeros((480, 640, 3), np.uint8), "boxes": [np.ones((2, 4), np.float32)],
           "raw": b"\x00" * 10, "n": 3, "name": "owner"}
    assert summarise(msg) == {"image": "ndarray uint8 (480, 640, 3)",
                              "boxes": ["ndarray float32 (2, 4)"], "raw": "bytes[10]",
                              "n": 3, "name": "owner"}


RELOADABLE = '''
from iotrt import Node
from iotrt.spec import NodeSpec, Param

SPEC = NodeSpec(doc="re-reads its file on SIGHUP", params=[Param("marker", str)], reloadable=True)


def main(node: Node) -> None:
    for event in node:
        if event.kind == "reload":
            with open(node.params["marker"], "a") as f:
                f.write("reloaded\\n")
'''


def test_sighup_reloads_the_nodes_whose_spec_is_reloadable(graph_file, up, tmp_path, h):
    (tmp_path / "prog.py").write_text(RELOADABLE)
    marker = tmp_path / "reloads"
    g = graph_file(f"""
        name: reloading
        nodes:
          - id: plain
            run: {{node}}
          - id: prog
            run: prog.py
            params: {{marker: {marker}}}
    """)
    u = up(g)
    u.wait_log("all 2 nodes up")
    os.kill(u.proc.pid, signal.SIGHUP)           # systemctl reload
    u.wait_log("reload: sent SIGHUP to prog\n")   # not to the plain test node
    h.wait_for(lambda: marker.exists() and marker.read_text() == "reloaded\n", 20,
               "the reloadable node's reload")


def test_ps_counts_every_input_of_a_node_with_hundreds():
    """A recorder with `inputs: *` on a large graph: its rates, drops and per-input counters in
    `iotrt ps` cover all of its inputs."""
    from iotrt.control import Rates

    def beat(n):
        return {"in": {f"t{i}": {"msgs": n, "drops": 1, "bad": 0} for i in range(300)},
                "out": {}}

    rates = Rates()
    rates.update(10.0, beat(0))
    rates.update(11.0, beat(2))
    assert rates.in_rate == 600.0 and rates.drops == 300
    assert len(rates.inputs()) == 300
