"""Modules imported on first use: `from iotrt.lazy import numpy as np` costs nothing until the
first `np.something`. The supervisor and the light nodes (a lock, a log actuator) share the
wire and bus code with the array-carrying nodes, and must not pay numpy's ~12 MB for it."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class LazyModule(types.ModuleType):
    """Stands in for a module; the first attribute access imports it and takes its attributes,
    so later accesses are as fast as on the module itself."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:     # deferred with `defer`: step aside
            del sys.modules[self.__name__]
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, name)


def defer(name: str) -> None:
    """Make a later `import name` (by anyone) cheap until the module is first used."""
    if name not in sys.modules:
        sys.modules[name] = LazyModule(name)


numpy = LazyModule("numpy")
