"""Backend `opencv`: runs the artifact's embedded ONNX graph with cv2.dnn.

OpenCV reads the same ONNX copy as the onnxruntime backend (payload "onnx"). OpenCV 5 picks its
new engine first and falls back to the classic one; the new engine can silently drop outputs of
a multi-output graph (it does so for BlazeFace), so a net that does not report every artifact
output is read again with `ENGINE_CLASSIC`. cv2's thread pool is process-wide: `threads` sets it.
"""

from __future__ import annotations

import numpy as np

from iotrt.engine.backend import BackendUnavailable, FrameworkModel, artifact_onnx

NAME = "opencv"


def _read_net(cv2, buffer: np.ndarray, outputs: list[str]):
    engines = [getattr(cv2.dnn, name) for name in ("ENGINE_AUTO", "ENGINE_CLASSIC") if hasattr(cv2.dnn, name)]
    problems = []
    for engine in engines or [None]:  # OpenCV 4 has no engine choice
        try:
            net = (
                cv2.dnn.readNetFromONNX(buffer)
                if engine is None
                else cv2.dnn.readNetFromONNX(buffer, engine=engine)
            )
        except cv2.error as exc:
            problems.append(f"engine {engine}: {str(exc).strip().splitlines()[-1]}")
            continue
        missing = sorted(set(outputs) - set(net.getUnconnectedOutLayersNames()))
        if not missing:
            return net
        problems.append(f"engine {engine}: outputs {missing} missing")
    raise BackendUnavailable(f"backend {NAME!r}: cv2.dnn cannot run this graph ({'; '.join(problems)})")


class OpenCVModel(FrameworkModel):
    backend = NAME

    def __init__(self, artifact, threads: int = 1):
        super().__init__(artifact)
        try:
            import cv2
        except ImportError:
            raise BackendUnavailable(
                f"backend {NAME!r}: OpenCV is not installed (pip install opencv-python-headless)"
            ) from None
        if not hasattr(cv2, "dnn"):
            raise BackendUnavailable(f"backend {NAME!r}: this OpenCV build has no dnn module")
        cv2.setNumThreads(threads)
        self._names = [spec.name for spec in self.outputs]
        self._net = _read_net(cv2, np.frombuffer(artifact_onnx(artifact, NAME), np.uint8), self._names)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, value in feeds.items():
            self._net.setInput(value, name)
        return self._net.forward(self._names)


def load(artifact, threads: int = 1) -> OpenCVModel:
    return OpenCVModel(artifact, threads)
