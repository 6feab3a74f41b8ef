"""BlazeFace decoding against an independent reference on LiteRT's outputs for real photographs.

The reference (conftest.py, fixture `ref`) is written separately, in the shape of MediaPipe's
C++ calculators (loops over anchors, its own letterbox and NMS), and shares no code with
blazeface.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from iotrt.nodes.perception import blazeface as bf
from iotrt.nodes.sensing.scene import DoorScene

# Photographs with a person in them (scikit-image, public domain / CC0).
PEOPLE = ["astronaut", "camera"]
# Photographs without people, each checked: none may yield a face at MediaPipe's threshold.
NO_PEOPLE = ["coffee", "rocket", "clock", "coins", "moon", "page", "text", "hubble_deep_field",
             "immunohistochemistry", "retina", "logo", "brick", "grass", "gravel", "cell", "horse"]


# ---- tests ------------------------------------------------------------------------------------

def test_anchors_match_mediapipe_layout(ref):
    ours = bf.ssd_anchors()
    assert ours.shape == (896, 2)
    np.testing.assert_allclose(ours, np.array(ref.anchors()), atol=1e-6)


@pytest.mark.parametrize("name", PEOPLE)
def test_faces_on_photographs_match_reference(name, photo, litert, ref):
    img = photo(name)
    ours = bf.BlazeFace().detect(img, litert)
    assert len(ours) == 1, f"{name}: expected one face, got {len(ours)}"
    ref.assert_same_faces(ours, ref.detect(img, litert), name)
    # Keypoints lie inside the face box, right eye left of the left eye in the image.
    (x1, y1, x2, _), kp = ours.boxes[0], ours.keypoints[0]
    assert (x1 <= kp[:4, 0]).all() and (kp[:4, 0] <= x2).all() and (y1 <= kp[:4, 1]).all()
    assert kp[0, 0] < kp[1, 0]


def test_astronaut_face_is_where_the_face_is(photo, litert):
    faces = bf.BlazeFace().detect(photo("astronaut"), litert)
    x1, y1, x2, y2 = faces.boxes[0]
    # Eileen Collins' face spans roughly x 180-270, y 80-180 in the 512x512 portrait.
    assert 160 < x1 < 200 and 250 < x2 < 290 and 60 < y1 < 100 and 160 < y2 < 200


@pytest.mark.parametrize("t", [1.0, 2.5, 7.0, 8.5])
def test_sim_scene_faces_match_reference(t, litert, ref):
    frame = DoorScene(640, 480).render(t)
    ours = bf.BlazeFace().detect(frame, litert)
    ref.assert_same_faces(ours, ref.detect(frame, litert), f"sim t={t}")
    assert len(ours) == 1


@pytest.mark.parametrize("name", NO_PEOPLE)
def test_no_face_in_photographs_without_people(name, photo, litert):
    faces = bf.BlazeFace().detect(photo(name), litert)
    assert len(faces) == 0, f"{name}: found {len(faces)} faces, scores {faces.scores}"


def test_cat_face_scores_below_people(photo, litert):
    """The short-range model gives Chelsea the cat's face 0.60 (and colorwheel 0.58): above
    MediaPipe's 0.5 threshold. Documented in docs/perception.md; a threshold of 0.7 keeps both
    people photos and drops both."""
    strict = bf.BlazeFace(bf.DecodeOptions(score_threshold=0.7))
    for name in ("chelsea", "colorwheel"):
        assert len(bf.BlazeFace().detect(photo(name), litert)) == 1
        assert len(strict.detect(photo(name), litert)) == 0, name
    for name in PEOPLE:
        assert len(strict.detect(photo(name), litert)) == 1, name


@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (300, 451), (128, 128), (37, 1000)])
def test_letterbox_maps_points_back_to_the_frame(shape):
    h, w = shape
    frame = np.zeros((h, w, 3), np.uint8)
    x, box = bf.letterbox(frame)
    assert x.shape == (1, 128, 128, 3) and x.dtype == np.float32
    # A frame-pixel point mapped into the input and back lands where it started.
    pts = np.array([[0, 0], [w, h], [w * 0.3, h * 0.8]], np.float32)
    norm = (pts * [box.scale_x, box.scale_y] + [box.offset_x, box.offset_y]) / 128
    boxes = np.concatenate([norm[:2].ravel()])[None]
    back_boxes, back_kp = bf.unletterbox(boxes, norm[None], box)
    np.testing.assert_allclose(back_kp[0], pts, atol=1e-3)
    np.testing.assert_allclose(back_boxes[0], pts[:2].ravel(), atol=1e-3)


def test_letterbox_pads_with_zero_and_scales_to_unit_range():
    frame = np.full((64, 128, 3), 255, np.uint8)
    x, box = bf.letterbox(frame)
    assert box.offset_y == 32 and box.offset_x == 0
    assert np.allclose(x[0, :32], 0.0) and np.allclose(x[0, 96:], 0.0)
    assert np.allclose(x[0, 32:96], 1.0)


def test_weighted_nms_averages_overlapping_candidates():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.6, 0.7], np.float32)
    kps = np.zeros((3, 6, 2), np.float32)
    kps[1] += 5.0
    out_b, out_s, out_k = bf.weighted_nms(boxes, scores, kps, 0.3)
    assert out_s.tolist() == pytest.approx([0.9, 0.7])
    # (0.9 * 0 + 0.6 * 1) / 1.5 = 0.4 for x1; the far box stays as it was.
    np.testing.assert_allclose(out_b[0], [0.4, 0, 10.4, 10], atol=1e-5)
    np.testing.assert_allclose(out_k[0], 2.0, atol=1e-5)
    np.testing.assert_allclose(out_b[1], [50, 50, 60, 60])


def test_decode_clips_logits_and_applies_threshold():
    anchors = bf.ssd_anchors()
    reg = np.zeros((896, 16), np.float32)
    logits = np.full(896, -1000.0, np.float32)  # clipped to -100: no overflow, score ~0
    logits[5] = 1000.0
    reg[5, :4] = [12.8, -12.8, 25.6, 12.8]  # centre offset (+0.1, -0.1), size 0.2 x 0.1
    boxes, scores, kps = bf.decode(reg, logits, anchors)
    assert scores.tolist() == [1.0]
    cx, cy = anchors[5] + [0.1, -0.1]
    np.testing.assert_allclose(boxes[0], [cx - 0.1, cy - 0.05, cx + 0.1, cy + 0.05], atol=1e-6)
    np.testing.assert_allclose(kps[0], np.repeat(anchors[5][None], 6, 0), atol=1e-6)
