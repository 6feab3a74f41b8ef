"""Modules imported on first use: `from iotrt.lazy import numpy as np` costs nothing until the
first `np.something`. The supervisor and the light nodes (a lock, a log actuator) share the
wire and bus code with the array-carrying nodes, and must not pay numpy's ~12 MB for it."""

from __future__ import annotations

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
    """Stands in for a module; the first attribute access imports it and takes its attributes,
    so later accesses are as fast as on the module itself."""

    def __getattr__(self, name: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, name)


numpy = LazyModule("numpy")
