"""Perception nodes: detectors running compiled CNNs, face identity, pose.

The functions below are the enrolment entry point (`iotrt enroll`: a face gallery from photos)
that the identity kind's SPEC names as its `enroll` hook; the command line reaches them through
that SPEC (iotrt.kinds), and nothing else of this package. Each imports its modules when
called, so that a perception node that needs none of them (pose) does not load OpenCV and the
engines by importing this package.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from iotrt.errors import IotrtError


class EnrollError(IotrtError, RuntimeError):
    """A photo, model or gallery that cannot be used; the message names it."""


@dataclass(frozen=True)
class Method:
    """How features are taken from a face: `lbp` (no model) or `embedding` (a face-embedding
    model, its input = (pixel - mean) / std)."""

    name: str = "lbp"
    model: str = ""
    mean: float = 127.5
    std: float = 127.5
    backend: str = "auto"


def enroll_methods() -> tuple[str, ...]:
    from iotrt.nodes.perception.matcher import METHODS  # numpy and OpenCV: see the docstring

    return tuple(METHODS)


def gallery_listing(path: Path) -> list[str]:
    """What a gallery holds: a line for the file, then one per person."""
    from iotrt.nodes.perception.gallery import Gallery, GalleryError

    try:
        g = Gallery.load(path)
    except GalleryError as exc:
        raise EnrollError(str(exc)) from exc
    return ([f"{path}: method {g.method}, {len(g.people)} people, {len(g)} photos"]
            + [f"  {person}: {g.names.count(person)} photo(s)" for person in g.people])


def unenroll(path: Path, name: str, method: Method) -> int:
    """Remove `name` from the gallery at `path` (built with `method`); how many photos."""
    with _errors():
        gallery = _open(path, method)[0]
        removed = gallery.remove(name)
        if not removed:
            raise EnrollError(f"{name!r} is not in {path}")
        _save(gallery, path)
    return removed


def enroll(path: Path, name: str, photos: list[Path], method: Method, detector: str = "",
           replace: bool = False, progress: Callable[[str], None] = print):
    """Add `name` to the gallery at `path` (created if missing) from `photos`, the largest
    face of each; `replace` drops their earlier photos first. The gallery is written only
    when every photo worked, so a typo in one file name never leaves a half-enrolled person
    behind. `progress` gets a line per photo. Returns the gallery."""
    from iotrt.nodes.perception.facefeatures import FeatureError
    from iotrt.nodes.perception.inference import FaceDetector
    from iotrt.nodes.perception.modelcache import cache_dir, load_model

    with _errors():
        gallery, extract = _open(path, method)
        detector_model, _ = load_model(detector, cache_dir(None), method.backend, Path.cwd())
        detect = FaceDetector(detector_model)
        features = []
        for photo in photos:
            frame = _read_rgb(photo)
            kps, note = _face_of(photo, frame, detect)
            try:
                features.append(extract(frame, kps))
            except FeatureError as exc:
                raise EnrollError(f"{photo}: {exc}") from exc
            progress(f"  {photo}: {note}")
        if replace:
            gallery.remove(name)
        for feature in features:
            gallery.add(name, feature)
        _save(gallery, path)
    return gallery


@contextmanager
def _errors():
    """The perception modules' own errors, as the EnrollError the command line reports."""
    from iotrt.nodes.perception.gallery import GalleryError
    from iotrt.nodes.perception.inference import DetectorError
    from iotrt.nodes.perception.modelcache import ModelError

    try:
        yield
    except (GalleryError, ModelError, DetectorError) as exc:
        raise EnrollError(str(exc)) from exc


def _open(path: Path, method: Method):
    """(the gallery at `path` or a new one, the feature extractor of `method`)."""
    from iotrt.nodes.perception.gallery import Gallery
    from iotrt.nodes.perception.matcher import embedding_extractor, lbp_extractor
    from iotrt.nodes.perception.modelcache import cache_dir, load_model

    sha = None
    if method.name == "embedding":
        if not method.model:
            raise EnrollError("--method embedding needs --model (see docs/perception.md)")
        model, sha = load_model(method.model, cache_dir(None), method.backend, Path.cwd())
        extract = embedding_extractor(model, method.mean, method.std)
    else:
        extract = lbp_extractor()
    return Gallery.open_or_create(path, method.name, sha), extract


def _save(gallery, path: Path) -> None:
    try:
        gallery.save(path)
    except OSError as exc:
        raise EnrollError(f"cannot write the gallery {path}: {exc.strerror or exc}") from exc


def _read_rgb(path: Path):
    import cv2

    if not path.is_file():
        raise EnrollError(f"{path}: no such file")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise EnrollError(f"{path}: not an image OpenCV can read")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _face_of(path: Path, frame, detect) -> tuple:
    """The keypoints of the largest face in the photo, and a line describing it."""
    import numpy as np

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
