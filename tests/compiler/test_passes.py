"""Each pass on small random-weight models built here, checked against onnxruntime.

Every test asserts both that the pass did its rewrite (the op counts of the artifact) and that
the outputs did not change (onnxruntime on the source model), so a fold that scales the wrong
axis or a fusion that drops a bias fails.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from iotrt.compiler import CompileError, UnsupportedOpError, compile_model  # noqa: E402
from iotrt.engine import load  # noqa: E402
from iotrt.modelformat.artifact import read  # noqa: E402

RNG = np.random.default_rng(7)
F = TensorProto.FLOAT


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def make(nodes, inputs, outputs, inits=None, opset=17):
    graph = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, None) for n in outputs],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def compile_and_compare(tmp_path, model, feeds, tol=1e-4):
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    report = compile_model(src, tmp_path / "m.iotm")
    compiled = load(tmp_path / "m.iotm", backend="numpy")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    ref = dict(zip(names, sess.run(names, feeds)))
    got = compiled.run(feeds)
    for name in names:
        assert got[name].shape == ref[name].shape
        err = float(np.abs(got[name] - ref[name]).max())
        assert err <= tol * max(1.0, float(np.abs(ref[name]).max())), f"{name}: error {err}"
    return report, read(tmp_path / "m.iotm")


def test_batch_norm_folds_into_conv(tmp_path):
    c = 6
    inits = {"w": rand(c, 3, 3, 3), "b": rand(c), "s": RNG.uniform(0.5, 2, c).astype(np.float32),
             "beta": rand(c), "mean": rand(c), "var": RNG.uniform(0.5, 2, c).astype(np.float32)}
    model = make([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", ["c", "s", "beta", "mean", "var"], ["y"],
                                   epsilon=1e-3)],
                 [("x", [1, 3, 9, 9])], ["y"], inits)
    report, _ = compile_and_compare(tmp_path, model, {"x": rand(1, 3, 9, 9)})
    assert report.op_counts == {"Conv": 1}


def test_batch_norm_alone_becomes_scale_and_shift(tmp_path):
    c = 4
    inits = {"s": RNG.uniform(0.5, 2, c).astype(np.float32), "beta": rand(c), "mean": rand(c),
             "var": RNG.uniform(0.5, 2, c).astype(np.float32)}
    model = make([helper.make_node("Relu", ["x"], ["r"]),
                  helper.make_node("BatchNormalization", ["r", "s", "beta", "mean", "var"], ["y"])],
                 [("x", [2, c, 5, 5])], ["y"], inits)
    report, _ = compile_and_compare(tmp_path, model, {"x": rand(2, c, 5, 5)})
    assert report.op_counts == {"Relu": 1, "Mul": 1, "Add": 1}


def test_zero_pad_fuses_into_conv_but_a_nonzero_pad_does_not(tmp_path):
    inits = {"w": rand(4, 3, 3, 3), "pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64),
             "zero": np.array(0, np.float32), "one": np.array(1.5, np.float32)}
    model = make([helper.make_node("Pad", ["x", "pads", "zero"], ["p"]),
                  helper.make_node("Conv", ["p", "w"], ["y"], strides=[2, 2]),
                  helper.make_node("Pad", ["x", "pads", "one"], ["q"]),
                  helper.make_node("Conv", ["q", "w"], ["z"], strides=[2, 2])],
                 [("x", [1, 3, 10, 11])], ["y", "z"], inits)
    report, _ = compile_and_compare(tmp_path, model, {"x": rand(1, 3, 10, 11)})
    assert report.op_counts == {"Conv": 2, "Pad": 1}


@pytest.mark.parametrize("act, attrs, extra", [
    ("Relu", {}, []), ("LeakyRelu", {"alpha": 0.2}, []), ("Clip", {}, ["lo", "hi"]),
])
def test_activation_fuses_into_conv_gemm_and_add(tmp_path, act, attrs, extra):
    inits = {"w": rand(4, 3, 3, 3), "b": rand(4), "gw": rand(8, 5), "gb": rand(5),
             "lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}
    model = make([helper.make_node("Conv", ["x", "w", "b"], ["c"]),
                  helper.make_node(act, ["c"] + extra, ["y"], **attrs),
                  helper.make_node("Gemm", ["v", "gw", "gb"], ["g"]),
                  helper.make_node(act, ["g"] + extra, ["z"], **attrs),
                  helper.make_node("Add", ["v", "v"], ["a"]),
                  helper.make_node(act, ["a"] + extra, ["u"], **attrs)],
                 [("x", [1, 3, 7, 7]), ("v", [2, 8])], ["y", "z", "u"], inits)
    report, art = compile_and_compare(tmp_path, model, {"x": rand(1, 3, 7, 7), "v": rand(2, 8)})
    assert act not in report.op_counts
    assert {n.attrs.get("activation") for n in art.graph.nodes} == {act}


def test_activation_is_not_fused_when_the_raw_value_is_also_read(tmp_path):
    model = make([helper.make_node("Conv", ["x", "w"], ["c"]),
                  helper.make_node("Relu", ["c"], ["r"]),
                  helper.make_node("Add", ["c", "r"], ["y"])],
                 [("x", [1, 2, 5, 5])], ["y"], {"w": rand(3, 2, 1, 1)})
    report, _ = compile_and_compare(tmp_path, model, {"x": rand(1, 2, 5, 5)})
    assert report.op_counts == {"Conv": 1, "Relu": 1, "Add": 1}


def test_inverse_transposes_cancel_and_others_compose(tmp_path):
    model = make([helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 3, 1]),
                  helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2]),
                  helper.make_node("Relu", ["t2"], ["y"]),
                  helper.make_node("Transpose", ["x"], ["s1"], perm=[0, 2, 3, 1]),
                  helper.make_node("Transpose", ["s1"], ["z"], perm=[0, 2, 1, 3])],
                 [("x", [1, 3, 4, 5])], ["y", "z"])
    report, _ = compile_and_compare(tmp_path, model, {"x": rand(1, 3, 4, 5)})
    assert report.op_counts == {"Relu": 1, "Transpose": 1}


def test_shape_arithmetic_folds_to_constants(tmp_path):
    """Reshape(x, Concat(Shape(x)[0], ConstantOfShape([1]) * -1)) is a static reshape."""
    inits = {"idx": np.array([0], np.int64), "one": np.array([1], np.int64)}
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "idx"], ["n"]),
             helper.make_node("ConstantOfShape", ["one"], ["m"],
                              value=numpy_helper.from_array(np.array([-1], np.int64))),
             helper.make_node("Concat", ["n", "m"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Relu", ["r"], ["y"])]
    model = make(nodes, [("x", [2, 3, 4])], ["y"], inits)
    report, _ = compile_and_compare(tmp_path, model, {"x": rand(2, 3, 4)})
    assert report.op_counts == {"Reshape": 1, "Relu": 1}


def test_dead_nodes_and_their_weights_are_removed(tmp_path):
    inits = {"w": rand(3, 3), "unused_w": rand(3, 100)}
    model = make([helper.make_node("MatMul", ["x", "w"], ["y"]),
                  helper.make_node("MatMul", ["x", "w"], ["dead"]),
                  helper.make_node("Gemm", ["x", "unused_w"], ["dead2"])],
                 [("x", [2, 3])], ["y"], inits)
    report, art = compile_and_compare(tmp_path, model, {"x": rand(2, 3)})
    assert report.op_counts == {"MatMul": 1} and report.params == 9
    assert set(art.graph.consts) == {"w"}


def test_dropout_and_identity_disappear(tmp_path):
    model = make([helper.make_node("Dropout", ["x"], ["d"]),
                  helper.make_node("Identity", ["d"], ["i"]),
                  helper.make_node("Sigmoid", ["i"], ["y"])],
                 [("x", [2, 5])], ["y"])
    report, _ = compile_and_compare(tmp_path, model, {"x": rand(2, 5)})
    assert report.op_counts == {"Sigmoid": 1}


def test_legacy_softmax_flattens_at_axis(tmp_path):
    model = make([helper.make_node("Softmax", ["x"], ["y"], axis=1)],
                 [("x", [2, 3, 4])], ["y"], opset=11)
    report, _ = compile_and_compare(tmp_path, model, {"x": rand(2, 3, 4)})
    assert report.op_counts["Softmax"] == 1


def test_unsupported_op_names_the_op_the_node_and_the_supported_list(tmp_path):
    model = make([helper.make_node("Relu", ["x"], ["r"]),
                  helper.make_node("Sqrt", ["r"], ["y"], name="root_of_all_evil")],
                 [("x", [2, 2])], ["y"])
    src = tmp_path / "bad.onnx"
    onnx.save(model, str(src))
    with pytest.raises(UnsupportedOpError) as info:
        compile_model(src, tmp_path / "bad.iotm")
    msg = str(info.value)
    assert "'Sqrt'" in msg and "'root_of_all_evil'" in msg and "bad.onnx" in msg
    assert "supported ops:" in msg and "Conv" in msg and "Softmax" in msg
    assert not (tmp_path / "bad.iotm").exists()


def test_open_dimensions_need_an_input_shape(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "t",
                              [helper.make_tensor_value_info("x", F, ["batch", 3])],
                              [helper.make_tensor_value_info("y", F, None)])
    src = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    with pytest.raises(CompileError, match=r"input 'x' has open dimensions \(\?x3\).*--input-shape x="):
        compile_model(src, tmp_path / "dyn.iotm")
    report = compile_model(src, tmp_path / "dyn.iotm", input_shapes={"x": (4, 3)})
    assert report.inputs[0].shape == (4, 3)
    with pytest.raises(CompileError, match="unknown inputs"):
        compile_model(src, tmp_path / "dyn.iotm", input_shapes={"image": (4, 3)})


BAD_MODELS = {
    "conv weight does not fit": (
        [helper.make_node("Conv", ["x", "w"], ["y"], name="c1")], {"w": rand(4, 5, 3, 3)},
        r"Conv node 'c1': weight \(4, 5, 3, 3\) does not fit input \(1, 3, 8, 8\)"),
    "shapes do not broadcast": (
        [helper.make_node("Add", ["x", "b"], ["y"], name="a1")], {"b": rand(5)},
        r"Add node 'a1' .*could not be broadcast"),
    "reshape to the wrong size": (
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="r1")],
        {"s": np.array([5, -1, 7], np.int64)}, r"Reshape node 'r1' .*cannot reshape"),
    "computed reshape target": (
        [helper.make_node("Shape", ["x"], ["s0"]), helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Reshape", ["x", "r"], ["y"], name="r2")], {},
        r"Reshape node 'r2': input 1 \('r'\) is computed at run time"),
    "output nobody produces": (
        [helper.make_node("Relu", ["x"], ["z"])], {}, r"graph output 'y' is not produced"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_malformed_models_give_a_compile_error_naming_the_node(tmp_path, case):
    nodes, inits, message = BAD_MODELS[case]
    src = tmp_path / "bad.onnx"
    onnx.save(make(nodes, [("x", [1, 3, 8, 8])], ["y"], inits), str(src))
    with pytest.raises(CompileError, match=message) as info:
        compile_model(src, tmp_path / "bad.iotm")
    assert str(src) in str(info.value)
    assert not (tmp_path / "bad.iotm").exists()


def test_opset_9_attribute_forms(tmp_path):
    """Operands that later opsets moved to inputs (Pad pads/value, Clip min/max, Squeeze and
    Unsqueeze axes) are read from attributes in opset 9 models."""
    nodes = [helper.make_node("Pad", ["x"], ["p"], pads=[0, 0, 1, 2, 0, 0, 2, 1], value=0.5),
             helper.make_node("Clip", ["p"], ["c"], min=-0.3, max=0.8),
             helper.make_node("Unsqueeze", ["c"], ["u"], axes=[0]),
             helper.make_node("Squeeze", ["u"], ["s"], axes=[0]),
             helper.make_node("Dropout", ["s"], ["d"], ratio=0.3),
             helper.make_node("Softmax", ["d"], ["y"], axis=2)]
    model = make(nodes, [("x", [1, 2, 3, 4])], ["y"], opset=9)
    report, _ = compile_and_compare(tmp_path, model, {"x": rand(1, 2, 3, 4)})
    assert "Dropout" not in report.op_counts and "Unsqueeze" in report.op_counts


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_opset_9_upsample_is_a_resize(tmp_path, mode):
    inits = {"scales": np.array([1, 1, 2, 3], np.float32)}
    model = make([helper.make_node("Upsample", ["x", "scales"], ["y"], mode=mode)],
                 [("x", [1, 2, 3, 4])], ["y"], inits, opset=9)
    report, _ = compile_and_compare(tmp_path, model, {"x": rand(1, 2, 3, 4)})
    assert report.op_counts == {"Resize": 1}
