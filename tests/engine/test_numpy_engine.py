"""The numpy backend's fast paths against onnxruntime, and its memory behaviour.

The conv fast paths (1x1 GEMM, depthwise on wide rows of phase planes, im2col with border strips) are
chosen by geometry, so each geometry is built here and compared with onnxruntime.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from iotrt import models  # noqa: E402
from iotrt.compiler import compile_model  # noqa: E402
from iotrt.engine import load  # noqa: E402

RNG = np.random.default_rng(3)


def _model(nodes, x_shape, inits):
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run_both(tmp_path, model, x_shape):
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    compile_model(src, tmp_path / "m.iotm")
    compiled = load(tmp_path / "m.iotm", backend="numpy")
    x = RNG.standard_normal(x_shape).astype(np.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ref = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"]).run(
        ["y"], {"x": x})[0]
    return compiled, compiled.run({"x": x})["y"], ref


CONVS = {
    # name: (input shape, weight shape, attrs)
    "3x3 pad 1": ((1, 5, 9, 9), (7, 5, 3, 3), {"pads": [1, 1, 1, 1]}),
    # 49 output columns: the GEMM runs as 48 + 1 columns (see numpyconv.column_parts)
    "1x1 on a 7x7 map, batch 2": ((2, 8, 7, 7), (6, 8, 1, 1), {}),
    "3x3 on a 7x7 map, batch 2": ((2, 5, 7, 7), (4, 5, 3, 3), {"pads": [1, 1, 1, 1]}),
    "3x3 stride 2 onto a 9x9 map": ((1, 4, 17, 18), (3, 4, 3, 3), {"strides": [2, 2], "pads": [1, 0, 1, 0]}),
    "stride 2 asymmetric pads": ((1, 3, 10, 11), (4, 3, 3, 3), {"strides": [2, 2], "pads": [0, 1, 2, 1]}),
    "dilation 2": ((1, 4, 12, 12), (6, 4, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    "5x3 kernel, stride 2x1": ((1, 2, 11, 9), (3, 2, 5, 3), {"strides": [2, 1], "pads": [2, 1, 2, 1]}),
    "groups 2": ((1, 6, 8, 8), (4, 3, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
    "depthwise": ((1, 8, 10, 10), (8, 1, 3, 3), {"group": 8, "pads": [1, 1, 1, 1]}),
    "depthwise stride 2 5x5": ((1, 6, 13, 13), (6, 1, 5, 5), {"group": 6, "strides": [2, 2], "pads": [2, 2, 2, 2]}),
    "depthwise multiplier 2": ((1, 4, 7, 7), (8, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}),
    "depthwise multiplier 3 stride 2": ((1, 3, 9, 8), (9, 1, 3, 3),
        {"group": 3, "strides": [2, 2], "pads": [1, 0, 1, 1]}),
    "depthwise dilation 2": ((1, 5, 11, 12), (5, 1, 3, 3), {"group": 5, "dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    "depthwise stride 3 dilation 2": ((1, 4, 17, 15), (4, 1, 3, 3),
        {"group": 4, "strides": [3, 3], "dilations": [2, 2], "pads": [1, 2, 0, 1]}),
    "depthwise 5x1 stride 2x1 batch 2": ((2, 6, 12, 7), (6, 1, 5, 1),
        {"group": 6, "strides": [2, 1], "pads": [2, 0, 2, 0]}),
    "depthwise no pads": ((1, 7, 6, 6), (7, 1, 3, 3), {"group": 7}),
    "depthwise pad wider than kernel": ((1, 3, 4, 5), (3, 1, 2, 2), {"group": 3, "pads": [3, 2, 3, 3]}),
    "depthwise same upper stride 2": ((1, 8, 16, 16), (8, 1, 3, 3),
        {"group": 8, "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "1x1": ((1, 16, 6, 6), (8, 16, 1, 1), {}),
    "1x1 stride 2": ((1, 16, 7, 7), (8, 16, 1, 1), {"strides": [2, 2]}),
    "same lower": ((1, 3, 8, 8), (4, 3, 4, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    "batch 3": ((3, 4, 6, 6), (5, 4, 3, 3), {"pads": [1, 1, 1, 1]}),
    "pad wider than kernel": ((1, 2, 4, 4), (3, 2, 2, 2), {"pads": [3, 3, 3, 3]}),
    # dense convs on few channels with large kernels take the phase-plane path
    "rgb 5x5 stride 2 (phase planes)": ((1, 3, 16, 16), (8, 3, 5, 5), {"strides": [2, 2], "pads": [1, 2, 2, 1]}),
    "rgb 7x7 stride 2 batch 2 (phase planes)": ((2, 3, 19, 17), (4, 3, 7, 7),
        {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
    "4 channels 5x5 stride 3 dilation 2 (phase planes)": ((1, 4, 20, 21), (5, 4, 5, 5),
        {"strides": [3, 3], "dilations": [2, 2], "pads": [4, 3, 2, 4]}),
    "1 channel 5x5 no pads (phase planes)": ((1, 1, 9, 9), (2, 1, 5, 5), {}),
}


@pytest.mark.parametrize("case", sorted(CONVS))
def test_conv_geometries_match_onnxruntime(tmp_path, case):
    x_shape, w_shape, attrs = CONVS[case]
    inits = {"w": RNG.standard_normal(w_shape).astype(np.float32),
             "b": RNG.standard_normal(w_shape[0]).astype(np.float32)}
    model = _model([helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs),
                    helper.make_node("Relu", ["c"], ["y"])], x_shape, inits)
    _, got, ref = _run_both(tmp_path, model, x_shape)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # run twice: border strips of the shared im2col buffer must be re-zeroed on every call
    assert got.std() > 0



def test_gemm_columns_split_only_before_one_left_over_column():
    from iotrt.engine.numpyconv import column_parts

    assert column_parts(49) == [slice(0, 48), slice(48, 49)]
    assert column_parts(81) == [slice(0, 80), slice(80, 81)]
    for whole in (16, 48, 50, 169, 196, 3025, 1):
        assert column_parts(whole) == [slice(None)]


WINOGRAD = {
    # name: (input shape, weight shape, attrs, tile): 3x3 stride-1 convs big enough for Winograd
    "pad 1, sizes not multiples of the tile": ((1, 64, 23, 26), (64, 64, 3, 3), {"pads": [1, 1, 1, 1]}, 4),
    "asymmetric pads, batch 2, more outputs": ((2, 64, 24, 21), (72, 64, 3, 3), {"pads": [0, 2, 1, 0]}, 4),
    "no pads": ((1, 80, 26, 28), (64, 80, 3, 3), {}, 4),
    "F(2x2): many channels, odd sizes": ((1, 128, 25, 27), (96, 128, 3, 3), {"pads": [1, 2, 1, 0]}, 2),
}


@pytest.mark.parametrize("block_bytes", [None, 520 * 1024])
@pytest.mark.parametrize("case", sorted(WINOGRAD))
def test_winograd_convs_match_onnxruntime(tmp_path, monkeypatch, case, block_bytes):
    """Also with the tiles in several blocks of tile rows, the last one partial (as large layers
    run)."""
    from iotrt.engine import numpyconv, winograd

    if block_bytes:
        monkeypatch.setattr(numpyconv, "WINOGRAD_BLOCK_BYTES", block_bytes)
    x_shape, w_shape, attrs, tile = WINOGRAD[case]
    inits = {"w": (RNG.standard_normal(w_shape) * np.sqrt(2 / (9 * w_shape[1]))).astype(np.float32),
             "b": RNG.standard_normal(w_shape[0]).astype(np.float32)}
    model = _model([helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs),
                    helper.make_node("Relu", ["c"], ["y"])], x_shape, inits)
    compiled, got, ref = _run_both(tmp_path, model, x_shape)
    assert winograd.tile_for(w_shape[1], w_shape[0], *ref.shape[2:]) == tile
    # Winograd rounds differently from a direct sum: within 1e-5 of the output's magnitude
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    x = RNG.standard_normal(x_shape).astype(np.float32)  # a second input: nothing stale is reused
    again = compiled.run({"x": x})["y"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    expect = ort.InferenceSession(str(tmp_path / "m.onnx"), opts,
                                  providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(again, expect, rtol=0, atol=1e-5 * np.abs(expect).max())


POOLS = {
    "max 3x3 s2 ceil": ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "max 2x2 pads": ("MaxPool", {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1]}),
    "avg 3x3 pads excl": ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "avg 3x3 pads incl": ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                          "count_include_pad": 1}),
    "avg 3x3 s2 ceil": ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "max 2x2 s2": ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "max 3x2 dilation 2x1 s1x2": ("MaxPool", {"kernel_shape": [3, 2], "dilations": [2, 1], "strides": [1, 2]}),
    "max 1x3 pads": ("MaxPool", {"kernel_shape": [1, 3], "pads": [0, 1, 0, 2]}),
    "max 3x1 s3": ("MaxPool", {"kernel_shape": [3, 1], "strides": [3, 3]}),
    "avg 2x3 s2 asymmetric pads": ("AveragePool", {"kernel_shape": [2, 3], "strides": [2, 2], "pads": [1, 0, 0, 2]}),
}


@pytest.mark.parametrize("block_bytes", [None, 1100])
@pytest.mark.parametrize("case", sorted(POOLS))
def test_pool_geometries_match_onnxruntime(tmp_path, monkeypatch, case, block_bytes):
    """Also in blocks of two or three channels, the last one partial (the flat row and column passes
    must never mix one channel's or one row's values into another's outputs)."""
    from iotrt.engine import numpy as numpy_backend

    if block_bytes:
        monkeypatch.setattr(numpy_backend, "POOL_BLOCK_BYTES", block_bytes)
    op, attrs = POOLS[case]
    model = _model([helper.make_node(op, ["x"], ["y"], **attrs)], (2, 5, 9, 10), {})
    compiled, got, ref = _run_both(tmp_path, model, (2, 5, 9, 10))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    x = RNG.standard_normal((2, 5, 9, 10)).astype(np.float32)  # a second run: nothing stale
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    expect = ort.InferenceSession(str(tmp_path / "m.onnx"), opts,
                                  providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], expect, rtol=1e-5, atol=1e-6)


