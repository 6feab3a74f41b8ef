"""Errors of the model compiler: `ModelError`s of iotrt's one error family (`iotrt.errors`),
so the command line reports them with their message and exit code 1."""

from __future__ import annotations

from iotrt import errors


class CompileError(errors.ModelError):
    """The source model cannot be compiled; the message says which node and why."""


class UnsupportedOpError(CompileError):
    """The source model uses an op this compiler does not implement."""

    def __init__(self, op: str, node: str, supported: list[str], source: str = ""):
        self.op, self.node = op, node
        where = f" in {source}" if source else ""
        super().__init__(
            f"unsupported op '{op}' (node '{node}'){where}; supported ops: {', '.join(supported)}"
        )
