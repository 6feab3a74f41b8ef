"""ONNX front end (opset 7 and newer; tested from opset 9).

IR ops are ONNX ops in their newest form, so the translation is mostly a copy: attributes become
plain values, Constant nodes and initializers become constants, and the few ops whose operands
moved from attributes to inputs across opsets (Pad, Clip, Squeeze, Unsqueeze, Reshape, Resize)
get the newest form; Upsample becomes the equivalent Resize. Dropout is the identity at
inference; Softmax before opset 13 (softmax of the input flattened at `axis`) becomes
Flatten -> Softmax -> Reshape, which the memory plan turns into views.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from iotrt.compiler.errors import CompileError, UnsupportedOpError
from iotrt.compiler.frontends import OpGraphBuilder
from iotrt.modelformat.ir import Op, OpGraph, TensorSpec
from iotrt.modelformat.kernels import ONNX_DTYPES

MIN_OPSET = 7


class _Translator:
    def __init__(self, path: Path, model: onnx.ModelProto, input_shapes: dict):
        self.path = path
        self.model = model
        self.input_shapes = input_shapes
        self.b = OpGraphBuilder()
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def run(self) -> OpGraph:
        g = self.model.graph
        if self.opset < MIN_OPSET:
            raise CompileError(f"{self.path}: ONNX opset {self.opset} is older than {MIN_OPSET}; "
                               "convert the model with onnx.version_converter")
        for init in g.initializer:
            self.b.claim(init.name)
            self.b.consts[init.name] = numpy_helper.to_array(init)
        names = [vi.name for vi in g.input if vi.name not in self.b.consts]
        unknown = set(self.input_shapes) - set(names)
        if unknown:
            raise CompileError(f"{self.path}: --input-shape names unknown inputs {sorted(unknown)} "
                               f"(inputs: {names})")
        for vi in g.input:
            if vi.name not in self.b.consts:
                self._input(vi)
        for i, node in enumerate(g.node):
            self._node(node, i)
        self.b.outputs = [o.name for o in g.output]
        return self.b.graph()

    def _input(self, vi) -> None:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise CompileError(f"{self.path}: input '{vi.name}' is not a tensor")
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        if vi.name in self.input_shapes:
            shape = tuple(self.input_shapes[vi.name])
        else:
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim]
            if any(d <= 0 for d in dims):
                shown = "x".join(str(d) if d > 0 else "?" for d in dims)
                raise CompileError(
                    f"{self.path}: input '{vi.name}' has open dimensions ({shown}); give a static "
                    f"shape with --input-shape {vi.name}=1x3x224x224 (your sizes)")
            shape = tuple(dims)
        self.b.claim(vi.name)
        self.b.inputs.append(TensorSpec(vi.name, shape, dtype))

    def _node(self, node: onnx.NodeProto, index: int) -> None:
        name = node.name or f"{node.op_type}_{index}"
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(f"{node.domain}.{node.op_type}", name, SUPPORTED, str(self.path))
        attrs = {a.name: _attr(a) for a in node.attribute}
        for out in node.output:
            if out:
                self.b.claim(out)
        handler = HANDLERS.get(node.op_type)
        if handler is None:
            if node.op_type not in DIRECT:
                raise UnsupportedOpError(node.op_type, name, SUPPORTED, str(self.path))
            self.b.add(Op(node.op_type), name, list(node.input), list(node.output), **attrs)
            return
        handler(self, node, name, attrs)

    def const(self, base: str, value) -> str:
        return self.b.const(base, np.asarray(value))


def _attr(a: onnx.AttributeProto):
    value = helper.get_attribute_value(a)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def _inputs(node, n: int) -> list[str]:
    """The node's first n inputs, absent ones as ''."""
    ins = list(node.input) + [""] * n
    return ins[:n]


