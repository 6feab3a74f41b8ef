"""Matching faces against the gallery: feature extractors per method, the Identifier that
turns one detections message (plus its frame) into named faces, and the frame buffer that pairs
them. Used by the identity node and by `iotrt enroll`; imports nothing from the node runtime.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from iotrt.nodes.perception import facefeatures as ff
from iotrt.nodes.perception.gallery import Gallery

# Method -> (crop side, default threshold). The LBP threshold was set on the shipped photos
# (tests/nodes/test_identity.py): shifted, scaled, rotated and re-lit views of the enrolled
# owner score 0.74-0.93, the visitor (and a cat) at most 0.60. The embedding default suits
# cosine similarity of ArcFace-style models (SFace's published threshold is 0.363).
METHODS: dict[str, tuple[int, float]] = {"lbp": (112, 0.70), "embedding": (112, 0.40)}

Extractor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def lbp_extractor() -> Extractor:
    side = METHODS["lbp"][0]
    return lambda frame, kps: ff.lbp_feature(ff.align(frame, kps, side))


def embedding_extractor(model, mean: float, std: float) -> Extractor:
    spec = model.inputs[0]
    shape = tuple(spec.shape)
    side = shape[2] if len(shape) == 4 and shape[1] == 3 else shape[1]

    def extract(frame: np.ndarray, kps: np.ndarray) -> np.ndarray:
        x = ff.embedding_input(ff.align(frame, kps, side), shape, mean, std)
        out = model.run({spec.name: x})
        return ff.l2_normalise(next(iter(out.values())))

    return extract


def similarity(method: str, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return ff.lbp_similarity(query, rows) if method == "lbp" else ff.cosine_similarity(query, rows)


Pair = tuple[int, dict, "np.ndarray | None"]  # (stamp, detections, its frame or None if lost)


class Pairer:
    """Pairs each detections message with the frame of the same capture stamp.

    The two arrive on different sockets, and the node reads one message per socket per loop
    turn, so the detections for a frame can be read before the frame itself when frames queue
    up. Detections whose frame has not arrived yet wait (at most `size` of them); a frame
    arriving releases them. Frames come in capture order, so once a newer frame has arrived an
    older missing one is lost (dropped upstream) and its detections go out without a frame.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self.frames: OrderedDict[int, np.ndarray] = OrderedDict()
        self.waiting: OrderedDict[int, dict] = OrderedDict()
        self.newest = -1  # stamp of the newest frame seen

    def frame(self, stamp_ns: int, frame: np.ndarray) -> list[Pair]:
        self.frames[stamp_ns] = frame
        self.newest = max(self.newest, stamp_ns)
        while len(self.frames) > self.size:
            self.frames.popitem(last=False)
        out = []
        for stamp in [s for s in self.waiting if s <= stamp_ns]:
            out.append((stamp, self.waiting.pop(stamp), self.frames.get(stamp)))
        if out:
            self._release(out[-1][0])
        return out

    def detections(self, stamp_ns: int, det: dict) -> list[Pair]:
        if stamp_ns in self.frames or stamp_ns <= self.newest:
            pair = (stamp_ns, det, self.frames.get(stamp_ns))
            self._release(stamp_ns)
            return [pair]
        self.waiting[stamp_ns] = det
        out = []
        while len(self.waiting) > self.size:
            stamp, old = self.waiting.popitem(last=False)
            out.append((stamp, old, None))
        return out

    def _release(self, stamp_ns: int) -> None:
        """Forget frames up to a stamp whose detections were handled: detections come in
        capture order, so nobody will ask for them, and a frame held here pins a slot of the
        camera's shared-memory ring (the reader's lease) until it is let go."""
        while self.frames and next(iter(self.frames)) <= stamp_ns:
            self.frames.popitem(last=False)


@dataclass
class Identifier:
    gallery: Gallery
    extract: Extractor
    threshold: float
    min_eye_px: float = 8.0
    unpaired: int = 0

    def identify(self, frame: np.ndarray | None, det: dict) -> dict:
        faces = []
        for box, kps in zip(det.get("boxes", []), det.get("keypoints", [])):
            name, score = self._match(frame, np.asarray(kps, np.float32))
            known = name != "unknown"
            faces.append({"name": name, "score": round(score, 4), "known": known,
                          "box": [round(float(v), 1) for v in box]})
        if frame is None and faces:
            self.unpaired += 1
        return {
            "faces": faces,
            "known": sorted({f["name"] for f in faces if f["known"]}),
            "unknown": sum(not f["known"] for f in faces),
            "method": self.gallery.method,
            "unpaired": self.unpaired,
        }

    def _match(self, frame: np.ndarray | None, kps: np.ndarray) -> tuple[str, float]:
        if frame is None or not len(self.gallery) or len(kps) < 4:
            return "unknown", 0.0
        if np.linalg.norm(kps[1] - kps[0]) < self.min_eye_px:
            return "unknown", 0.0  # too small to tell anyone apart
        try:
            query = self.extract(frame, kps)
        except ff.FeatureError:
            return "unknown", 0.0
        name, score = self.gallery.best(similarity(self.gallery.method, query, self.gallery.features))
        return (name, score) if score >= self.threshold else ("unknown", score)
