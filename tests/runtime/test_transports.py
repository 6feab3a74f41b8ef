"""The in-process transport (process groups, iotrt.local) against NNG: the same node code, the
same latest-wins queues, drop counts, seq numbers and traces, whichever way a message travels.
The same test body runs against both transports."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import wait_for

from iotrt.bus import Subscriber, short_ipc_address
from iotrt.codec import EncodeError
from iotrt.local import LocalQueue
from iotrt.node import Node
from iotrt.protocol import Endpoint, NodeConfig


def _pair(rundir, transport: str, queue: int = 2) -> tuple[Node, Node]:
    address = short_ipc_address(rundir, "g", "p", "out")
    pub = Node(NodeConfig(id="p", outputs={"out": Endpoint(address, "p/out")}))
    sub = Node(NodeConfig(id="s", inputs={"in": Endpoint(address, "p/out", queue,
                                                         local=transport == "local")}))
    # over NNG the publisher must see the pipe too, or its first messages go nowhere
    wait_for(lambda: sub.transport.inputs["in"].connected
             and (transport == "local" or pub.transport.outputs["out"].subscribers),
             10, "the subscriber to connect on both sides")
    return pub, sub


def _drain(sub: Node, last_seq: int, timeout: float = 10.0) -> list:
    got = []
    deadline = time.monotonic() + timeout
    sub.timer("check", 0.2)
    for ev in sub:
        if ev.kind == "input":
            got.append(ev.envelope)
        if (got and got[-1].seq == last_seq) or time.monotonic() > deadline:
            break
    return got


@pytest.mark.parametrize("transport", ["nng", "local"])
def test_a_burst_into_a_queue_of_two_keeps_the_newest_and_counts_the_rest(rundir, transport):
    pub, sub = _pair(rundir, transport, queue=2)
    try:
        pub.publish("out", {"i": 0})
        assert [e.seq for e in _drain(sub, 0)] == [0]   # drops count from a seq seen
        for i in range(1, 101):
            pub.publish("out", {"i": i})
        got = _drain(sub, 100)
        seqs = [e.seq for e in got]
        assert [e.data["i"] for e in got] == seqs and seqs == sorted(set(seqs))
        counts = sub.stats()["in"]["in"]
        # every message is either read or counted as dropped, never both, never neither
        assert counts["msgs"] == 1 + len(got) and counts["msgs"] + counts["drops"] == 101
        assert counts["bad"] == 0
        if transport == "local":   # handed over at publish: the queue holds the newest two
            assert seqs == [99, 100]
        else:   # NNG moves the burst in the background; the reader may catch some on the way
            assert seqs[-1] == 100 and counts["drops"] > 0
    finally:
        sub.close()
        pub.close()


@pytest.mark.parametrize("transport", ["nng", "local"])
def test_envelope_stamp_trace_and_data_arrive_as_sent(rundir, transport):
    pub, sub = _pair(rundir, transport, queue=8)
    try:
        pub.publish("out", {"t": (1, 2), "n": np.float32(1.5), "a": np.arange(6).reshape(2, 3)},
                    stamp_ns=12345)
        (env,) = _drain(sub, 0)
        assert env.topic == "p/out" and env.src == "p" and env.stamp_ns == 12345
        assert [hop[0] for hop in env.trace] == ["p"]
        assert env.data["t"] == [1, 2] and type(env.data["n"]) is float
        assert env.data["a"].flags.writeable is False
        with pytest.raises(ValueError, match="read-only"):
            env.data["a"][0, 0] = 7            # a consumer cannot change what others read
        with pytest.raises(EncodeError):
            pub.publish("out", {"x": object()})  # what the wire refuses, both refuse
    finally:
        sub.close()
        pub.close()


def test_the_in_process_contract_hands_arrays_over_without_a_copy(rundir):
    pub, sub = _pair(rundir, "local", queue=8)
    try:
        frame = np.zeros((480, 640, 3), np.uint8)
        big = np.zeros(100, np.int32)
        pub.publish("out", {"frame": frame, "view": big[10:20]})
        (env,) = _drain(sub, 0)
        assert env.data["frame"] is frame                 # no copy
        with pytest.raises(ValueError, match="read-only"):
            frame[0, 0, 0] = 1                             # the producer cannot reuse it
        big[10] = 99                                       # a view is copied: its owner
        assert env.data["view"][0] == 0                    # can still write the base
    finally:
        sub.close()
        pub.close()


def test_a_cross_process_subscriber_of_the_same_output_keeps_working(rundir):
    pub, sub = _pair(rundir, "local", queue=8)
    remote = Subscriber(pub.transport.outputs["out"].address, queue=8)
    try:
        wait_for(lambda: pub.transport.outputs["out"].subscribers >= 1, 10, "the NNG subscriber")
        for i in range(3):
            pub.publish("out", {"i": i})
        assert [e.seq for e in _drain(sub, 2)] == [0, 1, 2]
        got = [remote.recv(5.0) for _ in range(3)]
        assert [e.seq for e in got] == [0, 1, 2] and [e.data["i"] for e in got] == [0, 1, 2]
    finally:
        remote.close()
        sub.close()
        pub.close()


def test_a_closed_local_queue_leaves_the_registry():
    q = LocalQueue("ipc:///nowhere/x", queue=1)
    from iotrt import local
    assert local.subscribers("ipc:///nowhere/x") == [q]
    q.close()
    assert local.subscribers("ipc:///nowhere/x") == []
