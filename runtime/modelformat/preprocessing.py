"""Preprocessing metadata: how a model's input is made from pixels, as its compiler's caller states it.

The compiler records it in the artifact's `meta` and never guesses it. Every key is optional:

- `color`: "RGB" or "BGR", the channel order the model expects;
- `mean`, `std`: per-channel numbers, the model expects `(pixel - mean) / std`;
- `input_range`: `[lo, hi]`, the range of the model's input after that scaling.

It is stated in Python (`compile_model(..., preprocessing={...})`), on the command line
(`iotrt compile --color/--mean/--std/--input-range`), or in a JSON file beside the source model
named like it plus `.json` (`face.tflite` -> `face.tflite.json`), which `iotrt compile` and the
perception nodes' model cache read. `check` validates and normalises any of these.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from iotrt.modelformat.errors import PreprocessingError

KEYS = ("color", "mean", "std", "input_range")   # also the order recorded in an artifact
COLORS = ("RGB", "BGR")
MAX_CHANNELS = 64
MAX_FILE_BYTES = 64 * 1024


def _numbers(value, key: str, where: str, count: int | None = None) -> list[float]:
    if not isinstance(value, (list, tuple)) or not value or len(value) > MAX_CHANNELS:
        raise PreprocessingError(f"{where}: '{key}' must be a list of 1 to {MAX_CHANNELS} numbers, "
                                 f"not {value!r:.60}")
    if count is not None and len(value) != count:
        raise PreprocessingError(f"{where}: '{key}' must have {count} numbers, not {len(value)}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise PreprocessingError(f"{where}: '{key}' holds {v!r:.40}, not a number")
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            raise PreprocessingError(f"{where}: '{key}' holds {v!r:.40}, not a finite number")
        out.append(f)
    return out


def check(value, where: str) -> dict:
    """`value` validated and normalised (numbers as floats, keys in `KEYS` order); `where` (a
    file, an option) starts every error message."""
    if not isinstance(value, dict):
        raise PreprocessingError(f"{where}: preprocessing must be a mapping of "
                                 f"{', '.join(KEYS)}, not {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in KEYS)
    if unknown:
        raise PreprocessingError(f"{where}: unknown preprocessing key(s) {', '.join(map(repr, unknown))} "
                                 f"(known: {', '.join(KEYS)})")
    out: dict = {}
    if "color" in value:
        if value["color"] not in COLORS:
            raise PreprocessingError(f"{where}: 'color' must be one of {', '.join(COLORS)}, "
                                     f"not {value['color']!r:.40}")
        out["color"] = value["color"]
    if "mean" in value:
        out["mean"] = _numbers(value["mean"], "mean", where)
    if "std" in value:
        out["std"] = _numbers(value["std"], "std", where, len(out["mean"]) if "mean" in out else None)
        if 0.0 in out["std"]:
            raise PreprocessingError(f"{where}: 'std' must not hold 0 (it divides)")
    if "input_range" in value:
        lo, hi = out["input_range"] = _numbers(value["input_range"], "input_range", where, 2)
        if not lo < hi:
            raise PreprocessingError(f"{where}: 'input_range' must be [lo, hi] with lo < hi, "
                                     f"not {[lo, hi]}")
    return out


def sidecar(model: str | Path) -> Path:
    """The preprocessing file of a source model: its path plus `.json`."""
    model = Path(model)
    return model.with_name(model.name + ".json")


def read(path: str | Path) -> dict:
    """A preprocessing JSON file, checked (errors name the file)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PreprocessingError(f"{path}: cannot read preprocessing: {exc.strerror}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise PreprocessingError(f"{path}: larger than {MAX_FILE_BYTES} bytes, not a preprocessing file")
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise PreprocessingError(f"{path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise PreprocessingError(f"{path}: not a JSON preprocessing file ({type(exc).__name__})") from None
    return check(value, str(path))


def of_model(model: str | Path) -> dict:
    """What the source model's sidecar file states, or {} when it has none."""
    path = sidecar(model)
    return read(path) if path.is_file() else {}


def recorded(meta: dict) -> dict:
    """The preprocessing part of an artifact's `meta`."""
    return {k: meta[k] for k in KEYS if k in meta}