def test_convs_write_straight_into_their_concat(tmp_path):
    """Two convs feeding a channel concat share the concat's bytes: no copy, and the arena is
    smaller than the sum of all activations (buffers are reused)."""
    inits = {"w1": RNG.standard_normal((4, 3, 1, 1)).astype(np.float32),
             "w2": RNG.standard_normal((5, 3, 3, 3)).astype(np.float32),
             "w3": RNG.standard_normal((2, 9, 1, 1)).astype(np.float32)}
    model = _model([helper.make_node("Conv", ["x", "w1"], ["a"]),
                    helper.make_node("Conv", ["x", "w2"], ["b"], pads=[1, 1, 1, 1]),
                    helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
                    helper.make_node("Conv", ["c", "w3"], ["d"]),
                    helper.make_node("Relu", ["d"], ["y"])], (1, 3, 6, 6), inits)
    compiled, got, ref = _run_both(tmp_path, model, (1, 3, 6, 6))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    off = compiled.artifact.memory.offsets
    assert off["a"] == off["c"] and off["b"] == off["c"] + 4 * 36 * 4
    g = compiled.artifact.graph
    total = sum(math.prod(g.shapes[n]) * 4 for n in off)
    assert compiled.artifact.memory.arena_bytes < total


def test_steady_state_run_allocates_only_its_outputs(tmp_path):
    out = tmp_path / "face.iotm"
    compile_model(models.path(models.BLAZEFACE), out)
    model = load(out, backend="numpy")
    x = RNG.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    model.run({"input": x})
    tracemalloc.start()
    try:
        model.run({"input": x})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = 896 * 16 * 4 + 896 * 4
    # the arena alone is 2 MB; a run allocates its two output arrays, plus numpy's transient
    # ufunc buffers (8192 elements per operand) when an operand is a strided view
    assert peak < outputs + 160 * 1024, f"peak {peak} bytes allocated during one run"


