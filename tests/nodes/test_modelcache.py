"""Compile-once model cache: keyed by content, atomic, clear errors."""

from __future__ import annotations

import sys
import types

import pytest

from iotrt import __version__
from iotrt.modelformat.artifact import Artifact, MemoryPlan, read, write
from iotrt.modelformat.ir import OpGraph
from iotrt.nodes.perception import modelcache as mc


def _artifact(out, source: bytes, meta: dict) -> None:
    """A real (empty-graph) artifact file holding the source's bytes as a payload."""
    write(Artifact(graph=OpGraph([], [], [], {}), memory=MemoryPlan({}, 0), inputs=[], outputs=[],
                   meta=meta, source={}, compiler_version="test", payloads={"src": source}), out)


@pytest.fixture
def counting_compiler(monkeypatch):
    """Replaces the compiler with one that records calls and writes the source's bytes.

    This checks the cache's bookkeeping only; the real compiler is exercised by the detector
    tests and the compiler's own suite.
    """
    calls = []

    def compile_model(src, out, input_shapes=None, target="auto", quantize=None, progress=None,
                      preprocessing=None):
        calls.append((src, preprocessing))
        if progress:
            progress("parse")
        with open(src, "rb") as f:
            _artifact(out, f.read(), {"layout": "NCHW", **preprocessing})

    fake = types.ModuleType("iotrt.compiler")
    fake.compile_model = compile_model
    monkeypatch.setitem(sys.modules, "iotrt.compiler", fake)
    return calls


def test_compiles_once_and_reuses_by_content(tmp_path, counting_compiler):
    src = tmp_path / "net.onnx"
    src.write_bytes(b"model-v1")
    cache = tmp_path / "cache"
    first = mc.compiled_artifact(src, cache)
    again = mc.compiled_artifact(src, cache)
    assert first == again and read(first).payloads["src"] == b"model-v1"
    assert len(counting_compiler) == 1
    # A copy under another name hits the same cache entry.
    copy = tmp_path / "elsewhere.onnx"
    copy.write_bytes(b"model-v1")
    mc.compiled_artifact(copy, cache)
    assert len(counting_compiler) == 1
    # New content, same name: compiled again, into a different file.
    src.write_bytes(b"model-v2")
    second = mc.compiled_artifact(src, cache)
    assert second != first and len(counting_compiler) == 2
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, second.name])


def test_the_sidecar_states_preprocessing_and_an_edit_recompiles(tmp_path, counting_compiler):
    src = tmp_path / "net.tflite"
    src.write_bytes(b"model")
    cache = tmp_path / "cache"
    art = mc.compiled_artifact(src, cache)
    assert counting_compiler == [(str(src), {})]           # no sidecar: nothing stated
    sidecar = tmp_path / "net.tflite.json"
    sidecar.write_text('{"color": "BGR", "mean": [0, 0, 0], "std": [255, 255, 255]}')
    assert mc.compiled_artifact(src, cache) == art           # same cache entry, compiled again
    stated = {"color": "BGR", "mean": [0.0] * 3, "std": [255.0] * 3}
    assert counting_compiler[1] == (str(src), stated)
    assert read(art).meta == {"layout": "NCHW", **stated}
    mc.compiled_artifact(src, cache)                         # unchanged sidecar: the cache
    assert len(counting_compiler) == 2
    sidecar.write_text('{"colour": "BGR"}')
    with pytest.raises(mc.ModelError, match=r"net\.tflite\.json: unknown preprocessing key.*'colour'"):
        mc.compiled_artifact(src, cache)
    assert len(counting_compiler) == 2


def test_an_artifact_cached_before_preprocessing_was_stated_is_still_used(tmp_path, monkeypatch):
    """Artifacts cached by an iotrt that took the shipped model's preprocessing from a table of
    known models (same file name, same meta) are used as they are: no recompile on upgrade."""
    fake = types.ModuleType("iotrt.compiler")
    fake.compile_model = lambda *a, **kw: pytest.fail("compiled again")
    monkeypatch.setitem(sys.modules, "iotrt.compiler", fake)
    cache = tmp_path / "cache"
    cache.mkdir()
    old = cache / f"3bc182eb9f33925d9e58b5c8-{__version__}.iotm"  # the key: sha256[:24]-version
    _artifact(old, b"", {"layout": "NHWC", "color": "RGB", "mean": [127.5, 127.5, 127.5],
                         "std": [127.5, 127.5, 127.5], "input_range": [-1.0, 1.0],
                         "target": "auto"})
    assert mc.compiled_artifact(mc.shipped_model(), cache) == old


def test_a_failed_compile_leaves_no_artifact(tmp_path, monkeypatch):
    def broken(src, out, **kw):
        with open(out, "wb") as f:
            f.write(b"half")
        raise RuntimeError("unsupported op FOO")

    fake = types.ModuleType("iotrt.compiler")
    fake.compile_model = broken
    monkeypatch.setitem(sys.modules, "iotrt.compiler", fake)
    src = tmp_path / "net.tflite"
    src.write_bytes(b"x")
    with pytest.raises(RuntimeError, match="FOO"):
        mc.compiled_artifact(src, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_artifacts_are_used_as_they_are_and_unknown_types_refused(tmp_path):
    art = tmp_path / "face.iotm"
    art.write_bytes(b"IOTM")
    assert mc.compiled_artifact(art, tmp_path / "cache") == art
    weird = tmp_path / "face.pb"
    weird.write_bytes(b"")
    with pytest.raises(mc.ModelError, match="unknown model type '.pb'"):
        mc.compiled_artifact(weird, tmp_path / "cache")


def test_resolve_relative_to_the_graph_folder_and_missing_files(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    assert mc.resolve("m.onnx", tmp_path) == tmp_path / "m.onnx"
    with pytest.raises(mc.ModelError, match="not found"):
        mc.resolve("nope.onnx", tmp_path)
