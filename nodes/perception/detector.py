"""Detector node: runs a compiled CNN on each frame. Modes: BlazeFace faces, or a classifier.

The model named in the graph (default: the shipped BlazeFace) is compiled once before the node
starts (cached by its sha256 in the state directory, see modelcache.py) and loaded; only then
does the node report ready, so the supervisor does not route frames to a node still compiling.

Output `detections` (mode `blazeface`), in frame pixels, `stamp_ns` = the frame's capture time:
    {"boxes": [[x1, y1, x2, y2], ...], "scores": [...],
     "keypoints": [[[x, y] * 6], ...],   # right eye, left eye, nose, mouth, right ear, left ear
     "size": [width, height], "model_ms": float, "stale": int}
Mode `classifier`: {"top": [{"index": i, "label": str, "score": p}, ...], "model_ms", "stale"}.

Frames are latest-wins: the input queue drops the oldest when the detector is busy (counted by
the bus), and a frame older than `max_age_ms` when the detector gets to it is skipped and
counted in `stale`: answering about the past is worse than skipping to the present.
"""

from __future__ import annotations

from pathlib import Path

from iotrt.node import Node, NodeSpec, Param

# iotrt.engine.BACKENDS, named here: the engine (numpy, OpenCV) loads when the node starts, not
# when `iotrt up` or `iotrt validate` reads this SPEC (tests/nodes/test_spec_imports.py keeps them equal).
BACKENDS = ("numpy", "opencv", "onnxruntime", "litert")
SPEC = NodeSpec(
    doc="runs a compiled CNN on frames: BlazeFace faces (boxes, scores, keypoints) or top-k classes",
    inputs={"image": "RGB uint8 frame"},
    outputs={"detections": "faces {boxes, scores, keypoints, size} or classes {top}"},
    params=[
        Param("model", str, "", "source model (.tflite/.onnx, compiled once) or .iotm artifact; "
                                "empty: the shipped BlazeFace"),
        Param("mode", str, "blazeface", "how to read the model's outputs",
              choices=("blazeface", "classifier")),
        Param("backend", str, "auto", "engine backend",
              choices=("auto", *BACKENDS)),
        Param("score_threshold", float, 0.5, "blazeface: minimum face score (MediaPipe: 0.5)",
              min=0.0, max=1.0),
        Param("nms_iou", float, 0.3, "blazeface: weighted-NMS overlap (MediaPipe: 0.3)",
              min=0.0, max=1.0),
        Param("max_age_ms", float, 1000.0, "skip frames older than this when dequeued (0: never)",
              min=0.0),
        Param("top_k", int, 5, "classifier: how many classes to publish", min=1),
        Param("labels", str, "", "classifier: text file, one label per line"),
        Param("mean", list, [123.675, 116.28, 103.53], "classifier: per-channel mean (0..255)"),
        Param("std", list, [58.395, 57.12, 57.375], "classifier: per-channel std (0..255)"),
    ],
)


def main(node: Node) -> None:
    # the engine, numpy and OpenCV: loaded by the running node, not by reading SPEC
    from iotrt.nodes.perception.inference import DetectorError, build, handle_frame
    from iotrt.nodes.perception.modelcache import cache_dir

    state = build(node.params, cache_dir(node.config.state_dir), Path.cwd(), node.log)
    node.ready()
    bad = 0
    for event in node:
        if event.kind == "input" and event.input == "image":
            try:
                msg = handle_frame(event.data, event.stamp_ns, state)
            except DetectorError as exc:
                # A bad frame from a misconfigured upstream: skip it, keep serving good ones.
                bad += 1
                if bad == 1 or bad % 100 == 0:
                    node.log.warning("detector: skipped %d bad frame(s): %s", bad, exc)
                continue
            if msg is not None:
                node.publish("detections", msg)
