"""BlazeFace pre- and post-processing, as MediaPipe's face detection graph does it.

The model (`face_detection_short_range.tflite`, 128x128 RGB in [-1, 1]) regresses, for each of
896 SSD anchors, a box (centre offset, size) and six keypoints, plus one score logit. Turning that
into faces is the work of this module:

- `letterbox`: resize keeping the aspect ratio, pad to the model's square input (MediaPipe's
  ImageToTensorCalculator with keep_aspect_ratio), and the transform to undo it;
- `ssd_anchors`: the anchor centres (SsdAnchorsCalculator with strides 8/16/16/16, two anchors
  per cell per layer, fixed anchor size);
- `decode`: TensorsToDetectionsCalculator: scores = sigmoid(clip(logit, +-100)), threshold,
  boxes and keypoints from anchor-relative offsets scaled by 128;
- `weighted_nms`: NonMaxSuppressionCalculator with the WEIGHTED algorithm at IoU 0.3: each kept
  face is the score-weighted mean of the overlapping candidates, which is steadier from frame to
  frame than picking the single best box;
- `unletterbox`: DetectionLetterboxRemovalCalculator, then scaling to frame pixels.

Everything is vectorised numpy and independent of how the model itself is executed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Keypoint order of the model's output (subject's right eye is on the image's left).
KEYPOINTS = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")


@dataclass(frozen=True)
class AnchorOptions:
    """The SsdAnchorsCalculator options of MediaPipe's short-range face detector."""

    input_size: int = 128
    strides: tuple[int, ...] = (8, 16, 16, 16)
    offset: float = 0.5
    anchors_per_layer: int = 2  # one aspect ratio (1.0) + the interpolated scale


@dataclass(frozen=True)
class DecodeOptions:
    """The TensorsToDetections + NMS options of MediaPipe's short-range face detector."""

    input_size: int = 128  # x/y/w/h scale
    score_threshold: float = 0.5
    score_clip: float = 100.0
    nms_iou: float = 0.3
    num_keypoints: int = 6


@dataclass(frozen=True)
class Letterbox:
    """Where a frame sits inside the model's square input: input px = frame px * scale + offset."""

    size: int  # the square input's side in pixels
    offset_x: int
    offset_y: int
    scale_x: float
    scale_y: float


@dataclass
class Faces:
    """Detected faces in frame pixels: boxes (N, 4) as x1, y1, x2, y2; keypoints (N, 6, 2)."""

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def ssd_anchors(opts: AnchorOptions = AnchorOptions()) -> np.ndarray:
    """Anchor centres (N, 2) as x, y in [0, 1], in the model's output order.

    Consecutive layers with the same stride share one feature map, so their anchors are emitted
    together per cell: 2 per cell for stride 8 (16x16), 6 per cell for stride 16 (8x8) = 896.
    With a fixed anchor size every anchor's width and height is 1, so only centres are needed.
    """
    centres = []
    layer = 0
    while layer < len(opts.strides):
        stride = opts.strides[layer]
        last = layer
        while last < len(opts.strides) and opts.strides[last] == stride:
            last += 1
        per_cell = (last - layer) * opts.anchors_per_layer
        size = math.ceil(opts.input_size / stride)
        ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        cells = np.stack([(xs + opts.offset) / size, (ys + opts.offset) / size], axis=-1)
        centres.append(np.repeat(cells.reshape(-1, 2), per_cell, axis=0))
        layer = last
    return np.concatenate(centres).astype(np.float32)


def letterbox(frame: np.ndarray, size: int = 128) -> tuple[np.ndarray, Letterbox]:
    """Resize an RGB frame into a size x size float32 tensor in [-1, 1], keeping its aspect.

    Returns the (1, size, size, 3) input and the letterbox needed to map detections back.
    """
    h, w = frame.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    # INTER_AREA when shrinking avoids the aliasing that costs small faces their detection.
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (new_w, new_h), interpolation=interp)
    x0, y0 = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.zeros((size, size, 3), np.float32)
    # (pixel / 127.5) - 1: the [-1, 1] range the model was trained on; padding is 0 in that
    # range, like MediaPipe's zero border.
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = resized.astype(np.float32) * (1 / 127.5) - 1.0
    box = Letterbox(size=size, offset_x=x0, offset_y=y0, scale_x=new_w / w, scale_y=new_h / h)
    return canvas[None], box


