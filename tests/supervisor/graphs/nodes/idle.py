"""A node with nothing to do: it only runs its event loop (heartbeats), for the idle test."""

from iotrt import Node
from iotrt.spec import NodeSpec

SPEC = NodeSpec(doc="idle node", inputs={"in": "anything"})


def main(node: Node) -> None:
    node.ready()
    for _ in node:
        pass


if __name__ == "__main__":
    main(Node())
