"""The same fail-safe claims under the real supervisor (`iotrt up`): it restarts the killed lock,
and it is the journal's single writer."""

from __future__ import annotations

import os
import signal
import threading
import time

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
