"""Content hashes of files, shared by the compiler, the engine's autotune cache and the nodes.

Stdlib only, so a node can import it without pulling in the compiler's front ends or numpy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of the file's bytes, read in 1 MiB blocks (models can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
