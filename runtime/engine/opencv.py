"""Backend `opencv`: runs the artifact's embedded ONNX graph with cv2.dnn.

OpenCV reads the same ONNX copy as the onnxruntime backend (payload "onnx"). OpenCV 5 picks its
new engine first and falls back to the classic one; the new engine can silently drop outputs of
a multi-output graph (it does so for BlazeFace), so a net that does not report every artifact
output is read again with `ENGINE_CLASSIC`. cv2's thread pool is process-wide: `threads` sets it.
"""

from __future__ import annotations

import numpy as np

from iotrt.engine.backend import BackendUnavailable, FrameworkModel, artifact_onnx, refuse_known_bad

NAME = "opencv"


def _rank(graph, name: str) -> int:
    return len(graph.shapes.get(name, graph.consts[name].shape if name in graph.consts else ()))


# What cv2.dnn (OpenCV 5.0) computes wrongly or not at all from a valid ONNX graph (found by the
# ONNX node conformance cases in tests/engine/test_backends_conformance.py).
REFUSALS = [
    (lambda n, g: n.op.value == "PRelu", "cv2.dnn broadcasts PRelu slopes wrongly"),
    (lambda n, g: n.op.value == "Resize" and n.attrs.get("mode", "nearest") != "nearest",
     "cv2.dnn's linear/cubic Resize differs from ONNX's"),
    (lambda n, g: n.op.value in ("MaxPool", "AveragePool") and n.attrs.get("ceil_mode", 0),
     "cv2.dnn sizes ceil_mode pooling outputs differently"),
    (lambda n, g: n.op.value == "MatMul" and min(_rank(g, i) for i in n.inputs) < 2,
     "cv2.dnn's MatMul has no 1-D operands"),
    (lambda n, g: n.op.value == "Reshape" and n.attrs.get("allowzero", 0),
     "cv2.dnn has no Reshape allowzero"),
    (lambda n, g: n.op.value == "Resize" and n.attrs.get("axes") is not None,
     "cv2.dnn's Resize has no axes"),
    (lambda n, g: any(0 in g.shapes.get(t, (1,)) for t in n.outputs),
     "cv2.dnn returns no empty tensors"),
    (lambda n, g: any(g.dtypes.get(t, "float32") != "float32" for t in (*n.inputs, *n.outputs)
                      if t and t not in g.consts),
     "cv2.dnn computes in float32 only"),
]


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
        refuse_known_bad(artifact, NAME, REFUSALS)
        if any(0 in spec.shape for spec in artifact.outputs):
            raise BackendUnavailable(f"backend {NAME!r}: cv2.dnn returns no empty tensors")
        cv2.setNumThreads(threads)
        self._names = [spec.name for spec in self.outputs]
        self._net = _read_net(cv2, np.frombuffer(artifact_onnx(artifact, NAME), np.uint8), self._names)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, value in feeds.items():
            self._net.setInput(value, name)
        return self._net.forward(self._names)


def load(artifact, threads: int = 1) -> OpenCVModel:
    return OpenCVModel(artifact, threads)
