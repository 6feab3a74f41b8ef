"""Running a compiled model on frames: BlazeFace faces or top-k classes, and the stale-frame
rule. Used by the detector node, `iotrt enroll` and bench/perception.py; imports nothing from
the node runtime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from iotrt import errors
from iotrt.nodes.perception.blazeface import BlazeFace, DecodeOptions
from iotrt.nodes.perception.modelcache import ModelError, load_model


class DetectorError(errors.ModelError, RuntimeError):
    """A model whose inputs or outputs do not fit the chosen mode."""


def as_rgb(frame: np.ndarray) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        # uint8 is what cameras deliver; other dtypes (int64, float) are refused, not guessed at
        raise DetectorError(f"expected a uint8 image array, got {type(frame).__name__}"
                            f"{' of ' + str(frame.dtype) if isinstance(frame, np.ndarray) else ''}")
    if frame.ndim not in (2, 3) or frame.shape[0] < 2 or frame.shape[1] < 2:
        raise DetectorError(f"expected an RGB frame (H, W, 3), got shape {frame.shape}")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return frame[..., :3]
    if frame.shape[2] != 3:
        raise DetectorError(f"expected an RGB frame (H, W, 3), got shape {frame.shape}")
    return frame


class FaceDetector:
    """BlazeFace around any engine model with one (1, 128, 128, 3) input."""

    def __init__(self, model, opts: DecodeOptions | None = None):
        opts = opts or DecodeOptions()
        self.model = model
        spec = model.inputs[0]
        self.input_name = spec.name
        if tuple(spec.shape)[-1] != 3 or tuple(spec.shape)[1] != tuple(spec.shape)[2]:
            raise DetectorError(f"blazeface mode needs a square NHWC RGB input, the model's "
                                f"input '{spec.name}' has shape {tuple(spec.shape)}")
        self.blazeface = BlazeFace(DecodeOptions(**{**opts.__dict__, "input_size": int(spec.shape[1])}))
        # Outputs by their shape, not their names: a re-exported model may rename them.
        by_width = {int(tuple(o.shape)[-1]): o.name for o in model.outputs}
        if 1 not in by_width or not any(w >= 4 + 2 * opts.num_keypoints for w in by_width):
            raise DetectorError(f"blazeface mode needs a (1, N, 16) box output and a (1, N, 1) "
                                f"score output; the model has {[tuple(o.shape) for o in model.outputs]}")
        self.scores_name = by_width[1]
        self.boxes_name = by_width[max(by_width)]
        self.model_ms = 0.0

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        out = self.model.run({self.input_name: x})
        self.model_ms = (time.perf_counter() - t0) * 1e3
        return out[self.boxes_name], out[self.scores_name]

    def __call__(self, frame: np.ndarray) -> dict:
        frame = as_rgb(frame)
        faces = self.blazeface.detect(frame, self.run)
        # float64 before rounding, so the published numbers are the short decimals they look like.
        return {
            "boxes": faces.boxes.astype(np.float64).round(2).tolist(),
            "scores": faces.scores.astype(np.float64).round(4).tolist(),
            "keypoints": faces.keypoints.astype(np.float64).round(2).tolist(),
            "size": [int(frame.shape[1]), int(frame.shape[0])],
            "model_ms": round(self.model_ms, 3),
        }


class Classifier:
    """Top-k classes from a model with one image input (NCHW or NHWC) and one score output."""

    def __init__(self, model, top_k: int, labels: list[str], mean, std):
        self.model, self.top_k, self.labels = model, top_k, labels
        spec = model.inputs[0]
        self.input_name, shape = spec.name, tuple(spec.shape)
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise DetectorError(f"classifier mode needs an image input (1, 3, H, W) or "
                                f"(1, H, W, 3); '{spec.name}' has shape {shape}")
        self.nchw = shape[1] == 3
        self.hw = (shape[2], shape[3]) if self.nchw else (shape[1], shape[2])
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.model_ms = 0.0

    def __call__(self, frame: np.ndarray) -> dict:
        frame = as_rgb(frame)
        x = cv2.resize(frame, (self.hw[1], self.hw[0]), interpolation=cv2.INTER_AREA)
        x = (x.astype(np.float32) - self.mean) / self.std
        x = (x.transpose(2, 0, 1) if self.nchw else x)[None]
        t0 = time.perf_counter()
        out = self.model.run({self.input_name: np.ascontiguousarray(x)})
        self.model_ms = (time.perf_counter() - t0) * 1e3
        logits = np.asarray(next(iter(out.values())), np.float64).ravel()
        # Softmax only when the model did not end in one already.
        if logits.min() < 0 or abs(logits.sum() - 1.0) > 1e-3:
            e = np.exp(logits - logits.max())
            logits = e / e.sum()
        top = np.argsort(-logits)[: self.top_k]
        return {
            "top": [{"index": int(i), "score": round(float(logits[i]), 5),
                     "label": self.labels[i] if i < len(self.labels) else str(int(i))} for i in top],
            "model_ms": round(self.model_ms, 3),
        }


@dataclass
class State:
    detect: object  # FaceDetector or Classifier
    max_age_ns: int
    stale: int = 0


def handle_frame(frame: np.ndarray, stamp_ns: int, state: State, now_ns: int | None = None) -> dict | None:
    """One frame -> the detections message, or None for a stale frame (counted)."""
    now_ns = time.monotonic_ns() if now_ns is None else now_ns
    if state.max_age_ns and stamp_ns and now_ns - stamp_ns > state.max_age_ns:
        state.stale += 1
        return None
    msg = state.detect(frame)
    msg["stale"] = state.stale
    return msg


def build(params: dict, models_dir: Path, base_dir: Path | None = None, log=None) -> State:
    model, _ = load_model(params["model"], models_dir, params["backend"], base_dir, log)
    if params["mode"] == "classifier":
        labels: list[str] = []
        if params["labels"]:
            path = Path(params["labels"])
            path = path if path.is_absolute() or base_dir is None else base_dir / path
            if not path.is_file():
                raise ModelError(f"labels file not found: {path}")
            labels = path.read_text().splitlines()
        detect = Classifier(model, params["top_k"], labels, params["mean"], params["std"])
    else:
        detect = FaceDetector(model, DecodeOptions(score_threshold=params["score_threshold"],
                                                   nms_iou=params["nms_iou"]))
    return State(detect=detect, max_age_ns=int(params["max_age_ms"] * 1e6))
