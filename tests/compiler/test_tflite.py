"""TFLite front end: BlazeFace compiled from the vendored .tflite against LiteRT on photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from iotrt import models
from iotrt.compiler import CompileError, compile_model
from iotrt.compiler.frontends import tflite
from iotrt.engine import load

Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter
PHOTOS = {"astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee,
          "immunohistochemistry": data.immunohistochemistry}


@pytest.fixture(scope="module")
def blazeface(tmp_path_factory):
    out = tmp_path_factory.mktemp("bf") / "face.iotm"
    report = compile_model(models.path(models.BLAZEFACE), out)
    return report, load(out, backend="numpy")


@pytest.fixture(scope="module")
def litert():
    interp = Interpreter(str(models.path(models.BLAZEFACE)))
    interp.allocate_tensors()
    return interp


def _preprocess(image: np.ndarray) -> np.ndarray:
    return (cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32)
            / 127.5 - 1.0)[None]


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_blazeface_matches_litert_on_photos(blazeface, litert, photo):
    _, model = blazeface
    x = _preprocess(PHOTOS[photo]())
    litert.set_tensor(litert.get_input_details()[0]["index"], x)
    litert.invoke()
    ref = {d["name"]: litert.get_tensor(d["index"]) for d in litert.get_output_details()}
    out = model.run({"input": x})
    assert set(out) == {"regressors", "classificators"}
    for name, expected in ref.items():
        assert out[name].shape == expected.shape
        err = np.abs(out[name] - expected).max()
        assert err <= 1e-3, f"{name}: max abs error {err}"


def test_blazeface_finds_the_astronauts_face(blazeface):
    """The strongest anchor on the astronaut photo is a confident face (score > 0.9)."""
    _, model = blazeface
    scores = model.run({"input": _preprocess(data.astronaut())})["classificators"]
    assert 1 / (1 + np.exp(-scores.max())) > 0.9


def test_blazeface_interface_and_metadata(blazeface):
    report, model = blazeface
    assert [(s.name, s.shape, s.dtype) for s in model.inputs] == [("input", (1, 128, 128, 3), "float32")]
    assert [(s.name, s.shape) for s in model.outputs] == [("regressors", (1, 896, 16)),
                                                          ("classificators", (1, 896, 1))]
    assert model.meta == {"layout": "NHWC", "target": "auto"}  # no preprocessing was stated
    # fp16 weights were dequantized at compile time, and the layout transposes of the weights
    # folded: no Dequantize remains and only boundary / reshape transposes are left
    assert "Dequantize" not in report.op_counts
    assert report.op_counts["Conv"] == 37 and report.op_counts["Transpose"] == 5
    # every RELU of the source was fused into the Conv or Add before it
    assert "Relu" not in report.op_counts
    assert report.params == 101_490


def test_builtin_op_names_match_the_schema():
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    for code, name in enumerate(tflite.BUILTIN_NAMES):
        assert getattr(schema.BuiltinOperator, name) == code


def test_truncated_tflite_is_a_compile_error(tmp_path):
    src = models.path(models.BLAZEFACE).read_bytes()
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(src[: len(src) // 3])
    with pytest.raises(CompileError, match="cut.tflite"):
        compile_model(bad, tmp_path / "cut.iotm")


def test_not_a_tflite_file(tmp_path):
    bad = tmp_path / "text.tflite"
    bad.write_bytes(b"hello, this is not a flatbuffer at all")
    with pytest.raises(CompileError, match="text.tflite"):
        compile_model(bad, tmp_path / "x.iotm")
