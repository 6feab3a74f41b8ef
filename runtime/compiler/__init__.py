"""The model compiler: front end -> IR -> passes -> memory plan -> artifact.

```python
from iotrt.compiler import compile_model
report = compile_model("face.tflite", "face.iotm", progress=print)
```

Everything here but the front ends needs only numpy (the device can read artifacts without the
`onnx` package); front ends are imported when a model of their format is compiled.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from iotrt import __version__
from iotrt.compiler.errors import CompileError, UnsupportedOpError
from iotrt.compiler.frontends import FRONTENDS, frontend_for
from iotrt.compiler.memory import plan_memory
from iotrt.compiler.passes import PIPELINE
from iotrt.compiler.payloads import payloads
from iotrt.compiler.quantize import SCHEMES as QUANT_SCHEMES
from iotrt.compiler.quantize import quantize_graph
from iotrt.hashing import file_sha256
from iotrt.modelformat import artifact as artifact_io
from iotrt.modelformat import preprocessing as preprocessing_io
from iotrt.modelformat.ir import OpGraph, TensorSpec

__all__ = ["compile_model", "compile_graph", "CompileError", "UnsupportedOpError", "CompileReport"]

TARGETS = ("auto", "numpy", "opencv", "onnxruntime", "litert")


@dataclass
class CompileReport:
    """What `compile_model` produced (also printed by `iotrt compile`)."""

    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ops: int
    op_counts: dict[str, int]
    params: int
    peak_activation_bytes: int
    file_bytes: int
    seconds: float
    pass_log: list[str] = field(default_factory=list)


def _layout(graph: OpGraph, fmt: str) -> dict:
    first = graph.inputs[0] if graph.inputs else None
    if first is not None and len(first.shape) == 4:
        return {"layout": "NHWC" if fmt == "tflite" else "NCHW"}
    return {}


def compile_graph(graph: OpGraph, progress: Callable[[str], None] | None = None) -> tuple[OpGraph, list[str]]:
    """Run the pass pipeline; returns the optimised graph and one log line per pass."""
    log = []
    for name, fn in PIPELINE:
        t0 = time.perf_counter()
        before = len(graph.nodes)
        graph = fn(graph)
        line = f"{name}: {before} -> {len(graph.nodes)} ops ({(time.perf_counter() - t0) * 1e3:.0f} ms)"
        log.append(line)
        if progress:
            progress(line)
    return graph, log


def compile_model(
    src_path: str | Path,
    out_path: str | Path,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    target: str = "auto",
    quantize: str | None = None,
    progress: Callable[[str], None] | None = None,
    preprocessing: dict | None = None,
    constants: dict | None = None,
) -> CompileReport:
    """Compile an ONNX or TFLite model into one artifact file.

    input_shapes: name -> static shape, for inputs whose shape the model leaves open.
    target: the backend the artifact prefers ("auto" decides on the device).
    quantize: None, or "int8": per-channel int8 weights (see iotrt.compiler.quantize).
    progress: called with one human-readable line per stage.
    preprocessing: how the input is made from pixels, recorded in the artifact's meta: any of
        color, mean, std, input_range (see iotrt.modelformat.preprocessing; the compiler never
        guesses it; `preprocessing.of_model(src)` reads the model's `.json` sidecar).
    constants: name -> array, graph inputs to bake in as constants (e.g. a shape tensor).
    """
    t0 = time.perf_counter()
    src = Path(src_path)
    if not src.is_file():
        raise CompileError(f"{src}: no such model file")
    if target not in TARGETS:
        raise CompileError(f"unknown target '{target}' (choose from {', '.join(TARGETS)})")
    if quantize is not None and quantize not in QUANT_SCHEMES:
        raise CompileError(f"unknown quantization '{quantize}' (choose from {', '.join(QUANT_SCHEMES)})")
    stated = preprocessing_io.check({} if preprocessing is None else preprocessing,
                                   "compile_model(preprocessing=...)")
    frontend = frontend_for(src)
    fmt = FRONTENDS[src.suffix.lower()][1]
    say = progress or (lambda line: None)
    say(f"reading {src.name} ({fmt})")
    graph = frontend.load(src, input_shapes or {})
    if constants:
        graph = bake_constants(graph, constants)
    say(f"front end: {len(graph.nodes)} ops, {len(graph.consts)} constant tensors")
    try:
        art, log = build_artifact(
            graph, {"name": src.name, "format": fmt, "sha256": file_sha256(src)},
            meta={**_layout(graph, fmt), **stated}, target=target,
            quantize=quantize, progress=say, src=src)
    except CompileError as exc:
        if type(exc) is not CompileError:
            raise
        raise CompileError(f"{src}: {exc}") from exc  # say which model the node is in
    size = artifact_io.write(art, out_path)
    say(f"wrote {out_path} ({size / 1e6:.2f} MB)")
    st = art.stats
    return CompileReport(Path(out_path), art.inputs, art.outputs, st["ops"], st["op_counts"],
                         st["params"], st["peak_activation_bytes"], size,
                         time.perf_counter() - t0, log)


def build_artifact(
    graph: OpGraph,
    source: dict,
    meta: dict | None = None,
    target: str = "auto",
    quantize: str | None = None,
    progress: Callable[[str], None] | None = None,
    src: Path | None = None,
) -> tuple[artifact_io.Artifact, list[str]]:
    """Optimise a front end's graph, plan its memory, quantize its weights if asked and embed
    the per-backend payloads: the artifact, not yet written."""
    say = progress or (lambda line: None)
    graph, log = compile_graph(graph, progress)
    memory = plan_memory(graph)
    say(f"memory plan: {memory.arena_bytes / 1e6:.2f} MB of activations")
    op_counts = dict(collections.Counter(n.op.value for n in graph.nodes))
    stats = {"ops": len(graph.nodes), "op_counts": op_counts, "params": graph.param_count(),
             "peak_activation_bytes": memory.arena_bytes}
    quantized = quantize_graph(graph, quantize) if quantize else {}
    if quantized:
        stats["quantize"] = quantize
        say(f"quantize {quantize}: {len(quantized)} weight tensors, "
            f"{sum(t.nbytes for t in quantized.values()) / 1e6:.2f} MB stored")
    art = artifact_io.Artifact(
        graph=graph, memory=memory, inputs=list(graph.inputs), outputs=graph.output_specs(),
        meta={**(meta or {}), "target": target}, source=source,
        compiler_version=__version__, stats=stats,
        payloads=payloads(graph, src, source["format"], quantize, say), quantized=quantized,
    )
    return art, log


def bake_constants(graph: OpGraph, constants: dict) -> OpGraph:
    names = {s.name for s in graph.inputs}
    unknown = set(constants) - names
    if unknown:
        raise CompileError(f"constants given for unknown inputs {sorted(unknown)}")
    consts = dict(graph.consts)
    consts.update({k: np.asarray(v, order="C") for k, v in constants.items()})
    inputs = [s for s in graph.inputs if s.name not in constants]
    return OpGraph(graph.nodes, inputs, graph.outputs, consts)
