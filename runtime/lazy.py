"""Modules imported on first use: `from iotrt.lazy import numpy as np` costs nothing until the
first `np.something`. The supervisor and the light nodes (a lock, a log actuator) share the
wire and bus code with the array-carrying nodes, and must not pay numpy's ~12 MB for it."""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any

# Two threads (nodes of one process group) may touch a deferred module first at the same time:
# one steps it aside and imports it, the other must then find the real module, not remove it.
_swap = threading.RLock()


class LazyModule(types.ModuleType):
    """Stands in for a module; the first attribute access imports it and takes its attributes,
    so later accesses are as fast as on the module itself."""

    def __getattr__(self, name: str) -> Any:
        with _swap:
            if sys.modules.get(self.__name__) is self:     # deferred with `defer`: step aside
                del sys.modules[self.__name__]
            module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, name)


def defer(name: str) -> None:
    """Make a later `import name` (by anyone) cheap until the module is first used."""
    if name not in sys.modules:
        sys.modules[name] = LazyModule(name)


# Imported at start-up by the runtime's dependencies, used rarely or never in a running graph:
# asyncio: pynng's async API, which nothing here uses (it also imports ssl: ~6 MB of RSS);
# uuid: the id of a command, made by its sender (the lock never sends one);
# tempfile: a private /tmp runtime folder, made only where none is given;
# difflib: "did you mean" hints in graph errors. ~1.4 MB of RSS together besides asyncio.
# ssl, hashlib, hmac, secrets load OpenSSL (libssl, libcrypto: ~1.5 MB of PSS per process):
# http.server imports ssl for HTTPS clients it never makes; the web node makes its token with
# secrets on its first start only and checks one with hmac only when a client comes. Each is
# loaded by its first use.
RARELY_USED = ("asyncio", "uuid", "tempfile", "difflib", "ssl", "hashlib", "hmac", "secrets")


def defer_rarely_used() -> None:
    """Called first by the processes of a running graph (the supervisor, each node process)."""
    for name in RARELY_USED:
        defer(name)


numpy = LazyModule("numpy")
