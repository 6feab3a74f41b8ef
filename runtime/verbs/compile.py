"""`iotrt compile MODEL -o OUT`: compile an ONNX or TFLite model into an artifact."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from iotrt.compiler import compile_model
from iotrt.compiler.check import check
from iotrt.engine import load
from iotrt.errors import IotrtError
from iotrt.modelformat import preprocessing
from iotrt.modelformat.artifact import read


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not NAME=DIMS with positive dims, e.g. input=1x3x224x224")
    return name, shape


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(map(math.isfinite, values)):
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of finite numbers")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="source model: .onnx or .tflite")
    p.add_argument("-o", "--output", type=Path,
                   help="artifact to write (default: MODEL with the suffix .iotm)")
    p.add_argument("--input-shape", type=_shape, action="append", default=[], metavar="NAME=DIMS",
                   help="static shape of an input, e.g. data=1x3x224x224 (repeatable); needed "
                        "when the model leaves a dimension open")
    p.add_argument("--target", default="auto", choices=["auto", "numpy", "opencv", "onnxruntime", "litert"],
                   help="backend the artifact prefers; 'auto' measures on the device (default)")
    p.add_argument("--quantize", choices=["int8"],
                   help="store Conv/Gemm/MatMul weights as per-channel int8 (about 4x smaller "
                        "artifact; dequantized to float at load, so speed is unchanged)")
    p.add_argument("--preprocessing", type=Path, metavar="FILE",
                   help="JSON file stating the input preprocessing recorded in the artifact "
                        "(color, mean, std, input_range); default: MODEL.json beside the model, "
                        "if there is one")
    p.add_argument("--mean", type=_floats, help="per-channel mean subtracted from pixels, "
                   "e.g. 127.5,127.5,127.5 (overrides the file's)")
    p.add_argument("--std", type=_floats, help="per-channel divisor applied after the mean")
    p.add_argument("--color", choices=["RGB", "BGR"], help="channel order the model expects")
    p.add_argument("--input-range", type=_floats, metavar="LO,HI",
                   help="range of the model's input after scaling, e.g. -1,1 (--check draws "
                        "its random inputs from it)")
    p.add_argument("--check", action="store_true",
                   help="run the artifact and the source model (onnxruntime or LiteRT) on the same "
                        "random inputs and print the max error per output")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="max abs error --check accepts (default 1e-3)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def run(args: argparse.Namespace) -> int:
    out = args.output or args.model.with_suffix(".iotm")
    say = (lambda line: None) if args.quiet else (lambda line: print(f"  {line}", flush=True))
    stated = _preprocessing(args, say)
    # A CompileError (an IotrtError) is reported by iotrt.cli: "iotrt compile: <message>", exit 1.
    report = compile_model(args.model, out, input_shapes=dict(args.input_shape),
                           target=args.target, quantize=args.quantize, progress=say,
                           preprocessing=stated)
    if not args.quiet:
        print(f"compiled {args.model} -> {report.path} in {report.seconds:.2f} s")
        for spec in report.inputs:
            print(f"  input  {spec.name}: {'x'.join(map(str, spec.shape))} {spec.dtype}")
        for spec in report.outputs:
            print(f"  output {spec.name}: {'x'.join(map(str, spec.shape))} {spec.dtype}")
        counts = ", ".join(f"{op} {n}" for op, n in sorted(report.op_counts.items(), key=lambda kv: -kv[1]))
        print(f"  ops: {report.ops} ({counts})")
        print(f"  params: {report.params:,}")
        print(f"  peak activation bytes: {report.peak_activation_bytes:,}")
        print(f"  artifact size: {report.file_bytes:,} bytes")
    if args.check:
        return _check(args, report.path)
    return 0


def _preprocessing(args: argparse.Namespace, say) -> dict:
    """The file's preprocessing (--preprocessing, else the model's sidecar), then the options'."""
    path = args.preprocessing or preprocessing.sidecar(args.model)
    stated = {}
    if args.preprocessing or path.is_file():
        stated = preprocessing.read(path)
        say(f"preprocessing from {path}")
    options = {k: v for k, v in (("color", args.color), ("mean", args.mean), ("std", args.std),
                                 ("input_range", args.input_range)) if v is not None}
    if not options:
        return stated
    where = f"{path} with --color/--mean/--std/--input-range" if stated else \
        "--color/--mean/--std/--input-range"
    return preprocessing.check({**stated, **options}, where)


def _check(args: argparse.Namespace, path: Path) -> int:
    art = read(path)
    result = check(art, args.model, load(art, backend="numpy"))  # ReferenceUnavailable: iotrt.cli
    worst = 0.0
    print(f"check against {result.reference} (random inputs, numpy backend):")
    for name, err in result.max_abs_error.items():
        worst = max(worst, err)
        print(f"  {name}: max abs error {err:.3g} (max |value| {result.max_abs_value[name]:.3g})")
    if worst > args.tolerance:
        raise IotrtError(f"--check: error {worst:.3g} exceeds --tolerance {args.tolerance:g}")
    print("  ok")
    return 0
