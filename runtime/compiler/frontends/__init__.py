"""Front ends: one module per source format, each with `load(path, input_shapes) -> OpGraph`.

The registry maps a file suffix to the module; modules are imported only when used, so a device
without the `onnx` package can still load TFLite models (and run artifacts, which need neither).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from iotrt.compiler.errors import CompileError
from iotrt.modelformat.ir import Op, OpGraph, OpNode, TensorSpec

# suffix -> (module, format name)
FRONTENDS: dict[str, tuple[str, str]] = {
    ".onnx": ("iotrt.compiler.frontends.onnx", "onnx"),
    ".tflite": ("iotrt.compiler.frontends.tflite", "tflite"),
}


def frontend_for(path: str | Path):
    suffix = Path(path).suffix.lower()
    if suffix not in FRONTENDS:
        raise CompileError(
            f"{path}: unknown model format '{suffix}' (supported: {', '.join(FRONTENDS)})"
        )
    module, _ = FRONTENDS[suffix]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise CompileError(
            f"{path}: the {FRONTENDS[suffix][1]} front end needs the Python package "
            f"'{exc.name}' (pip install 'iotrt[compiler]')"
        ) from exc


class OpGraphBuilder:
    """Accumulates nodes and constants while a front end walks a source model."""

    def __init__(self) -> None:
        self.nodes: list[OpNode] = []
        self.consts: dict[str, np.ndarray] = {}
        self.inputs: list[TensorSpec] = []
        self.outputs: list[str] = []
        self._names: set[str] = set()

    def fresh(self, base: str) -> str:
        """A tensor name not used yet, derived from `base`."""
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}:{i}", i + 1
        self._names.add(name)
        return name

    def claim(self, name: str) -> None:
        self._names.add(name)

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.consts[name] = np.asarray(value, order="C")
        return name

    def add(self, op: Op, name: str, inputs, outputs=None, **attrs) -> str:
        """Append a node; returns its (first) output name. `outputs` default: one fresh name."""
        outs = tuple(outputs) if outputs else (self.fresh(name),)
        self.nodes.append(OpNode(op, name, tuple(inputs), outs, attrs))
        return outs[0]

    def graph(self) -> OpGraph:
        return OpGraph(self.nodes, self.inputs, self.outputs, self.consts)
