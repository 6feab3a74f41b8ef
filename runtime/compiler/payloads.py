"""What the compiler embeds in an artifact for the backends other than numpy.

- "onnx": the optimised graph as ONNX, without its weights (see `onnx_export`), for the opencv
  and onnxruntime backends (written without the `onnx` package; absent when the graph has
  something ONNX cannot express).
- "tflite": the source flatbuffer itself, for the litert backend, when the model came from
  TFLite and its weights are not re-quantized (the payload would otherwise hold weights that
  differ from the artifact's, and undo the size saving).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from iotrt.compiler import onnx_export
from iotrt.modelformat.ir import OpGraph


def payloads(
    graph: OpGraph, src: Path | None, fmt: str, quantize: str | None, say: Callable[[str], None]
) -> dict[str, bytes]:
    out = onnx_export.payloads(graph, say)
    if fmt == "tflite" and quantize is None and src is not None:
        out["tflite"] = Path(src).read_bytes()
        say(f"TFLite payload for litert: {len(out['tflite']) / 1e3:.1f} kB (the source model)")
    return out