def decode(
    regressors: np.ndarray,
    logits: np.ndarray,
    anchors: np.ndarray,
    opts: DecodeOptions = DecodeOptions(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw model outputs -> (boxes (N, 4) x1y1x2y2, scores (N,), keypoints (N, K, 2)).

    Coordinates are normalised to the model input. Only candidates above the score threshold
    are returned, unsorted and before NMS.
    """
    raw = np.asarray(regressors, np.float32).reshape(len(anchors), -1)
    # float64 so exp(100) of a clipped logit does not overflow float32.
    logit = np.asarray(logits, np.float64).reshape(len(anchors))
    scores = (1.0 / (1.0 + np.exp(-np.clip(logit, -opts.score_clip, opts.score_clip))))
    keep = scores >= opts.score_threshold
    raw, scores, anc = raw[keep], scores[keep].astype(np.float32), anchors[keep]
    s = 1.0 / opts.input_size
    cx = raw[:, 0] * s + anc[:, 0]
    cy = raw[:, 1] * s + anc[:, 1]
    half_w, half_h = raw[:, 2] * (s / 2), raw[:, 3] * (s / 2)
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    kp = raw[:, 4 : 4 + 2 * opts.num_keypoints].reshape(-1, opts.num_keypoints, 2) * s
    keypoints = kp + anc[:, None, :]
    return boxes, scores, keypoints


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection-over-union of x1y1x2y2 boxes: (len(a), len(b))."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, iou: float = 0.3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression.

    Take the best remaining candidate and every remaining candidate overlapping it by more
    than `iou`; the face is their score-weighted mean box and keypoints, with the best score.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    overlaps = iou_matrix(boxes, boxes)
    remaining = np.ones(len(scores), bool)
    out_b, out_s, out_k = [], [], []
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        group = remaining & (overlaps[i] > iou)
        group[i] = True
        w = scores[group]
        out_b.append((boxes[group] * w[:, None]).sum(0) / w.sum())
        out_k.append((keypoints[group] * w[:, None, None]).sum(0) / w.sum())
        out_s.append(scores[i])
        remaining &= ~group
    if not out_s:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), keypoints[:0]
    return np.array(out_b, np.float32), np.array(out_s, np.float32), np.array(out_k, np.float32)


def unletterbox(
    boxes: np.ndarray, keypoints: np.ndarray, box: Letterbox
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised model-input coordinates -> frame pixels, undoing the letterbox."""
    offset = np.array([box.offset_x, box.offset_y], np.float32)
    scale = np.array([box.scale_x, box.scale_y], np.float32)
    out_kp = (keypoints * box.size - offset) / scale
    out_boxes = (boxes.reshape(-1, 2, 2) * box.size - offset) / scale
    return out_boxes.reshape(-1, 4), out_kp


class BlazeFace:
    """The whole pipeline around a model: `faces = BlazeFace().detect(frame, run)`.

    `run` takes the (1, 128, 128, 3) float32 input and returns (regressors, logits), so the
    same code serves any engine backend (and LiteRT in the reference tests).
    """

    def __init__(self, opts: DecodeOptions = DecodeOptions()):
        self.opts = opts
        self.anchors = ssd_anchors(AnchorOptions(input_size=opts.input_size))

    def preprocess(self, frame: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return letterbox(frame, self.opts.input_size)

    def postprocess(self, regressors: np.ndarray, logits: np.ndarray, box: Letterbox) -> Faces:
        boxes, scores, kps = decode(regressors, logits, self.anchors, self.opts)
        boxes, scores, kps = weighted_nms(boxes, scores, kps, self.opts.nms_iou)
        boxes, kps = unletterbox(boxes, kps, box)
        return Faces(boxes=boxes, scores=scores, keypoints=kps)

    def detect(self, frame: np.ndarray, run) -> Faces:
        x, box = self.preprocess(frame)
        regressors, logits = run(x)
        return self.postprocess(regressors, logits, box)
