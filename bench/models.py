"""The models the engine benchmark and the backend tests run, and how to get them ready.

- BlazeFace: the vendored MediaPipe .tflite under models/.
- The `light_*` ONNX models that ship inside the `onnx` package. Their weights are not stored:
  each is a ConstantOfShape node that fills the weight's shape with 0.02, which makes all outputs
  (nearly) equal, lets a transposed weight go unnoticed, and makes activations deep in SqueezeNet
  overflow. `random_weights` turns those nodes into stored, He-scaled random weights, so that
  comparisons between backends mean something and timings run on ordinary numbers.

Needs the `onnx` package (the compiler extra); imported by bench/engine.py and tests/engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BLAZEFACE = REPO / "models" / "face_detection_short_range.tflite"
LIGHT = ("light_squeezenet", "light_shufflenet", "light_resnet50", "light_inception_v1")


class ModelMissing(FileNotFoundError):
    """A benchmark/test model is not present on this machine."""


def light_model_path(name: str) -> Path:
    import onnx

    path = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light" / f"{name}.onnx"
    if not path.exists():
        raise ModelMissing(f"{path} not found: this onnx build does not ship the light models")
    return path


def random_weights(src: Path, dst: Path, seed: int = 0) -> Path:
    """Write a copy of ONNX model `src` to `dst` with every float weight re-drawn at random.

    Conv/Gemm weights ~ N(0, 2/fan_in) (He), so activations keep their scale through 50 layers;
    biases ~ N(0, 0.05); batch-norm scale ~ U(0.2, 0.5), variance ~ U(0.5, 1.5), mean and shift
    ~ N(0, 0.1).
    Integer initializers (shapes) are left alone.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    inits = {i.name: i for i in model.graph.initializer}
    for node in list(model.graph.node):
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = numpy_helper.to_array(inits[node.input[0]]).astype(np.int64)
            value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"),
                         np.zeros(1, np.float32))
            filled = np.full(tuple(shape), value.reshape(-1)[0], value.dtype)
            model.graph.initializer.append(numpy_helper.from_array(filled, node.output[0]))
            model.graph.node.remove(node)
    used = {i for n in model.graph.node for i in n.input}
    for init in list(model.graph.initializer):
        if init.name not in used:
            model.graph.initializer.remove(init)  # the shape tensors the fills were made from
    # Old exporters list weights (and here the shape tensors) as graph inputs as well: keep only
    # the real inputs, which IR >= 4 allows (it is what every current exporter writes).
    weights = {i.name for i in model.graph.initializer}
    produced = {o for n in model.graph.node for o in n.output}
    for value in list(model.graph.input):
        if value.name in weights or value.name in produced or value.name not in used:
            model.graph.input.remove(value)
    model.ir_version = max(model.ir_version, 4)
    role: dict[str, str] = {}
    for node in model.graph.node:
        ins = list(node.input)
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(ins) > 1:
            role.setdefault(ins[1], "weight")
            if len(ins) > 2:
                role.setdefault(ins[2], "bias")
        elif node.op_type == "BatchNormalization":
            for name, kind in zip(ins[1:5], ("bn_scale", "bn_shift", "bn_mean", "bn_var")):
                role.setdefault(name, kind)
    for init in model.graph.initializer:
        old = numpy_helper.to_array(init)
        if old.dtype.kind != "f":
            continue
        kind = role.get(init.name, "bias")
        if kind == "weight" and old.ndim >= 2:
            # Conv weights are (out, in/groups, kh, kw); a Gemm matrix's fan-in is one of its two
            # sides, and the smaller guess keeps activations from shrinking layer after layer.
            fan_in = int(np.prod(old.shape[1:])) if old.ndim > 2 else min(old.shape)
            new = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), old.shape)
        elif kind == "bn_scale":
            # Small: a residual branch then adds a little to its input instead of doubling it,
            # so activations stay O(1) through ResNet-50's 16 blocks as in a trained net.
            new = rng.uniform(0.2, 0.5, old.shape)
        elif kind == "bn_var":
            new = rng.uniform(0.5, 1.5, old.shape)
        elif kind in ("bn_mean", "bn_shift"):
            new = rng.normal(0.0, 0.1, old.shape)
        else:
            new = rng.normal(0.0, 0.05, old.shape)
        init.CopyFrom(numpy_helper.from_array(new.astype(old.dtype), init.name))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def onnx_inputs(path: Path) -> dict[str, tuple[int, ...]]:
    """Graph inputs of an ONNX model, without the initializers old exporters also list as inputs."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return {
        v.name: tuple(d.dim_value if d.dim_value > 0 else 1 for d in v.type.tensor_type.shape.dim)
        for v in model.graph.input
        if v.name not in inits
    }


def face_photos() -> dict[str, np.ndarray]:
    """Real photographs of faces that scikit-image ships, as RGB uint8 (H, W, 3)."""
    from skimage import data

    camera = data.camera()
    return {
        "astronaut": data.astronaut(),
        "cameraman": np.repeat(camera[:, :, None], 3, axis=2),
    }


def without_softmax(src: Path, dst: Path) -> Path:
    """Copy of ONNX model `src` whose outputs are the logits fed to its final Softmax(es).

    Softmax squashes errors (a wrong logit of a losing class barely moves the output), so
    comparisons and the int8 error report look at the logits.
    """
    import onnx

    model = onnx.load(str(src))
    outputs = {o.name for o in model.graph.output}
    for node in list(model.graph.node):
        if node.op_type == "Softmax" and node.output[0] in outputs:
            for out in model.graph.output:
                if out.name == node.output[0]:
                    out.name = node.input[0]
            model.graph.node.remove(node)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst
