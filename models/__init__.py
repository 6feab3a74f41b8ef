"""Source models shipped with iotrt (provenance and licences in README.md beside them).

`path(name)` finds a shipped file after a regular install; `PREPROCESSING` tells the compiler how
a known model's input is scaled (matched by the source file's sha256), so artifacts compiled
from it carry that metadata without the user restating it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BLAZEFACE = "face_detection_short_range.tflite"

# sha256 of a shipped source model -> preprocessing metadata recorded in its artifacts
PREPROCESSING: dict[str, dict] = {
    # BlazeFace short range: 128x128 RGB, NHWC, pixel values mapped to [-1, 1]
    "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633": {
        "color": "RGB", "mean": [127.5, 127.5, 127.5], "std": [127.5, 127.5, 127.5],
        "input_range": [-1.0, 1.0],
    },
}


def path(name: str) -> Path:
    """Filesystem path of a shipped model file, e.g. path(BLAZEFACE)."""
    p = resources.files(__name__) / name
    if not p.is_file():
        raise FileNotFoundError(f"iotrt ships no model named {name!r}")
    return Path(str(p))
