"""The ONNX payload: the optimised IR graph written as ONNX, for the onnxruntime and opencv backends.

The device has no `onnx` package, and the artifact must not store every weight twice, so the
compiler (which has `onnx`) writes here only the graph *structure* — nodes, attributes, inputs
and outputs — and the names of the constants it reads. On the device
`iotrt.engine.backend.onnx_model_bytes` appends those constants, taken from the artifact's own
(possibly int8) weight store, as protobuf-encoded initializers: a serialized protobuf message
followed by another one parses as their merge, so no protobuf library is needed there.

IR op names and attributes are ONNX's already; the only rewriting is for IR-internal attributes
(fused activations become their own node again).
"""

from __future__ import annotations

import json

import numpy as np

from iotrt.compiler.ir import CompileError, Graph, Node, Op
from iotrt.engine.backend import MAGIC

OPSET = 17
# Attributes the IR adds to ONNX ops (set by passes.fuse_activations); handled below.
FUSED_ACTIVATION_ATTRS = ("activation", "act_min", "act_max", "act_alpha")


class ExportError(CompileError):
    """The IR graph uses something this exporter cannot express in ONNX."""


def pack(model: bytes, initializers: list[str]) -> bytes:
    """The payload as stored in the artifact: a one-line JSON header, then the ONNX bytes."""
    header = json.dumps({"opset": OPSET, "initializers": initializers}).encode()
    return MAGIC + header + b"\n" + model


def _attr_value(value):
    from onnx import numpy_helper

    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return [v.item() if isinstance(v, np.generic) else v for v in value]
    return value


def _explicit_pads(node: Node, attrs: dict, graph: Graph) -> dict:
    """auto_pad SAME_*/VALID as explicit pads: cv2.dnn pads SAME convolutions of stride 2 on the
    wrong side (BlazeFace's first conv comes out wrong), explicit pads mean the same everywhere."""
    from iotrt.engine.kernels import spatial_pads

    in_shape = graph.shapes.get(node.inputs[0])
    if in_shape is None:
        raise ExportError(f"node '{node.name}': auto_pad needs the input's shape (infer shapes first)")
    kernel = attrs.get("kernel_shape")
    if not kernel and node.op == Op.CONV:
        weight = graph.consts.get(node.inputs[1])
        kernel = weight.shape[2:] if weight is not None else graph.shapes.get(node.inputs[1], ())[2:]
    if not kernel:
        raise ExportError(f"node '{node.name}': auto_pad needs a known kernel shape")
    begin, end = spatial_pads(tuple(in_shape[2:]), attrs, tuple(kernel))
    out = {k: v for k, v in attrs.items() if k != "auto_pad"}
    out["pads"] = [int(p) for p in begin + end]
    return out


def _nodes_for(node: Node, graph: Graph) -> list:
    """The ONNX node(s) for one IR node: the op itself, then its fused activation if any."""
    from onnx import defs, helper

    if node.op == Op.DEQUANTIZE:
        raise ExportError(f"node '{node.name}': Dequantize should have been folded before export")
    attrs = {k: v for k, v in node.attrs.items() if v is not None and k not in FUSED_ACTIVATION_ATTRS}
    if attrs.get("auto_pad", "NOTSET") != "NOTSET":
        attrs = _explicit_pads(node, attrs, graph)
    try:
        known = defs.get_schema(node.op.value, OPSET).attributes
    except defs.SchemaError as exc:
        raise ExportError(f"node '{node.name}': no ONNX schema for op {node.op.value}") from exc
    unknown = sorted(set(attrs) - set(known))
    if unknown:
        raise ExportError(
            f"node '{node.name}' ({node.op.value}) has IR attributes ONNX does not know: {unknown}"
        )
    act = node.attrs.get("activation")
    outputs = list(node.outputs)
    if act is not None:
        outputs[0] = f"{node.outputs[0]}/pre_{act.lower()}"
    onnx_nodes = [
        helper.make_node(
            node.op.value, list(node.inputs), outputs, name=node.name,
            **{k: _attr_value(v) for k, v in attrs.items()},
        )
    ]  # fmt: skip
    if act is None:
        return onnx_nodes
    src, dst, name = outputs[0], node.outputs[0], f"{node.name}/{act.lower()}"
    if act == "Relu":
        onnx_nodes.append(helper.make_node("Relu", [src], [dst], name=name))
    elif act == "LeakyRelu":
        onnx_nodes.append(helper.make_node("LeakyRelu", [src], [dst], name=name, alpha=float(node.attrs["act_alpha"])))
    elif act == "Clip":
        lo, hi = f"{name}/min", f"{name}/max"
        onnx_nodes += [
            helper.make_node("Constant", [], [lo], name=lo, value_float=float(node.attrs["act_min"])),
            helper.make_node("Constant", [], [hi], name=hi, value_float=float(node.attrs["act_max"])),
            helper.make_node("Clip", [src, lo, hi], [dst], name=name),
        ]
    else:
        raise ExportError(f"node '{node.name}': unknown fused activation {act!r}")
    return onnx_nodes


def export(graph: Graph) -> bytes:
    """The ONNX payload for `graph` (shapes inferred), ready for `pack`'s caller to embed."""
    from onnx import helper

    nodes = [n for node in graph.nodes for n in _nodes_for(node, graph)]
    used = {i for node in graph.nodes for i in node.inputs if i}
    initializers = [name for name in graph.consts if name in used]

    def value_info(name: str, shape, dtype: str):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        return helper.make_tensor_value_info(name, elem, list(shape))

    inputs = [value_info(s.name, s.shape, s.dtype) for s in graph.inputs]
    outputs = [value_info(s.name, s.shape, s.dtype) for s in graph.output_specs()]
    onnx_graph = helper.make_graph(nodes, "iotrt", inputs, outputs)
    model = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="iotrt"
    )
    model.ir_version = 8  # what onnxruntime and OpenCV 4.8+ both read for opset 17
    return pack(model.SerializeToString(), initializers)


def payloads(graph: Graph, say=lambda line: None) -> dict[str, bytes]:
    """The per-backend payloads to embed for `graph`; none (with a note) when onnx is missing."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        say("no ONNX payload: the onnx package is not installed here, so this artifact will run "
            "on the numpy backend only (pip install 'iotrt[compiler]' to embed one)")  # fmt: skip
        return {}
    try:
        data = export(graph)
    except ExportError as exc:
        say(f"no ONNX payload ({exc}): this artifact will run on the numpy backend only")
        return {}
    say(f"ONNX payload for opencv/onnxruntime: {len(data) / 1e3:.1f} kB (weights shared)")
    return {"onnx": data}
