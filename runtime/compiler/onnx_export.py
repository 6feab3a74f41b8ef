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

# The lowest opset that expresses the graph is used (older readers, cv2.dnn above all, know
# older opsets best); IR nodes are in the newest form, so a node using an input or attribute
# added later (Pad's axes, AveragePool's dilations, Resize's axes: 18-19) raises it.
OPSETS = range(17, 22)
# Attributes the IR adds to ONNX ops (set by passes.fuse_activations); handled below.
FUSED_ACTIVATION_ATTRS = ("activation", "act_min", "act_max", "act_alpha")


class ExportError(CompileError):
    """The IR graph uses something this exporter cannot express in ONNX."""


def pack(model: bytes, opset: int, initializers: list[str], renamed: dict[str, str]) -> bytes:
    """The payload as stored in the artifact: a one-line JSON header, then the ONNX bytes.

    `initializers`: artifact constants the graph reads; `renamed`: constant -> the initializer
    name it has in the ONNX graph, where that differs (a graph output that is a constant).
    """
    header = json.dumps({"opset": opset, "initializers": initializers, "renamed": renamed})
    return MAGIC + header.encode() + b"\n" + model


def _opset_for(node: Node, attrs: dict) -> int:
    """The lowest opset in OPSETS whose schema of `node.op` has all its attributes and inputs."""
    from onnx import defs

    for opset in OPSETS:
        try:
            schema = defs.get_schema(node.op.value, opset)
        except defs.SchemaError:
            break
        max_inputs = len(schema.inputs) if not any(
            i.option == i.option.Variadic for i in schema.inputs) else 1 << 30  # fmt: skip
        if set(attrs) <= set(schema.attributes) and len(node.inputs) <= max_inputs:
            return opset
    unknown = sorted(set(attrs) - set(defs.get_schema(node.op.value, OPSETS[-1]).attributes)) \
        if defs.has(node.op.value) else []  # fmt: skip
    raise ExportError(
        f"node '{node.name}' ({node.op.value}) cannot be written as ONNX opset <= {OPSETS[-1]}"
        + (f": unknown attributes {unknown}" if unknown else "")
    )


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


def _nodes_for(node: Node, graph: Graph) -> tuple[list, int]:
    """The ONNX node(s) for one IR node (the op, then its fused activation if any), and the
    opset they need."""
    from onnx import helper

    if node.op == Op.DEQUANTIZE:
        raise ExportError(f"node '{node.name}': Dequantize should have been folded before export")
    attrs = {k: v for k, v in node.attrs.items() if v is not None and k not in FUSED_ACTIVATION_ATTRS}
    if attrs.get("auto_pad", "NOTSET") != "NOTSET":
        attrs = _explicit_pads(node, attrs, graph)
    opset = _opset_for(node, attrs)
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
        return onnx_nodes, opset
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
    return onnx_nodes, opset


def export(graph: Graph) -> bytes:
    """The ONNX payload for `graph` (shapes inferred), ready for `pack`'s caller to embed."""
    from onnx import helper

    nodes, opset = [], OPSETS[0]
    for node in graph.nodes:
        more, need = _nodes_for(node, graph)
        nodes += more
        opset = max(opset, need)
    used = {i for node in graph.nodes for i in node.inputs if i}
    renamed = {}
    for name in graph.outputs:
        if name in graph.consts:
            # An output folded to a constant: ONNX readers want a graph output made by a node.
            renamed[name] = f"{name}/value"
            nodes.append(helper.make_node("Identity", [renamed[name]], [name], name=f"{name}/identity"))
            used.add(name)
    initializers = [name for name in graph.consts if name in used]

    def value_info(name: str, shape, dtype: str):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        return helper.make_tensor_value_info(name, elem, list(shape))

    inputs = [value_info(s.name, s.shape, s.dtype) for s in graph.inputs]
    outputs = [value_info(s.name, s.shape, s.dtype) for s in graph.output_specs()]
    onnx_graph = helper.make_graph(nodes, "iotrt", inputs, outputs)
    model = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="iotrt"
    )
    model.ir_version = 8  # the oldest IR for opsets 17-21: what onnxruntime and cv2.dnn read
    return pack(model.SerializeToString(), opset, initializers, renamed)


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
