"""`--quantize int8`: per-channel symmetric int8 weights.

Each weight tensor of a Conv, Gemm or MatMul is stored as int8 plus one float32 scale per
output channel: scale_c = max|W_c| / 127, q = round(W / scale_c) in [-127, 127] (no zero point:
weights are centred on zero, and a symmetric range keeps -q exact). Biases, batch-norm leftovers
and shape constants stay float: they are small, and a bias error adds straight to the output.

This is a *storage* format: the artifact is about 4x smaller (what a device downloads and keeps
on flash), and the engine dequantizes to float32 once at load, so inference runs the float
kernels at full speed and the only change to the outputs is the rounding of the weights.
Activations are not quantized (that would need calibration data and int8 kernels numpy lacks).

The stored form and `dequantize` (which runs on the device) are `iotrt.modelformat.quantized`.
"""

from __future__ import annotations

import numpy as np

from iotrt.modelformat.ir import Op
from iotrt.modelformat.quantized import QTensor, QuantizeError, along

QMAX = 127
SCHEMES = ("int8",)
# Smaller constants are left float: per-channel scales would outweigh what int8 saves.
MIN_ELEMENTS = 64


def quantize(w: np.ndarray, axis: int = 0) -> QTensor:
    """Per-channel symmetric int8 quantization of float tensor `w` along `axis`."""
    w = np.asarray(w, np.float32)
    if w.ndim == 0 or not -w.ndim <= axis < w.ndim:
        raise QuantizeError(f"cannot quantize a tensor of shape {w.shape} along axis {axis}")
    axis %= w.ndim
    others = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=others) if others else np.abs(w)
    # An all-zero channel quantizes to zeros with any scale; 1 keeps the division finite.
    scale = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / along(scale, axis, w.ndim)), -QMAX, QMAX).astype(np.int8)
    return QTensor(q, scale, axis)


def weight_axes(graph) -> dict[str, int]:
    """Constant name -> output-channel axis, for every weight `--quantize int8` applies to.

    A constant that is read anywhere other than as a weight (e.g. also as a bias) stays float.
    """
    axes: dict[str, int] = {}
    other_uses: set[str] = set()
    for node in graph.nodes:
        for pos, name in enumerate(node.inputs):
            if name not in graph.consts:
                continue
            axis = None
            if pos == 1 and node.op == Op.CONV:
                axis = 0  # (out, in/groups, kh, kw)
            elif pos == 1 and node.op == Op.GEMM:
                axis = 0 if node.attrs.get("transB", 0) else 1  # B is (N, K) or (K, N)
            elif pos == 1 and node.op == Op.MATMUL and graph.consts[name].ndim >= 2:
                axis = graph.consts[name].ndim - 1
            if axis is None:
                other_uses.add(name)
            else:
                axes[name] = axis
    return {
        name: axis
        for name, axis in axes.items()
        if name not in other_uses
        and graph.consts[name].dtype == np.float32
        and graph.consts[name].size >= MIN_ELEMENTS
    }


def quantize_graph(graph, scheme: str = "int8") -> dict[str, QTensor]:
    """The int8 form of every eligible weight of `graph` (the graph itself is left unchanged)."""
    if scheme not in SCHEMES:
        raise QuantizeError(f"unknown quantization {scheme!r}; supported: {', '.join(SCHEMES)}")
    return {name: quantize(graph.consts[name], axis) for name, axis in weight_axes(graph).items()}
