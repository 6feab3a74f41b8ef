"""Compile-once model cache: keyed by content, atomic, clear errors."""

from __future__ import annotations

import sys
import types

import pytest

from iotrt.nodes.perception import modelcache as mc


@pytest.fixture
def counting_compiler(monkeypatch):
    """Replaces the compiler with one that records calls and writes the source's bytes.

    This checks the cache's bookkeeping only; the real compiler is exercised by the detector
    tests and the compiler's own suite.
    """
    calls = []

    def compile_model(src, out, input_shapes=None, target="auto", quantize=None, progress=None):
        calls.append(src)
        if progress:
            progress("parse")
        with open(src, "rb") as f, open(out, "wb") as g:
            g.write(b"IOTM" + f.read())

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
    assert first == again and first.read_bytes() == b"IOTMmodel-v1"
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
