"""A stand-in for the identity node: publishes, every period_s, the faces named in a JSON file
the test rewrites (a list of names; "unknown" is a visitor, anyone else is enrolled)."""

import json
from pathlib import Path

from iotrt import Node
from iotrt.node import NodeSpec, Param

SPEC = NodeSpec(outputs={"faces": "{faces: [{name, score, box}]}"},
                params=[Param("file", str), Param("period_s", float, 0.1, min=0.01)])

node = Node(spec=SPEC)
node.timer("frame", node.params["period_s"])
path = Path(node.params["file"])
for _event in node:
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError):
        names = []
    node.publish("faces", {"faces": [{"name": n, "score": 0.95, "known": n != "unknown",
                                      "box": [10, 10, 80, 80]} for n in names]})
