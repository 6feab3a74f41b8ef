"""Source models shipped with iotrt (provenance and licences in README.md beside them).

`path(name)` finds a shipped file after a regular install. Each model's preprocessing is stated
beside it in `NAME.json` (e.g. `face_detection_short_range.tflite.json`), the file `iotrt compile`
and the perception nodes' model cache read for any source model (`iotrt.modelformat.preprocessing`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BLAZEFACE = "face_detection_short_range.tflite"


def path(name: str) -> Path:
    """Filesystem path of a shipped model file, e.g. path(BLAZEFACE)."""
    p = resources.files(__name__) / name
    if not p.is_file():
        raise FileNotFoundError(f"iotrt ships no model named {name!r}")
    return Path(str(p))
