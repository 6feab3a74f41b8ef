"""The ONNX payload: the optimised IR graph written as ONNX, for the onnxruntime and opencv backends.

The artifact must not store every weight twice, so the compiler writes here only the graph
*structure* — nodes, attributes, inputs and outputs — and the names of the constants it reads. On the device
`iotrt.modelformat.onnxpayload.onnx_model_bytes` appends those constants, taken from the artifact's own
(possibly int8) weight store, as protobuf-encoded initializers: a serialized protobuf message
followed by another one parses as their merge, so no protobuf library is needed there.

IR op names and attributes are ONNX's already; the only rewriting is for IR-internal attributes
(fused activations become their own node again).

The protobuf messages are written here directly (the few fields of onnx.proto it needs), not
with the `onnx` package: importing that takes over 2 s on the 2-core reference machine, and a
device compiles its model at first boot, before its first detection. `OPSET_SCHEMAS` holds the
part of onnx's schema table the IR's ops need (a test checks it against `onnx.defs`).
"""

from __future__ import annotations

import numpy as np

from iotrt.compiler.errors import CompileError
from iotrt.modelformat.ir import Op, OpGraph, OpNode
from iotrt.modelformat.kernels import spatial_pads
from iotrt.modelformat.onnxpayload import ONNX_DTYPES, bytes_field, float_field, int_field, pack, tensor_proto

# The lowest opset that expresses the graph is used (older readers, cv2.dnn above all, know
# older opsets best); IR nodes are in the newest form, so a node using an input or attribute
# added later (Pad's axes, AveragePool's dilations, Resize's axes: 18-19) raises it.
OPSETS = range(17, 22)
# Attributes the IR adds to ONNX ops (set by passes.fuse_activations); handled below.
FUSED_ACTIVATION_ATTRS = ("activation", "act_min", "act_max", "act_alpha")


class ExportError(CompileError):
    """The IR graph uses something this exporter cannot express in ONNX."""


