"""The artifact's "onnx" payload: its format, written by the compiler and read by the engine.

The payload is a one-line JSON header after `MAGIC` (the opset, the artifact constants the graph
reads as initializers, and their ONNX names where those differ), then a serialized ONNX
ModelProto *without* its weights (`iotrt.compiler.onnx_export` writes it). On the device
`onnx_model_bytes` completes it from the artifact's own (possibly int8) weight store, encoding
them as TensorProto initializers with a few lines of protobuf wire format (no `onnx` needed):
a serialized protobuf message followed by another one parses as their merge.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from iotrt.modelformat import kernels
from iotrt.modelformat.errors import BackendUnavailable

PAYLOAD = "onnx"
MAGIC = b"IOTRT-ONNX-PAYLOAD 1\n"

# numpy dtype -> onnx.TensorProto.DataType (the numeric ones an IR tensor can have): the
# inverse of the table Cast's kernel reads
ONNX_DTYPES = {np.dtype(t): code for code, t in kernels.ONNX_DTYPES.items()}


def pack(model: bytes, opset: int, initializers: list[str], renamed: dict[str, str]) -> bytes:
    """The payload as stored in the artifact: a one-line JSON header, then the ONNX bytes.

    `initializers`: artifact constants the graph reads; `renamed`: constant -> the initializer
    name it has in the ONNX graph, where that differs (a graph output that is a constant).
    """
    header = json.dumps({"opset": opset, "initializers": initializers, "renamed": renamed})
    return MAGIC + header.encode() + b"\n" + model


# ---- protobuf wire format: the field encodings the exporter and the initializers need --------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # a negative int64 is written as its two's complement (ten bytes)
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def float_field(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def tensor_proto(name: str | None, value: np.ndarray) -> bytes:
    """A serialized TensorProto: dims, data_type, name (when given), raw_data (little-endian)."""
    value = np.asarray(value)  # tobytes() below writes C order whatever the strides
    dtype = ONNX_DTYPES.get(value.dtype)
    if dtype is None:
        raise BackendUnavailable(f"constant '{name}' has dtype {value.dtype}, which has no ONNX type")
    little = value.astype(value.dtype.newbyteorder("<"), copy=False)
    tensor = b"".join(int_field(1, d) for d in value.shape)  # TensorProto.dims = 1
    tensor += int_field(2, dtype)  # data_type = 2
    if name is not None:
        tensor += bytes_field(8, name.encode())  # name = 8
    return tensor + bytes_field(9, little.tobytes())  # raw_data = 9


def initializer_bytes(name: str, value: np.ndarray) -> bytes:
    """A serialized ModelProto whose graph holds one initializer: appended to a serialized
    model, protobuf's merge rule adds it to that model's graph."""
    return bytes_field(7, bytes_field(5, tensor_proto(name, value)))  # ModelProto.graph, .initializer


def unpack(payload: bytes) -> tuple[dict, bytes]:
    """(header, ONNX model bytes without weights) of an "onnx" payload."""
    if not payload.startswith(MAGIC):
        raise BackendUnavailable("the artifact's onnx payload is not in a format this iotrt reads")
    end = payload.index(b"\n", len(MAGIC))
    return json.loads(payload[len(MAGIC) : end]), payload[end + 1 :]


def onnx_model_bytes(payload: bytes, consts: dict[str, np.ndarray]) -> bytes:
    """The complete ONNX model: the payload's graph plus its initializers from `consts`."""
    header, model = unpack(payload)
    missing = [n for n in header["initializers"] if n not in consts]
    if missing:
        raise BackendUnavailable(f"the onnx payload reads constants the artifact lacks: {missing[:5]}")
    renamed = header.get("renamed", {})
    parts = [model] + [initializer_bytes(renamed.get(n, n), consts[n]) for n in header["initializers"]]
    return b"".join(parts)
