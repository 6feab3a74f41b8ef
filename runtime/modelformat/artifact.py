"""The artifact file (`.iotm`): one compiled model, readable with numpy and the stdlib alone.

Layout (little-endian; the full description is in docs/compile.md):

    offset  size  field
    0       8     magic b"IOTM\\r\\n\\x1a\\n" (catches text-mode mangling, like PNG's)
    8       4     format version (uint32)
    12      4     header length H (uint32)
    16      4     CRC-32 of the header
    20      4     CRC-32 of the blob
    24      8     blob length B (uint64)
    32      32    reserved, zero
    64      H     header: UTF-8 JSON (graph, memory plan, specs, weights and payload index)
    align64 B     blob: weights and per-backend payloads, each 64-byte aligned

Weights are read as numpy views of the file's bytes (no pickle, no copy). Per-backend payloads
(e.g. an ONNX copy of the optimised graph for an onnxruntime backend) are named byte ranges of
the blob listed in the header's "payloads"; a reader ignores payloads it does not know.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iotrt.modelformat import quantized
from iotrt.modelformat.errors import ArtifactCorruptError, ArtifactError, ArtifactVersionError
from iotrt.modelformat.ir import Op, OpGraph, OpNode, TensorSpec
from iotrt.modelformat.quantized import QTensor

MAGIC = b"IOTM\r\n\x1a\n"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIIIQ32x")
ALIGN = 64
# The activation arena a header may ask for: an engine allocates it at load, so a header
# claiming more is refused as corrupt rather than tried (the device models need a few MB).
MAX_ARENA_BYTES = 1 << 30
# What a `meta` or attrs array may be: numbers, as `_jsonable` writes them (never a huge
# fixed-width string or object dtype that a 2-byte header value could make allocate GBs).
_ARRAY_KINDS = "biuf"
# The exceptions a hostile header (CRC recomputed) raises while being parsed: every one is a
# corrupt artifact, not a traceback.
_MALFORMED = (KeyError, ValueError, TypeError, IndexError, OverflowError, RecursionError,
              MemoryError, AttributeError)


@dataclass(frozen=True)
class MemoryPlan:
    """Where each activation lives in the one arena (see `iotrt.compiler.memory`)."""

    offsets: dict[str, int]     # activation name -> byte offset in the arena
    arena_bytes: int            # peak activation bytes

    def to_dict(self) -> dict:
        return {"arena_bytes": self.arena_bytes, "offsets": self.offsets}

    @classmethod
    def from_dict(cls, d: dict) -> MemoryPlan:
        arena = _count(d["arena_bytes"], "memory.arena_bytes", MAX_ARENA_BYTES)
        return cls({k: _count(v, f"memory offset of {k!r}", arena) for k, v in d["offsets"].items()},
                   arena)


@dataclass
class Artifact:
    graph: OpGraph                     # optimised graph, shapes and dtypes filled in
    memory: MemoryPlan
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    meta: dict[str, Any]               # preprocessing metadata (layout, mean/std, colour order)
    source: dict[str, Any]             # {"name", "format", "sha256"}
    compiler_version: str
    stats: dict[str, Any] = field(default_factory=dict)
    payloads: dict[str, bytes] = field(default_factory=dict)
    payload_info: dict[str, dict] = field(default_factory=dict)
    quantized: dict[str, QTensor] = field(default_factory=dict)  # const name -> int8 storage form
    format_version: int = FORMAT_VERSION
    path: Path | None = None           # the file it was read from (None until written or read)

    @property
    def consts(self) -> dict[str, np.ndarray]:
        """The weights (and other constants), by tensor name."""
        return self.graph.consts


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.name}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _count(value: Any, what: str, limit: int) -> int:
    """`value` if it is an int in 0..limit, else ValueError saying `what` (a header field)."""
    if type(value) is not int or not 0 <= value <= limit:
        raise ValueError(f"{what} is {str(value)[:40]}, not an integer in 0..{limit}")
    return value


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 32:
        raise ValueError(f"{what} is not a list of at most 32 dimensions")
    return tuple(_count(d, what, 1 << 40) for d in value)


def _numeric(name: Any, what: str) -> np.dtype:
    dtype = np.dtype(name) if isinstance(name, str) else None
    if dtype is None or dtype.kind not in _ARRAY_KINDS or dtype.itemsize > 8:
        raise ValueError(f"{what} has dtype {str(name)[:40]!r}, not a numeric one")
    return dtype


def _weight(blob: memoryview, name: str, w: dict) -> np.ndarray:
    shape = _shape(w["shape"], f"shape of weight {name!r}")
    dtype = _numeric(w["dtype"], f"weight {name!r}")
    offset = _count(w["offset"], f"offset of weight {name!r}", len(blob))
    count = math.prod(shape)
    if offset + count * dtype.itemsize > len(blob):
        raise ValueError(f"weight {name!r} ({count} x {dtype}) runs past the blob")
    if "quant" in w:  # int8: dequantized at load
        return quantized.restore(blob, w)
    return np.frombuffer(blob, dtype=dtype.newbyteorder("<"), count=count,
                         offset=offset).reshape(shape)


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.array(value["__ndarray__"], dtype=_numeric(value["dtype"], "an array"))
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _pad(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def write(art: Artifact, path: str | Path) -> int:
    """Write the artifact atomically (temp file + rename); returns the file size."""
    g = art.graph
    chunks: list[bytes] = []
    pos = 0

    def put(data: bytes) -> int:
        nonlocal pos
        off = pos
        chunks.append(data)
        chunks.append(b"\0" * (_pad(len(data)) - len(data)))
        pos += _pad(len(data))
        return off

    weights = {}
    for name, value in g.consts.items():
        if name in art.quantized:
            weights[name] = quantized.entry(art.quantized[name], put)
            continue
        arr = np.asarray(value, order="C")  # keeps 0-d scalars 0-d
        weights[name] = {"offset": put(arr.astype(arr.dtype.newbyteorder("<")).tobytes()),
                         "shape": list(arr.shape), "dtype": arr.dtype.name}
    payloads = {}
    for name, data in art.payloads.items():
        payloads[name] = {"offset": put(bytes(data)), "nbytes": len(data),
                          **art.payload_info.get(name, {})}
    header = {
        "compiler_version": art.compiler_version,
        "source": art.source,
        "inputs": [s.to_dict() for s in art.inputs],
        "outputs": [s.to_dict() for s in art.outputs],
        "meta": _jsonable(art.meta),
        "stats": _jsonable(art.stats),
        "graph": {
            "inputs": [s.to_dict() for s in g.inputs],
            "outputs": list(g.outputs),
            "nodes": [{"op": n.op.value, "name": n.name, "inputs": list(n.inputs),
                       "outputs": list(n.outputs), "attrs": _jsonable(n.attrs)} for n in g.nodes],
            "shapes": {k: list(v) for k, v in g.shapes.items()},
            "dtypes": dict(g.dtypes),
        },
        "memory": art.memory.to_dict(),
        "weights": weights,
        "payloads": payloads,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    blob = b"".join(chunks)
    prefix = _PREFIX.pack(MAGIC, art.format_version, len(head), zlib.crc32(head),
                          zlib.crc32(blob), len(blob))
    gap = _pad(_PREFIX.size + len(head)) - _PREFIX.size - len(head)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(prefix + head + b"\0" * gap)
        f.write(blob)
    tmp.replace(path)
    art.path = path
    return path.stat().st_size


def _prefix(path: Path, data: bytes) -> tuple[int, int, int, int, int]:
    """(version, header length, header CRC, blob CRC, blob length), checked."""
    if len(data) < _PREFIX.size or data[:8] != MAGIC:
        raise ArtifactCorruptError(f"{path}: not an iotrt artifact (bad magic); compile a model "
                                   "with 'iotrt compile MODEL -o OUT.iotm'")
    _, version, hlen, hcrc, bcrc, blen = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise ArtifactVersionError(
            f"{path}: artifact format version {version}, this iotrt reads version "
            f"{FORMAT_VERSION}; recompile the model with this iotrt")
    return version, hlen, hcrc, bcrc, blen


def _header(path: Path, head: bytes, hcrc: int) -> bytes:
    if zlib.crc32(head) != hcrc:
        raise ArtifactCorruptError(f"{path}: header checksum mismatch (file damaged)")
    return head


def read_meta(path: str | Path) -> dict[str, Any]:
    """Only the artifact's `meta`: reads its header, not its weights."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            prefix = f.read(_PREFIX.size)
            _, hlen, hcrc, _, _ = _prefix(path, prefix)
            head = _header(path, f.read(hlen), hcrc)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such artifact") from None
    try:
        return _from_json(json.loads(head)["meta"])
    except _MALFORMED as exc:
        raise ArtifactCorruptError(f"{path}: malformed artifact header: {_why(exc)}") from None


