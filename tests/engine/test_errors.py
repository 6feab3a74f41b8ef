"""The compiler's, the engine's and the model format's errors belong to iotrt's one family
(`iotrt.errors`), so the command line reports them in one place, and stay the built-in they
always were, so existing `except ValueError` / `except RuntimeError` callers keep working."""

from __future__ import annotations

import pytest

from iotrt import errors
from iotrt.compiler import CompileError, UnsupportedOpError
from iotrt.compiler.check import ReferenceUnavailable
from iotrt.compiler.frontends.flatbuf import FlatBufferError
from iotrt.compiler.onnx_export import ExportError
from iotrt.engine import (
    ArtifactCorruptError,
    ArtifactError,
    ArtifactVersionError,
    BackendUnavailable,
    EngineError,
    InputError,
    load,
)
from iotrt.engine.autotune import MeasureError
from iotrt.modelformat.errors import KernelError
from iotrt.modelformat.quantized import QuantizeError
from iotrt.nodes.perception import modelcache

FAMILY = [
    (ArtifactError, errors.StorageError, Exception),
    (ArtifactCorruptError, errors.StorageError, Exception),
    (ArtifactVersionError, errors.StorageError, Exception),
    (KernelError, errors.ModelError, ValueError),
    (EngineError, errors.ModelError, RuntimeError),
    (InputError, errors.ModelError, ValueError),
    (BackendUnavailable, errors.ModelError, RuntimeError),
    (QuantizeError, errors.ModelError, ValueError),
    (MeasureError, errors.ModelError, RuntimeError),
    (CompileError, errors.ModelError, Exception),
    (UnsupportedOpError, errors.ModelError, Exception),
    (ExportError, errors.ModelError, Exception),
    (FlatBufferError, errors.ModelError, ValueError),
    (ReferenceUnavailable, errors.ModelError, RuntimeError),
    (modelcache.ModelError, errors.ModelError, RuntimeError),
]


@pytest.mark.parametrize("cls,area,builtin", FAMILY, ids=[c.__name__ for c, _, _ in FAMILY])
def test_error_is_in_the_family_and_keeps_its_builtin(cls, area, builtin):
    assert issubclass(cls, area) and issubclass(cls, errors.IotrtError)
    assert issubclass(cls, builtin)


def test_a_missing_artifact_is_a_storage_error_with_an_exit_code(tmp_path):
    with pytest.raises(errors.StorageError, match="no such artifact") as info:
        load(tmp_path / "missing.iotm")
    assert info.value.exit_code == 1