def _constant(t: _Translator, node, name, attrs) -> None:
    if "value" in attrs:
        value = attrs["value"]
    elif "value_float" in attrs:
        value = np.array(attrs["value_float"], dtype=np.float32)
    elif "value_floats" in attrs:
        value = np.array(attrs["value_floats"], dtype=np.float32)
    elif "value_int" in attrs:
        value = np.array(attrs["value_int"], dtype=np.int64)
    elif "value_ints" in attrs:
        value = np.array(attrs["value_ints"], dtype=np.int64)
    else:
        raise CompileError(f"{t.path}: Constant node '{name}' has no supported value attribute")
    t.b.consts[node.output[0]] = np.asarray(value)


def _dropout(t: _Translator, node, name, attrs) -> None:
    ins = _inputs(node, 3)
    if attrs.get("is_test", 1) == 0 and t.opset < 7:
        raise CompileError(f"{t.path}: Dropout node '{name}' is in training mode")
    if ins[2]:
        mode = t.b.consts.get(ins[2])
        if mode is None or bool(mode):
            raise CompileError(f"{t.path}: Dropout node '{name}': training_mode must be a "
                               "constant false for inference")
    t.b.add(Op.IDENTITY, name, [ins[0]], [node.output[0]])
    if len(node.output) > 1 and node.output[1]:
        shape = t.b.add(Op.SHAPE, f"{name}/shape", [ins[0]])
        t.b.add(Op.CONSTANT_OF_SHAPE, f"{name}/mask", [shape], [node.output[1]],
                value=np.ones(1, dtype=bool))


def _softmax(t: _Translator, node, name, attrs) -> None:
    if t.opset >= 13:
        t.b.add(Op.SOFTMAX, name, list(node.input), list(node.output), axis=attrs.get("axis", -1))
        return
    x = node.input[0]
    shape = t.b.add(Op.SHAPE, f"{name}/shape", [x])
    flat = t.b.add(Op.FLATTEN, f"{name}/flatten", [x], axis=attrs.get("axis", 1))
    soft = t.b.add(Op.SOFTMAX, name, [flat], axis=-1)
    t.b.add(Op.RESHAPE, f"{name}/reshape", [soft, shape], list(node.output))


def _pad(t: _Translator, node, name, attrs) -> None:
    mode = attrs.get("mode", "constant")
    if t.opset < 11:
        pads = t.const(f"{name}/pads", np.array(attrs.get("pads", attrs.get("paddings")), np.int64))
        value = t.const(f"{name}/value", np.float32(attrs.get("value", 0.0)))
        t.b.add(Op.PAD, name, [node.input[0], pads, value], list(node.output), mode=mode)
    else:
        t.b.add(Op.PAD, name, list(node.input), list(node.output), mode=mode)


def _clip(t: _Translator, node, name, attrs) -> None:
    if t.opset < 11:
        ins = [node.input[0]]
        ins.append(t.const(f"{name}/min", np.float32(attrs["min"])) if "min" in attrs else "")
        ins.append(t.const(f"{name}/max", np.float32(attrs["max"])) if "max" in attrs else "")
        t.b.add(Op.CLIP, name, ins, list(node.output))
    else:
        t.b.add(Op.CLIP, name, list(node.input), list(node.output))


def _axes_op(op: Op):
    def handler(t: _Translator, node, name, attrs) -> None:
        ins = list(node.input)
        if "axes" in attrs:  # before opset 13 axes were an attribute
            ins = [ins[0], t.const(f"{name}/axes", np.array(attrs.pop("axes"), np.int64))]
        t.b.add(op, name, ins, list(node.output), **attrs)
    return handler


def _reshape(t: _Translator, node, name, attrs) -> None:
    ins = list(node.input)
    if "shape" in attrs:  # opset < 5
        ins = [ins[0], t.const(f"{name}/shape", np.array(attrs.pop("shape"), np.int64))]
        attrs.pop("consumed_inputs", None)
    t.b.add(Op.RESHAPE, name, ins, list(node.output), **attrs)


def _resize(t: _Translator, node, name, attrs) -> None:
    ins = list(node.input)
    if t.opset < 11:  # Resize-10: (X, scales), asymmetric coordinates
        ins = [ins[0], "", ins[1]]
        attrs.setdefault("coordinate_transformation_mode", "asymmetric")
        attrs.setdefault("nearest_mode", "floor")
    t.b.add(Op.RESIZE, name, ins, list(node.output), **attrs)


