"""Compare an artifact's outputs with the source model run by its own framework.

The reference is onnxruntime for ONNX models and LiteRT for TFLite models, whichever is
installed; inputs are random (seeded) within the model's declared input range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iotrt.errors import ModelError
from iotrt.modelformat.artifact import Artifact


class ReferenceUnavailable(ModelError, RuntimeError):
    """No reference framework for this model format is installed."""


@dataclass
class CheckResult:
    reference: str
    max_abs_error: dict[str, float]   # output name -> max |artifact - reference|
    max_abs_value: dict[str, float]   # output name -> max |reference|, for scale


def random_inputs(art: Artifact, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lo, hi = art.meta.get("input_range", [-1.0, 1.0])
    feeds = {}
    for spec in art.inputs:
        if np.dtype(spec.dtype).kind == "f":
            feeds[spec.name] = rng.uniform(lo, hi, spec.shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.integers(0, 10, spec.shape).astype(spec.dtype)
    return feeds


def _onnxruntime(src: Path, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    try:
        import onnxruntime as ort
    except ModuleNotFoundError as exc:
        raise ReferenceUnavailable("--check on an ONNX model needs onnxruntime installed") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, feeds)))


def _litert(src: Path, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ModuleNotFoundError as exc:
        raise ReferenceUnavailable("--check on a TFLite model needs ai-edge-litert installed") from exc
    interp = Interpreter(str(src))
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], feeds[d["name"]])
    interp.invoke()
    return {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()
            if d["name"] in names}


REFERENCES = {"onnx": ("onnxruntime", _onnxruntime), "tflite": ("LiteRT", _litert)}


def check(art: Artifact, src: str | Path, model, seed: int = 0) -> CheckResult:
    """Run `model` (a loaded artifact) and the reference on the same random inputs."""
    feeds = random_inputs(art, seed)
    names = [s.name for s in art.outputs]
    label, runner = REFERENCES[art.source["format"]]
    ref = runner(Path(src), feeds, names)
    got = model.run(feeds)
    errors, scale = {}, {}
    for name in names:
        r = np.asarray(ref[name], dtype=np.float64)
        errors[name] = float(np.abs(got[name].astype(np.float64) - r).max()) if r.size else 0.0
        scale[name] = float(np.abs(r).max()) if r.size else 0.0
    return CheckResult(label, errors, scale)
