"""The same fail-safe claims under the real supervisor (`iotrt up`): it restarts the killed lock,
and it is the journal's single writer."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from helpers import wait_for

from iotrt.command import CommandClient, CommandTimeout

GRAPH = """
    name: acttest
    supervisor:
      heartbeat_s: 0.5
      backoff: {initial_s: 0.2, max_s: 2}
    nodes:
      - id: door
        kind: lock
        params: {max_unlock_s: 30}
        restart: always
      - id: chime
        kind: log
        restart: always
"""


def _rows(sup, h):
    return h.read_jsonl(sup.graph.state_dir / "door.lock.jsonl")


def test_killed_lock_is_restarted_locked_and_its_command_is_journaled(supervised, h):
    sup = supervised(GRAPH)
    first = h.wait_for(lambda: _rows(sup, h), timeout=30, what="the lock to start")[0]
    assert first["locked"] is True
    with CommandClient(sup.command_address("door")) as client:
        ack = client.call({"action": "unlock", "duration_s": 30}, timeout_s=2.0, id="u-1")
        assert ack["ok"] and ack["state"] == "unlocked"
        assert _rows(sup, h)[-1]["locked"] is False
        os.kill(first["pid"], signal.SIGKILL)
        t_kill = time.monotonic_ns()
        back = h.wait_for(
            lambda: next((r for r in _rows(sup, h) if r["pid"] != first["pid"]), None),
            timeout=20, what="the supervisor to restart the lock")
        assert back["locked"] is True and back["mono_ns"] > t_kill
        # The acknowledged unlock is answered again from the id store, not re-applied.
        assert client.call({"action": "unlock", "duration_s": 30}, timeout_s=2.0,
                           id="u-1") == ack
    assert all(r["locked"] for r in _rows(sup, h) if r["pid"] == back["pid"])
    (applied,) = sup.journal(kind="command_applied", node="door")
    assert applied.fields["id"] == "u-1" and applied.fields["result"]["state"] == "unlocked"
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(timeout=30) == 0
    assert _rows(sup, h)[-1]["locked"] is True


def test_supervisor_killed_mid_stream_loses_no_acknowledged_command(supervised, h):
    sup = supervised(GRAPH)
    acked: list[str] = []
    with CommandClient(sup.command_address("chime")) as client:
        h.wait_for(lambda: client.call({"ping": 0}, timeout_s=0.5, retries=40),
                   timeout=30, what="the log actuator to answer")

        def send() -> None:
            for i in range(100_000):
                try:
                    ack = client.call({"ring": i}, timeout_s=1.0, retries=0, id=f"ring-{i}")
                except CommandTimeout:
                    return  # the graph is gone
                if ack["ok"]:
                    acked.append(ack["id"])
        sender = threading.Thread(target=send)
        sender.start()
        try:
            h.wait_for(lambda: len(acked) >= 100, timeout=60, what="100 acks")
            # Kill the journal's writer itself while commands are in flight; its nodes die
            # with it (PR_SET_PDEATHSIG).
            sup.proc.send_signal(signal.SIGKILL)
            sup.proc.wait(timeout=10)
        finally:
            sender.join(timeout=30)
    journaled = {e.fields["id"] for e in sup.journal(kind="command_applied", node="chime")}
    missing = [cid for cid in acked if cid not in journaled]
    assert len(acked) >= 100 and not missing, f"acknowledged but not journaled: {missing}"


BIG_RECORDS = """
    name: bigrec
    supervisor:
      heartbeat_s: 0.5
    nodes:
      - id: door
        kind: lock
        params: {max_unlock_s: 30}
      - id: big
        run: big.py
        restart: on-failure
"""

BIG_NODE = """
    import os
    from iotrt import Node
    from iotrt.spec import NodeSpec

    SPEC = NodeSpec(doc="records values larger than any channel takes")

    def main(node: Node) -> None:
        node.ready()
        node.record("big_async", pid=os.getpid(), blob="x" * 1_100_000)
        node.record("big_sync", sync=True, pid=os.getpid(), blob="y" * 1_100_000)
        node.record("after", pid=os.getpid())
        for _ in node:
            pass
"""


def test_records_and_commands_past_the_channel_limits_are_summarised_or_refused_at_once(supervised):
    """A node that records a megabyte (async or sync) gets a summary journaled, not a dropped
    record or a link the supervisor closes (and a node restarted for heartbeats it could not
    send); a command near the limit is journaled by the lock as a summary and answered; one over
    it is refused by the sender at once, not left to time out."""
    from iotrt.command import MAX_REQUEST_BYTES, CommandError

    sup = supervised(BIG_RECORDS, files={"big.py": BIG_NODE})
    sup.wait_log("all 2 nodes up", 60)      # the journal is open
    after = wait_for(lambda: sup.journal(kind="after"), 30, "the record after them")
    pid = after[0].fields["pid"]
    for kind, char in (("big_async", "x"), ("big_sync", "y")):
        (event,) = sup.journal(kind=kind)
        blob = event.fields["blob"]
        assert event.fields["pid"] == pid
        assert blob["summarised"] == "str" and blob["head"].startswith(f'"{char}{char}')
    near = {"action": "unlock", "duration_s": 1, "note": "n" * (MAX_REQUEST_BYTES - 400)}
    with CommandClient(sup.command_address("door")) as client:
        ack = client.call(near, timeout_s=2.0, retries=10, id="near-limit")   # the lock may start
        received = [e for e in sup.journal(kind="command_received", node="door")
                    if e.fields.get("id") == "near-limit"]
        assert received and "summarised" in str(received[0].fields)
        t0 = time.monotonic()
        with pytest.raises(CommandError, match="takes at most"):
            client.call({**near, "note": "n" * MAX_REQUEST_BYTES}, timeout_s=5.0, retries=3)
        assert time.monotonic() - t0 < 1.0     # refused, not 4 attempts of 5 s
    assert "ok" in ack
    assert "restarting" not in sup.text and "no heartbeat" not in sup.text