def _upsample(t: _Translator, node, name, attrs) -> None:
    """Upsample (opsets 7-9) is Resize with asymmetric coordinates and floor rounding."""
    if "scales" in attrs:  # opset 7: scales as an attribute
        scales = t.const(f"{name}/scales", np.array(attrs.pop("scales"), np.float32))
    else:
        scales = node.input[1]
    mode = attrs.get("mode", "nearest")
    t.b.add(Op.RESIZE, name, [node.input[0], "", scales], list(node.output), mode=mode,
            coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def _cast(t: _Translator, node, name, attrs) -> None:
    to = attrs.get("to")
    if to not in ONNX_DTYPES:
        kind = onnx.TensorProto.DataType.Name(to) if to is not None else "none"
        raise CompileError(f"{t.path}: Cast node '{name}' casts to {kind}, which numpy cannot "
                           "represent")
    attrs.pop("saturate", None)
    t.b.add(Op.CAST, name, list(node.input), list(node.output), **attrs)


def _single_output(op: Op, what: str):
    def handler(t: _Translator, node, name, attrs) -> None:
        if len([o for o in node.output if o]) > 1:
            raise CompileError(f"{t.path}: {node.op_type} node '{name}': {what}")
        if attrs.get("training_mode", 0):
            raise CompileError(f"{t.path}: {node.op_type} node '{name}' is in training mode")
        for legacy in ("spatial", "is_test", "consumed_inputs", "momentum", "storage_order"):
            attrs.pop(legacy, None)
        t.b.add(op, name, list(node.input), list(node.output)[:1], **attrs)
    return handler


def _drop_attrs(op: Op, *names: str):
    def handler(t: _Translator, node, name, attrs) -> None:
        for n in names:
            attrs.pop(n, None)
        t.b.add(op, name, list(node.input), list(node.output), **attrs)
    return handler


HANDLERS = {
    "Cast": _cast,
    "CastLike": _drop_attrs(Op.CAST_LIKE, "saturate", "round_mode"),
    "BatchNormalization": _single_output(Op.BATCH_NORM, "only the inference output is supported"),
    "Clip": _clip,
    "Constant": _constant,
    "Dropout": _dropout,
    "Gemm": _drop_attrs(Op.GEMM, "broadcast"),
    "MaxPool": _single_output(Op.MAX_POOL, "the Indices output is not supported"),
    "Pad": _pad,
    "Reshape": _reshape,
    "Resize": _resize,
    "Softmax": _softmax,
    "Squeeze": _axes_op(Op.SQUEEZE),
    "Unsqueeze": _axes_op(Op.UNSQUEEZE),
    "Upsample": _upsample,
    "Add": _drop_attrs(Op.ADD, "broadcast", "axis", "consumed_inputs"),
    "Sub": _drop_attrs(Op.SUB, "broadcast", "axis", "consumed_inputs"),
    "Mul": _drop_attrs(Op.MUL, "broadcast", "axis", "consumed_inputs"),
    "Div": _drop_attrs(Op.DIV, "broadcast", "axis", "consumed_inputs"),
}
# ONNX ops whose IR op has the same name and attributes.
DIRECT = {op.value for op in Op} - {"Dequantize"} - set(HANDLERS)
SUPPORTED = sorted(DIRECT | set(HANDLERS))


def load(path: str | Path, input_shapes: dict | None = None) -> OpGraph:
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others from protobuf; all mean "bad file"
        raise CompileError(f"{path}: cannot read the ONNX model ({type(exc).__name__}: {exc})") from exc
    return _Translator(path, model, input_shapes or {}).run()


def load_model(model: onnx.ModelProto, input_shapes: dict | None = None, name: str = "<model>") -> OpGraph:
    """Translate an in-memory ModelProto (used by the conformance tests)."""
    return _Translator(Path(name), model, input_shapes or {}).run()
