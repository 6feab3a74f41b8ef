"""`iotrt bench MODEL_OR_ARTIFACT`: latency of a model on every engine backend of this device.

Give it a compiled artifact (`.iotm`), or a source model (`.onnx`, `.tflite`), which is compiled
to a temporary artifact first (that needs the compiler extra). Every backend is loaded in this
process and timed in interleaved rounds (one run of each backend per round, in rotating order),
so that other load on the machine slows every backend alike; each backend's outputs are compared
with the numpy reference's. The thread count is fixed (--threads), as it is for a node.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from iotrt.engine import BackendUnavailable, autotune, load
from iotrt.engine.autotune import Budget
from iotrt.errors import UsageError

ENGINE_BACKENDS = ("numpy", "opencv", "onnxruntime", "litert")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="artifact (.iotm) or source model (.onnx, .tflite)")
    parser.add_argument(
        "--backends", default=",".join(ENGINE_BACKENDS),
        help="comma-separated backends to time (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=1, help="threads per backend (default 1)")
    parser.add_argument(
        "--seconds", type=float, default=10.0,
        help="time budget for the timed rounds, all backends together (default %(default)s)",
    )
    parser.add_argument("--min-rounds", type=int, default=10, help="at least this many rounds")
    parser.add_argument("--max-rounds", type=int, default=1000, help="at most this many rounds")
    parser.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME=DIMS",
        help="static input shape for a source model that leaves a dimension open, as for "
             "'iotrt compile', e.g. data=1x3x224x224 (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")


_last_update = [float("-inf")]


def _progress(text: str, update: bool = False) -> None:
    """A status line, rewritten in place on a terminal. In a log every new stage is a line, but
    `update`s of the same stage (the timing rounds) at most one a second."""
    if sys.stderr.isatty():
        print(f"\r{text:<70s}", end="", file=sys.stderr, flush=True)
        return
    if update:
        if time.monotonic() - _last_update[0] < 1.0:
            return
        _last_update[0] = time.monotonic()
    print(text, file=sys.stderr, flush=True)


def _done_progress() -> None:
    if sys.stderr.isatty():
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr, flush=True)


def _input_shapes(specs: list[str]) -> dict[str, tuple[int, ...]] | None:
    shapes = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        try:
            if not sep:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.lower().replace(",", "x").split("x"))
        except ValueError:
            raise SystemExit(f"iotrt bench: --input-shape {spec!r}: expected NAME=DIMS, "
                             f"e.g. data=1x3x224x224") from None
    return shapes or None


def _artifact_for(args, tmp: Path) -> Path:
    if args.model.suffix == ".iotm":
        return args.model
    from iotrt.compiler import compile_model

    out = tmp / (args.model.stem + ".iotm")
    print(f"compiling {args.model} for the benchmark ...", file=sys.stderr, flush=True)
    compile_model(
        args.model, out, input_shapes=_input_shapes(args.input_shape),
        progress=lambda step, *rest: _progress(f"  compile: {step}"),
    )
    _done_progress()
    return out


def run(args: argparse.Namespace) -> int:
    if not args.model.exists():
        raise UsageError(f"{args.model}: no such file")
    if args.threads < 1:
        raise UsageError("--threads must be at least 1")
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(wanted) - set(ENGINE_BACKENDS))
    if unknown:
        raise UsageError(f"unknown backend(s) {unknown}; choose from {', '.join(ENGINE_BACKENDS)}")
    names = ["numpy"] + [b for b in wanted if b != "numpy"]  # numpy is the reference: always run
    with tempfile.TemporaryDirectory(prefix="iotrt-bench-") as tmp:
        path = _artifact_for(args, Path(tmp))
        models, load_ms, skipped = {}, {}, {}
        for name in names:
            _progress(f"loading {name} ...")
            t0 = time.perf_counter()
            try:
                models[name] = load(path, backend=name, threads=args.threads)
            except BackendUnavailable as exc:
                skipped[name] = str(exc)
                continue
            load_ms[name] = (time.perf_counter() - t0) * 1e3
        _done_progress()
        ref = models["numpy"]
        feeds = autotune.random_feeds(ref.inputs)
        expected = ref.run(feeds)
        diffs = {n: autotune.disagreement(expected, m.run(feeds)) for n, m in models.items()}
        budget = Budget(min_rounds=args.min_rounds, max_rounds=args.max_rounds,
                        seconds=args.seconds, warmup=2)
        samples = autotune.interleaved_samples(
            {n: (lambda m=m: m.run(feeds)) for n, m in models.items()}, budget,
            on_round=lambda r, s: _progress(f"timing: round {r}, {s:.1f} s of {args.seconds:g} s", update=True),
        )
        _done_progress()
    figures = {
        n: {
            "p50_ms": float(np.median(s)) * 1e3,
            "p90_ms": float(np.percentile(s, 90)) * 1e3,
            "min_ms": float(np.min(s)) * 1e3,
            "load_ms": load_ms[n],
            "max_scaled_diff_vs_numpy": diffs[n],
        }
        for n, s in samples.items()
    }
    fastest = min(figures, key=lambda n: figures[n]["p50_ms"])
    rounds = len(samples["numpy"])
    specs = ", ".join(f"{s.name} {'x'.join(map(str, s.shape))} {s.dtype}" for s in ref.inputs)
    print(f"{args.model}: input {specs}; {args.threads} thread(s); {rounds} interleaved rounds")
    print(f"{'backend':12s} {'load ms':>9s} {'p50 ms':>9s} {'p90 ms':>9s} {'vs fastest':>11s} {'diff vs numpy':>14s}")
    for n, f in figures.items():
        ratio = f["p50_ms"] / figures[fastest]["p50_ms"]
        print(f"{n:12s} {f['load_ms']:9.1f} {f['p50_ms']:9.2f} {f['p90_ms']:9.2f} {ratio:10.2f}x"
              f" {f['max_scaled_diff_vs_numpy']:14.2g}")
    for n, why in skipped.items():
        print(f"{n:12s} not available: {why}")
    bad = [n for n, d in diffs.items() if d > autotune.AGREEMENT_TOL]
    for n in bad:
        print(f"warning: {n}'s outputs differ from numpy's by {diffs[n]:.3g} (> {autotune.AGREEMENT_TOL}); "
              f"auto will not choose it")
    print(f"fastest here: {fastest}")
    if args.json:
        args.json.write_text(json.dumps(
            {"model": str(args.model), "threads": args.threads, "rounds": rounds,
             "backends": figures, "unavailable": skipped}, indent=2))
    return 0
