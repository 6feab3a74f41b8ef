"""A stand-in for the identity node: the owner's face, every period_s."""

from iotrt import Node
from iotrt.node import NodeSpec, Param

SPEC = NodeSpec(outputs={"faces": "{faces: [{name, score, box}]}"},
                params=[Param("period_s", float, 0.1, min=0.01)])

node = Node(spec=SPEC)
node.timer("frame", node.params["period_s"])
for _event in node:
    node.publish("faces", {"faces": [{"name": "owner", "score": 0.95, "box": [10, 10, 80, 80]}]})
