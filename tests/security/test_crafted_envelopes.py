"""Attack 6: two crafted envelopes (seq -2^63, then 2^64-1) overflowed a subscriber's drop
counter, the next heartbeat could not be encoded, and the node exited. Every numeric header
field is bounded at decode; a bad envelope is counted as `bad` and never raises."""

from __future__ import annotations

import msgpack
import pynng
import pytest
from helpers import wait_for

from iotrt.bus import Subscriber, short_ipc_address
from iotrt.codec import MAX_TRACE, WIRE_VERSION, DecodeError, Envelope, decode, encode, pack


def raw(seq=0, stamp=1, trace=None, topic="cam/image", src="cam") -> bytes:
    return msgpack.packb([WIRE_VERSION, topic, seq, stamp, src, trace or [], {"x": 1}])


def test_the_two_envelopes_of_the_attack_are_counted_bad_and_stats_stay_packable(shared_tmp):
    address = short_ipc_address(shared_tmp, "g", "cam", "image")
    with pynng.Pub0(listen=address) as pub, Subscriber(address, queue=16) as sub:
        wait_for(lambda: sub.connected and pub.pipes, what="connection on both sides")
        for seq in (0, -2**63, 2**64 - 1, 1):
            pub.send(raw(seq=seq))
        got = []
        wait_for(lambda: got.append(sub.recv(timeout_s=0.2)) or
                 [e for e in got if e is not None and e.seq == 1], what="the last good one")
        assert [e.seq for e in got if e is not None] == [0, 1]
        assert sub.bad == 2 and sub.drops == 0
        pack({"in": sub.stats()})      # what the heartbeat sends: must encode


@pytest.mark.parametrize("fields", [
    dict(seq=-1), dict(seq=2**63), dict(seq=2**64 - 1), dict(seq=-2**63),
    dict(stamp=-1), dict(stamp=2**64 - 1),
    dict(trace=[["a", 2**64 - 1]]), dict(trace=[["a", -5]]), dict(trace=[["a"]]),
    dict(trace=[[1, 2]]), dict(trace=[5]), dict(trace=[["a", 1]] * (MAX_TRACE + 1)),
    dict(topic="t" * 10_000), dict(src="s" * 10_000),
])
def test_every_header_field_is_bounded(fields):
    with pytest.raises(DecodeError):
        decode(raw(**fields))


def test_the_largest_valid_values_still_pass_and_the_drop_counter_saturates(shared_tmp):
    top = 2**63 - 1
    env = decode(raw(seq=top, stamp=top, trace=[["a", top]]))
    assert (env.seq, env.stamp_ns, env.trace) == (top, top, [["a", top]])
    long_trace = [["n", i] for i in range(3 * MAX_TRACE)]
    # a cycle in a graph keeps appending hops: the encoder keeps the newest MAX_TRACE
    assert decode(encode(Envelope("a/b", 0, 1, "a", long_trace))).trace == long_trace[-MAX_TRACE:]
    address = short_ipc_address(shared_tmp, "g", "cam", "x")
    with pynng.Pub0(listen=address) as pub, Subscriber(address, queue=16) as sub:
        wait_for(lambda: sub.connected and pub.pipes, what="connection on both sides")
        for seq in (0, top, 0, top, 0, top):    # gaps of 2^63 again and again
            pub.send(raw(seq=seq))
        wait_for(lambda: sub.recv(timeout_s=0.2) is not None and sub.msgs == 6 or sub.msgs == 6,
                 what="six messages")
        assert sub.drops == top
        pack(sub.stats())
