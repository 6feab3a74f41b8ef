"""Load a compiled artifact and run it on one of the backends.

```python
from iotrt.engine import load
model = load("face.iotm")                  # backend="auto" | "numpy" | ...
model.inputs, model.outputs                # lists of TensorSpec(name, shape, dtype)
model.meta                                 # preprocessing metadata recorded at compile time
outputs = model.run({"input": x})          # dict name -> np.ndarray (fresh arrays)
```

Each backend is one module with `load(artifact, threads) -> model`, listed in `BACKENDS`
(`iotrt.engine.backend`). Only numpy is needed to load and run an artifact.
"""

from __future__ import annotations

from pathlib import Path

from iotrt.engine.backend import BACKENDS, default_threads, load_backend
from iotrt.modelformat.artifact import Artifact, read
from iotrt.modelformat.errors import (
    ArtifactCorruptError,
    ArtifactError,
    ArtifactVersionError,
    BackendUnavailable,
    EngineError,
    InputError,
)
from iotrt.modelformat.ir import TensorSpec

__all__ = [
    "BACKENDS", "load", "TensorSpec", "ArtifactError", "ArtifactCorruptError",
    "ArtifactVersionError", "BackendUnavailable", "EngineError", "InputError",
]


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
        from iotrt.engine import autotune  # only for "auto": it brings subprocess, threading, ...

        where = None if isinstance(path, Artifact) else Path(path)
        return autotune.load_auto(art, where, list(BACKENDS), lambda n: load_backend(art, n, threads), threads,
                                  background=measure_in_background, isolate=measure_in_background)
    return load_backend(art, backend, threads)

