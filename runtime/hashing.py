"""Content hashes of files, shared by the compiler, the engine's autotune cache and the nodes.

Stdlib only, so a node can import it without pulling in the compiler's front ends or numpy.
CPython's own sha256, not hashlib's: `import hashlib` loads OpenSSL (libcrypto, ~1 MB of each
node process's memory) for digests that are the same (as bus.py and shm.py do for blake2s).
"""

from __future__ import annotations

from pathlib import Path

try:
    from _sha2 import sha256  # CPython >= 3.12
except ImportError:
    from _sha256 import sha256  # CPython 3.10, 3.11


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of the file's bytes, read in 1 MiB blocks (models can be large)."""
    h = sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
