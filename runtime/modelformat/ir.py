"""The intermediate representation of a compiled model: a closed op set over NCHW tensors.

An `OpGraph` is a topologically ordered list of immutable `OpNode`s plus the constants they
read (named so, not Graph and Node, to keep apart from the YAML graph of `iotrt.graph` and the
Node API of `iotrt.node`). Front ends translate a source model into this IR (converting layouts
where the source differs, e.g. TFLite's NHWC), passes rewrite it, the artifact stores it and the
engine runs it. Every tensor is named by a string; a name is either a graph input, a constant,
or the output of exactly one node.

The op semantics are ONNX's (the attribute names too), restricted to what the engines implement;
the reference implementation of each op is `iotrt.modelformat.kernels`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


class Op(str, enum.Enum):
    """Every operation the IR can express. Values are the ONNX op names."""

    ADD = "Add"
    AVERAGE_POOL = "AveragePool"
    BATCH_NORM = "BatchNormalization"
    CAST = "Cast"
    CAST_LIKE = "CastLike"
    CLIP = "Clip"
    CONCAT = "Concat"
    CONSTANT_OF_SHAPE = "ConstantOfShape"
    CONV = "Conv"
    DEQUANTIZE = "Dequantize"  # fp16 -> fp32 weights (TFLite); always folded away
    DIV = "Div"
    FLATTEN = "Flatten"
    GATHER = "Gather"
    GEMM = "Gemm"
    GLOBAL_AVERAGE_POOL = "GlobalAveragePool"
    GLOBAL_MAX_POOL = "GlobalMaxPool"
    IDENTITY = "Identity"
    LEAKY_RELU = "LeakyRelu"
    LRN = "LRN"
    MATMUL = "MatMul"
    MAX_POOL = "MaxPool"
    MUL = "Mul"
    PAD = "Pad"
    PRELU = "PRelu"
    RELU = "Relu"
    RESHAPE = "Reshape"
    RESIZE = "Resize"
    SHAPE = "Shape"
    SIGMOID = "Sigmoid"
    SOFTMAX = "Softmax"
    SQUEEZE = "Squeeze"
    SUB = "Sub"
    SUM = "Sum"
    TANH = "Tanh"
    TRANSPOSE = "Transpose"
    UNSQUEEZE = "Unsqueeze"


# Ops whose output is the input's bytes under another shape: the memory plan makes them views.
VIEW_OPS = frozenset({Op.RESHAPE, Op.FLATTEN, Op.SQUEEZE, Op.UNSQUEEZE, Op.IDENTITY})


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype (a numpy dtype name) of a graph input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class OpNode:
    """One operation. `attrs` holds plain values (ints, floats, strings, lists of them).

    `name` is the source model's node name (or a generated one), kept for error messages.
    """

    op: Op
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> OpNode:
        return replace(self, **changes)


@dataclass
class OpGraph:
    """Nodes in topological order, the constants they read, and the graph's interface.

    `shapes`/`dtypes` are filled by `passes.infer_shapes` for every tensor name.
    """

    nodes: list[OpNode]
    inputs: list[TensorSpec]
    outputs: list[str]
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)

    def producers(self) -> dict[str, OpNode]:
        return {out: n for n in self.nodes for out in n.outputs}

    def consumers(self) -> dict[str, list[OpNode]]:
        users: dict[str, list[OpNode]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    users.setdefault(i, []).append(n)
        return users

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec(o, self.shapes[o], self.dtypes[o]) for o in self.outputs]

    def param_count(self) -> int:
        return int(sum(c.size for c in self.consts.values()))
