"""Compile a source model once, cache the artifact by the model's sha256, and load it.

A graph may name a source model (`.tflite`, `.onnx`) or a compiled artifact (`.iotm`). A source
model is compiled before the node reports ready, into `<cache dir>/<sha256[:24]>-<iotrt version>.iotm`;
the next start (or another node naming the same file) finds the artifact and skips compiling.
The cache key is the file's content, not its name or mtime, so replacing the model file always
recompiles and copying it elsewhere never does. Compilation writes a temporary file and renames
it, so a node killed mid-compile leaves no half-written artifact behind.

The model's preprocessing is what its sidecar `MODEL.json` states (none without one; see
`iotrt.modelformat.preprocessing`), passed to the compiler and recorded in the artifact. It is
not part of the cache key: a cached artifact that records other preprocessing than the sidecar
now states (the sidecar was edited) is compiled again, one that records the same is used.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

from iotrt import __version__, errors
from iotrt.engine import load
from iotrt.hashing import file_sha256
from iotrt.modelformat import preprocessing
from iotrt.modelformat.artifact import read_meta

SOURCE_SUFFIXES = (".tflite", ".onnx")
ARTIFACT_SUFFIX = ".iotm"
# The face detector shipped with iotrt (models/, vendored with provenance and licence).
DEFAULT_FACE_MODEL = "face_detection_short_range.tflite"


class ModelError(errors.ModelError, RuntimeError):
    """A model that cannot be found, compiled or loaded; the message says which and why."""


def cache_dir(state_dir: str | None) -> Path:
    """Where compiled artifacts are cached: the graph's state directory, or the user's cache."""
    if state_dir:
        return Path(state_dir) / "models"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "iotrt" / "models"


def shipped_model(name: str = DEFAULT_FACE_MODEL) -> Path:
    path = Path(str(resources.files("iotrt.models") / name))
    if not path.is_file():
        raise ModelError(f"the shipped model {name} is missing from this installation "
                         f"(expected at {path}); reinstall iotrt or set the node's 'model'")
    return path


def resolve(model: str, base_dir: Path | None = None) -> Path:
    """A graph's `model` value -> an existing file (relative paths: from the graph's folder)."""
    if not model:
        return shipped_model()
    path = Path(model).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    return path


def compiled_artifact(
    src: Path, cache_dir: Path, log: logging.Logger | None = None, input_shapes=None
) -> Path:
    """The artifact for `src`: itself if already compiled, else the cached (or new) compile."""
    log = log or logging.getLogger(__name__)
    if src.suffix == ARTIFACT_SUFFIX:
        return src
    if src.suffix not in SOURCE_SUFFIXES:
        raise ModelError(f"{src}: unknown model type '{src.suffix}' "
                         f"(expected {', '.join(SOURCE_SUFFIXES + (ARTIFACT_SUFFIX,))})")
    digest = file_sha256(src)
    # Keyed by the compiler's version too: after an upgrade the model is compiled again rather
    # than an old artifact failing to load (or missing the new compiler's improvements).
    out = cache_dir / f"{digest[:24]}-{__version__}{ARTIFACT_SUFFIX}"
    try:
        stated = preprocessing.of_model(src)
    except preprocessing.PreprocessingError as exc:  # as this module's error, which callers catch
        raise ModelError(str(exc)) from exc
    if out.is_file():
        if preprocessing.recorded(read_meta(out)) == stated:
            log.info("model %s: using cached artifact %s", src.name, out)
            return out
        log.info("model %s: %s states other preprocessing than %s records: compiling again",
                 src.name, preprocessing.sidecar(src), out)
    try:
        # only to compile: a process that finds its artifact cached never imports the compiler
        from iotrt.compiler import compile_model
    except ImportError as exc:
        raise ModelError(f"compiling {src.name} needs the model compiler's front ends "
                         f"(pip install 'iotrt[compiler]'), or compile it elsewhere with "
                         f"'iotrt compile' and name the .iotm: {exc}") from exc
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    log.info("model %s: compiling once (sha256 %s...) into %s", src.name, digest[:12], out)

    def progress(line: str) -> None:
        log.debug("model %s: %s", src.name, line)

    try:
        compile_model(str(src), str(tmp), input_shapes=input_shapes, progress=progress,
                      preprocessing=stated)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def load_model(model: str, cache_dir: Path, backend: str = "auto", base_dir: Path | None = None,
               log: logging.Logger | None = None):
    """Resolve, compile if needed (cached), and load with the engine: returns (model, sha256).

    With backend "auto" and no cached choice yet (a device's first boot), the node starts on the
    numpy backend at once and the backends are measured in the background (see
    iotrt.engine.autotune): the first detection does not wait for every framework to load.
    """
    src = resolve(model, base_dir)
    artifact = compiled_artifact(src, cache_dir, log)
    return load(str(artifact), backend=backend, measure_in_background=True), file_sha256(src)
