"""Shared fixtures for the sensing and perception node tests."""

from __future__ import annotations

import math
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BLAZEFACE = "face_detection_short_range.tflite"


def blazeface_source() -> Path:
    """The vendored BlazeFace model (models/, see models/README.md)."""
    return ROOT / "models" / BLAZEFACE


@pytest.fixture(scope="session")
def blazeface_path() -> Path:
    path = blazeface_source()
    if not path.is_file():
        pytest.fail(f"the vendored BlazeFace model is missing: {path}")
    return path


@pytest.fixture(scope="session")
def litert(blazeface_path):
    """BlazeFace executed by LiteRT: x (1, 128, 128, 3) -> (regressors, classificators)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(str(blazeface_path), num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    outs = {o["name"]: o["index"] for o in interp.get_output_details()}

    def run(x: np.ndarray):
        interp.set_tensor(inp, np.ascontiguousarray(x, np.float32))
        interp.invoke()
        return interp.get_tensor(outs["regressors"]).copy(), interp.get_tensor(outs["classificators"]).copy()

    return run


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


@pytest.fixture(scope="session")
def photo():
    """photo(name): a scikit-image sample photograph as RGB uint8 (grey images expanded)."""
    import skimage.data

    return lambda name: _rgb(getattr(skimage.data, name)())


# ---- an independent BlazeFace reference (shares no code with blazeface.py) --------------------

def ref_anchors():
    """SsdAnchorsCalculator, as in mediapipe/calculators/tflite/ssd_anchors_calculator.cc."""
    strides, num_layers, min_s, max_s = [8, 16, 16, 16], 4, 0.1484375, 0.75
    anchors, layer_id = [], 0
    while layer_id < num_layers:
        scales, ratios = [], []
        last = layer_id
        while last < len(strides) and strides[last] == strides[layer_id]:
            scale = min_s + (max_s - min_s) * last / (len(strides) - 1)
            ratios.append(1.0)
            scales.append(scale)
            nxt = 1.0 if last == len(strides) - 1 else min_s + (max_s - min_s) * (last + 1) / (len(strides) - 1)
            scales.append(math.sqrt(scale * nxt))
            ratios.append(1.0)
            last += 1
        fm = math.ceil(128 / strides[layer_id])
        for y in range(fm):
            for x in range(fm):
                for _ in scales:
                    anchors.append(((x + 0.5) / fm, (y + 0.5) / fm))  # fixed size: w = h = 1
        layer_id = last
    return anchors


def ref_detect(img, run):
    h, w = img.shape[:2]
    s = 128 / max(h, w)
    rw, rh = int(round(w * s)), int(round(h * s))
    pad_l, pad_t = (128 - rw) // 2, (128 - rh) // 2
    x = np.zeros((128, 128, 3), np.float32)
    x[pad_t : pad_t + rh, pad_l : pad_l + rw] = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_AREA) / 127.5 - 1
    reg, cls = run(x[None])
    reg, cls = reg.reshape(896, 16), cls.reshape(896)
    dets = []
    for i, (ax, ay) in enumerate(ref_anchors()):
        logit = max(-100.0, min(100.0, float(cls[i])))
        score = 1 / (1 + math.exp(-logit))
        if score < 0.5:
            continue
        cx, cy = reg[i, 0] / 128 + ax, reg[i, 1] / 128 + ay
        bw, bh = reg[i, 2] / 128, reg[i, 3] / 128
        kps = [(reg[i, 4 + 2 * k] / 128 + ax, reg[i, 5 + 2 * k] / 128 + ay) for k in range(6)]
        dets.append([score, [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], kps])
    # WeightedNonMaxSuppression (non_max_suppression_calculator.cc)
    dets.sort(key=lambda d: -d[0])
    out = []
    while dets:
        top = dets[0]
        group = [d for d in dets if ref_iou(top[1], d[1]) > 0.3 or d is top]
        dets = [d for d in dets if not any(d is g for g in group)]
        tot = sum(d[0] for d in group)
        box = [sum(d[0] * d[1][j] for d in group) / tot for j in range(4)]
        out.append((top[0], box))
    # DetectionLetterboxRemovalCalculator, then to pixels
    pl, pt = pad_l / 128, pad_t / 128
    pr, pb = (128 - rw - pad_l) / 128, (128 - rh - pad_t) / 128
    result = []
    for score, (x1, y1, x2, y2) in out:
        fx = lambda v: (v - pl) / (1 - pl - pr) * w  # noqa: E731
        fy = lambda v: (v - pt) / (1 - pt - pb) * h  # noqa: E731
        result.append((score, [fx(x1), fy(y1), fx(x2), fy(y2)]))
    return result


def ref_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def assert_same_faces(faces, ref, where: str):
    """`faces` (boxes, scores) match the reference's within IoU 0.9 and 0.02 in score."""
    boxes, scores = np.asarray(faces.boxes).reshape(-1, 4), np.asarray(faces.scores)
    assert len(scores) == len(ref), f"{where}: {len(scores)} faces vs reference {len(ref)}"
    for _score, box in ref:
        best = max(ref_iou(box, list(b)) for b in boxes)
        assert best >= 0.9, f"{where}: IoU {best:.3f} with reference box {np.round(box)}"
    np.testing.assert_allclose(sorted(scores), sorted(s for s, _ in ref), atol=0.02)


@pytest.fixture(scope="session")
def ref():
    """ref.detect(img, run) -> [(score, box)], ref.anchors(), ref.assert_same_faces(...)."""
    return types.SimpleNamespace(detect=ref_detect, anchors=ref_anchors, iou=ref_iou,
                                 assert_same_faces=assert_same_faces)
