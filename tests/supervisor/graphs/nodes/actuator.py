"""Test actuator: journals each command synchronously (as a real actuator must before it acks),
then acks it."""

import time

from iotrt import Node
from iotrt.spec import NodeSpec, Param

SPEC = NodeSpec(doc="test actuator", commands_in={"commands": "{'action': str}"},
                params=[Param("start_s", float, 0.0, "start-up time before it is ready")])


def main(node: Node) -> None:
    time.sleep(node.params["start_s"])      # a slow start (a driver opening its device)
    node.ready()
    for event in node:
        if event.kind == "command":
            node.record("actuated", sync=True, action=event.data.get("action"))
            event.ack({"result": "done"})


if __name__ == "__main__":
    main(Node())
