"""The face gallery: named feature vectors on disk, shared by `iotrt enroll` and the identity node.

One `.npz` file (numpy's zip of arrays, read with allow_pickle=False so a tampered file cannot
run code) holding `names` (N,), `features` (N, D) float32 and `meta` (a JSON string: format
version, method, feature size, and for `embedding` the model's sha256, because features from two
models are not comparable). A person may have several rows (one per enrolled photo); a query's
score for a person is its best row. Saving writes a temporary file and renames it over the old
one, so a crash never leaves a half-written gallery.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from iotrt import errors

FORMAT = 1


class GalleryError(errors.StorageError, ValueError):
    """A gallery file that is missing, corrupt, or built with another method or model."""


class Gallery:
    def __init__(self, method: str, model_sha256: str | None = None):
        self.method, self.model_sha256 = method, model_sha256
        self.names: list[str] = []
        self.features = np.zeros((0, 0), np.float32)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def people(self) -> list[str]:
        return sorted(set(self.names))

    def add(self, name: str, feature: np.ndarray) -> None:
        name = name.strip()
        if not name or name == "unknown":
            raise GalleryError(f"invalid person name {name!r} ('unknown' is reserved)")
        feature = np.asarray(feature, np.float32).ravel()
        if len(self) and feature.shape[0] != self.features.shape[1]:
            raise GalleryError(
                f"feature size {feature.shape[0]} does not match the gallery's "
                f"{self.features.shape[1]} (was it built with another method or model?)"
            )
        self.names.append(name)
        self.features = feature[None] if not len(self.features) else np.vstack([self.features, feature])

    def remove(self, name: str) -> int:
        keep = [i for i, n in enumerate(self.names) if n != name]
        removed = len(self.names) - len(keep)
        self.names = [self.names[i] for i in keep]
        self.features = self.features[keep] if keep else np.zeros((0, 0), np.float32)
        return removed

    def best(self, scores: np.ndarray) -> tuple[str, float]:
        """The best-scoring person given one score per row."""
        i = int(np.argmax(scores))
        return self.names[i], float(scores[i])

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "method": self.method, "model_sha256": self.model_sha256,
                "dim": int(self.features.shape[1]) if len(self) else 0}
        fd, tmp = tempfile.mkstemp(prefix=".gallery-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, names=np.array(self.names, dtype=str),
                         features=self.features.astype(np.float32), meta=np.array(json.dumps(meta)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Gallery:
        path = Path(path)
        if not path.is_file():
            raise GalleryError(f"gallery {path} does not exist: enroll someone first "
                               f"(iotrt enroll NAME PHOTO... --gallery {path})")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                names = [str(n) for n in z["names"]]
                features = z["features"].astype(np.float32)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise GalleryError(f"gallery {path} is not a readable gallery file: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise GalleryError(f"gallery {path} has format {meta.get('format')}, expected {FORMAT}")
        if len(names) != len(features):
            raise GalleryError(f"gallery {path} is inconsistent: {len(names)} names, {len(features)} rows")
        g = cls(meta["method"], meta.get("model_sha256"))
        g.names, g.features = names, features if len(names) else np.zeros((0, 0), np.float32)
        return g

    @classmethod
    def open_or_create(cls, path: str | Path, method: str, model_sha256: str | None) -> Gallery:
        if not Path(path).exists():
            return cls(method, model_sha256)
        g = cls.load(path)
        g.check(method, model_sha256, path)
        return g

    def check(self, method: str, model_sha256: str | None, path) -> None:
        if self.method != method:
            raise GalleryError(f"gallery {path} was built with method '{self.method}', "
                               f"not '{method}': use another --gallery or the same method")
        if method == "embedding" and self.model_sha256 != model_sha256:
            raise GalleryError(f"gallery {path} was built with another embedding model "
                               f"(sha256 {str(self.model_sha256)[:12]}...): re-enroll with this model")
