"""docs/compile.md stays true: its Python example runs, and its op lists match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iotrt.compiler.frontends import tflite

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "compile.md"


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    code = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(code) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(code[0], str(GUIDE), "exec"), {})
    assert "['classificators', 'regressors']" in capsys.readouterr().out
    assert (tmp_path / "face.iotm").is_file()


def _listed(heading: str) -> set[str]:
    text = GUIDE.read_text()
    para = text[text.index(heading) + len(heading):].split("\n\n")[0]
    return set(re.findall(r"\b([A-Z][A-Za-z0-9_]+)\b(?: \(|,|\.|$)", para, re.M))


def test_documented_onnx_ops_are_the_supported_ones():
    onnx_frontend = pytest.importorskip("iotrt.compiler.frontends.onnx")
    assert _listed("ONNX: ") == set(onnx_frontend.SUPPORTED)


def test_documented_tflite_ops_are_the_supported_ones():
    assert _listed("TFLite: ") == set(tflite.HANDLERS)
