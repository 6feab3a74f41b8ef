"""The Node API in-process: the test harness, parameters, SPEC loading, timers, stop."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from iotrt.bus import short_ipc_address
from iotrt.codec import EncodeError
from iotrt.command import CommandError, CommandTimeout
from iotrt.node import (
    CommandFailed,
    NoAck,
    Node,
    NodeError,
    NodeSpec,
    NotEncodable,
    Param,
    ParamError,
    SpecError,
    load_spec,
)
from iotrt.protocol import Endpoint, NodeConfig

SPEC = NodeSpec(
    doc="thresholds a frame's mean brightness",
    inputs={"image": "frame"},
    outputs={"bright": "{mean, bright}"},
    commands_in={"commands": "{set_threshold: float}"},
    commands_out={"lamp": "{on: bool}"},
    params=[
        Param("threshold", float, 0.5, "mean above which a frame is bright"),
        Param("mode", str, "mean", "statistic", choices=("mean", "max")),
        Param("count", int, 3, min=1, max=10),
        Param("device", str, doc="which camera"),  # required
    ],
)


def main(node: Node) -> None:
    threshold = node.params["threshold"]
    for event in node:
        if event.input == "image":
            mean = float(event.data.mean())
            node.publish("bright", {"mean": mean, "bright": mean > threshold})
            if mean > threshold:
                ack = node.command("lamp", {"on": True})
                node.record("lamp_on", ok=ack["ok"])
        elif event.kind == "command":
            threshold = float(event.data["set_threshold"])
            event.ack({"threshold": threshold})


def harness(**params):
    node = Node.for_test(SPEC, params={"device": "/dev/video0", **params})
    node._main = main
    return node


def test_harness_feeds_inputs_and_captures_outputs():
    node = harness(threshold=0.4)
    node.feed("image", np.full((4, 4), 0.5), stamp_ns=111).feed("image", np.zeros((4, 4)))
    node.run()
    assert [p.data for p in node.published] == [{"mean": 0.5, "bright": True},
                                                {"mean": 0.0, "bright": False}]
    first = node.published[0].envelope
    assert first.stamp_ns == 111 and [h[0] for h in first.trace] == ["upstream", "test"]
    assert [c.data for c in node.commands] == [{"on": True}]
    assert node.records == [("lamp_on", {"ok": True})]


def test_harness_commands_and_lost_acks():
    node = harness()
    node.feed_command("commands", {"set_threshold": 0.9}, id="c1")
    node.feed("image", np.full(3, 0.7))
    node.run()
    assert node.acks == [{"id": "c1", "ok": True, "threshold": 0.9}]
    assert node.published[0].data["bright"] is False
    lost = harness(threshold=0.1)
    lost.responder = lambda output, data: None
    lost.feed("image", np.ones(2))
    with pytest.raises(NoAck, match="node 'test': command on 'lamp': no ack") as exc:
        lost.run()
    # the Node API's error, which is also the command channel's (older nodes catch that)
    assert isinstance(exc.value, NodeError) and isinstance(exc.value, CommandTimeout)
    assert isinstance(exc.value.__cause__, CommandTimeout)


def test_unacknowledged_command_gets_an_error_ack():
    node = Node.for_test(SPEC, params={"device": "x"})
    node.feed_command("commands", {"x": 1}, id="c9").feed("image", np.zeros(1))
    for _ in node:
        pass
    assert node.acks == [{"id": "c9", "ok": False, "error": "node 'test' did not acknowledge"}]


def test_publishing_unsendable_data_fails_in_the_harness_like_on_the_wire():
    node = Node.for_test(SPEC, params={"device": "x"})
    with pytest.raises(NotEncodable, match="node 'test': cannot publish on 'test/bright': cannot send a set"):
        node.publish("bright", {"s": {1, 2}})
    with pytest.raises(NodeError):
        node.publish("bright", {"s": {1, 2}})
    with pytest.raises(EncodeError):        # what older nodes caught still catches it
        node.publish("bright", {"s": {1, 2}})
    with pytest.raises(NotEncodable, match="command on 'lamp'"):
        node.command("lamp", {"on": object()})
    with pytest.raises(NotEncodable, match="record 'odd'"):
        node.record("odd", sync=True, value={1, 2})
    with pytest.raises(NodeError, match="has no output 'dark'"):
        node.publish("dark", 1)
    with pytest.raises(NodeError, match="has no input 'imgae' \\(declared: image\\)"):
        node.feed("imgae", 1)


def test_the_harness_is_a_node_on_a_fake_transport():
    # the test double replaces the transport, not the Node's own workings
    from iotrt.node import TestNode
    from iotrt.testing import FakeTransport

    overridden = {name for name in vars(TestNode) if name in vars(Node)}
    assert overridden == {"__init__", "__module__", "__doc__"}
    node = Node.for_test(SPEC, params={"device": "x"})
    assert isinstance(node.transport, FakeTransport)
    with pytest.raises(NodeError, match="has no command output 'siren' \\(declared: lamp\\)"):
        node.command("siren", {"on": True})


def test_harness_timers_fire_when_ticked_and_posts_keep_their_place():
    node = Node.for_test(SPEC, params={"device": "x"})
    node.timer("often", 1e-6)        # due at once on a real clock; the fake's stands still
    node.feed("image", np.zeros(1)).tick("often").feed_command("commands", {"x": 1}, id="c")
    seen = []
    for event in node:
        seen.append((event.kind, event.name))
        if event.kind == "input":
            node.post("later")       # after what was queued before it
        elif event.kind == "command":
            event.ack()
    assert seen == [("input", "image"), ("timer", "often"), ("command", "commands"),
                    ("post", "later")]


@pytest.mark.parametrize("period_s, first_s", [
    (0, None), (-1, None), (float("nan"), None), (float("inf"), None), (1e300, None),
    (86400.5, None), (1.0, float("inf")), (1.0, -1.0),
])
def test_a_timer_period_that_cannot_be_scheduled_is_a_clear_error(period_s, first_s):
    # 1 / 1e-300 fps was an infinite period: int(inf * 1e9) raised OverflowError in the node
    node = Node.for_test(SPEC, params={"device": "x"})
    with pytest.raises(ValueError, match="timer 'often': "):
        node.timer("often", period_s, first_s)


def test_parameter_errors_are_all_listed_with_hints():
    with pytest.raises(ParamError) as info:
        Node.for_test(SPEC, params={"treshold": 1, "mode": "median", "count": 11,
                                    "threshold": "high"})
    errors = info.value.errors
    assert ("node 'test': unknown param 'treshold' (did you mean 'threshold'?); params: "
            "threshold, mode, count, device") in errors
    assert ("node 'test': params.mode: must be one of 'mean', 'max', got 'median' (did you mean "
            "'mean'?)") in errors
    assert "node 'test': params.count: must be <= 10, got 11" in errors
    assert "node 'test': params.threshold: must be a number, got text 'high'" in errors
    assert "node 'test': missing required param 'device' (which camera)" in errors
    assert len(errors) == 5


def test_params_get_defaults_and_int_widens_to_float():
    p = SPEC.validate_params({"device": "d", "threshold": 1})
    assert p == {"threshold": 1.0, "mode": "mean", "count": 3, "device": "d"}
    with pytest.raises(ParamError, match="must be an integer, got a boolean True"):
        SPEC.validate_params({"device": "d", "count": True})
    with pytest.raises(ParamError, match=r"quote it in YAML"):
        SPEC.validate_params({"device": 0})


def test_load_spec_reads_a_script_without_running_it(tmp_path):
    script = tmp_path / "user_node.py"
    marker = tmp_path / "ran"
    script.write_text(
        "import pathlib\n"
        "from iotrt.node import Node, NodeSpec, Param\n"
        "RATE = 5.0\n"
        "SPEC = NodeSpec(outputs={'n': 'count'}, params=[Param('rate', float, RATE)])\n"
        f"pathlib.Path({str(marker)!r}).write_text('oops')\n"
        "node = Node(spec=SPEC)\n"
    )
    spec = load_spec(str(script))
    assert spec.param("rate").default == 5.0 and "n" in spec.outputs
    assert not marker.exists()


def test_load_spec_errors(tmp_path, monkeypatch):
    with pytest.raises(SpecError, match="not found"):
        load_spec("no_such_module_xyz")
    bad = tmp_path / "bad.py"
    bad.write_text("SPEC = NodeSpec(\n")
    with pytest.raises(SpecError, match=r"bad.py:1: syntax error"):
        load_spec(str(bad))
    nospec = tmp_path / "nospec.py"
    nospec.write_text("X = 1\n")
    with pytest.raises(SpecError, match="defines no SPEC"):
        load_spec(str(nospec))
    with pytest.raises(SpecError, match="has no function nope"):
        monkeypatch.syspath_prepend(str(Path(__file__).parent))
        load_spec("sample_nodes:nope")


def test_wildcard_ports_accept_any_name():
    spec = NodeSpec(inputs={"*": "any topic"}, commands_out={"*": "any actuator"})
    node = Node.for_test(spec)
    node.feed("whatever", 1).feed("other", 2)
    assert [e.input for e in node] == ["whatever", "other"]


def test_standalone_node_timers_and_stop_from_another_thread(rundir):
    address = short_ipc_address(rundir, "g", "ticker", "ticks")
    cfg = NodeConfig(id="ticker", outputs={"ticks": Endpoint(address)})
    node = Node(cfg)
    node.timer("fast", 0.01)
    node.timer("slow", 0.05)
    seen: list[str] = []
    stopper = threading.Timer(0.3, node.stop)
    stopper.start()
    t0 = time.monotonic()
    for event in node:
        seen.append(event.timer)
    ran = time.monotonic() - t0   # 0.3 s, and more if the stopper thread was late
    node.close()
    assert ran < 5
    # never more ticks than whole periods went by (a late stop adds periods, not extra ticks)
    assert 3 <= seen.count("slow") <= ran / 0.05 + 1
    assert seen.count("fast") > 2 * seen.count("slow")


def test_node_loop_survives_garbage_and_counts_it(rundir):
    import pynng

    up = short_ipc_address(rundir, "g", "up", "out")
    cfg = NodeConfig(id="n", inputs={"in": Endpoint(up, queue=64)})
    raw = pynng.Pub0(listen=up)
    node = Node(cfg)
    try:
        deadline = time.monotonic() + 5
        while not raw.pipes:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        from iotrt.codec import Envelope, encode

        for junk in (b"", b"\x00", b"\xdd\xff\xff\xff\xff", b"\x97\x01" + b"\xc7" * 20):
            raw.send(junk)
        raw.send(encode(Envelope("up/out", 0, 0, "up", [], "ok")))
        stopper = threading.Timer(5, node.stop)  # a deadline, should the message not come
        stopper.start()
        for event in node:
            assert event.data == "ok"
            break
        stopper.cancel()
        assert node.stats()["in"]["in"] == {"msgs": 1, "drops": 0, "bad": 4}
    finally:
        node.close()
        raw.close()


def test_a_refused_journal_record_and_a_second_ack_are_node_errors():
    """What the journal answers through the transport comes out as the Node API's errors."""
    node = Node.for_test(SPEC, params={"device": "x"})

    def refused(body, sync):
        raise CommandError(f"journal refused record {body['kind']!r}: database or disk is full")
    node.fake.record = refused
    with pytest.raises(CommandFailed, match="node 'test': record 'seen': journal refused") as exc:
        node.record("seen", sync=True)
    assert not isinstance(exc.value, NoAck)
    node.feed_command("commands", {"x": 1}, id="c1")
    for event in node:
        event.ack()
        with pytest.raises(NodeError, match="command c1 was already answered"):
            event.ack()
    assert node.acks == [{"id": "c1", "ok": True}]


def test_closing_a_node_leaves_no_signal_wakeup_on_its_closed_pipe():
    """Two Nodes in one main thread (scripts, tests): the signal wakeup fd is the last one's
    pipe. Closing the other must leave it; closing that one must unset it, not leave signals
    writing to a closed fd number that the next open file gets. A fresh interpreter: the wakeup
    fd is process-wide."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os, signal
        from iotrt.node import Node
        a, b = Node(id="a"), Node(id="b")
        b_fd = b.transport.wakeup_fd
        a.close()
        print(signal.set_wakeup_fd(b_fd) == b_fd)       # b's pipe still takes the signals
        b.close()
        print(signal.set_wakeup_fd(-1))
    """)
    env = {k: v for k, v in os.environ.items() if k != "IOTRT_NODE_CONFIG"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "-1"]
