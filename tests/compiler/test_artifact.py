"""The artifact file: round trip, payloads, and clear errors for damaged or foreign files."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

from iotrt import models
from iotrt.compiler import compile_model
from iotrt.engine import ArtifactCorruptError, ArtifactError, ArtifactVersionError, InputError, load
from iotrt.modelformat import artifact


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "face.iotm"
    compile_model(models.path(models.BLAZEFACE), out)
    return out


def test_round_trip_keeps_everything(face, tmp_path):
    art = artifact.read(face)
    art.payloads = {"onnx": b"\x08\x07graph-bytes"}  # replaces the payloads compile embedded
    art.payload_info["onnx"] = {"opset": 13}
    copy = tmp_path / "copy.iotm"
    artifact.write(art, copy)
    again = artifact.read(copy)
    assert again.payloads == {"onnx": b"\x08\x07graph-bytes"}
    assert again.payload_info == {"onnx": {"opset": 13}}
    assert again.source == art.source and len(again.source["sha256"]) == 64
    assert again.compiler_version == art.compiler_version
    assert again.memory == art.memory
    assert [n.op for n in again.graph.nodes] == [n.op for n in art.graph.nodes]
    for name, value in art.graph.consts.items():
        np.testing.assert_array_equal(again.graph.consts[name], value)


def test_artifact_loads_with_numpy_alone(face):
    """A device without onnx / flatbuffers / LiteRT can load and run an artifact, and loading
    one never imports the compiler (its passes, front ends and quantizer are not in a node's
    memory)."""
    code = (
        "import sys\n"
        "for blocked in ('onnx', 'flatbuffers', 'ai_edge_litert', 'onnxruntime', 'cv2',\n"
        "                'iotrt.compiler'):\n"
        "    sys.modules[blocked] = None\n"
        "import numpy as np\n"
        "from iotrt.engine import load\n"
        f"m = load({str(face)!r}, backend='numpy')\n"
        "out = m.run({'input': np.zeros((1, 128, 128, 3), np.float32)})\n"
        "print(sorted(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "classificators" in res.stdout


def test_compiling_never_imports_the_engine(tmp_path):
    """The compiler and the engine share only the model-format layer below them."""
    out = tmp_path / "face.iotm"
    code = (
        "import sys\n"
        "sys.modules['iotrt.engine'] = None\n"
        "from iotrt import models\n"
        "from iotrt.compiler import compile_model\n"
        f"compile_model(models.path(models.BLAZEFACE), {str(out)!r})\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert artifact.read(out).graph.nodes


def test_truncated_artifact(face, tmp_path):
    data = face.read_bytes()
    bad = tmp_path / "cut.iotm"
    bad.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ArtifactCorruptError, match="truncated"):
        load(bad)


def test_flipped_weight_byte_is_detected(face, tmp_path):
    data = bytearray(face.read_bytes())
    data[-200] ^= 0xFF
    bad = tmp_path / "flip.iotm"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match="checksum"):
        load(bad)


def test_damaged_header_is_detected(face, tmp_path):
    data = bytearray(face.read_bytes())
    data[100] ^= 0x01
    bad = tmp_path / "head.iotm"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match="header"):
        load(bad)


def test_not_an_artifact(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07" + b"\0" * 200)
    with pytest.raises(ArtifactCorruptError, match="not an iotrt artifact"):
        load(bad)
    with pytest.raises(ArtifactError, match="no such artifact"):
        load(tmp_path / "missing.iotm")


def test_format_version_mismatch(face, tmp_path):
    data = bytearray(face.read_bytes())
    struct.pack_into("<I", data, 8, artifact.FORMAT_VERSION + 1)
    bad = tmp_path / "future.iotm"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactVersionError, match="recompile"):
        load(bad)


def test_wrong_input_shape_dtype_or_name(face):
    model = load(face)
    good = np.zeros((1, 128, 128, 3), np.float32)
    with pytest.raises(InputError, match=r"shape \(1, 3, 128, 128\).*\(1, 128, 128, 3\)"):
        model.run({"input": good.transpose(0, 3, 1, 2)})
    with pytest.raises(InputError, match="dtype float64, expected float32"):
        model.run({"input": good.astype(np.float64)})
    with pytest.raises(InputError, match="missing input 'input'"):
        model.run({})
    with pytest.raises(InputError, match="unknown input"):
        model.run({"input": good, "image": good})
    model.run({"input": good})  # and the model still works after the errors


def test_outputs_are_not_overwritten_by_the_next_run(face):
    model = load(face)
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    first = model.run({"input": a})
    kept = {k: v.copy() for k, v in first.items()}
    model.run({"input": b})
    for k in first:
        np.testing.assert_array_equal(first[k], kept[k])
    np.testing.assert_array_equal(model.run({"input": a})["regressors"], kept["regressors"])


def _rewrite_header(src, dst, edit) -> None:
    """Copy an artifact with its JSON header changed by `edit(header) -> header or bytes`,
    the header CRC recomputed: what a crafted file looks like to the reader."""
    import json
    import zlib

    data = src.read_bytes()
    _, version, hlen, _, bcrc, blen = artifact._PREFIX.unpack_from(data)
    blob = data[artifact._pad(artifact._PREFIX.size + hlen):][:blen]
    head = edit(json.loads(data[artifact._PREFIX.size:artifact._PREFIX.size + hlen]))
    head = head if isinstance(head, bytes) else json.dumps(head).encode()
    prefix = artifact._PREFIX.pack(artifact.MAGIC, version, len(head), zlib.crc32(head), bcrc,
                                   blen)
    gap = artifact._pad(artifact._PREFIX.size + len(head)) - artifact._PREFIX.size - len(head)
    dst.write_bytes(prefix + head + b"\0" * gap + blob)


@pytest.fixture(scope="module")
def face_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "face8.iotm"
    compile_model(models.path(models.BLAZEFACE), out, quantize="int8")
    return out


def _set(path: str, value):
    def edit(h):
        *keys, last = path.split(".")
        node = h
        for k in keys:
            node = node[k] if k != "*" else next(iter(node.values()))
        node[last] = value
        return h
    return edit


def _first_quant(value):
    def edit(h):
        next(w for w in h["weights"].values() if "quant" in w)["quant"]["axis"] = value
        return h
    return edit


HOSTILE_HEADERS = {
    "arena Infinity": _set("memory.arena_bytes", float("inf")),
    "arena 10**15": _set("memory.arena_bytes", 10**15),
    "arena negative": _set("memory.arena_bytes", -1),
    "deep header": lambda h: b"[" * 100_000,
    "string array in meta": _set("meta", {"__ndarray__": 0, "dtype": "S1500000000"}),
    "object array in meta": _set("meta", {"__ndarray__": [1], "dtype": "O"}),
    "NaN graph shape": lambda h: {**h, "graph": {**h["graph"], "shapes": {
        k: [float("nan")] for k in h["graph"]["shapes"]}}},
    "NaN input shape": lambda h: {**h, "inputs": [{**s, "shape": [float("nan")]}
                                                  for s in h["inputs"]]},
    "input of 2^60 elements": lambda h: {**h, "inputs": [{**s, "shape": [1 << 20] * 3}
                                                       for s in h["inputs"]]},
    "output of 2^60 elements": lambda h: {**h, "outputs": [{**s, "shape": [1 << 20] * 3}
                                                         for s in h["outputs"]]},
    "weight offset negative": _set("weights.*.offset", -64),
    "weight offset past the blob": _set("weights.*.offset", 1 << 40),
    "weight shape huge": _set("weights.*.shape", [1 << 40] * 30),
    "weight dtype text": _set("weights.*.dtype", "U100"),
    "activation offset past the arena": lambda h: {**h, "memory": {**h["memory"], "offsets": {
        k: h["memory"]["arena_bytes"] for k in h["memory"]["offsets"]}}},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_a_crafted_header_is_a_corrupt_artifact(face, tmp_path, case):
    """A header with a valid CRC but hostile numbers is ArtifactCorruptError, never another
    exception or a huge allocation (at read or at engine load)."""
    bad = tmp_path / "crafted.iotm"
    _rewrite_header(face, bad, HOSTILE_HEADERS[case])
    with pytest.raises(ArtifactCorruptError, match="crafted.iotm: malformed artifact header"):
        artifact.read(bad)
    with pytest.raises(ArtifactCorruptError):
        load(bad)


@pytest.mark.parametrize("axis", [99, -1, 1e999, "0"])
def test_a_crafted_quantization_axis_is_a_corrupt_artifact(face_int8, tmp_path, axis):
    bad = tmp_path / "axis.iotm"
    _rewrite_header(face_int8, bad, _first_quant(axis))
    with pytest.raises(ArtifactCorruptError, match="quantization axis"):
        artifact.read(bad)


def test_a_crafted_meta_is_refused_by_read_meta(face, tmp_path):
    for case in ("deep header", "string array in meta"):
        bad = tmp_path / "meta.iotm"
        _rewrite_header(face, bad, HOSTILE_HEADERS[case])
        with pytest.raises(ArtifactCorruptError, match="malformed artifact header"):
            artifact.read_meta(bad)


def test_a_rewritten_header_unchanged_still_loads(face, tmp_path):
    """The helper above is honest: with no change the copy is a working artifact."""
    copy = tmp_path / "same.iotm"
    _rewrite_header(face, copy, lambda h: h)
    assert artifact.read(copy).memory == artifact.read(face).memory
