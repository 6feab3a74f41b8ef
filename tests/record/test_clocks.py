"""Clocks of a replay: the rules node's `clock: capture`, and the replay node's pacing."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import wait_for

from iotrt import Node
from iotrt.bus import Subscriber, short_ipc_address
from iotrt.codec import Envelope
from iotrt.nodes.observe import replay as replay_node
from iotrt.recording import RecordWriter

ROOT = Path(__file__).resolve().parents[2]
DOOR = str(ROOT / "configs" / "door.rules.yaml")
OWNER = {"faces": [{"name": "owner", "score": 0.93, "known": True}]}
S = 1_000_000_000


def fired(node) -> list[str]:
    return [f["rule"] for k, f in node.records if k == "rule_fired"]


@pytest.mark.parametrize("clock, unlocks", [("capture", 2), ("monotonic", 1)])
def test_cooldown_measures_capture_time(clock, unlocks):
    """Six owner frames fed at once, stamped 0, 0.1, 1.0, 1.1, 5.0, 5.1 s: the 4 s cooldown
    has passed at 5.0 s of capture time, not of arrival time."""
    node = Node.for_test("iotrt.nodes.action.rules", params={"rules": DOOR, "clock": clock})
    for t in (0.0, 0.1, 1.0, 1.1, 5.0, 5.1):
        node.feed("faces", OWNER, stamp_ns=100 * S + int(t * S))
    node.run()
    assert fired(node) == ["unlock_for_enrolled"] * unlocks


def test_capture_clock_runs_due_holds_before_the_next_message(tmp_path):
    """A 1 s hold that became true at 0 s fires at 1 s, when a message stamped 3 s shows that
    time has passed (timer ticks do nothing on this clock); the message at 3 s is false."""
    rules = tmp_path / "hold.yaml"
    rules.write_text("rules:\n  - id: held\n    trigger: {message: x}\n"
                     "    condition: msg.on\n    for: 1s\n    actions:\n"
                     "      - publish: out\n        data: {at: '${msg.on}'}\n")
    node = Node.for_test("iotrt.nodes.action.rules", params={"rules": str(rules),
                                                             "clock": "capture"})
    node.feed("x", {"on": True}, stamp_ns=50 * S)
    node.tick("tick").tick("tick")
    node.feed("x", {"on": False}, stamp_ns=53 * S).run()
    assert fired(node) == ["held"]
    # it fired on the tick at 51 s, on the message that was true, before the false one
    assert [(p.output, p.data) for p in node.published] == [("out", {"at": True})]


def test_replay_node_paces_by_recorded_time(tmp_path):
    path = tmp_path / "r.mcap"
    with RecordWriter(path) as w:
        for k in range(4):     # received at 0, 1, 2, 3 s
            w.write(Envelope("who/faces", k, 7 * S + k, "who", [["who", 1]], {"k": k}),
                    log_time_ns=20 * S + k * S)
    address = short_ipc_address(tmp_path, "g", "who", "faces")
    node = Node.for_test(replay_node, params={
        "file": str(path), "rate": 2.0, "start_s": 1.0,
        "topics": {"who/faces": {"address": address, "subscribers": 1}}}, id="replay")
    player = replay_node.Player(node)
    sub = Subscriber(address, queue=16)
    try:
        wait_for(lambda: player.connected(), 10, "the subscriber connected")
        player.t0 = 100.0
        sent = []
        for now in (100.0, 100.4, 100.6, 100.9):
            assert player.due(now)
            sent.append(player.sent)
        assert sent == [1, 1, 2, 2]       # message 1 at 0 s (start_s: 1), 2 at 0.5 s (rate 2)
        assert not player.due(101.0)      # message 3 at 1.0 s, then the end
        got = [sub.recv(timeout_s=5) for _ in range(3)]
    finally:
        player.close()
        sub.close()
    assert [(e.data["k"], e.stamp_ns, e.src, e.topic) for e in got] == \
        [(k, 7 * S + k, "who", "who/faces") for k in (1, 2, 3)]
    assert got[0].trace[:1] == [["who", 1]] and got[0].trace[1][0] == "replay"
    assert player.sent == 3
