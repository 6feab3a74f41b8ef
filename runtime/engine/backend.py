"""What every engine backend is, and the ONNX payload the framework backends run.

A backend module (`iotrt.engine.<name>`, registered in `iotrt.engine.BACKENDS`) provides

    NAME: str
    unavailable() -> str | None          # why it cannot run on this device, None if it can
    a class built as Cls(artifact, threads) with .name and
        .run(feeds: dict[str, ndarray]) -> dict[str, ndarray]   # inputs already validated

`threads` is fixed by the caller (the supervisor sizes every node's pools); a backend never
uses "all cores". Construction raises `BackendUnavailable` with a reason a user can act on.

The opencv and onnxruntime backends run the artifact's payload "onnx" (see
`iotrt.compiler.onnx_export`): the graph without its weights, plus the names of the constants it
reads. `onnx_model_bytes` completes it on the device from the artifact's weights, encoding them
as ONNX TensorProto initializers with a few lines of protobuf wire format (no `onnx` needed).
"""

from __future__ import annotations

import json
from typing import Protocol

import numpy as np

PAYLOAD = "onnx"
MAGIC = b"IOTRT-ONNX-PAYLOAD 1\n"

# numpy dtype -> onnx.TensorProto.DataType (the subset an IR constant can have)
ONNX_DTYPES = {
    np.dtype("float32"): 1, np.dtype("uint8"): 2, np.dtype("int8"): 3, np.dtype("int32"): 6,
    np.dtype("int64"): 7, np.dtype("bool"): 9, np.dtype("float16"): 10, np.dtype("float64"): 11,
}  # fmt: skip


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (package missing, payload absent, graph unsupported)."""


class Backend(Protocol):
    name: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# ---- protobuf wire format: just enough to write TensorProto initializers ---------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def initializer_bytes(name: str, value: np.ndarray) -> bytes:
    """A serialized ModelProto whose graph holds one initializer: appended to a serialized
    model, protobuf's merge rule adds it to that model's graph."""
    value = np.asarray(value)  # tobytes() below writes C order whatever the strides
    dtype = ONNX_DTYPES.get(value.dtype)
    if dtype is None:
        raise BackendUnavailable(f"constant '{name}' has dtype {value.dtype}, which has no ONNX type")
    little = value.astype(value.dtype.newbyteorder("<"), copy=False)
    tensor = b"".join(_int_field(1, d) for d in value.shape)  # TensorProto.dims = 1
    tensor += _int_field(2, dtype)  # data_type = 2
    tensor += _bytes_field(8, name.encode())  # name = 8
    tensor += _bytes_field(9, little.tobytes())  # raw_data = 9
    return _bytes_field(7, _bytes_field(5, tensor))  # ModelProto.graph = 7, GraphProto.initializer = 5


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
    parts = [model] + [initializer_bytes(n, consts[n]) for n in header["initializers"]]
    return b"".join(parts)


def artifact_onnx(artifact, backend: str) -> bytes:
    """The complete ONNX model for `artifact`, or BackendUnavailable saying how to get one."""
    payload = artifact.payloads.get(PAYLOAD)
    if payload is None:
        raise BackendUnavailable(
            f"backend {backend!r} runs the artifact's ONNX payload, and {artifact.path} has none: it "
            f"was compiled where the 'onnx' package is missing (pip install 'iotrt[compiler]' on the "
            f"compiling machine and compile again), or use backend 'numpy'"
        )
    return onnx_model_bytes(payload, artifact.consts)
