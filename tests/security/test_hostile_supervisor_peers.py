"""A node, or any local process that can reach the graph's sockets, attacking the supervisor:
heartbeat counters that add up past 2^64 (the next `iotrt ps` reply could not be encoded, and
the exception ended the supervisor with the whole graph); a flood of large non-protocol
messages (the supervisor read them all before anything else: `ps` went unanswered, SIGTERM
waited, a healthy node was declared dead); a control client that pipelines requests and never
reads the replies (the supervisor blocked in send). The supervisor must serve through all of
it, and never restart the node that did nothing wrong."""

from __future__ import annotations

import socket
import struct
import textwrap
from pathlib import Path

import msgpack
from helpers import wait_for

from iotrt.control import ControlError, call

HERE = Path(__file__).parent
IDLE = HERE.parent / "supervisor" / "graphs" / "nodes" / "idle.py"


def _ps(address: str) -> dict | None:
    try:
        return call(address, "ps", timeout_s=3.0)
    except ControlError:
        return None


def _pipeline_without_reading(path: Path, n: int) -> socket.socket:
    """A raw Req0 peer (SP over a unix socket) that sends `n` ps requests and reads nothing."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    s.sendall(b"\x00SP\x00" + struct.pack(">H", 0x30) + b"\x00\x00")   # I am a Req0
    s.recv(8)
    body = msgpack.packb({"cmd": "ps"})
    s.settimeout(2.0)
    for i in range(n):
        frame = struct.pack(">I", 0x80000000 | i) + body
        try:
            s.sendall(b"\x01" + struct.pack(">Q", len(frame)) + frame)
        except (TimeoutError, BlockingIOError):
            break
    return s


def test_the_supervisor_serves_through_hostile_peers_and_restarts_no_one(tmp_path, up):
    done = tmp_path / "flood.done"
    g = tmp_path / "g.yaml"
    g.write_text(textwrap.dedent(f"""\
        name: hostile
        supervisor: {{heartbeat_s: 0.5}}
        nodes:
          - id: evil
            run: {HERE / "nodes" / "hostile_supervisor_peer.py"}
            params: {{flood_s: 8.0, done: {done}}}
            restart: never
          - id: bystander
            run: {IDLE}
        """))
    runtime = tmp_path / "rt"
    sup = up(g, runtime)
    address = f"ipc://{runtime / 'hostile' / 'ctl'}"
    wait_for(lambda: _ps(address), 30, f"the supervisor to answer ps:\n{sup.text}")
    # during the heartbeats and the flood, ps keeps being answered
    answered = 0
    while not done.exists():
        assert sup.proc.poll() is None, f"the supervisor ended:\n{sup.text}"
        assert _ps(address) is not None, f"ps unanswered during the flood:\n{sup.text}"
        answered += 1
    assert answered >= 5 and int(done.read_text()) > 0
    # a control client that never reads: the supervisor drops its replies and goes on
    raw = _pipeline_without_reading(runtime / "hostile" / "ctl", 400)
    try:
        reply = wait_for(lambda: _ps(address), 10, f"ps after a client that never reads:\n{sup.text}")
    finally:
        raw.close()
    rows = {r["node"]: r for r in reply["nodes"]} if "nodes" in reply else {}
    assert not rows or all(isinstance(r.get("drops", 0), int) for r in rows.values())
    # the attacker, busy flooding, may be declared dead; the bystander never is
    assert "bystander: running -> " not in sup.text, sup.text
    sup.proc.terminate()
    assert sup.wait_exit(15) == 0, sup.text
