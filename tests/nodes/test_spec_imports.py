"""Reading a graph's node SPECs (what `iotrt up` and `iotrt validate` do in the command's own
process before anything starts) costs only the Node API: the door graph's camera, detector,
identity, snapshot and clip nodes load OpenCV, numpy, the engine and mcap when they run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from iotrt.engine import BACKENDS
from iotrt.nodes.perception import detector, identity, matcher

DOOR = Path(__file__).resolve().parents[2] / "configs" / "door.yaml"
HEAVY = ("cv2", "numpy", "mcap", "iotrt.engine", "iotrt.recording")


def test_loading_the_door_graph_imports_neither_opencv_nor_numpy():
    code = (f"import sys\n"
            f"from iotrt.graph import load_graph\n"
            f"from iotrt.lazy import LazyModule\n"
            f"graph = load_graph({str(DOOR)!r}, check_node_files=True)\n"
            f"assert {{'cam', 'faces', 'who', 'snapshot', 'clips'}} <= set(graph.nodes)\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules\n"
            f"             and not isinstance(sys.modules[m], LazyModule)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_specs_name_the_backends_and_methods_their_modules_have():
    """detector and identity name them so that reading their SPEC loads neither module."""
    backend = next(p for p in detector.SPEC.params if p.name == "backend")
    assert backend.choices == ("auto", *BACKENDS)
    method = next(p for p in identity.SPEC.params if p.name == "method")
    assert method.choices == tuple(matcher.METHODS)
