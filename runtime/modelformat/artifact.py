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


@dataclass(frozen=True)
class MemoryPlan:
    """Where each activation lives in the one arena (see `iotrt.compiler.memory`)."""

    offsets: dict[str, int]     # activation name -> byte offset in the arena
    arena_bytes: int            # peak activation bytes

    def to_dict(self) -> dict:
        return {"arena_bytes": self.arena_bytes, "offsets": self.offsets}

    @classmethod
    def from_dict(cls, d: dict) -> MemoryPlan:
        return cls({k: int(v) for k, v in d["offsets"].items()}, int(d["arena_bytes"]))


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


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.array(value["__ndarray__"], dtype=value["dtype"])
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
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactCorruptError(f"{path}: malformed artifact header: {exc}") from exc


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
        consts = {
            name: quantized.restore(blob, w) if "quant" in w else  # int8: dequantized at load
            np.frombuffer(blob, dtype=np.dtype(w["dtype"]).newbyteorder("<"),
                          count=int(np.prod(w["shape"], dtype=np.int64)),
                          offset=w["offset"]).reshape(w["shape"])
            for name, w in h["weights"].items()
        }
        gh = h["graph"]
        nodes = [OpNode(Op(n["op"]), n["name"], tuple(n["inputs"]), tuple(n["outputs"]),
                      _from_json(n["attrs"])) for n in gh["nodes"]]
        graph = OpGraph(nodes, [TensorSpec.from_dict(s) for s in gh["inputs"]], gh["outputs"],
                      consts, {k: tuple(v) for k, v in gh["shapes"].items()}, gh["dtypes"])
        payloads = {name: bytes(blob[p["offset"]:p["offset"] + p["nbytes"]])
                    for name, p in h["payloads"].items()}
        info = {name: {k: v for k, v in p.items() if k not in ("offset", "nbytes")}
                for name, p in h["payloads"].items()}
        return Artifact(
            graph=graph, memory=MemoryPlan.from_dict(h["memory"]),
            inputs=[TensorSpec.from_dict(s) for s in h["inputs"]],
            outputs=[TensorSpec.from_dict(s) for s in h["outputs"]],
            meta=_from_json(h["meta"]), source=h["source"],
            compiler_version=h["compiler_version"], stats=h.get("stats", {}),
            payloads=payloads, payload_info=info, format_version=version, path=path,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactCorruptError(f"{path}: malformed artifact header: {exc}") from exc