@pytest.mark.parametrize("also_read", [False, True])
def test_channel_shuffle_is_read_by_the_depthwise_conv_without_a_transpose(tmp_path, also_read):
    """ShuffleNet's Reshape -> Transpose -> Reshape feeding a depthwise conv: the conv reads the
    shuffled channels from the unshuffled tensor (no Transpose step), unless someone else also
    reads the shuffled tensor."""
    x_shape = (2, 12, 7, 9)
    inits = {"s5": np.array([2, 3, 4, 7, 9], np.int64), "s4": np.array([2, 12, 7, 9], np.int64),
             "w": RNG.standard_normal((12, 1, 3, 3)).astype(np.float32),
             "b": RNG.standard_normal(12).astype(np.float32)}
    nodes = [helper.make_node("Reshape", ["x", "s5"], ["r5"]),
             helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t5", "s4"], ["sh"]),
             helper.make_node("Conv", ["sh", "w", "b"], ["c"], group=12, strides=[2, 1], pads=[1, 1, 1, 1])]
    nodes.append(helper.make_node("Add", ["c", "c"] if not also_read else ["c", "sh2"], ["y"]))
    if also_read:  # the shuffled tensor is read by a pool too: the Transpose must run
        nodes.insert(4, helper.make_node("MaxPool", ["sh"], ["sh2"], kernel_shape=[1, 1], strides=[2, 1]))
    compiled, got, ref = _run_both(tmp_path, _model(nodes, x_shape, inits), x_shape)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    ops = [node.op.value for node, _ in compiled._steps]
    assert ("Transpose" in ops) is also_read



