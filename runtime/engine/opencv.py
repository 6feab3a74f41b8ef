"""Backend `opencv`: runs the artifact's embedded ONNX graph with cv2.dnn.

OpenCV reads the same ONNX copy as the onnxruntime backend (payload "onnx"). OpenCV 5 picks its
new engine first and falls back to the classic one; the new engine can silently drop outputs of
a multi-output graph (it does so for BlazeFace), so a net that does not produce every artifact
output is read again with `ENGINE_CLASSIC`. cv2's thread pool is process-wide: `threads` sets it.
"""

from __future__ import annotations

import numpy as np

from iotrt.engine.backend import BackendUnavailable, artifact_onnx

NAME = "opencv"


def unavailable() -> str | None:
    """Why this backend cannot run here, or None if it can."""
    try:
        import cv2
    except ImportError:
        return "OpenCV (cv2) is not installed (pip install opencv-python-headless)"
    if not hasattr(cv2, "dnn"):
        return "this OpenCV build has no dnn module"
    return None


class OpenCVBackend:
    name = NAME

    def __init__(self, artifact, threads: int = 1):
        reason = unavailable()
        if reason:
            raise BackendUnavailable(f"backend {NAME!r}: {reason}")
        import cv2

        cv2.setNumThreads(threads)
        buffer = np.frombuffer(artifact_onnx(artifact, NAME), np.uint8)
        self._inputs = [spec.name for spec in artifact.inputs]
        self._outputs = [spec.name for spec in artifact.outputs]
        engines = [getattr(cv2.dnn, "ENGINE_AUTO", None), getattr(cv2.dnn, "ENGINE_CLASSIC", None)]
        problems = []
        for engine in dict.fromkeys(e for e in engines if e is not None) or [None]:
            try:
                net = (
                    cv2.dnn.readNetFromONNX(buffer)
                    if engine is None
                    else cv2.dnn.readNetFromONNX(buffer, engine=engine)
                )
            except cv2.error as exc:
                problems.append(f"engine {engine}: {str(exc).strip().splitlines()[-1]}")
                continue
            missing = set(self._outputs) - set(net.getUnconnectedOutLayersNames())
            if not missing:
                self._net = net
                return
            problems.append(f"engine {engine}: outputs {sorted(missing)} missing")
        raise BackendUnavailable(f"backend {NAME!r}: cv2.dnn cannot run this graph ({'; '.join(problems)})")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self._inputs:
            self._net.setInput(feeds[name], name)
        values = self._net.forward(self._outputs)
        return dict(zip(self._outputs, values))
