"""A node that publishes a few large frames (they travel through a shared-memory ring), writes
the names of its /dev/shm segments to `marker`, then SIGKILLs itself: it cannot clean up."""

import os
import signal

import numpy as np

from iotrt import Node
from iotrt.shm import SHM_DIR, segment_prefix
from iotrt.spec import NodeSpec, Param

SPEC = NodeSpec(doc="dies holding frame rings", outputs={"image": "a large frame"},
                params=[Param("marker", str, "", "file that gets the segment names")])


def main(node: Node) -> None:
    node.ready()
    node.timer("tick", 0.02)
    sent = 0
    for _event in node:
        node.publish("image", np.full((480, 640, 3), sent % 255, np.uint8))
        sent += 1
        if sent == 5:
            prefix = segment_prefix(node.config.outputs["image"].address)
            mine = [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]
            with open(node.params["marker"], "w") as f:
                f.write("\n".join(mine))
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(Node())
