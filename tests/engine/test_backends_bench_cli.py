"""`iotrt bench`: runs every backend on an artifact or a source model and says what it measured."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from iotrt import models
from iotrt.compiler import compile_model

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "face.iotm"
    compile_model(models.path(models.BLAZEFACE), out)
    return out


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "iotrt", "bench", *args],
        capture_output=True, text=True, timeout=120,
    )


def test_bench_artifact_reports_every_backend(artifact, tmp_path):
    out = tmp_path / "figures.json"
    proc = bench(str(artifact), "--seconds", "0", "--min-rounds", "3", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    for backend in ("numpy", "opencv", "onnxruntime", "litert"):
        assert f"\n{backend} " in table
    assert "3 interleaved rounds" in table and "fastest here:" in table
    assert "timing: round" in proc.stderr  # progress goes to stderr, the table to stdout
    figures = json.loads(out.read_text())
    assert set(figures["backends"]) == {"numpy", "opencv", "onnxruntime", "litert"}
    for f in figures["backends"].values():
        assert 0 < f["min_ms"] <= f["p50_ms"] <= f["p90_ms"]
        assert f["max_scaled_diff_vs_numpy"] <= 1e-3


def test_bench_compiles_a_source_model_first():
    proc = bench(str(models.path(models.BLAZEFACE)), "--backends", "onnxruntime",
                 "--seconds", "0", "--min-rounds", "2")
    assert proc.returncode == 0, proc.stderr
    assert "compiling" in proc.stderr
    assert "\nonnxruntime " in proc.stdout and "\nnumpy " in proc.stdout  # numpy: the reference


def test_bench_rejects_bad_arguments_clearly(artifact, tmp_path):
    proc = bench(str(tmp_path / "missing.iotm"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = bench(str(artifact), "--backends", "numpy,tensorrt")
    assert proc.returncode == 2 and "tensorrt" in proc.stderr


def test_bench_input_shape_uses_compiles_syntax(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    proc = bench(str(path), "--input-shape", "x=2x4", "--backends", "numpy", "--seconds", "0", "--min-rounds", "2")
    assert proc.returncode == 0, proc.stderr
    assert "input x 2x4 float32" in proc.stdout
    proc = bench(str(path), "--input-shape", "x=two")
    assert proc.returncode != 0 and "NAME=DIMS" in proc.stderr
