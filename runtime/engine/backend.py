"""What every engine backend provides, the registry of backends, and the shell of the backends
that hand the graph to another framework.

A backend is one module `iotrt.engine.<name>`, registered in `BACKENDS` below, with

    load(artifact, threads: int) -> model       # raises BackendUnavailable, saying why
    model.backend: str; model.inputs, model.outputs: list[TensorSpec]; model.meta: dict
    model.run(feeds: dict[str, ndarray]) -> dict[str, ndarray]   # fresh arrays

`threads` is fixed by the caller (the supervisor sizes every node's pools); a backend never
uses "all cores". `FrameworkModel` below is the shared shell of the backends that hand the
graph to another framework (input checking, output shapes).

The opencv and onnxruntime backends run the artifact's payload "onnx" (its format:
`iotrt.modelformat.onnxpayload`): the graph without its weights, completed on the device from
the artifact's weights (`artifact_onnx`).
"""

from __future__ import annotations

import importlib
import math
import os

import numpy as np

from iotrt.config import ENV_THREADS
from iotrt.modelformat.errors import BackendUnavailable, EngineError, InputError
from iotrt.modelformat.onnxpayload import PAYLOAD, onnx_model_bytes

# backend name -> module with `load(artifact, threads) -> model`
BACKENDS: dict[str, str] = {
    "numpy": "iotrt.engine.numpy",
    "opencv": "iotrt.engine.opencv",
    "onnxruntime": "iotrt.engine.onnxruntime",
    "litert": "iotrt.engine.litert",
}


def load_backend(art, name: str, threads: int):
    """`art` loaded on backend `name` (imported only now), or BackendUnavailable saying why."""
    if name not in BACKENDS:
        raise BackendUnavailable(
            f"unknown backend '{name}' (available: auto, {', '.join(BACKENDS)})")
    try:
        module = importlib.import_module(BACKENDS[name])
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(
            f"backend '{name}' needs the Python package '{exc.name}', which is not installed") from exc
    return module.load(art, threads=threads)


def default_threads() -> int:
    """Thread budget when the caller gives none: $IOTRT_THREADS, else $OMP_NUM_THREADS, else 1."""
    for var in (ENV_THREADS, "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def limit_blas_threads(threads: int) -> None:
    """Fix the size of numpy's BLAS thread pool for this process.

    OpenBLAS otherwise starts one busy-waiting thread per core: with other nodes (or other
    programs) on those cores, BlazeFace's many small GEMMs were measured 20x slower with 2 BLAS
    threads than with 1 on this 2-core machine. The environment (OPENBLAS_NUM_THREADS, set by
    the supervisor before the process starts) does the same; this covers every other caller.
    """
    from threadpoolctl import threadpool_limits  # only the numpy backend's load needs it (~17 ms)

    threadpool_limits(limits=threads, user_api="blas")


class FrameworkModel:
    """A loaded model whose graph another framework runs; subclasses implement `_run`."""

    backend = "?"

    def __init__(self, artifact) -> None:
        self.artifact = artifact
        self.inputs = list(artifact.inputs)
        self.outputs = list(artifact.outputs)
        self.meta = artifact.meta
        # what a well-formed call looks like, checked cheaply on every run (a few us matter
        # next to a 1 ms model: more Python per run is more chances to be preempted under load)
        self._expect = [(s.name, tuple(s.shape), np.dtype(s.dtype)) for s in self.inputs]
        self._out_specs = [(s.name, tuple(s.shape), np.dtype(s.dtype), math.prod(s.shape)) for s in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(feeds) != len(self._expect) or not all(
                type(x := feeds.get(name)) is np.ndarray and x.shape == shape and x.dtype == dtype
                for name, shape, dtype in self._expect):
            check_feeds(self.inputs, feeds)  # raises, naming what is wrong (or accepts a list)
        values = self._run({name: np.ascontiguousarray(feeds[name]) for name, _, _ in self._expect})
        out = {}
        for (name, shape, dtype, size), value in zip(self._out_specs, values):
            value = np.asarray(value)
            if value.shape != shape or value.dtype != dtype:
                if value.size != size:
                    raise EngineError(
                        f"backend {self.backend!r} returned shape {value.shape} for output "
                        f"'{name}', the model's is {shape}; use backend 'numpy'"
                    )
                # Frameworks may drop or add unit axes (cv2.dnn flattens some outputs): the
                # artifact's output specs are the contract.
                value = value.reshape(shape).astype(dtype, copy=False)
            out[name] = value
        return out

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


Refusal = tuple  # (predicate(node, graph) -> bool, reason): a construct a framework gets wrong


def refuse_known_bad(artifact, backend: str, refusals: list[Refusal]) -> None:
    """BackendUnavailable if the graph has a construct `backend` is known to compute wrongly.

    Each refusal stands for an ONNX conformance case where the framework, given our exported
    graph, disagrees with the ONNX reference (tests/engine/test_backends_conformance.py): a
    backend must either answer right or refuse to load, never answer wrong.
    """
    graph = artifact.graph
    for node in graph.nodes:
        for applies, reason in refusals:
            if applies(node, graph):
                raise BackendUnavailable(
                    f"backend {backend!r} refuses {node.op.value} node '{node.name}': {reason}"
                )


def check_feeds(specs, feeds: dict[str, np.ndarray]) -> None:
    """Raise InputError unless `feeds` has exactly the inputs `specs` describe."""
    names = [s.name for s in specs]
    unknown = sorted(set(feeds) - set(names))
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; the model's inputs are {names}")
    for spec in specs:
        if spec.name not in feeds:
            raise InputError(f"missing input '{spec.name}' {spec.shape} {spec.dtype}")
        x = feeds[spec.name]
        if tuple(np.shape(x)) != tuple(spec.shape):
            raise InputError(f"input '{spec.name}': shape {tuple(np.shape(x))}, the model was "
                             f"compiled for {tuple(spec.shape)} (recompile with --input-shape)")
        if np.asarray(x).dtype != np.dtype(spec.dtype):
            raise InputError(f"input '{spec.name}': dtype {np.asarray(x).dtype}, expected "
                             f"{spec.dtype} (convert with x.astype(np.{spec.dtype}))")


def artifact_onnx(artifact, backend: str) -> bytes:
    """The complete ONNX model for `artifact`, or BackendUnavailable saying how to get one."""
    payload = artifact.payloads.get(PAYLOAD)
    if payload is None:
        source = artifact.source.get("name", "the model")
        raise BackendUnavailable(
            f"backend {backend!r} runs the artifact's ONNX payload, and this artifact of {source} has none: "
            f"its graph cannot be written as ONNX (the compiler's progress output says why) or an older "
            f"iotrt compiled it without the 'onnx' package; compile it again, or use backend 'numpy'"
        )
    return onnx_model_bytes(payload, artifact.graph.consts)
