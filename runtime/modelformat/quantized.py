"""How an artifact stores int8 weights, and how a reader turns them back into float32.

A quantized weight is int8 plus one float32 scale per output channel (value = q * scale,
broadcast along `axis`); `iotrt.compiler.quantize` decides which weights and computes them. The
engine dequantizes once at load, so inference runs the float kernels.

numpy only: this module ships to the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iotrt import errors

STORED_SCHEME = "int8-per-channel"


class QuantizeError(errors.ModelError, ValueError):
    """Quantization was asked for something it cannot do (unknown scheme, bad axis)."""


@dataclass(frozen=True)
class QTensor:
    """An int8 tensor with one scale per slice along `axis`: value = q * scale (broadcast)."""

    q: np.ndarray  # int8, the weight's shape
    scale: np.ndarray  # float32, shape (q.shape[axis],)
    axis: int

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scale.nbytes


def dequantize(t: QTensor) -> np.ndarray:
    return (t.q.astype(np.float32) * along(t.scale, t.axis, t.q.ndim)).astype(np.float32)


def along(scale: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """`scale` shaped to broadcast along `axis` of an `ndim`-dimensional tensor."""
    shape = [1] * ndim
    shape[axis] = scale.size
    return scale.reshape(shape)


def entry(t: QTensor, put) -> dict:
    """The artifact's weight-index entry for `t`; `put(bytes) -> offset` appends to the blob."""
    return {
        "offset": put(t.q.tobytes()),
        "shape": list(t.q.shape),
        "dtype": "int8",
        "quant": {
            "scheme": STORED_SCHEME,
            "axis": t.axis,
            "scales": put(t.scale.astype("<f4").tobytes()),
        },
    }


def restore(blob, w: dict) -> np.ndarray:
    """The float32 weight for a weight-index entry written by `entry` (dequantized at load)."""
    quant = w["quant"]
    if quant.get("scheme") != STORED_SCHEME:
        raise QuantizeError(f"unknown weight encoding {quant.get('scheme')!r}")
    shape = tuple(w["shape"])
    count = int(np.prod(shape, dtype=np.int64))
    q = np.frombuffer(blob, np.int8, count=count, offset=w["offset"]).reshape(shape)
    axis = quant["axis"]
    if type(axis) is not int or not 0 <= axis < len(shape):
        raise QuantizeError(f"quantization axis {str(axis)[:40]} is not one of the weight's "
                            f"{len(shape)} axes")
    scale = np.frombuffer(blob, "<f4", count=shape[axis], offset=quant["scales"])
    return dequantize(QTensor(q, scale.astype(np.float32), axis))
