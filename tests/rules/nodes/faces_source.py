"""A stand-in for the identity node in rule tests: publishes `faces` messages every period_s.

The face it shows is read from the `face_file` param each tick (a name, or empty for nobody),
so a test can change who stands at the door while the graph runs.
"""

from pathlib import Path

from iotrt import Node
from iotrt.spec import NodeSpec, Param

SPEC = NodeSpec(
    doc="test source of identity messages",
    outputs={"faces": "{faces: [{name, score, known, box}]}"},
    params=[
        Param("face_file", str, doc="file holding the name of the person in view ('' = nobody)"),
        Param("period_s", float, 0.05, "publish period"),
    ],
)


def main(node: Node) -> None:
    node.timer("tick", node.params["period_s"])
    path = Path(node.params["face_file"])
    for event in node:
        if event.kind == "timer":
            name = path.read_text().strip() if path.exists() else ""
            faces = ([{"name": name, "score": 0.95, "known": name != "unknown",
                       "box": [10, 10, 50, 50]}] if name else [])
            node.publish("faces", {"faces": faces})


if __name__ == "__main__":
    main(Node(spec=SPEC))
