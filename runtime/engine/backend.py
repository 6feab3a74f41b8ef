"""What every engine backend provides, and the ONNX payload the framework backends run.

A backend is one module `iotrt.engine.<name>`, registered in `iotrt.engine.BACKENDS`, with

    load(artifact, threads: int) -> model       # raises BackendUnavailable, saying why
    model.backend: str; model.inputs, model.outputs: list[TensorSpec]; model.meta: dict
    model.run(feeds: dict[str, ndarray]) -> dict[str, ndarray]   # fresh arrays

`threads` is fixed by the caller (the supervisor sizes every node's pools); a backend never
uses "all cores". `FrameworkModel` below is the shared shell of the backends that hand the
graph to another framework (input checking, output shapes).

The opencv and onnxruntime backends run the artifact's payload "onnx" (see
`iotrt.compiler.onnx_export`): the graph without its weights, plus the names of the constants it
reads. `onnx_model_bytes` completes it on the device from the artifact's weights, encoding them
as ONNX TensorProto initializers with a few lines of protobuf wire format (no `onnx` needed).
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from iotrt.config import ENV_THREADS

PAYLOAD = "onnx"
MAGIC = b"IOTRT-ONNX-PAYLOAD 1\n"

# numpy dtype -> onnx.TensorProto.DataType (the numeric ones an IR tensor can have)
ONNX_DTYPES = {
    np.dtype("float32"): 1, np.dtype("uint8"): 2, np.dtype("int8"): 3, np.dtype("uint16"): 4,
    np.dtype("int16"): 5, np.dtype("int32"): 6, np.dtype("int64"): 7, np.dtype("bool"): 9,
    np.dtype("float16"): 10, np.dtype("float64"): 11, np.dtype("uint32"): 12, np.dtype("uint64"): 13,
}


class BackendUnavailable(RuntimeError):
    """A backend is unknown or cannot run here (package missing, payload absent, graph unsupported)."""


def default_threads() -> int:
    """Thread budget when the caller gives none: $IOTRT_THREADS, else $OMP_NUM_THREADS, else 1."""
    for var in (ENV_THREADS, "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def limit_blas_threads(threads: int) -> None:
    """Fix the size of numpy's BLAS thread pool for this process.

    OpenBLAS otherwise starts one busy-waiting thread per core: with other nodes (or other
    programs) on those cores, BlazeFace's many small GEMMs were measured 20x slower with 2 BLAS
    threads than with 1 on this 2-core machine. The environment (OPENBLAS_NUM_THREADS, set by
    the supervisor before the process starts) does the same; this covers every other caller.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


class FrameworkModel:
    """A loaded model whose graph another framework runs; subclasses implement `_run`."""

    backend = "?"

    def __init__(self, artifact) -> None:
        self.artifact = artifact
        self.inputs = list(artifact.inputs)
        self.outputs = list(artifact.outputs)
        self.meta = artifact.meta
        # what a well-formed call looks like, checked cheaply on every run (a few us matter
        # next to a 1 ms model: more Python per run is more chances to be preempted under load)
        self._expect = [(s.name, tuple(s.shape), np.dtype(s.dtype)) for s in self.inputs]
        self._out_specs = [(s.name, tuple(s.shape), np.dtype(s.dtype), math.prod(s.shape)) for s in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(feeds) != len(self._expect) or not all(
                type(x := feeds.get(name)) is np.ndarray and x.shape == shape and x.dtype == dtype
                for name, shape, dtype in self._expect):
            check_feeds(self.inputs, feeds)  # raises, naming what is wrong (or accepts a list)
        values = self._run({name: np.ascontiguousarray(feeds[name]) for name, _, _ in self._expect})
        out = {}
        for (name, shape, dtype, size), value in zip(self._out_specs, values):
            value = np.asarray(value)
            if value.shape != shape or value.dtype != dtype:
                if value.size != size:
                    from iotrt.engine.numpy import EngineError

                    raise EngineError(
                        f"backend {self.backend!r} returned shape {value.shape} for output "
                        f"'{name}', the model's is {shape}; use backend 'numpy'"
                    )
                # Frameworks may drop or add unit axes (cv2.dnn flattens some outputs): the
                # artifact's output specs are the contract.
                value = value.reshape(shape).astype(dtype, copy=False)
            out[name] = value
        return out

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


Refusal = tuple  # (predicate(node, graph) -> bool, reason): a construct a framework gets wrong


def refuse_known_bad(artifact, backend: str, refusals: list[Refusal]) -> None:
    """BackendUnavailable if the graph has a construct `backend` is known to compute wrongly.

    Each refusal stands for an ONNX conformance case where the framework, given our exported
    graph, disagrees with the ONNX reference (tests/engine/test_backends_conformance.py): a
    backend must either answer right or refuse to load, never answer wrong.
    """
    graph = artifact.graph
    for node in graph.nodes:
        for applies, reason in refusals:
            if applies(node, graph):
                raise BackendUnavailable(
                    f"backend {backend!r} refuses {node.op.value} node '{node.name}': {reason}"
                )


def check_feeds(specs, feeds: dict[str, np.ndarray]) -> None:
    """Raise InputError unless `feeds` has exactly the inputs `specs` describe."""
    from iotrt.engine.numpy import InputError

    names = [s.name for s in specs]
    unknown = sorted(set(feeds) - set(names))
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; the model's inputs are {names}")
    for spec in specs:
        if spec.name not in feeds:
            raise InputError(f"missing input '{spec.name}' {spec.shape} {spec.dtype}")
        x = feeds[spec.name]
        if tuple(np.shape(x)) != tuple(spec.shape):
            raise InputError(f"input '{spec.name}': shape {tuple(np.shape(x))}, the model was "
                             f"compiled for {tuple(spec.shape)} (recompile with --input-shape)")
        if np.asarray(x).dtype != np.dtype(spec.dtype):
            raise InputError(f"input '{spec.name}': dtype {np.asarray(x).dtype}, expected "
                             f"{spec.dtype} (convert with x.astype(np.{spec.dtype}))")


# ---- protobuf wire format: just enough to write TensorProto initializers ---------------------


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


def artifact_onnx(artifact, backend: str) -> bytes:
    """The complete ONNX model for `artifact`, or BackendUnavailable saying how to get one."""
    payload = artifact.payloads.get(PAYLOAD)
    if payload is None:
        source = artifact.source.get("name", "the model")
        raise BackendUnavailable(
            f"backend {backend!r} runs the artifact's ONNX payload, and this artifact of {source} has none: "
            f"its graph cannot be written as ONNX (the compiler's progress output says why) or an older "
            f"iotrt compiled it without the 'onnx' package; compile it again, or use backend 'numpy'"
        )
    return onnx_model_bytes(payload, artifact.graph.consts)
