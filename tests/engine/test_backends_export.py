"""The compile-side half of the ONNX payload: IR graphs written as ONNX, run by onnxruntime/cv2.

The graphs are built here by hand with random weights, and the expected outputs computed with
plain numpy, so a transposed weight or a lost fused activation shows.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from iotrt.compiler import onnx_export  # noqa: E402
from iotrt.modelformat import ir, onnxpayload  # noqa: E402

Op, OpNode, OpGraph, TensorSpec = ir.Op, ir.OpNode, ir.OpGraph, ir.TensorSpec
RNG = np.random.default_rng(7)


def conv_ref(x, w, b, pad):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    return np.einsum("ncijkl,ockl->noij", win, w) + b[None, :, None, None]


def run_exported(graph: OpGraph, feeds: dict, engine: str = "onnxruntime") -> dict:
    model = onnxpayload.onnx_model_bytes(onnx_export.export(graph), graph.consts)
    names = list(graph.outputs)
    if engine == "onnxruntime":
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        return dict(zip(names, sess.run(names, feeds)))
    import cv2

    net = cv2.dnn.readNetFromONNX(np.frombuffer(model, np.uint8))
    for k, v in feeds.items():
        net.setInput(v, k)
    return dict(zip(names, net.forward(names)))


def conv_graph(activation: dict) -> tuple[OpGraph, dict, np.ndarray]:
    x = RNG.normal(size=(1, 3, 6, 6)).astype(np.float32)
    w = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b = RNG.normal(size=4).astype(np.float32)
    shape = np.array([1, -1], np.int64)
    nodes = [
        OpNode(Op.CONV, "conv", ("x", "w", "b"), ("y",), {"pads": [1, 1, 1, 1], "group": 1, **activation}),
        OpNode(Op.RESHAPE, "flat", ("y", "shape"), ("z",), {}),
    ]
    g = OpGraph(nodes, [TensorSpec("x", (1, 3, 6, 6))], ["z"], {"w": w, "b": b, "shape": shape},
              {"x": (1, 3, 6, 6), "y": (1, 4, 6, 6), "z": (1, 144)},
              {"x": "float32", "y": "float32", "z": "float32"})
    return g, {"x": x}, conv_ref(x, w, b, 1).reshape(1, 144)


@pytest.mark.parametrize("engine", ["onnxruntime", "opencv"])
@pytest.mark.parametrize(
    "activation,apply",
    [
        ({}, lambda y: y),
        ({"activation": "Relu"}, lambda y: np.maximum(y, 0)),
        ({"activation": "Clip", "act_min": 0.0, "act_max": 1.5}, lambda y: np.clip(y, 0, 1.5)),
        ({"activation": "LeakyRelu", "act_alpha": 0.2}, lambda y: np.where(y < 0, 0.2 * y, y)),
    ],
)
def test_conv_with_fused_activation(engine, activation, apply):
    if engine == "opencv":
        pytest.importorskip("cv2")
    g, feeds, pre = conv_graph(activation)
    got = run_exported(g, feeds, engine)["z"]
    np.testing.assert_allclose(got.reshape(pre.shape), apply(pre), rtol=1e-4, atol=1e-4)


def test_payload_lists_only_the_constants_the_graph_reads():
    g, _, _ = conv_graph({})
    g.consts["stale"] = np.zeros(5, np.float32)
    header, model = onnxpayload.unpack(onnx_export.export(g))
    assert header["initializers"] == ["w", "b", "shape"]
    assert len(model) < 1000  # structure only: weights are added on the device


def test_ir_only_attribute_is_refused_by_name():
    g, _, _ = conv_graph({"layout_hint": "nhwc"})
    with pytest.raises(onnx_export.ExportError, match=r"node 'conv'.*layout_hint"):
        onnx_export.export(g)


@pytest.mark.parametrize("engine", ["onnxruntime", "opencv"])
def test_same_padding_with_stride_two_pads_the_end(engine):
    # SAME_UPPER on an even size with stride 2 pads only the end (0 before, 1 after): OpenCV
    # gets this wrong from auto_pad, so the export writes explicit pads.
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    w = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)
    node = OpNode(Op.CONV, "c", ("x", "w", "b"), ("y",), {"auto_pad": "SAME_UPPER", "strides": [2, 2]})
    g = OpGraph([node], [TensorSpec("x", (1, 3, 8, 8))], ["y"], {"w": w, "b": b},
              {"x": (1, 3, 8, 8), "y": (1, 4, 4, 4)}, {"x": "float32", "y": "float32"})
    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    expect = np.einsum("ncijkl,ockl->noij", win, w)
    got = run_exported(g, {"x": x}, engine)["y"]
    np.testing.assert_allclose(got.reshape(expect.shape), expect, rtol=1e-4, atol=1e-4)


def test_schema_table_is_onnx_own():
    """The exporter writes ONNX without the onnx package: its schema table must be onnx's."""
    from onnx import defs

    for op in ir.Op:
        if op is Op.DEQUANTIZE:
            continue
        rows = []
        for opset in onnx_export.OPSETS:
            schema = defs.get_schema(op.value, opset)
            variadic = any(i.option == i.option.Variadic for i in schema.inputs)
            row = (frozenset(schema.attributes), None if variadic else len(schema.inputs))
            if not rows or rows[-1][1:] != row:
                rows.append((opset,) + row)
        assert onnx_export.OPSET_SCHEMAS[op.value] == rows, op.value


def test_hand_written_protobuf_is_what_onnx_helper_writes():
    import onnx
    from onnx import helper, numpy_helper

    attrs = {"ints": [3, -1, 0], "i": -7, "f": 0.25, "floats": [1, 2.5], "s": "SAME_UPPER",
             "strings": ["a", "b"], "t": np.arange(6, dtype=np.int64).reshape(2, 3), "flag": True}
    ours = onnx.NodeProto.FromString(onnx_export._node("Foo", ["x", "", "w"], ["y"], "n1", **attrs))
    attrs["t"] = numpy_helper.from_array(attrs["t"])
    assert ours == helper.make_node("Foo", ["x", "", "w"], ["y"], name="n1", **attrs)

    g, feeds, _ = conv_graph({"activation": "LeakyRelu", "act_alpha": 0.2})
    model = onnx.load_from_string(onnxpayload.onnx_model_bytes(onnx_export.export(g), g.consts))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8 and model.opset_import[0].version == 17
    assert [n.op_type for n in model.graph.node] == ["Conv", "LeakyRelu", "Reshape"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == list(feeds["x"].shape)
