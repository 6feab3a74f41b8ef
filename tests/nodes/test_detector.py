"""The detector path: BlazeFace compiled by iotrt, run on the iotrt engine, decoded by
blazeface.py, against the independent reference decoding LiteRT's outputs (conftest `ref`)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import iotrt
from iotrt.hashing import file_sha256
from iotrt.nodes.perception import inference
from iotrt.nodes.sensing.scene import DoorScene

NO_PEOPLE = ["coffee", "rocket", "clock", "coins", "moon", "page", "text", "hubble_deep_field",
             "immunohistochemistry", "retina", "logo", "brick", "grass", "gravel", "cell", "horse"]

PARAMS = {"model": "", "mode": "blazeface", "backend": "numpy", "score_threshold": 0.5,
          "nms_iou": 0.3, "max_age_ms": 250.0, "top_k": 5, "labels": "", "mean": [0, 0, 0],
          "std": [1, 1, 1]}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module", params=["numpy", "opencv", "onnxruntime"])
def state(request, models_dir, blazeface_path):
    """The detector on every engine backend (numpy is the reference; auto picks among them)."""
    return inference.build(dict(PARAMS, model=str(blazeface_path), backend=request.param), models_dir)


@pytest.fixture(scope="module")
def fast_state(models_dir, blazeface_path):
    return inference.build(dict(PARAMS, model=str(blazeface_path), backend="onnxruntime"), models_dir)


@pytest.mark.parametrize("name", ["astronaut", "camera"])
def test_engine_boxes_match_litert_reference_on_photographs(name, state, photo, litert, ref):
    img = photo(name)
    msg = inference.handle_frame(img, 0, state)
    assert msg["size"] == [img.shape[1], img.shape[0]]
    faces = type("F", (), {"boxes": msg["boxes"], "scores": msg["scores"]})
    ref.assert_same_faces(faces, ref.detect(img, litert), name)
    assert len(msg["keypoints"]) == 1 and np.shape(msg["keypoints"][0]) == (6, 2)


@pytest.mark.parametrize("t", [2.0, 8.0])
def test_engine_boxes_match_reference_on_sim_frames(t, state, litert, ref):
    frame = DoorScene(640, 480).render(t)
    msg = inference.handle_frame(frame, 0, state)
    faces = type("F", (), {"boxes": msg["boxes"], "scores": msg["scores"]})
    ref.assert_same_faces(faces, ref.detect(frame, litert), f"sim t={t}")


def test_engine_finds_no_face_in_photographs_without_people(fast_state, photo):
    found = {name: inference.handle_frame(photo(name), 0, fast_state)["scores"] for name in NO_PEOPLE}
    assert {k: v for k, v in found.items() if v} == {}


def test_stale_frames_are_skipped_and_counted(fast_state):
    frame = np.zeros((48, 64, 3), np.uint8)
    now = 10_000_000_000
    state = fast_state
    before = state.stale
    assert inference.handle_frame(frame, now - 300_000_000, state, now_ns=now) is None
    msg = inference.handle_frame(frame, now - 100_000_000, state, now_ns=now)
    assert msg is not None and msg["stale"] == before + 1 and msg["boxes"] == []


def test_grey_and_rgba_frames_are_accepted_and_junk_refused(fast_state, photo):
    state = fast_state
    grey = photo("camera")[..., 0]
    assert len(inference.handle_frame(grey, 0, state)["boxes"]) == 1
    rgba = np.dstack([photo("astronaut"), np.full((512, 512), 255, np.uint8)])
    assert len(inference.handle_frame(rgba, 0, state)["boxes"]) == 1
    with pytest.raises(inference.DetectorError, match=r"shape \(4, 4, 5\)"):
        inference.handle_frame(np.zeros((4, 4, 5), np.uint8), 0, state)
    for junk, why in ((np.zeros((0, 0, 3), np.uint8), "shape"), (np.zeros((4, 4), np.int64), "int64"),
                      (np.zeros((8, 8, 3), np.float32), "float32")):
        with pytest.raises(inference.DetectorError, match=why):
            inference.handle_frame(junk, 0, state)


def test_source_model_is_compiled_once_and_cached_by_content(models_dir, blazeface_path, fast_state, caplog):
    cached = list(models_dir.glob("*.iotm"))
    assert [p.name for p in cached] == [f"{file_sha256(blazeface_path)[:24]}-{iotrt.__version__}.iotm"]
    with caplog.at_level(logging.INFO):
        inference.build(dict(PARAMS, model=str(blazeface_path), backend="onnxruntime"), models_dir)
    assert "using cached artifact" in caplog.text and "compiling once" not in caplog.text


def test_model_that_does_not_fit_the_mode_is_refused(fast_state):
    class FakeSpec:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Model:
        inputs = [FakeSpec("x", (1, 3, 224, 224))]
        outputs = [FakeSpec("logits", (1, 1000))]

    with pytest.raises(inference.DetectorError, match="square NHWC RGB input"):
        inference.FaceDetector(Model())
