"""Load a compiled artifact and run it on one of the backends.

```python
from iotrt.engine import load
model = load("face.iotm")                  # backend="auto" | "numpy" | ...
model.inputs, model.outputs                # lists of TensorSpec(name, shape, dtype)
model.meta                                 # preprocessing metadata recorded at compile time
outputs = model.run({"input": x})          # dict name -> np.ndarray (fresh arrays)
```

Each backend is one module with `load(artifact) -> model`; the registry below is explicit.
Only numpy is needed to load and run an artifact.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from iotrt.compiler.artifact import Artifact, ArtifactCorruptError, ArtifactError, ArtifactVersionError, read
from iotrt.compiler.ir import TensorSpec
from iotrt.engine.backend import BackendUnavailable, default_threads
from iotrt.engine.numpy import EngineError, InputError

__all__ = [
    "BACKENDS", "load", "TensorSpec", "ArtifactError", "ArtifactCorruptError",
    "ArtifactVersionError", "BackendUnavailable", "EngineError", "InputError",
]

# backend name -> module with `load(artifact) -> model`
BACKENDS: dict[str, str] = {
    "numpy": "iotrt.engine.numpy",
    "opencv": "iotrt.engine.opencv",
    "onnxruntime": "iotrt.engine.onnxruntime",
    "litert": "iotrt.engine.litert",
}


def load(path: str | Path | Artifact, backend: str | None = None, threads: int | None = None,
         measure_in_background: bool = False):
    """Load an artifact (a path, or an already read `Artifact`) on `backend`.

    None means the artifact's own preference (`iotrt compile --target`, by default "auto").
    "auto" picks the fastest backend on this device (measured at the first load, cached next to
    the artifact: see `iotrt.engine.autotune`). `threads` fixes the backend's thread pool
    (default: $IOTRT_THREADS, else $OMP_NUM_THREADS, else 1). With `measure_in_background`, an
    "auto" load with no cached choice returns at once on numpy and measures in a separate
    process (when `path` is a file; else in a background thread), switching backend between
    two runs when it is done (nodes use this: their first result does not wait for every backend
    to load and be timed, and their process imports only the framework it ends up running).
    """
    art = path if isinstance(path, Artifact) else read(path)
    threads = default_threads() if threads is None else threads
    backend = backend or art.meta.get("target") or "auto"
    if backend == "auto":
        from iotrt.engine import autotune

        where = None if isinstance(path, Artifact) else Path(path)
        return autotune.load_auto(art, where, list(BACKENDS), lambda n: _load(art, n, threads), threads,
                                  background=measure_in_background, isolate=measure_in_background)
    return _load(art, backend, threads)


def _load(art: Artifact, name: str, threads: int):
    if name not in BACKENDS:
        raise BackendUnavailable(
            f"unknown backend '{name}' (available: auto, {', '.join(BACKENDS)})")
    try:
        module = importlib.import_module(BACKENDS[name])
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(
            f"backend '{name}' needs the Python package '{exc.name}', which is not installed") from exc
    return module.load(art, threads=threads)