@pytest.mark.parametrize("case", ["stride 1, biases, relu", "stride 2, batch 2, no biases",
                                  "depthwise output read twice"])
def test_depthwise_then_1x1_runs_as_one_step(tmp_path, case):
    """A depthwise conv read only by a 1x1 conv: the 1x1 conv runs inside the depthwise step, on
    its uncropped output, with the depthwise bias moved into its own; not when anyone else also
    reads the depthwise output."""
    batch, stride = (2, 2) if "batch 2" in case else (1, 1)
    x_shape = (batch, 6, 9, 10)
    inits = {"wd": RNG.standard_normal((6, 1, 3, 3)).astype(np.float32),
             "wp": RNG.standard_normal((11, 6, 1, 1)).astype(np.float32),
             "bd": RNG.standard_normal(6).astype(np.float32),
             "bp": RNG.standard_normal(11).astype(np.float32)}
    biases = "no biases" not in case
    nodes = [helper.make_node("Conv", ["x", "wd"] + (["bd"] if biases else []), ["d"], group=6,
                              strides=[stride, stride], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["d", "wp"] + (["bp"] if biases else []), ["p"]),
             helper.make_node("Relu", ["p"], ["y"] if "twice" not in case else ["r"])]
    if "twice" in case:
        nodes.append(helper.make_node("Conv", ["d", "wp"], ["s"]))
        nodes.append(helper.make_node("Add", ["r", "s"], ["y"]))
    compiled, got, ref = _run_both(tmp_path, _model(nodes, x_shape, inits), x_shape)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    pointwise = next(n.name for n in compiled.artifact.graph.nodes if n.inputs[0] == "d")
    stepped = [node.name for node, _ in compiled._steps]
    assert (pointwise in stepped) is ("twice" in case)



def test_depthwise_then_1x1_keeps_apart_when_the_plan_reuses_bytes_in_between(tmp_path):
    """dw -> (a pool that reads the depthwise input last) -> 1x1: the memory plan may give the 1x1
    output the bytes of that input, so running the 1x1 early (with the depthwise) would overwrite
    what the pool has yet to read."""
    x_shape = (1, 8, 12, 12)
    inits = {"wd": RNG.standard_normal((8, 1, 3, 3)).astype(np.float32),
             "wp": RNG.standard_normal((8, 8, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Conv", ["a", "wd"], ["d"], group=8, pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["a"], ["r"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["d", "wp"], ["p"]),
             helper.make_node("Add", ["p", "r"], ["y"])]
    compiled, got, ref = _run_both(tmp_path, _model(nodes, x_shape, inits), x_shape)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)



@pytest.mark.parametrize("case", ["zero pad", "batch 2", "pad value 1", "padded tensor read twice"])
def test_channel_pad_into_a_residual_add(tmp_path, case):
    """Add(zero-pad of x to more channels, y) reads x for the first channels: no Pad step (not
    where the pad value is not zero or someone else reads the padded tensor)."""
    x_shape = (2 if "batch" in case else 1, 5, 6, 7)
    inits = {"pads": np.array([0, 0, 0, 0, 0, 3, 0, 0], np.int64),
             "w": RNG.standard_normal((8, 5, 3, 3)).astype(np.float32)}
    pad_inputs = ["a", "pads"]
    if "value" in case:
        inits["v"] = np.array(1.0, np.float32)
        pad_inputs.append("v")
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Conv", ["a", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Pad", pad_inputs, ["p"]),
             helper.make_node("Add", ["p", "c"], ["s"] if "twice" in case else ["y"])]
    if "twice" in case:
        nodes.append(helper.make_node("Mul", ["s", "p"], ["y"]))
    compiled, got, ref = _run_both(tmp_path, _model(nodes, x_shape, inits), x_shape)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    pad = next(n.name for n in compiled.artifact.graph.nodes if n.op.value == "Pad")
    stepped = [node.name for node, _ in compiled._steps]
    assert (pad in stepped) is (case in ("pad value 1", "padded tensor read twice"))


@pytest.mark.parametrize("size", [3, 5])
def test_lrn_matches_onnxruntime(tmp_path, size):
    model = _model([helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.01, beta=0.6, bias=1.5)],
                   (2, 7, 5, 6), {})
    _, got, ref = _run_both(tmp_path, model, (2, 7, 5, 6))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_lrn_even_size_matches_the_reference_kernel(tmp_path):
    # onnxruntime refuses even sizes; ONNX pads the window (size-1)//2 before, the rest after
    from iotrt.modelformat.kernels import lrn

    attrs = {"size": 4, "alpha": 0.01, "beta": 0.6, "bias": 1.5}
    src = tmp_path / "m.onnx"
    onnx.save(_model([helper.make_node("LRN", ["x"], ["y"], **attrs)], (1, 6, 3, 4), {}), str(src))
    compile_model(src, tmp_path / "m.iotm")
    x = RNG.standard_normal((1, 6, 3, 4)).astype(np.float32)
    got = load(tmp_path / "m.iotm", backend="numpy").run({"x": x})["y"]
    np.testing.assert_allclose(got, lrn([x], attrs)[0], rtol=1e-6)


