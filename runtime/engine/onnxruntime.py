"""Backend `onnxruntime`: runs the ONNX copy of the optimised graph that the artifact embeds.

The compiler writes that copy (payload "onnx"); the device needs only the `onnxruntime` wheel
(extra `iotrt[onnxruntime]`).
Thread pools are fixed: `threads` intra-op threads, one inter-op thread, no spinning (a spinning
pool burns the cores the other nodes of the graph need).
"""

from __future__ import annotations

import numpy as np

from iotrt.engine.backend import BackendUnavailable, FrameworkModel, artifact_onnx, refuse_known_bad

NAME = "onnxruntime"


def _downsamples(node, graph) -> bool:
    return any(o < i for o, i in zip(graph.shapes[node.outputs[0]], graph.shapes[node.inputs[0]]))


# Where onnxruntime itself fails the ONNX reference (its own run of the conformance model does).
REFUSALS = [
    (lambda n, g: n.op.value == "Resize" and n.attrs.get("mode") in ("linear", "cubic")
     and n.attrs.get("coordinate_transformation_mode") == "align_corners" and _downsamples(n, g),
     "onnxruntime's align_corners downsampling differs from ONNX's"),
]


class OnnxRuntimeModel(FrameworkModel):
    backend = NAME

    def __init__(self, artifact, threads: int = 1):
        super().__init__(artifact)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable(
                f"backend {NAME!r}: the onnxruntime package is not installed "
                f"(pip install 'iotrt[onnxruntime]')"
            ) from None
        refuse_known_bad(artifact, NAME, REFUSALS)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # its warnings about unused initializers are noise here
        try:
            self._session = ort.InferenceSession(
                artifact_onnx(artifact, NAME), opts, providers=["CPUExecutionProvider"]
            )
        except (RuntimeError, ValueError) as exc:  # onnxruntime's own Fail/InvalidGraph errors
            raise BackendUnavailable(f"backend {NAME!r}: onnxruntime rejects the graph: {exc}") from exc
        self._names = [spec.name for spec in self.outputs]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(self._names, feeds)


def load(artifact, threads: int = 1) -> OnnxRuntimeModel:
    return OnnxRuntimeModel(artifact, threads)
