"""Identity node: names the faces the detector found, against a gallery of enrolled people.

Inputs: `image` (the camera's frames) and `detections` (the detector's faces for one of those
frames, carrying the frame's `stamp_ns`). The node keeps the last few frames by stamp and pairs
each detections message with its frame; a message whose frame is gone (dropped upstream) is
published with every face `unknown`, score 0, and counted in `unpaired`, so a rule never waits
on a face it was not told about.

Output `faces`, one per detections message (also when nobody is there, so rules see both edges):
    {"faces": [{"name": "owner", "score": 0.93, "known": true, "box": [x1, y1, x2, y2]}, ...],
     "known": ["owner"],      # enrolled people in view, sorted, no repeats
     "unknown": 1,            # faces that matched nobody
     "method": "lbp", "unpaired": 0}

Methods and their honest limits are described in facefeatures.py and docs/perception.md.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.perception import facefeatures as ff
from iotrt.nodes.perception.gallery import Gallery

# Method -> (crop side, default threshold). The LBP threshold was set on the shipped photos
# (tests/nodes/test_identity.py): shifted, scaled, rotated and re-lit views of the enrolled
# owner score 0.74-0.94, the visitor (and a cat) at most 0.60. The embedding default suits
# cosine similarity of ArcFace-style models (SFace's published threshold is 0.363).
METHODS: dict[str, tuple[int, float]] = {"lbp": (112, 0.70), "embedding": (112, 0.40)}

SPEC = NodeSpec(
    doc="names detected faces against an enrolled gallery (LBP or a face-embedding CNN)",
    inputs={"image": "RGB uint8 frame", "detections": "detector faces with keypoints"},
    outputs={"faces": "{faces: [{name, score, known, box}], known: [names], unknown: n}"},
    params=[
        Param("gallery", str, "gallery.npz", "gallery file written by 'iotrt enroll'"),
        Param("method", str, "lbp", "matching method", choices=tuple(METHODS)),
        Param("threshold", float, 0.0, "minimum score to name a face (0: the method's default)"),
        Param("model", str, "", "embedding: face-embedding model (.onnx/.tflite/.iotm)"),
        Param("backend", str, "auto", "embedding: engine backend"),
        Param("embed_mean", float, 127.5, "embedding: input = (pixel - mean) / std"),
        Param("embed_std", float, 127.5, "embedding: see embed_mean"),
        Param("min_eye_px", float, 8.0, "faces with eyes closer than this (pixels) are unknown"),
        Param("frame_buffer", int, 8, "how many recent frames to keep for pairing"),
    ],
)

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


class FrameBuffer:
    """The last `size` frames by capture stamp."""

    def __init__(self, size: int = 8):
        self.size, self.frames = size, OrderedDict()

    def put(self, stamp_ns: int, frame: np.ndarray) -> None:
        self.frames[stamp_ns] = frame
        while len(self.frames) > self.size:
            self.frames.popitem(last=False)

    def get(self, stamp_ns: int) -> np.ndarray | None:
        return self.frames.get(stamp_ns)


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


def build(params: dict, cache_dir: Path, base_dir: Path | None = None, log=None) -> Identifier:
    method = params["method"]
    path = Path(params["gallery"]).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    gallery = Gallery.load(path)
    if method == "embedding":
        from iotrt.nodes.perception.modelcache import load_model

        if not params["model"]:
            raise ValueError("identity: method 'embedding' needs the 'model' parameter "
                             "(a face-embedding model; see docs/perception.md)")
        model, sha = load_model(params["model"], cache_dir, params["backend"], base_dir, log)
        extract = embedding_extractor(model, params["embed_mean"], params["embed_std"])
    else:
        sha, extract = None, lbp_extractor()
    gallery.check(method, sha, path)
    if log:
        log.info("identity: %d people (%d photos) in %s, method %s",
                 len(gallery.people), len(gallery), path, method)
    threshold = params["threshold"] or METHODS[method][1]
    return Identifier(gallery, extract, threshold, params["min_eye_px"])


def main(node: Node) -> None:
    ident = build(node.params, Path(node.state_dir) / "models", Path.cwd(), node.log)
    frames = FrameBuffer(node.params["frame_buffer"])
    node.ready()
    for event in node:
        if event.kind != "input":
            continue
        if event.input == "image":
            frames.put(event.stamp_ns, event.data)
        elif event.input == "detections":
            node.publish("faces", ident.identify(frames.get(event.stamp_ns), event.data))