# op -> [(first opset of this schema version, its attributes, its inputs or None if variadic)],
# for the opsets in OPSETS (from onnx.defs; checked by tests/engine/test_backends_export.py).
OPSET_SCHEMAS: dict[str, list[tuple[int, frozenset, int | None]]] = {
    op: [(v, frozenset(attrs), n) for v, attrs, n in rows] for op, rows in {
        "Add": [(17, (), 2)],
        "AveragePool": [(17, ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides"), 1),
                        (19, ("auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads",
                              "strides"), 1)],
        "BatchNormalization": [(17, ("epsilon", "momentum", "training_mode"), 5)],
        "Cast": [(17, ("to",), 1), (19, ("saturate", "to"), 1)],
        "CastLike": [(17, (), 2), (19, ("saturate",), 2)],
        "Clip": [(17, (), 3)],
        "Concat": [(17, ("axis",), None)],
        "ConstantOfShape": [(17, ("value",), 1)],
        "Conv": [(17, ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"), 3)],
        "Div": [(17, (), 2)],
        "Flatten": [(17, ("axis",), 1)],
        "Gather": [(17, ("axis",), 2)],
        "Gemm": [(17, ("alpha", "beta", "transA", "transB"), 3)],
        "GlobalAveragePool": [(17, (), 1)],
        "GlobalMaxPool": [(17, (), 1)],
        "Identity": [(17, (), 1)],
        "LRN": [(17, ("alpha", "beta", "bias", "size"), 1)],
        "LeakyRelu": [(17, ("alpha",), 1)],
        "MatMul": [(17, (), 2)],
        "MaxPool": [(17, ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order",
                          "strides"), 1)],
        "Mul": [(17, (), 2)],
        "PRelu": [(17, (), 2)],
        "Pad": [(17, ("mode",), 3), (18, ("mode",), 4)],
        "Relu": [(17, (), 1)],
        "Reshape": [(17, ("allowzero",), 2)],
        "Resize": [(17, ("coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside",
                         "extrapolation_value", "mode", "nearest_mode"), 4),
                   (18, ("antialias", "axes", "coordinate_transformation_mode", "cubic_coeff_a",
                         "exclude_outside", "extrapolation_value", "keep_aspect_ratio_policy", "mode",
                         "nearest_mode"), 4)],
        "Shape": [(17, ("end", "start"), 1)],
        "Sigmoid": [(17, (), 1)],
        "Softmax": [(17, ("axis",), 1)],
        "Squeeze": [(17, (), 2)],
        "Sub": [(17, (), 2)],
        "Sum": [(17, (), None)],
        "Tanh": [(17, (), 1)],
        "Transpose": [(17, ("perm",), 1)],
        "Unsqueeze": [(17, (), 2)],
    }.items()
}


def _opset_for(node: OpNode, attrs: dict) -> int:
    """The lowest opset in OPSETS whose schema of `node.op` has all its attributes and inputs."""
    rows = OPSET_SCHEMAS.get(node.op.value, [])
    for since, known, max_inputs in rows:
        if set(attrs) <= known and (max_inputs is None or len(node.inputs) <= max_inputs):
            return since
    unknown = sorted(set(attrs) - rows[-1][1]) if rows else []
    raise ExportError(
        f"node '{node.name}' ({node.op.value}) cannot be written as ONNX opset <= {OPSETS[-1]}"
        + (f": unknown attributes {unknown}" if unknown else "")
    )


# ---- protobuf messages of onnx.proto (field numbers from there) -------------------------------

_FLOAT, _INT, _STRING, _TENSOR, _FLOATS, _INTS, _STRINGS = 1, 2, 3, 4, 6, 7, 8  # AttributeType


def _text(value) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _attribute(name: str, value) -> bytes:
    """AttributeProto, its type inferred from the value as onnx.helper.make_attribute does."""
    out = bytes_field(1, name.encode())
    if isinstance(value, np.ndarray):
        return out + bytes_field(5, tensor_proto(None, value)) + int_field(20, _TENSOR)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return out + float_field(2, value) + int_field(20, _FLOAT)
    if isinstance(value, int):  # bool included, as in onnx.helper
        return out + int_field(3, int(value)) + int_field(20, _INT)
    if isinstance(value, (str, bytes)):
        return out + bytes_field(4, _text(value)) + int_field(20, _STRING)
    items = [v.item() if isinstance(v, np.generic) else v for v in value] if isinstance(value, (list, tuple)) else []
    if items and all(isinstance(v, int) for v in items):
        return out + b"".join(int_field(8, v) for v in items) + int_field(20, _INTS)
    if items and all(isinstance(v, (int, float)) for v in items):
        return out + b"".join(float_field(7, float(v)) for v in items) + int_field(20, _FLOATS)
    if items and all(isinstance(v, (str, bytes)) for v in items):
        return out + b"".join(bytes_field(9, _text(v)) for v in items) + int_field(20, _STRINGS)
    raise ExportError(f"attribute '{name}': cannot write {value!r} as an ONNX attribute")


def _node(op: str, inputs, outputs, name: str, **attrs) -> bytes:
    """NodeProto (attributes sorted by name, as onnx.helper.make_node writes them)."""
    out = b"".join(bytes_field(1, i.encode()) for i in inputs)
    out += b"".join(bytes_field(2, o.encode()) for o in outputs)
    out += bytes_field(3, name.encode()) + bytes_field(4, op.encode())
    return out + b"".join(bytes_field(5, _attribute(k, v)) for k, v in sorted(attrs.items()) if v is not None)


def _value_info(name: str, shape, dtype: str) -> bytes:
    """ValueInfoProto of a tensor of fixed shape."""
    elem = ONNX_DTYPES.get(np.dtype(dtype))
    if elem is None:
        raise ExportError(f"tensor '{name}' has dtype {dtype}, which has no ONNX type here")
    dims = b"".join(bytes_field(1, int_field(1, int(d))) for d in shape)  # dim { dim_value }
    tensor_type = int_field(1, elem) + bytes_field(2, dims)  # elem_type, shape
    return bytes_field(1, name.encode()) + bytes_field(2, bytes_field(1, tensor_type))


def _explicit_pads(node: OpNode, attrs: dict, graph: OpGraph) -> dict:
    """auto_pad SAME_*/VALID as explicit pads: cv2.dnn pads SAME convolutions of stride 2 on the
    wrong side (BlazeFace's first conv comes out wrong), explicit pads mean the same everywhere."""
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


def _nodes_for(node: OpNode, graph: OpGraph) -> tuple[list, int]:
    """The ONNX node(s) for one IR node (the op, then its fused activation if any), and the
    opset they need."""
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
    onnx_nodes = [_node(node.op.value, list(node.inputs), outputs, node.name, **attrs)]
    if act is None:
        return onnx_nodes, opset
    src, dst, name = outputs[0], node.outputs[0], f"{node.name}/{act.lower()}"
    if act == "Relu":
        onnx_nodes.append(_node("Relu", [src], [dst], name))
    elif act == "LeakyRelu":
        onnx_nodes.append(_node("LeakyRelu", [src], [dst], name, alpha=float(node.attrs["act_alpha"])))
    elif act == "Clip":
        lo, hi = f"{name}/min", f"{name}/max"
        onnx_nodes += [
            _node("Constant", [], [lo], lo, value_float=float(node.attrs["act_min"])),
            _node("Constant", [], [hi], hi, value_float=float(node.attrs["act_max"])),
            _node("Clip", [src, lo, hi], [dst], name),
        ]
    else:
        raise ExportError(f"node '{node.name}': unknown fused activation {act!r}")
    return onnx_nodes, opset


def export(graph: OpGraph) -> bytes:
    """The ONNX payload for `graph` (shapes inferred), ready for `pack`'s caller to embed."""
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
            nodes.append(_node("Identity", [renamed[name]], [name], f"{name}/identity"))
            used.add(name)
    initializers = [name for name in graph.consts if name in used]
    # GraphProto: node 1, name 2, input 11, output 12
    onnx_graph = b"".join(bytes_field(1, n) for n in nodes) + bytes_field(2, b"iotrt")
    onnx_graph += b"".join(bytes_field(11, _value_info(s.name, s.shape, s.dtype)) for s in graph.inputs)
    onnx_graph += b"".join(bytes_field(12, _value_info(s.name, s.shape, s.dtype)) for s in graph.output_specs())
    # ModelProto: ir_version 1 (8: the oldest IR for opsets 17-21, what onnxruntime and cv2.dnn
    # read), producer_name 2, graph 7, opset_import 8 {domain 1 (""), version 2}
    model = int_field(1, 8) + bytes_field(2, b"iotrt") + bytes_field(7, onnx_graph)
    model += bytes_field(8, bytes_field(1, b"") + int_field(2, opset))
    return pack(model, opset, initializers, renamed)


def payloads(graph: OpGraph, say=lambda line: None) -> dict[str, bytes]:
    """The per-backend payloads to embed for `graph`; none (with a note) if it cannot be written."""
    try:
        data = export(graph)
    except ExportError as exc:
        say(f"no ONNX payload ({exc}): this artifact will run on the numpy backend only")
        return {}
    say(f"ONNX payload for opencv/onnxruntime: {len(data) / 1e3:.1f} kB (weights shared)")
    return {"onnx": data}
