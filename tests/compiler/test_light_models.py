"""Whole networks: onnx's light_* models with random weights, against onnxruntime.

The shipped light models have every weight equal to 0.02 (ConstantOfShape nodes), which cannot
reveal a transposed or mis-folded weight; here every weight is re-drawn at random (He-scaled so
activations stay in range through 50 layers), and intermediate tensors plus the pre-softmax
logits are compared, not just the near-constant softmax output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from iotrt.compiler import compile_model  # noqa: E402
from iotrt.engine import load  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ["squeezenet", "shufflenet", "resnet50", "inception_v1"]


def reseeded(name: str, seed: int = 0) -> onnx.ModelProto:
    """The light model with random weights and some intermediates exposed as outputs."""
    path = LIGHT / f"light_{name}.onnx"
    if not path.is_file():
        pytest.skip(f"this onnx build does not ship {path.name}")
    model = onnx.load(str(path))
    g = model.graph
    rng = np.random.default_rng(seed)
    shapes = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    role = {}  # weight tensor -> how to draw it
    for node in g.node:
        if node.op_type == "BatchNormalization":
            for inp, r in zip(node.input[1:5], ("bn_scale", "bn_bias", "bn_mean", "bn_var")):
                role[inp] = r
        elif node.op_type in ("Conv", "Gemm"):
            role[node.input[1]] = "weight"
            if len(node.input) > 2:
                role[node.input[2]] = "bias"
    kept = []
    for node in g.node:
        if node.op_type != "ConstantOfShape":
            kept.append(node)
            continue
        shape = tuple(int(s) for s in shapes[node.input[0]])
        r = role.get(node.output[0], "bias")
        if r == "weight":
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif r in ("bn_scale", "bn_var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.standard_normal(shape) * 0.1
        g.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    del g.node[:]
    g.node.extend(kept)
    # Expose intermediates: activations spread through the network, and the softmax's input.
    acts = [n.output[0] for n in kept if n.op_type in ("Relu", "Concat", "Sum", "MaxPool")]
    picks = [acts[len(acts) * k // 4] for k in (1, 2, 3)]
    logits = next(n.input[0] for n in kept if n.op_type == "Softmax")
    for name_ in picks + [logits]:
        g.output.append(helper.make_tensor_value_info(name_, TensorProto.FLOAT, None))
    return model


@pytest.fixture(scope="module", params=MODELS)
def light(request, tmp_path_factory):
    model = reseeded(request.param)
    src = tmp_path_factory.mktemp(request.param) / f"{request.param}.onnx"
    onnx.save(model, str(src))
    out = src.with_suffix(".iotm")
    report = compile_model(src, out)
    return request.param, src, model, report, load(out, backend="numpy")


def test_matches_onnxruntime_on_intermediates_and_logits(light):
    name, src, model, _, compiled = light
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(compiled.inputs[0].shape).astype(np.float32)
    feeds = {compiled.inputs[0].name: x}
    names = [o.name for o in model.graph.output]
    ref = dict(zip(names, sess.run(names, feeds)))
    got = compiled.run(feeds)
    for out in names:
        scale = float(np.abs(ref[out]).max())
        err = float(np.abs(got[out] - ref[out]).max())
        assert scale > 1e-3, f"{name}/{out}: reference is ~0, the comparison would prove nothing"
        assert err <= 1e-4 * scale + 1e-5, f"{name}/{out}: max abs error {err} (max |ref| {scale})"
    # the logits vary across classes: a wrong weight layout would not go unnoticed
    logits = ref[names[-1]].ravel()
    assert logits.std() > 1e-2 * np.abs(logits).max()


def test_passes_simplified_the_graph(light):
    name, _, model, report, _ = light
    counts = report.op_counts
    source_ops = {n.op_type for n in model.graph.node}
    # BatchNormalization folds into the preceding Conv, Dropout disappears, and every
    # Relu that follows a single-use Conv/Sum is fused into it
    assert "BatchNormalization" not in counts and "Dropout" not in counts
    if "BatchNormalization" in source_ops:
        assert "Mul" not in counts and "Add" not in counts
    assert counts.get("Relu", 0) <= 3, counts
    assert report.peak_activation_bytes > 0
