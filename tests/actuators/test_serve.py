"""The actuator command loop through the Node API (in-process, Node.for_test)."""

from __future__ import annotations

import json

from iotrt.node import Node
from iotrt.nodes.action import lock, log, motor


class OrderedAcks(list):
    """An ack list that notes, in a shared log, when each ack was sent."""

    def __init__(self, order: list) -> None:
        super().__init__()
        self.order = order

    def append(self, ack) -> None:
        self.order.append(("ack", ack["id"]))
        super().append(ack)


def _watch(node) -> list:
    order: list = []
    record = node.fake.record

    def noting(body, sync):
        order.append(("record", body["fields"].get("id"), sync))
        record(body, sync)
    node.fake.record = noting
    node.acks = OrderedAcks(order)
    return order


def test_each_command_is_journaled_durably_before_it_is_applied_and_acked(tmp_path):
    node = Node.for_test(lock, params={"sim_file": str(tmp_path / "door.jsonl")}, id="door")
    order = _watch(node)
    node.feed_command("commands", {"action": "unlock", "duration_s": 5}, id="c1")
    node.feed_command("commands", {"action": "unlock"}, id="c2")
    node.run()
    assert order == [("record", "c1", True), ("record", "c1", True), ("ack", "c1"),
                     ("record", "c2", True), ("record", "c2", True), ("ack", "c2")]
    received = [f for kind, f in node.records if kind == "command_received"]
    assert [f["command"] for f in received] == [{"action": "unlock", "duration_s": 5},
                                                {"action": "unlock"}]
    (kind1, f1), (kind2, f2) = [r for r in node.records if r[0] != "command_received"]
    assert kind1 == "command_applied" and f1["command"] == {"action": "unlock", "duration_s": 5}
    assert f1["result"]["state"] == "unlocked" and f1["input"] == "commands"
    assert kind2 == "command_refused" and "duration_s" in f2["result"]["error"]
    assert [a["ok"] for a in node.acks] == [True, False]


def test_lock_node_publishes_state_and_ends_locked(tmp_path):
    sim = tmp_path / "door.jsonl"
    node = Node.for_test(lock, params={"sim_file": str(sim), "max_unlock_s": 10})
    node.feed_command("commands", {"action": "unlock", "duration_s": 60})
    node.tick("state")
    node.run()
    states = [p.data for p in node.published if p.output == "state"]
    assert states[0] == {"locked": True, "relock_in_s": None, "cause": "start"}
    assert states[1]["locked"] is False and abs(states[1]["relock_in_s"] - 10) < 0.5  # capped
    assert states[2]["cause"] == "periodic" and states[2]["locked"] is False
    assert node.acks[0]["capped"] is True
    # The node stopped while unlocked: it locked on the way out.
    assert [json.loads(x)["locked"] for x in sim.read_text().splitlines()] == [True, False, True]


def test_motor_node_stops_on_exit(tmp_path):
    sim = tmp_path / "m.jsonl"
    node = Node.for_test(motor, params={"sim_file": str(sim), "motors": ["a", "b"]})
    node.feed_command("commands", {"a": 0.3, "b": 0.3})
    node.feed_command("commands", {"c": 1})
    node.run()
    assert [a["ok"] for a in node.acks] == [True, False]
    assert "unknown motor(s) c" in node.acks[1]["error"]
    rows = [json.loads(x)["speeds"] for x in sim.read_text().splitlines()]
    assert rows == [{"a": 0, "b": 0}, {"a": 0.3, "b": 0.3}, {"a": 0, "b": 0}]


def test_log_node(tmp_path, caplog):
    node = Node.for_test(log, params={"file": str(tmp_path / "c.jsonl")})
    node.feed_command("commands", {"hello": "world"})
    node.feed_command("commands", "not a map")
    node.run()
    assert [a["ok"] for a in node.acks] == [True, False]
    assert [k for k, _ in node.records] == ["command_received", "command_applied",
                                            "command_received", "command_refused"]


def test_setup_errors_end_the_node_with_one_clear_message(caplog, monkeypatch):
    import pytest

    from iotrt.nodes.action import webhook

    monkeypatch.delenv("IOTRT_TEST_TOKEN", raising=False)
    node = Node.for_test(webhook, params={"url": "http://127.0.0.1:9/x",
                                          "token_env": "IOTRT_TEST_TOKEN"})
    with pytest.raises(SystemExit) as exit_:
        node.run()
    assert exit_.value.code == 1
    assert "token_env names $IOTRT_TEST_TOKEN, which is not set" in caplog.text
    monkeypatch.setenv("IOTRT_TEST_TOKEN", "s3cret")
    node = Node.for_test(webhook, params={"url": "http://127.0.0.1:9/x",
                                          "token_env": "IOTRT_TEST_TOKEN"})
    node.run()  # starts, no commands queued, stops
