"""Errors of the model format and of running a model: raised by the engine, the reference
kernels and the artifact reader, caught by the compiler, the engine's callers and the CLI.

Each belongs to iotrt's one error family (`iotrt.errors`): an artifact that cannot be used is a
`StorageError`, the rest are `ModelError`s; each is also the built-in it always was, so
`except ValueError` / `except RuntimeError` callers keep working.
"""

from __future__ import annotations

from iotrt import errors


class ArtifactError(errors.StorageError):
    """The artifact cannot be used (base class)."""


class ArtifactCorruptError(ArtifactError):
    """The file is not an artifact, or it is truncated or damaged."""


class ArtifactVersionError(ArtifactError):
    """The artifact was written in a format this iotrt does not read."""


class KernelError(errors.ModelError, ValueError):
    """An op got inputs or attributes it cannot handle (the engine adds the node name)."""


class EngineError(errors.ModelError, RuntimeError):
    """A node failed while running; the message names it."""


class InputError(errors.ModelError, ValueError):
    """The caller's inputs do not match the model's input specs."""


class BackendUnavailable(errors.ModelError, RuntimeError):
    """A backend is unknown or cannot run here (package missing, payload absent, graph unsupported)."""


class PreprocessingError(errors.ModelError, ValueError):
    """Stated preprocessing metadata is malformed; the message names the file or option."""