def _conv_relu(name, cin, cout, act="Relu", bias=True):
    w = RNG.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    inits = {f"{name}_w": w}
    ins = ["x", f"{name}_w"]
    if bias:
        inits[f"{name}_b"] = RNG.standard_normal(cout).astype(np.float32)
        ins.append(f"{name}_b")
    nodes = [helper.make_node("Conv", ins, [f"{name}_c"], pads=[1, 1, 1, 1])]
    if act == "Relu":
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]))
    elif act == "Clip":
        inits[f"{name}_lo"], inits[f"{name}_hi"] = np.float32(0), np.float32(0.5)
        nodes.append(helper.make_node("Clip", [f"{name}_c", f"{name}_lo", f"{name}_hi"], [f"{name}_r"]))
    else:
        nodes.append(helper.make_node("Identity", [f"{name}_c"], [f"{name}_r"]))
    return nodes, inits


POOL_BIAS = {
    # name: (conv branches (name, outputs, activation, bias), pool attrs, deferred?)
    "conv, relu, max pool 3x3 s2 pads": ([("a", 8, "Relu", True)],
                                         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
    "two convs into a concat, ceil mode": ([("a", 5, "Relu", True), ("b", 7, "Relu", True)],
                                           {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, True),
    "relu6, one conv without a bias": ([("a", 6, "Clip", True), ("b", 4, "Clip", False)],
                                          {"kernel_shape": [2, 2], "strides": [2, 2]}, True),
    "mixed activations stay apart": ([("a", 6, "Relu", True), ("b", 4, "none", True)],
                                     {"kernel_shape": [2, 2], "strides": [2, 2]}, False),
}


@pytest.mark.parametrize("case", sorted(POOL_BIAS))
def test_conv_bias_and_activation_move_past_a_max_pool(tmp_path, case):
    branches, attrs, deferred = POOL_BIAS[case]
    nodes, inits = [], {}
    for name, cout, act, bias in branches:
        n, i = _conv_relu(name, 3, cout, act, bias)
        nodes += n
        inits.update(i)
    outs = [f"{b[0]}_r" for b in branches]
    if len(outs) > 1:
        nodes.append(helper.make_node("Concat", outs, ["cat"], axis=1))
        pooled = "cat"
    else:
        pooled = outs[0]
    nodes.append(helper.make_node("MaxPool", [pooled], ["y"], **attrs))
    model = _model(nodes, (1, 3, 11, 13), inits)
    compiled, got, ref = _run_both(tmp_path, model, (1, 3, 11, 13))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert bool(compiled._deferred) is deferred
    x = RNG.standard_normal((1, 3, 11, 13)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    expect = ort.InferenceSession(str(tmp_path / "m.onnx"), opts,
                                  providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], expect, rtol=1e-5, atol=1e-5)


def test_conv_read_by_a_max_pool_and_more_keeps_its_bias(tmp_path):
    nodes, inits = _conv_relu("a", 3, 6)
    nodes += [helper.make_node("MaxPool", ["a_r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("GlobalAveragePool", ["a_r"], ["g"]),
              helper.make_node("Add", ["p", "g"], ["y"])]
    model = _model(nodes, (1, 3, 8, 8), inits)
    compiled, got, ref = _run_both(tmp_path, model, (1, 3, 8, 8))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert not compiled._deferred


def test_profile_times_every_step_in_order_and_leaves_runs_correct(tmp_path):
    nodes, inits = _conv_relu("a", 3, 6)
    nodes.append(helper.make_node("MaxPool", ["a_r"], ["y"], kernel_shape=[2, 2], strides=[2, 2]))
    model = _model(nodes, (1, 3, 8, 8), inits)
    compiled, got, ref = _run_both(tmp_path, model, (1, 3, 8, 8))
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    steps = compiled.profile({"x": x}, runs=3)
    assert [node.op.value for node, _ in steps] == ["Conv", "MaxPool"]
    assert all(ms >= 0 for _, ms in steps)
    np.testing.assert_allclose(compiled.run({"x": x})["y"], compiled.run({"x": x})["y"])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
