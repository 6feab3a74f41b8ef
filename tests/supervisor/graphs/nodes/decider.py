"""Test rule node: every period_s sends an acknowledged "lock" command and journals the ack."""

from iotrt import Node
from iotrt.spec import NodeSpec, Param

SPEC = NodeSpec(
    doc="test decider",
    inputs={"*": "anything"},
    commands_out={"lock": "the door", "*": "any other actuator"},
    params=[Param("period_s", float, 0.2, "command period")],
)


def main(node: Node) -> None:
    node.timer("decide", node.params["period_s"])
    for event in node:
        if event.kind == "timer":
            ack = node.command("lock", {"action": "lock"})
            node.record("acked", ok=ack.get("ok"), result=ack.get("result"))


if __name__ == "__main__":
    main(Node())
