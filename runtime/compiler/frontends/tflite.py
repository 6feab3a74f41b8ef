"""TFLite front end: reads the flatbuffer directly (float32 / fp16-weight models).

TFLite is NHWC; the IR is NCHW. The translation keeps the model's interface as declared (an
NHWC input stays NHWC for the caller) and inserts Transposes at the boundaries: after each
graph input, before each graph output, and around ops whose meaning depends on the layout
(RESHAPE). Weights are transposed by Transpose nodes on constants, which constant folding
removes, so the artifact holds NCHW weights and no runtime transposes remain inside.

Schema field slots follow tensorflow/lite/schema/schema.fbs (Model, SubGraph, Tensor, Operator,
OperatorCode, Buffer and the *Options tables used below).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from iotrt.compiler.errors import CompileError, UnsupportedOpError
from iotrt.compiler.frontends import OpGraphBuilder
from iotrt.compiler.frontends.flatbuf import FlatBufferError, Table
from iotrt.modelformat.ir import Op, OpGraph, TensorSpec

# TensorType enum -> numpy dtype (types a float model can contain)
DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool",
          7: "int16", 9: "int8", 10: "float64"}

# BuiltinOperator codes -> names, in code order (enough to name what we reject)
BUILTIN_NAMES = (
    "ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE "
    "EMBEDDING_LOOKUP FLOOR FULLY_CONNECTED HASHTABLE_LOOKUP L2_NORMALIZATION L2_POOL_2D "
    "LOCAL_RESPONSE_NORMALIZATION LOGISTIC LSH_PROJECTION LSTM MAX_POOL_2D MUL RELU RELU_N1_TO_1 "
    "RELU6 RESHAPE RESIZE_BILINEAR RNN SOFTMAX SPACE_TO_DEPTH SVDF TANH CONCAT_EMBEDDINGS "
    "SKIP_GRAM CALL CUSTOM EMBEDDING_LOOKUP_SPARSE PAD UNIDIRECTIONAL_SEQUENCE_RNN GATHER "
    "BATCH_TO_SPACE_ND SPACE_TO_BATCH_ND TRANSPOSE MEAN SUB DIV SQUEEZE "
    "UNIDIRECTIONAL_SEQUENCE_LSTM STRIDED_SLICE BIDIRECTIONAL_SEQUENCE_RNN EXP TOPK_V2 SPLIT "
    "LOG_SOFTMAX DELEGATE BIDIRECTIONAL_SEQUENCE_LSTM CAST PRELU MAXIMUM ARG_MAX MINIMUM LESS NEG "
    "PADV2 GREATER GREATER_EQUAL LESS_EQUAL SELECT SLICE SIN TRANSPOSE_CONV SPARSE_TO_DENSE TILE "
    "EXPAND_DIMS EQUAL NOT_EQUAL LOG SUM SQRT RSQRT SHAPE POW ARG_MIN FAKE_QUANT REDUCE_PROD "
    "REDUCE_MAX PACK LOGICAL_OR ONE_HOT LOGICAL_AND LOGICAL_NOT UNPACK REDUCE_MIN FLOOR_DIV "
    "REDUCE_ANY SQUARE ZEROS_LIKE FILL FLOOR_MOD RANGE RESIZE_NEAREST_NEIGHBOR LEAKY_RELU "
    "SQUARED_DIFFERENCE MIRROR_PAD ABS SPLIT_V UNIQUE CEIL REVERSE_V2 ADD_N GATHER_ND COS WHERE "
    "RANK ELU REVERSE_SEQUENCE MATRIX_DIAG QUANTIZE MATRIX_SET_DIAG ROUND HARD_SWISH IF WHILE "
    "NON_MAX_SUPPRESSION_V4 NON_MAX_SUPPRESSION_V5 SCATTER_ND SELECT_V2 DENSIFY SEGMENT_SUM "
    "BATCH_MATMUL"
).split()

PADDING = {0: "SAME_UPPER", 1: "VALID"}  # TFLite SAME puts the extra pixel at the end
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
AXIS_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}


def op_name(code: int) -> str:
    return BUILTIN_NAMES[code] if 0 <= code < len(BUILTIN_NAMES) else f"BUILTIN_{code}"


class _Translator:
    def __init__(self, path: Path, input_shapes: dict | None):
        self.path = path
        self.input_shapes = input_shapes or {}
        self.b = OpGraphBuilder()
        # tensor index -> IR name; 4-D activations are held as NCHW under that name
        self.names: dict[int, str] = {}

    # -- model structure -------------------------------------------------------------------

    def run(self, buf: bytes) -> OpGraph:
        model = Table.root(buf)
        if buf[4:8] != b"TFL3":
            raise CompileError(f"{self.path}: not a TFLite model (missing the TFL3 identifier)")
        subgraphs = model.tables(2)
        if not subgraphs:
            raise CompileError(f"{self.path}: the model has no subgraph")
        self.buffers = model.tables(4)
        self.opcodes = [
            (max(c.scalar(0, "b", 0), c.scalar(3, "i", 0)), c.string(1)) for c in model.tables(1)
        ]
        sg = subgraphs[0]
        self.tensors = sg.tables(0)
        self._load_constants()
        names = [self._tname(int(i)) for i in sg.array(1, "i4")]
        unknown = set(self.input_shapes) - set(names)
        if unknown:
            raise CompileError(f"{self.path}: --input-shape names unknown inputs {sorted(unknown)} "
                               f"(inputs: {names})")
        # 4-D graph outputs are transposed back to NHWC under their own name at the end, so
        # the op producing one must name its (NCHW) result differently
        self.nhwc_outputs = {int(i) for i in sg.array(2, "i4") if len(self._tshape(int(i))) == 4}
        for name in (self._tname(i) for i in self.nhwc_outputs):
            self.b.claim(name)
        for idx in sg.array(1, "i4"):
            self._graph_input(int(idx))
        for op in sg.tables(3):
            self._operator(op)
        for idx in sg.array(2, "i4"):
            self._graph_output(int(idx))
        return self.b.graph()

    def _tname(self, idx: int) -> str:
        return self.tensors[idx].string(3) or f"tensor{idx}"

    def _tshape(self, idx: int) -> tuple[int, ...]:
        shape = self.tensors[idx].array(0, "i4")
        return tuple(int(s) for s in shape) if shape is not None else ()

    def _tdtype(self, idx: int) -> str:
        code = self.tensors[idx].scalar(1, "b", 0)
        if code not in DTYPES:
            raise CompileError(f"{self.path}: tensor '{self._tname(idx)}' has unsupported type {code}")
        return DTYPES[code]

    def _load_constants(self) -> None:
        for idx, t in enumerate(self.tensors):
            q = t.table(4)
            scale = q.array(2, "f4") if q is not None else None
            dtype = self._tdtype(idx)
            if scale is not None and len(scale) and dtype not in ("float32", "float16"):
                raise CompileError(
                    f"{self.path}: tensor '{self._tname(idx)}' is {dtype}-quantized; only float32 "
                    "and fp16-weight models are supported (use the float model)"
                )
            if t.table(6) is not None:
                raise CompileError(
                    f"{self.path}: tensor '{self._tname(idx)}' is stored sparse (a pruned model); "
                    "only dense models are supported")
            buf_idx = t.scalar(2, "I", 0)
            if buf_idx == 0 or buf_idx >= len(self.buffers):
                continue
            data = self.buffers[buf_idx].array(0, "u1")
            if data is None or len(data) == 0:
                if self.buffers[buf_idx].scalar(1, "Q", 0):
                    raise CompileError(f"{self.path}: models with external buffers are not supported")
                continue
            value = np.frombuffer(data.tobytes(), dtype=np.dtype(dtype).newbyteorder("<"))
            value = value.reshape(self._tshape(idx)).astype(dtype)
            self.names[idx] = self.b.const(self._tname(idx), value)

    def _graph_input(self, idx: int) -> None:
        name = self._tname(idx)
        self.b.claim(name)
        shape = tuple(self.input_shapes.get(name, self._tshape(idx)))
        if any(s <= 0 for s in shape):
            raise CompileError(
                f"{self.path}: input '{name}' has a dynamic shape {shape}; give it with "
                f"--input-shape {name}=1x...")
        self.b.inputs.append(TensorSpec(name, shape, self._tdtype(idx)))
        if len(shape) == 4:
            self.names[idx] = self.b.add(Op.TRANSPOSE, f"{name}/to_nchw", [name], perm=NHWC_TO_NCHW)
        else:
            self.names[idx] = name

    def _graph_output(self, idx: int) -> None:
        name = self._tname(idx)
        inner = self.names[idx]
        if idx in self.nhwc_outputs:
            self.b.add(Op.TRANSPOSE, f"{name}/to_nhwc", [inner], [name], perm=NCHW_TO_NHWC)
            self.b.outputs.append(name)
        else:
            self.b.outputs.append(inner)

    # -- operators -------------------------------------------------------------------------

    def _operator(self, op: Table) -> None:
        code, custom = self.opcodes[op.scalar(0, "I", 0)]
        ins = [int(i) for i in op.array(1, "i4")]
        outs = [int(i) for i in op.array(2, "i4")]
        opname = custom if code == 32 else op_name(code)
        node = self._tname(outs[0]) if outs else opname
        handler = HANDLERS.get(opname)
        if handler is None:
            raise UnsupportedOpError(opname, node, sorted(HANDLERS), str(self.path))
        try:
            handler(self, ins, outs, op.table(4), node)
        except KeyError as exc:
            raise CompileError(f"{self.path}: {opname} node '{node}' reads undefined tensor {exc}") from exc

    def inp(self, idx: int) -> str:
        return self.names[idx]

    def out(self, idx: int) -> str:
        base = self._tname(idx)
        name = self.b.fresh(base + "/nchw" if idx in self.nhwc_outputs else base)
        self.names[idx] = name
        return name

    def activation(self, code: int, x: str, node: str) -> str:
        """Emit the op for a TFLite fused activation (the fusion pass folds it back in)."""
        if code == 0:
            return x
        if code == 1:
            return self.b.add(Op.RELU, f"{node}/relu", [x])
        if code in (2, 3):
            lo, hi = (-1.0, 1.0) if code == 2 else (0.0, 6.0)
            return self.b.add(Op.CLIP, f"{node}/clip", [x, self.b.const("clip_min", np.float32(lo)),
                                                        self.b.const("clip_max", np.float32(hi))])
        if code == 4:
            return self.b.add(Op.TANH, f"{node}/tanh", [x])
        raise CompileError(f"{self.path}: node '{node}' uses unsupported fused activation {code}")

    def finish(self, x: str, out_idx: int, act: int, node: str) -> None:
        """Bind TFLite tensor `out_idx` to `x` after the fused activation."""
        y = self.activation(act, x, node)
        if y == x:
            self.names[out_idx] = x
        else:
            self.names[out_idx] = y

    def to_nchw_const(self, idx: int, ref_rank: int) -> str:
        """A constant operand broadcast against a 4-D activation: reorder its axes to NCHW."""
        name = self.inp(idx)
        value = self.b.consts.get(name)
        if value is None or ref_rank != 4:
            return name
        full = value.reshape((1,) * (4 - value.ndim) + value.shape)
        return self.b.const(name + "/nchw", full.transpose(NHWC_TO_NCHW))


def _conv(t: _Translator, ins, outs, opts: Table, node: str) -> None:
    if opts is None:
        raise CompileError(f"{t.path}: CONV_2D node '{node}' has no options")
    w = t.b.add(Op.TRANSPOSE, f"{node}/w_oihw", [t.inp(ins[1])], perm=(0, 3, 1, 2))
    inputs = [t.inp(ins[0]), w] + ([t.inp(ins[2])] if len(ins) > 2 and ins[2] >= 0 else [])
    y = t.b.add(Op.CONV, node, inputs, [t.out(outs[0])],
                auto_pad=PADDING[opts.scalar(0, "b", 0)],
                strides=[opts.scalar(2, "i", 1), opts.scalar(1, "i", 1)],
                dilations=[opts.scalar(5, "i", 1), opts.scalar(4, "i", 1)], group=1)
    t.finish(y, outs[0], opts.scalar(3, "b", 0), node)


def _depthwise(t: _Translator, ins, outs, opts: Table, node: str) -> None:
    channels = t._tshape(ins[0])[3]
    # [1, H, W, C*M] -> [C*M, 1, H, W]: one filter per output channel, `channels` groups
    w = t.b.add(Op.TRANSPOSE, f"{node}/w_oihw", [t.inp(ins[1])], perm=(3, 0, 1, 2))
    inputs = [t.inp(ins[0]), w] + ([t.inp(ins[2])] if len(ins) > 2 and ins[2] >= 0 else [])
    y = t.b.add(Op.CONV, node, inputs, [t.out(outs[0])],
                auto_pad=PADDING[opts.scalar(0, "b", 0)],
                strides=[opts.scalar(2, "i", 1), opts.scalar(1, "i", 1)],
                dilations=[opts.scalar(6, "i", 1), opts.scalar(5, "i", 1)], group=channels)
    t.finish(y, outs[0], opts.scalar(4, "b", 0), node)


def _pool(op: Op):
    def handler(t: _Translator, ins, outs, opts: Table, node: str) -> None:
        y = t.b.add(op, node, [t.inp(ins[0])], [t.out(outs[0])],
                    auto_pad=PADDING[opts.scalar(0, "b", 0)],
                    strides=[opts.scalar(2, "i", 1), opts.scalar(1, "i", 1)],
                    kernel_shape=[opts.scalar(4, "i", 1), opts.scalar(3, "i", 1)])
        t.finish(y, outs[0], opts.scalar(5, "b", 0), node)
    return handler


def _binary(op: Op):
    def handler(t: _Translator, ins, outs, opts: Table | None, node: str) -> None:
        rank = len(t._tshape(outs[0]))
        a, b = t.to_nchw_const(ins[0], rank), t.to_nchw_const(ins[1], rank)
        y = t.b.add(op, node, [a, b], [t.out(outs[0])])
        t.finish(y, outs[0], opts.scalar(0, "b", 0) if opts is not None else 0, node)
    return handler


def _unary(op: Op):
    def handler(t: _Translator, ins, outs, opts, node: str) -> None:
        t.b.add(op, node, [t.inp(ins[0])], [t.out(outs[0])])
    return handler


def _relu6(t: _Translator, ins, outs, opts, node: str) -> None:
    t.names[outs[0]] = t.activation(3, t.inp(ins[0]), node)


def _dequantize(t: _Translator, ins, outs, opts, node: str) -> None:
    t.b.add(Op.DEQUANTIZE, node, [t.inp(ins[0])], [t.out(outs[0])])


def _pad(t: _Translator, ins, outs, opts, node: str) -> None:
    paddings = t.b.consts.get(t.inp(ins[1]))
    if paddings is None:
        raise CompileError(f"{t.path}: PAD node '{node}' has non-constant paddings")
    paddings = np.asarray(paddings, dtype=np.int64).reshape(-1, 2)
    if len(paddings) == 4:
        paddings = paddings[list(NHWC_TO_NCHW)]
    pads = t.b.const(f"{node}/pads", np.concatenate([paddings[:, 0], paddings[:, 1]]))
    t.b.add(Op.PAD, node, [t.inp(ins[0]), pads], [t.out(outs[0])], mode="constant")


def _reshape(t: _Translator, ins, outs, opts: Table | None, node: str) -> None:
    x = t.inp(ins[0])
    if len(t._tshape(ins[0])) == 4:  # reshape means NHWC element order
        x = t.b.add(Op.TRANSPOSE, f"{node}/to_nhwc", [x], perm=NCHW_TO_NHWC)
    new_shape = t._tshape(outs[0])
    shape = t.b.const(f"{node}/shape", np.array(new_shape, dtype=np.int64))
    y = t.b.add(Op.RESHAPE, node, [x, shape])
    if len(new_shape) == 4:
        y = t.b.add(Op.TRANSPOSE, f"{node}/to_nchw", [y], perm=NHWC_TO_NCHW)
    t.names[outs[0]] = y


def _concat(t: _Translator, ins, outs, opts: Table, node: str) -> None:
    rank = len(t._tshape(outs[0]))
    axis = opts.scalar(0, "i", 0) % rank
    if rank == 4:
        axis = AXIS_NHWC_TO_NCHW[axis]
    y = t.b.add(Op.CONCAT, node, [t.inp(i) for i in ins], [t.out(outs[0])], axis=axis)
    t.finish(y, outs[0], opts.scalar(1, "b", 0), node)


def _fully_connected(t: _Translator, ins, outs, opts: Table | None, node: str) -> None:
    x = t.inp(ins[0])
    if len(t._tshape(ins[0])) == 4:
        x = t.b.add(Op.TRANSPOSE, f"{node}/to_nhwc", [x], perm=NCHW_TO_NHWC)
    k = t._tshape(ins[1])[1]
    x = t.b.add(Op.RESHAPE, f"{node}/flat", [x, t.b.const(f"{node}/shape", np.array([-1, k]))])
    inputs = [x, t.inp(ins[1])] + ([t.inp(ins[2])] if len(ins) > 2 and ins[2] >= 0 else [])
    y = t.b.add(Op.GEMM, node, inputs, transB=1)
    if len(t._tshape(outs[0])) != 2:
        shape = t.b.const(f"{node}/out_shape", np.array(t._tshape(outs[0]), dtype=np.int64))
        y = t.b.add(Op.RESHAPE, f"{node}/unflat", [y, shape])
    t.finish(y, outs[0], opts.scalar(0, "b", 0) if opts is not None else 0, node)


def _prelu(t: _Translator, ins, outs, opts, node: str) -> None:
    rank = len(t._tshape(outs[0]))
    t.b.add(Op.PRELU, node, [t.inp(ins[0]), t.to_nchw_const(ins[1], rank)], [t.out(outs[0])])


def _resize_bilinear(t: _Translator, ins, outs, opts: Table | None, node: str) -> None:
    size = t.b.consts.get(t.inp(ins[1]))
    if size is None:
        raise CompileError(f"{t.path}: RESIZE_BILINEAR node '{node}' has a non-constant size")
    n, _, _, c = t._tshape(ins[0])
    align = bool(opts.scalar(2, "B", 0)) if opts is not None else False
    half = bool(opts.scalar(3, "B", 0)) if opts is not None else False
    # TF's three coordinate conventions are ONNX Resize coordinate modes
    mode = "align_corners" if align else "half_pixel" if half else "asymmetric"
    sizes = t.b.const(f"{node}/sizes", np.array([n, c, int(size[0]), int(size[1])], np.int64))
    t.b.add(Op.RESIZE, node, [t.inp(ins[0]), "", "", sizes], [t.out(outs[0])],
            mode="linear", coordinate_transformation_mode=mode)


def _softmax(t: _Translator, ins, outs, opts: Table | None, node: str) -> None:
    if opts is not None and opts.scalar(0, "f", 1.0) != 1.0:
        raise CompileError(f"{t.path}: SOFTMAX node '{node}' with beta != 1 is not supported")
    axis = 1 if len(t._tshape(ins[0])) == 4 else -1
    t.b.add(Op.SOFTMAX, node, [t.inp(ins[0])], [t.out(outs[0])], axis=axis)


HANDLERS = {
    "ADD": _binary(Op.ADD),
    "AVERAGE_POOL_2D": _pool(Op.AVERAGE_POOL),
    "CONCATENATION": _concat,
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _depthwise,
    "DEQUANTIZE": _dequantize,
    "DIV": _binary(Op.DIV),
    "FULLY_CONNECTED": _fully_connected,
    "LOGISTIC": _unary(Op.SIGMOID),
    "MAX_POOL_2D": _pool(Op.MAX_POOL),
    "MUL": _binary(Op.MUL),
    "PAD": _pad,
    "PRELU": _prelu,
    "RESIZE_BILINEAR": _resize_bilinear,
    "RELU": _unary(Op.RELU),
    "RELU6": _relu6,
    "RESHAPE": _reshape,
    "SOFTMAX": _softmax,
    "SUB": _binary(Op.SUB),
    "TANH": _unary(Op.TANH),
}


def load(path: str | Path, input_shapes: dict | None = None) -> OpGraph:
    path = Path(path)
    buf = path.read_bytes()
    try:
        return _Translator(path, input_shapes).run(buf)
    except FlatBufferError as exc:
        raise CompileError(f"{path}: corrupt TFLite file: {exc}") from exc
