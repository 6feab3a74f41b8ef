"""A node that attacks its supervisor from its own process: heartbeats whose counters add up
past 2^64, then a flood of large messages that are not protocol messages at all."""

import json
import os
import time

import pynng

from iotrt import Node
from iotrt.codec import pack
from iotrt.spec import NodeSpec, Param

SPEC = NodeSpec(doc="hostile supervisor peer",
                params=[Param("flood_s", float, 10.0), Param("done", str, "")])


def main(node: Node) -> None:
    cfg = json.loads(os.environ["IOTRT_NODE_CONFIG"])
    push = pynng.Push0(send_timeout=100)
    push.dial(cfg["supervisor"], block=True)
    node.ready()
    big = 2**64 - 1
    for _ in range(10):   # each counter is a valid uint64; their sum is not
        push.send(pack({"type": "heartbeat", "id": cfg["id"], "pid": os.getpid(),
                        "stats": {"in": {"a": {"msgs": big, "drops": big, "bad": big},
                                         "b": {"msgs": big, "drops": big, "bad": big}},
                                  "out": {}}}))
    n = 256 * 1024
    junk = b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n   # valid msgpack, 256 K empty lists
    end = time.monotonic() + node.params["flood_s"]
    sent = 0
    while time.monotonic() < end:
        try:
            push.send(junk)
            sent += 1
        except pynng.Timeout:
            pass
    with open(node.params["done"], "w") as f:
        f.write(str(sent))
    for _ in node:
        pass


if __name__ == "__main__":
    main(Node())
