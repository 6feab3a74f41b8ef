"""Test node standing in for a compromised or buggy rule node: sends the lock commands of
attack 5 over the real command channel (raw bytes where the client library would refuse to
build them) and writes each ack as a JSON line to `out`, then idles."""

import json

import msgpack
import pynng

from iotrt import Node
from iotrt.bus import recv_bytes
from iotrt.spec import NodeSpec, Param

SPEC = NodeSpec(
    doc="sends hostile lock commands",
    commands_out={"lock": "the door"},
    params=[Param("out", str, doc="JSON lines: {case, ack}")],
)


def request(cid: str, data: dict, deep: int = 0) -> bytes:
    body = msgpack.packb({"id": cid, "src": "cmd", "t_ns": 0, "data": {**data, "who": None}},
                         use_bin_type=True)
    # the last byte is the nil of "who": replace it by `deep` nested one-element lists
    return body[:-1] + b"\x91" * deep + b"\xc0"


def main(node: Node) -> None:
    unlock = {"action": "unlock", "duration_s": 5}
    cases = [
        ("bytes_key", request("c-bytes", {**unlock, b"owner": 1})),
        ("deep", request("c-deep", unlock, deep=1000)),
        ("long_id", request("x" * 900_000, unlock)),
        ("good", request("c-good", {"action": "unlock", "duration_s": 0.3})),
    ]
    sock = pynng.Req0(dial=node.config.commands_out["lock"].address, recv_timeout=10_000,
                      send_timeout=10_000)
    node.ready()
    with open(node.params["out"], "a") as out:
        for case, body in cases:
            sock.send(body)
            ack = msgpack.unpackb(recv_bytes(sock), raw=False, strict_map_key=False)
            out.write(json.dumps({"case": case, "ack": ack}, default=repr) + "\n")
            out.flush()
    for _ in node:
        pass


if __name__ == "__main__":
    main(Node())
