"""`iotrt compile`: progress, summary, --check, and errors a user can act on."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from iotrt import models

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def iotrt(*args, check=False):
    res = subprocess.run([sys.executable, "-m", "iotrt", "compile", *map(str, args)],
                         capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def _onnx(tmp_path, nodes, inputs, inits=None, name="m.onnx"):
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_compile_blazeface_with_check(tmp_path):
    out = tmp_path / "face.iotm"
    res = iotrt(models.path(models.BLAZEFACE), "-o", out, "--check", check=True)
    text = res.stdout
    assert out.is_file()
    for expected in ("fold constants", "fuse activations", "memory plan",  # progress per pass
                     "input  input: 1x128x128x3 float32", "output regressors: 1x896x16",
                     "ops: 78", "params: 101,490", "peak activation bytes:",
                     "check against LiteRT", "classificators: max abs error", "ok"):
        assert expected in text, f"missing {expected!r} in:\n{text}"


def test_default_output_name_and_quiet(tmp_path):
    src = _onnx(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])])
    res = iotrt(src, "-q", check=True)
    assert res.stdout == ""
    assert (tmp_path / "m.iotm").is_file()


def test_check_against_onnxruntime(tmp_path):
    w = np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(np.float32)
    src = _onnx(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                [("x", [1, 2, 5, 5])], {"w": w})
    res = iotrt(src, "--check", check=True)
    assert "check against onnxruntime" in res.stdout and "y: max abs error" in res.stdout


def test_unsupported_op_is_reported_with_the_supported_list(tmp_path):
    src = _onnx(tmp_path, [helper.make_node("Erf", ["x"], ["y"], name="gelu_erf")],
                [("x", [1, 4])], name="bad.onnx")
    res = iotrt(src)
    assert res.returncode == 1
    assert "unsupported op 'Erf' (node 'gelu_erf')" in res.stderr
    assert "supported ops:" in res.stderr and "Conv" in res.stderr
    assert not (tmp_path / "bad.iotm").exists()


def test_input_shape_option(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "t",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    src = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    res = iotrt(src)
    assert res.returncode == 1 and "--input-shape x=" in res.stderr
    res = iotrt(src, "--input-shape", "x=2x3", check=True)
    assert "input  x: 2x3 float32" in res.stdout
    bad = iotrt(src, "--input-shape", "x=2xq")
    assert bad.returncode == 2 and "NAME=DIMS" in bad.stderr


def test_missing_model_file(tmp_path):
    res = iotrt(tmp_path / "nope.onnx")
    assert res.returncode == 1 and "no such model file" in res.stderr
    (tmp_path / "model.pt").write_bytes(b"torch")
    res = iotrt(tmp_path / "model.pt")
    assert res.returncode == 1 and "unknown model format '.pt'" in res.stderr
