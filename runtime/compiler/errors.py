"""Errors of the model compiler."""

from __future__ import annotations


class CompileError(Exception):
    """The source model cannot be compiled; the message says which node and why."""


class UnsupportedOpError(CompileError):
    """The source model uses an op this compiler does not implement."""

    def __init__(self, op: str, node: str, supported: list[str], source: str = ""):
        self.op, self.node = op, node
        where = f" in {source}" if source else ""
        super().__init__(
            f"unsupported op '{op}' (node '{node}'){where}; supported ops: {', '.join(supported)}"
        )
