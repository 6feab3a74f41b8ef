"""Node modules the launch tests run as real processes (target "sample_nodes:relay", ...)."""

import time

from iotrt.node import NodeSpec, Param

SPEC = NodeSpec(
    doc="relays its input, answers commands, reports reloads",
    inputs={"in": "anything"},
    outputs={"out": "what came in, plus reload notices"},
    commands_in={"cmd": "echoed back in the ack"},
    params=[Param("tag", str, "relay", "added to every relayed message")],
)


def relay(node) -> None:
    for event in node:
        if event.kind == "input":
            if isinstance(event.data, dict) and "sleep" in event.data:
                time.sleep(event.data["sleep"])  # user code that hangs the loop for a while
            node.publish("out", {"tag": node.params["tag"], "data": event.data})
        elif event.kind == "command":
            node.record("command_applied", sync=True, id=event.id)
            event.ack({"result": event.data})
        elif event.kind == "reload":
            node.publish("out", {"tag": "reloaded"})


def main(node) -> None:
    relay(node)
