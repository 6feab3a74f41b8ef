"""Errors of the model format and of running a model: raised by the engine, the reference
kernels and the artifact reader, caught by the compiler, the engine's callers and the CLI.
"""

from __future__ import annotations


class ArtifactError(Exception):
    """The artifact cannot be used (base class)."""


class ArtifactCorruptError(ArtifactError):
    """The file is not an artifact, or it is truncated or damaged."""


class ArtifactVersionError(ArtifactError):
    """The artifact was written in a format this iotrt does not read."""


class KernelError(ValueError):
    """An op got inputs or attributes it cannot handle (the engine adds the node name)."""


class EngineError(RuntimeError):
    """A node failed while running; the message names it."""


class InputError(ValueError):
    """The caller's inputs do not match the model's input specs."""


class BackendUnavailable(RuntimeError):
    """A backend is unknown or cannot run here (package missing, payload absent, graph unsupported)."""
