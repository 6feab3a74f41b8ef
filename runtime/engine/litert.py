"""Backend `litert`: runs a TFLite-sourced artifact's original .tflite with LiteRT (XNNPACK).

For a model compiled from TFLite (e.g. BlazeFace) the compiler embeds the source flatbuffer
(payload "tflite"; not for `--quantize int8` artifacts, whose point is to be small). On ARM
boards LiteRT's XNNPACK kernels are usually the fastest CPU path for such models, so `auto`
should be able to pick it. The device needs the `ai-edge-litert` wheel (extra `iotrt[litert]`).
Inputs and outputs are matched by tensor name, which the TFLite front end keeps.
"""

from __future__ import annotations

import numpy as np

from iotrt.engine.backend import BackendUnavailable, FrameworkModel

NAME = "litert"
PAYLOAD = "tflite"


class LiteRTModel(FrameworkModel):
    backend = NAME

    def __init__(self, artifact, threads: int = 1):
        super().__init__(artifact)
        model = artifact.payloads.get(PAYLOAD)
        if model is None:
            why = (
                "it was compiled with --quantize, whose point is a small artifact"
                if artifact.source.get("format") == "tflite"
                else "only models compiled from a .tflite carry one"
            )
            raise BackendUnavailable(f"backend {NAME!r} runs the source .tflite, which this "
                                     f"artifact does not embed: {why}")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise BackendUnavailable(
                f"backend {NAME!r}: the ai-edge-litert package is not installed (pip install 'iotrt[litert]')"
            ) from None
        try:
            self._interp = Interpreter(model_content=model, num_threads=threads)
            self._interp.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise BackendUnavailable(f"backend {NAME!r}: LiteRT cannot load the model: {exc}") from exc
        ins = {d["name"]: d for d in self._interp.get_input_details()}
        outs = {d["name"]: d["index"] for d in self._interp.get_output_details()}
        missing = [s.name for s in self.inputs if s.name not in ins]
        missing += [s.name for s in self.outputs if s.name not in outs]
        if missing:
            raise BackendUnavailable(f"backend {NAME!r}: the .tflite has no tensors named {missing}")
        for spec in self.inputs:
            if tuple(ins[spec.name]["shape"]) != tuple(spec.shape):
                self._interp.resize_tensor_input(ins[spec.name]["index"], list(spec.shape))
                self._interp.allocate_tensors()
        self._in = {s.name: ins[s.name]["index"] for s in self.inputs}
        self._out = [outs[s.name] for s in self.outputs]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, index in self._in.items():
            self._interp.set_tensor(index, feeds[name])
        self._interp.invoke()
        # get_tensor copies, so the next invoke cannot change what the caller holds
        return [self._interp.get_tensor(i) for i in self._out]


def load(artifact, threads: int = 1) -> LiteRTModel:
    return LiteRTModel(artifact, threads)
