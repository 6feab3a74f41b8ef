"""Test actuator: journals each command synchronously (as a real actuator must before it acks),
then acks it."""

from iotrt import Node
from iotrt.spec import NodeSpec

SPEC = NodeSpec(doc="test actuator", commands_in={"commands": "{'action': str}"})


def main(node: Node) -> None:
    for event in node:
        if event.kind == "command":
            node.record("actuated", sync=True, action=event.data.get("action"))
            event.ack({"result": "done"})


if __name__ == "__main__":
    main(Node())
