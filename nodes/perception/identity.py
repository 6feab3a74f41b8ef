"""Identity node: names the faces the detector found, against a gallery of enrolled people.

Inputs: `image` (the camera's frames) and `detections` (the detector's faces for one of those
frames, carrying the frame's `stamp_ns`). The node keeps the last few frames by stamp and pairs
each detections message with its frame (matcher.Pairer: detections read before their frame
wait for it); a message whose frame is gone (dropped upstream) is published with every face
`unknown`, score 0, and counted in `unpaired`, so a rule never waits on a face it was not told
about. Give the `image` input a queue of at least 2 so frames are rarely lost.

Output `faces`, one per detections message (also when nobody is there, so rules see both edges):
    {"faces": [{"name": "owner", "score": 0.93, "known": true, "box": [x1, y1, x2, y2],
                "track": 1, "held": false, "person": "owner"}, ...],
     "known": ["owner"],      # enrolled people matched in this frame, sorted, no repeats
     "unknown": 1,            # faces of this frame that matched nobody
     "people": ["owner"],     # whom the faces in view were recognised as (tracked)
     "visitors": 1,           # faces in view recognised as nobody (tracked)
     "method": "lbp", "unpaired": 0}

Faces are followed across frames (tracker.py): `track` numbers a face for as long as it is in
view, a face the detector missed stays for `track_hold_s` as a `held` face (never `known`: it
was not seen), and `person` is whom its track was recognised as. One visit is one episode for
the rules (`all(f.known is not True and f.get("person") is None ...)`: a visitor) and the
journal.

Journal: a `faces_seen` event each time the view changes (someone enrolled arrives or leaves, a
visitor appears or goes) and holds for 3 results, so `iotrt events` tells who came when.

On reload (SIGHUP, `iotrt reload`) the gallery is read again, so newly enrolled people are
recognised without a restart. Methods and their honest limits: facefeatures.py and
docs/perception.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.perception.tracker import Tracker

if TYPE_CHECKING:
    from iotrt.nodes.perception.matcher import Identifier

# The gallery, matcher and model cache (numpy, OpenCV, the engine) load when the node starts,
# not when `iotrt up` or `iotrt validate` reads this SPEC. matcher.METHODS' names, kept equal to
# them by tests/nodes/test_spec_imports.py:
METHODS = ("lbp", "embedding")

SPEC = NodeSpec(
    doc="names detected faces against an enrolled gallery (LBP or a face-embedding CNN)",
    inputs={"image": "RGB uint8 frame", "detections": "detector faces with keypoints"},
    outputs={"faces": "{faces: [{name, score, known, box, track, held, person}], "
                      "known: [names], unknown: n, people: [names], visitors: n, method, "
                      "unpaired}"},
    params=[
        Param("gallery", str, "gallery.npz", "gallery file written by 'iotrt enroll'"),
        Param("method", str, "lbp", "matching method", choices=METHODS),
        Param("threshold", float, 0.0, "minimum score to name a face (0: the method's default)",
              min=0.0, max=1.0),
        Param("model", str, "", "embedding: face-embedding model (.onnx/.tflite/.iotm)"),
        Param("backend", str, "auto", "embedding: engine backend"),
        Param("embed_mean", float, 127.5, "embedding: input = (pixel - mean) / std"),
        Param("embed_std", float, 127.5, "embedding: see embed_mean"),
        Param("min_eye_px", float, 8.0, "faces with eyes closer than this (pixels) are unknown"),
        Param("frame_buffer", int, 8, "recent frames (and early detections) kept for pairing",
              min=1),
        Param("track_hold_s", float, 1.0, "a tracked face the detector misses stays in view "
                                          "this long (capture time)", min=0.0, max=60.0),
        Param("track_iou", float, 0.3, "box overlap (IoU) that links a face to the previous "
                                       "frames' face", min=0.01, max=1.0),
        Param("track_confirm", int, 2, "frames of a track that must match the same enrolled "
                                       "person before the track is theirs", min=1),
    ],
    enroll="iotrt.nodes.perception",   # `iotrt enroll`: the package's entry point (its docstring)
)


def build(params: dict, models_dir: Path, base_dir: Path | None = None, log=None) -> Identifier:
    from iotrt.nodes.perception.gallery import Gallery
    from iotrt.nodes.perception.matcher import METHODS, Identifier, embedding_extractor, lbp_extractor
    from iotrt.nodes.perception.modelcache import load_model

    method = params["method"]
    path = Path(params["gallery"]).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    gallery = Gallery.load(path)
    if method == "embedding":
        if not params["model"]:
            raise ValueError("identity: method 'embedding' needs the 'model' parameter "
                             "(a face-embedding model; see docs/perception.md)")
        model, sha = load_model(params["model"], models_dir, params["backend"], base_dir, log)
        extract = embedding_extractor(model, params["embed_mean"], params["embed_std"])
    else:
        sha, extract = None, lbp_extractor()
    gallery.check(method, sha, path)
    if log:
        log.info("identity: %d people (%d photos) in %s, method %s",
                 len(gallery.people), len(gallery), path, method)
    threshold = params["threshold"] or METHODS[method][1]
    return Identifier(gallery, extract, threshold, params["min_eye_px"])


class Presence:
    """Who is in view, debounced: `update(out)` returns a journal entry when the people in view
    (the tracked `people`, and whether a visitor is there; `known`/`unknown` of one frame when
    the output is not tracked) changed and the new view has held for `hold` consecutive
    results, else None. One missed detection does not make the owner leave and come back in
    the journal."""

    def __init__(self, hold: int = 3):
        self.hold = hold
        self.current: tuple = ((), False)       # nobody, at start
        self._candidate: tuple | None = None
        self._count = 0

    def update(self, out: dict) -> dict | None:
        known, unknown = ((out["people"], out["visitors"]) if "people" in out
                          else (out["known"], out["unknown"]))
        view = (tuple(known), unknown > 0)
        if view == self.current:
            self._candidate, self._count = None, 0
            return None
        self._count = self._count + 1 if view == self._candidate else 1
        self._candidate = view
        if self._count < self.hold:
            return None
        self.current, self._candidate, self._count = view, None, 0
        return {"known": list(known), "unknown": unknown, "faces": len(out["faces"]),
                "scores": {f["name"]: f["score"] for f in out["faces"] if f["known"]}}


def main(node: Node) -> None:
    from iotrt.nodes.perception.gallery import GalleryError
    from iotrt.nodes.perception.matcher import Pairer
    from iotrt.nodes.perception.modelcache import ModelError, cache_dir

    ident = build(node.params, cache_dir(node.config.state_dir), Path.cwd(), node.log)
    pairer = Pairer(node.params["frame_buffer"])
    presence = Presence()
    p = node.params
    tracker = Tracker(p["track_hold_s"], p["track_iou"], p["track_confirm"])
    node.ready()
    bad = 0
    for event in node:
        if event.kind == "reload":
            # `iotrt enroll` then `iotrt reload`: pick up the new gallery without a restart.
            # A broken gallery keeps the old one running rather than taking the door down.
            try:
                ident = build(node.params, cache_dir(node.config.state_dir), Path.cwd(), node.log)
            except (GalleryError, ModelError) as exc:
                node.log.error("identity: reload failed, keeping the previous gallery: %s", exc)
            continue
        if event.kind != "input":
            continue
        if event.input == "image":
            pairs = pairer.frame(event.stamp_ns, event.data)
        elif event.input == "detections":
            pairs = pairer.detections(event.stamp_ns, event.data)
        else:
            continue
        for stamp, det, frame in pairs:
            try:
                out = ident.identify(frame, det)
            except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
                # Detections not in the detector's format: skip them, keep naming good ones.
                bad += 1
                if bad == 1 or bad % 100 == 0:
                    node.log.warning("identity: skipped %d malformed detections: %r", bad, exc)
                continue
            tracker.update(out, stamp)
            node.publish("faces", out, stamp_ns=stamp)
            seen = presence.update(out)
            if seen is not None:
                # the journal's "who came and went" (not every frame: that is the bus's job)
                node.record("faces_seen", **seen)
