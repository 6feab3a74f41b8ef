"""Every backend against the numpy reference on real models, `auto` on a real artifact, int8.

BlazeFace (real weights) on real photographs from scikit-image; the light_* ONNX models with
their weights re-drawn at random (bench/models.py), since their shipped weights are all 0.02.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from iotrt import models
from iotrt.compiler import compile_model
from iotrt.engine import autotune, load

pytest.importorskip("onnx")  # the compiler embeds the ONNX payload only where onnx is installed
pytest.importorskip("onnxruntime")

_spec = importlib.util.spec_from_file_location(
    "bench_models", Path(__file__).resolve().parents[2] / "bench" / "models.py"
)
bench_models = importlib.util.module_from_spec(_spec)
sys.modules["bench_models"] = bench_models
_spec.loader.exec_module(bench_models)

FRAMEWORKS = ("opencv", "onnxruntime", "litert")
TOL = 1e-3


def preprocess(image: np.ndarray) -> np.ndarray:
    """BlazeFace input: 128x128 RGB scaled to [-1, 1], NHWC."""
    return (cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1)[None]


@pytest.fixture(scope="module")
def blazeface(tmp_path_factory):
    out = tmp_path_factory.mktemp("bf") / "face.iotm"
    compile_model(models.path(models.BLAZEFACE), out)
    return out


@pytest.fixture(scope="module")
def photos():
    return {name: preprocess(img) for name, img in bench_models.face_photos().items()}


@pytest.mark.parametrize("backend", FRAMEWORKS)
def test_blazeface_backends_match_numpy_on_photos(blazeface, photos, backend):
    ref, other = load(blazeface, backend="numpy"), load(blazeface, backend=backend)
    assert other.backend == backend
    assert [s.name for s in other.outputs] == [s.name for s in ref.outputs]
    for name, x in photos.items():
        want, got = ref.run({"input": x}), other.run({"input": x})
        for out, value in want.items():
            assert got[out].shape == value.shape and got[out].dtype == value.dtype
            err = float(np.abs(got[out] - value).max())
            assert err <= TOL, f"{backend} on {name}: {out} differs from numpy by {err}"


@pytest.mark.parametrize("backend", FRAMEWORKS)
def test_framework_backends_check_inputs_like_numpy(blazeface, backend):
    from iotrt.engine import InputError

    model = load(blazeface, backend=backend)
    with pytest.raises(InputError, match="shape"):
        model.run({"input": np.zeros((1, 3, 128, 128), np.float32)})
    with pytest.raises(InputError, match="dtype"):
        model.run({"input": np.zeros((1, 128, 128, 3), np.float64)})
    with pytest.raises(InputError, match="missing"):
        model.run({})


def test_auto_measures_on_first_load_then_uses_the_cache(blazeface, tmp_path, caplog):
    art = tmp_path / "face.iotm"
    art.write_bytes(blazeface.read_bytes())
    with caplog.at_level(logging.INFO, logger="iotrt.engine.auto"):
        model = load(art, backend="auto", threads=1)
    cache = json.loads((tmp_path / "face.iotm.auto.json").read_text())
    assert model.backend == cache["backend"]
    assert set(cache["medians_ms"]) == {"numpy", "opencv", "onnxruntime", "litert"}
    assert cache["scores_ms"][model.backend] == min(cache["scores_ms"].values())
    assert "auto chose" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="iotrt.engine.auto"):
        again = load(art, backend="auto", threads=1)
    assert again.backend == model.backend and "cached" in caplog.text and "auto chose" not in caplog.text


def test_artifact_without_payload_runs_numpy_and_says_why_not_others(blazeface, tmp_path):
    from iotrt.engine import BackendUnavailable
    from iotrt.modelformat import artifact

    art = artifact.read(blazeface)
    art.payloads.clear()  # as compiled by an older iotrt without the onnx package
    bare = tmp_path / "bare.iotm"
    artifact.write(art, bare)
    with pytest.raises(BackendUnavailable, match="onnx"):
        load(bare, backend="onnxruntime")
    assert load(bare, backend="auto").backend == "numpy"


# ---- int8 -------------------------------------------------------------------------------------

# MediaPipe short-range anchors: 16x16 cells x 2 anchors (stride 8), then 8x8 x 6 (stride 16).
ANCHORS = np.concatenate([
    np.repeat(np.stack(np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n), -1).reshape(-1, 2), k, 0)
    for n, k in ((16, 2), (8, 6))
])


def best_box(outputs) -> tuple[float, np.ndarray]:
    """(score, [x0, y0, x1, y1] in [0, 1]) of the strongest detection."""
    i = int(np.argmax(outputs["classificators"][0, :, 0]))
    raw = outputs["regressors"][0, i]
    cx, cy = ANCHORS[i] + raw[:2] / 128
    w, h = raw[2:4] / 128
    score = 1 / (1 + np.exp(-outputs["classificators"][0, i, 0]))
    return float(score), np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def iou(a, b) -> float:
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    return inter / (float(np.prod(a[2:] - a[:2])) + float(np.prod(b[2:] - b[:2])) - inter)


def test_int8_blazeface_is_smaller_and_finds_the_same_faces(blazeface, photos, tmp_path):
    q = tmp_path / "face-int8.iotm"
    compile_model(models.path(models.BLAZEFACE), q, quantize="int8")
    ratio = blazeface.stat().st_size / q.stat().st_size
    f32, i8 = load(blazeface, backend="numpy"), load(q, backend="numpy")
    lines = [f"BlazeFace int8 artifact: {ratio:.2f}x smaller"]
    for name, x in photos.items():
        (s0, b0), (s1, b1) = best_box(f32.run({"input": x})), best_box(i8.run({"input": x}))
        lines.append(f"{name}: score {s0:.3f} -> {s1:.3f}, box IoU {iou(b0, b1):.3f}")
        assert s0 > 0.5, f"{name}: no face in the float model ({s0:.3f}): a bad test photo"
        assert abs(s1 - s0) < 0.05, f"{name}: int8 changes the face score {s0:.3f} -> {s1:.3f}"
        assert iou(b0, b1) > 0.9, lines[-1]
    print("\n".join(lines))
    assert ratio >= 3.5
    # the framework backends run the dequantized weights too
    onnx_out = load(q, backend="onnxruntime").run({"input": photos["astronaut"]})
    np.testing.assert_allclose(
        onnx_out["classificators"], i8.run({"input": photos["astronaut"]})["classificators"], atol=TOL
    )


# ---- the light_* ONNX models with random weights --------------------------------------------


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    """name -> (artifact of the random-weight model without its softmax, the source .onnx)."""
    pytest.importorskip("iotrt.compiler.frontends.onnx")
    work = tmp_path_factory.mktemp("light")
    built = {}

    def get(name: str):
        if name not in built:
            src = bench_models.random_weights(bench_models.light_model_path(name), work / f"{name}.onnx")
            logits = bench_models.without_softmax(src, work / f"{name}-logits.onnx")
            art = work / f"{name}.iotm"
            compile_model(logits, art)
            built[name] = (art, logits)
        return built[name]

    return get


@pytest.mark.parametrize("name", bench_models.LIGHT)
def test_light_models_backends_match_numpy(light, name):
    art, _ = light(name)
    ref = load(art, backend="numpy")
    x = {s.name: np.random.default_rng(1).uniform(-1, 1, s.shape).astype(s.dtype) for s in ref.inputs}
    want = ref.run(x)
    assert max(float(np.abs(v).max()) for v in want.values()) > 0.1  # not a degenerate net
    for backend in ("opencv", "onnxruntime"):
        got = load(art, backend=backend).run(x)
        err = autotune.disagreement(want, got)
        assert err <= TOL, f"{name}: {backend} differs from numpy by {err} (scaled by max(1, |x|))"


def test_int8_squeezenet_is_3_5x_smaller_with_small_logit_error(light, tmp_path):
    art, logits_onnx = light("light_squeezenet")
    q = tmp_path / "squeezenet-int8.iotm"
    compile_model(logits_onnx, q, quantize="int8")
    ratio = art.stat().st_size / q.stat().st_size
    f32, i8 = load(art, backend="numpy"), load(q, backend="numpy")
    rng = np.random.default_rng(2)
    errs, rel, agree = [], [], 0
    for _ in range(4):
        x = {s.name: rng.uniform(-1, 1, s.shape).astype(s.dtype) for s in f32.inputs}
        (a,), (b,) = f32.run(x).values(), i8.run(x).values()
        errs.append(float(np.abs(a - b).max()))
        rel.append(float(np.abs(a - b).max() / np.abs(a).max()))
        agree += int(np.argmax(a) == np.argmax(b))
    print(f"\nSqueezeNet int8: artifact {ratio:.2f}x smaller ({art.stat().st_size:,} -> "
          f"{q.stat().st_size:,} bytes); logits max abs error {max(errs):.4f} "
          f"({max(rel):.2%} of the largest logit); top-1 agrees on {agree}/4 inputs")
    assert ratio >= 3.5
    assert max(rel) < 0.05


def test_compile_target_is_what_load_uses_by_default(tmp_path):
    art = tmp_path / "face.iotm"
    compile_model(models.path(models.BLAZEFACE), art, target="onnxruntime")
    assert load(art).backend == "onnxruntime"
    assert load(art, backend="numpy").backend == "numpy"  # an explicit choice wins
    assert not (tmp_path / "face.iotm.auto.json").exists()  # nothing was measured
