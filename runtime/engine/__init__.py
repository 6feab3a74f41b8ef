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

from iotrt.compiler.artifact import (
    Artifact,
    ArtifactCorruptError,
    ArtifactError,
    ArtifactVersionError,
    read,
)
from iotrt.compiler.ir import TensorSpec
from iotrt.engine.numpy import EngineError, InputError

__all__ = [
    "BACKENDS", "load", "TensorSpec", "ArtifactError", "ArtifactCorruptError",
    "ArtifactVersionError", "BackendUnavailable", "EngineError", "InputError",
]

# backend name -> module with `load(artifact) -> model`
BACKENDS: dict[str, str] = {
    "numpy": "iotrt.engine.numpy",
}


class BackendUnavailable(RuntimeError):
    """The requested backend is unknown or its library is not installed here."""


def load(path: str | Path | Artifact, backend: str = "auto"):
    """Load an artifact (a path, or an already read `Artifact`) on `backend`.

    "auto" picks the backend for this device; until measured selection lands it is numpy,
    the reference backend that always works.
    """
    art = path if isinstance(path, Artifact) else read(path)
    name = "numpy" if backend == "auto" else backend
    if name not in BACKENDS:
        raise BackendUnavailable(
            f"unknown backend '{backend}' (available: auto, {', '.join(BACKENDS)})")
    try:
        module = importlib.import_module(BACKENDS[name])
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(
            f"backend '{name}' needs the Python package '{exc.name}', which is not installed") from exc
    return module.load(art)