def read(path: str | Path) -> Artifact:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such artifact") from None
    version, hlen, hcrc, bcrc, blen = _prefix(path, data)
    blob_at = _pad(_PREFIX.size + hlen)
    if len(data) < blob_at + blen:
        raise ArtifactCorruptError(f"{path}: truncated ({len(data)} bytes, expected "
                                   f"{blob_at + blen})")
    head = _header(path, data[_PREFIX.size:_PREFIX.size + hlen], hcrc)
    blob = memoryview(data)[blob_at:blob_at + blen]
    if zlib.crc32(blob) != bcrc:
        raise ArtifactCorruptError(f"{path}: weights checksum mismatch (file damaged)")
    try:
        h = json.loads(head)
        consts = {name: _weight(blob, name, w) for name, w in h["weights"].items()}
        gh = h["graph"]
        nodes = [OpNode(Op(n["op"]), n["name"], tuple(n["inputs"]), tuple(n["outputs"]),
                      _from_json(n["attrs"])) for n in gh["nodes"]]
        shapes = {k: _shape(v, f"shape of {k!r}") for k, v in gh["shapes"].items()}
        dtypes = {k: _numeric(v, repr(k)).name for k, v in gh["dtypes"].items()}
        graph = OpGraph(nodes, [_spec(s) for s in gh["inputs"]], gh["outputs"],
                        consts, shapes, dtypes)
        payloads = {name: _payload(blob, name, p) for name, p in h["payloads"].items()}
        info = {name: {k: v for k, v in p.items() if k not in ("offset", "nbytes")}
                for name, p in h["payloads"].items()}
        memory = MemoryPlan.from_dict(h["memory"])
        for name, offset in memory.offsets.items():
            if name in shapes and name in dtypes and offset + math.prod(
                    shapes[name]) * np.dtype(dtypes[name]).itemsize > memory.arena_bytes:
                raise ValueError(f"activation {name!r} runs past the arena")
        return Artifact(
            graph=graph, memory=memory,
            inputs=[_spec(s) for s in h["inputs"]],
            outputs=[_spec(s) for s in h["outputs"]],
            meta=_from_json(h["meta"]), source=h["source"],
            compiler_version=h["compiler_version"], stats=h.get("stats", {}),
            payloads=payloads, payload_info=info, format_version=version, path=path,
        )
    except _MALFORMED as exc:
        raise ArtifactCorruptError(f"{path}: malformed artifact header: "
                                   f"{_why(exc)}") from None


def _payload(blob: memoryview, name: str, p: dict) -> bytes:
    offset = _count(p["offset"], f"offset of payload {name!r}", len(blob))
    return bytes(blob[offset:offset + _count(p["nbytes"], f"size of payload {name!r}",
                                             len(blob) - offset)])


def _spec(d: dict) -> TensorSpec:
    """An input or output: an engine allocates it, so it is bounded like the arena."""
    name = d["name"]
    shape, dtype = _shape(d["shape"], f"shape of {name!r}"), _numeric(d["dtype"], repr(name))
    if math.prod(shape) * dtype.itemsize > MAX_ARENA_BYTES:
        raise ValueError(f"{name!r} of shape {shape} takes more than {MAX_ARENA_BYTES} bytes")
    return TensorSpec(name, shape, dtype.name)


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested deeper than a header can be"
    if isinstance(exc, MemoryError):
        return "asks for more memory than there is"
    if isinstance(exc, KeyError):
        return f"no field {exc}"
    return (str(exc) or type(exc).__name__)[:200]
