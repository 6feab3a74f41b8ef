"""Backend `onnxruntime`: runs the ONNX copy of the optimised graph that the artifact embeds.

The compiler writes that copy (payload "onnx") when the `onnx` package is present on the
compiling machine; the device needs only the `onnxruntime` wheel (extra `iotrt[onnxruntime]`).
Thread pools are fixed: `threads` intra-op threads, one inter-op thread, no spinning (a spinning
pool burns the cores the other nodes of the graph need).
"""

from __future__ import annotations

import numpy as np

from iotrt.engine.backend import BackendUnavailable, artifact_onnx

NAME = "onnxruntime"


def unavailable() -> str | None:
    """Why this backend cannot run here, or None if it can."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "the onnxruntime package is not installed (pip install 'iotrt[onnxruntime]')"
    return None


class OnnxRuntimeBackend:
    name = NAME

    def __init__(self, artifact, threads: int = 1):
        reason = unavailable()
        if reason:
            raise BackendUnavailable(f"backend {NAME!r}: {reason}")
        import onnxruntime as ort

        model = artifact_onnx(artifact, NAME)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # its warnings about unused initializers are noise here
        self._session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self._outputs = [spec.name for spec in artifact.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._outputs, feeds)
        return dict(zip(self._outputs, values))
