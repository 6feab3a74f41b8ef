"""`iotrt enroll NAME PHOTO... [--gallery PATH]`: add a person to a face gallery from photos.

Each photo must show the person's face (the largest face is taken when there are several). The
gallery is written only when every photo worked, so a typo in one file name never leaves a
half-enrolled person behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from iotrt.errors import IotrtError, UsageError
from iotrt.nodes.perception.facefeatures import FeatureError
from iotrt.nodes.perception.gallery import Gallery, GalleryError
from iotrt.nodes.perception.inference import DetectorError, FaceDetector
from iotrt.nodes.perception.matcher import METHODS, embedding_extractor, lbp_extractor
from iotrt.nodes.perception.modelcache import ModelError, cache_dir, load_model


class EnrollError(IotrtError, RuntimeError):
    """A photo or model that cannot be used; the message names it."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="the person's name, as rules will see it")
    p.add_argument("photos", nargs="*", type=Path, help="photos showing the person's face")
    p.add_argument("--gallery", type=Path, default=Path("gallery.npz"),
                   help="gallery file to create or extend (default: ./gallery.npz)")
    p.add_argument("--method", choices=tuple(METHODS), default="lbp",
                   help="lbp: no model, convenience-grade (default); embedding: a face-embedding "
                        "model given with --model")
    p.add_argument("--model", default="", help="embedding: face-embedding model "
                                               "(.onnx/.tflite, compiled once, or .iotm)")
    p.add_argument("--embed-mean", type=float, default=127.5,
                   help="embedding: model input = (pixel - mean) / std (default 127.5)")
    p.add_argument("--embed-std", type=float, default=127.5, help="embedding: see --embed-mean")
    p.add_argument("--detector", default="", help="face detector model (default: the shipped BlazeFace)")
    p.add_argument("--backend", default="auto", help="engine backend (default: auto)")
    p.add_argument("--replace", action="store_true", help="drop NAME's earlier photos first")
    p.add_argument("--remove", action="store_true", help="remove NAME from the gallery")
    p.add_argument("--list", action="store_true", help="list the people in the gallery")


def read_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise EnrollError(f"{path}: no such file")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise EnrollError(f"{path}: not an image OpenCV can read")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def face_of(path: Path, frame: np.ndarray, detect: FaceDetector) -> tuple[np.ndarray, str]:
    """The keypoints of the largest face in the photo, and a line describing it."""
    det = detect(frame)
    if not det["boxes"]:
        raise EnrollError(f"{path}: no face found (the detector wants a roughly frontal face, "
                          f"at least ~1/10 of the photo's height)")
    boxes = np.array(det["boxes"])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    i = int(np.argmax(areas))
    x1, y1, x2, y2 = boxes[i]
    note = f"face {x2 - x1:.0f}x{y2 - y1:.0f} px, score {det['scores'][i]:.2f}"
    if len(boxes) > 1:
        note += f" (the largest of {len(boxes)} faces)"
    return np.array(det["keypoints"][i]), note


def _list(gallery_path: Path) -> int:
    g = Gallery.load(gallery_path)
    print(f"{gallery_path}: method {g.method}, {len(g.people)} people, {len(g)} photos")
    for person in g.people:
        print(f"  {person}: {g.names.count(person)} photo(s)")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.list:
            return _list(args.gallery)
        if not args.name:
            raise UsageError("give a NAME and at least one PHOTO (or --list)")
        return _enroll(args)
    except (EnrollError, GalleryError, ModelError, DetectorError) as exc:
        print(f"iotrt enroll: {exc}", file=sys.stderr)
        return 1


def _enroll(args: argparse.Namespace) -> int:
    models = cache_dir(None)
    sha = None
    if args.method == "embedding":
        if not args.model:
            raise EnrollError("--method embedding needs --model (see docs/perception.md)")
        model, sha = load_model(args.model, models, args.backend, Path.cwd())
        extract = embedding_extractor(model, args.embed_mean, args.embed_std)
    else:
        extract = lbp_extractor()
    gallery = Gallery.open_or_create(args.gallery, args.method, sha)
    if args.remove:
        removed = gallery.remove(args.name)
        if not removed:
            raise EnrollError(f"{args.name!r} is not in {args.gallery}")
        gallery.save(args.gallery)
        print(f"removed {args.name} ({removed} photo(s)) from {args.gallery}")
        return 0
    if not args.photos:
        raise UsageError("give at least one PHOTO of the person")
    detector_model, _ = load_model(args.detector, models, args.backend, Path.cwd())
    detect = FaceDetector(detector_model)
    features = []
    for path in args.photos:
        frame = read_rgb(path)
        kps, note = face_of(path, frame, detect)
        try:
            features.append(extract(frame, kps))
        except FeatureError as exc:
            raise EnrollError(f"{path}: {exc}") from exc
        print(f"  {path}: {note}", flush=True)
    if args.replace:
        gallery.remove(args.name)
    for feature in features:
        gallery.add(args.name, feature)
    gallery.save(args.gallery)
    print(f"enrolled {args.name} from {len(features)} photo(s) into {args.gallery} "
          f"({len(gallery.people)} people, {len(gallery)} photos, method {args.method})")
    return 0
