"""Engine benchmark: every iotrt backend against the frameworks it competes with.

    python bench/engine.py [--threads 1] [--models blazeface,light_squeezenet,...] [--json out.json]
    python bench/engine.py --profile [--models ...]   # where the numpy backend's time goes

For BlazeFace (.tflite) and the four light_* ONNX models (weights re-drawn at random, batch 1) it
measures, each in its own fresh subprocess (peak RSS only ever rises within a process):

- iotrt numpy / opencv / onnxruntime / auto on the compiled artifact;
- onnxruntime on the source ONNX model, LiteRT on the source .tflite, raw cv2.dnn on the source;

and prints p50 latency, p50 CPU time (this process's, all threads: what other programs on a busy
machine cannot stretch), peak RSS and the ratios the project targets. Every subprocess runs with a
fixed thread count (--threads) and with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed from its
environment: this machine sets them for old OpenBLAS builds, and they halve numpy's GEMM speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # bench/models.py, beside this script

BACKENDS = ("numpy", "opencv", "onnxruntime", "litert", "auto")
UNSET_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ---------------------------------------------------------------------------------------------
# Child side: load one thing, time it, print one JSON line. Imports only what it measures.


def _make_runner(kind: str, path: str, shape: tuple[int, ...] | None, threads: int):
    import numpy as np

    rng = np.random.default_rng(0)
    if kind.startswith("iotrt:"):
        from iotrt.engine import load

        model = load(path, backend=kind.split(":", 1)[1])
        feeds = {s.name: rng.uniform(-1, 1, s.shape).astype(s.dtype) for s in model.inputs}
        info = {"backend": getattr(model, "backend", kind), "model": model}
        return (lambda: model.run(feeds)), info
    if kind == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feeds = {
            i.name: rng.uniform(-1, 1, [d if isinstance(d, int) else 1 for d in i.shape]).astype(
                np.float32
            )
            for i in sess.get_inputs()
        }
        return (lambda: sess.run(None, feeds)), {}
    if kind == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=path, num_threads=threads)
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        x = rng.uniform(-1, 1, detail["shape"]).astype(np.float32)
        outs = [o["index"] for o in interp.get_output_details()]

        def run():
            interp.set_tensor(detail["index"], x)
            interp.invoke()
            return [interp.get_tensor(i) for i in outs]

        return run, {}
    if kind == "cv2.dnn":
        import cv2

        cv2.setNumThreads(threads)
        if path.endswith(".tflite"):
            # OpenCV 5's new engine drops BlazeFace's second output; its TFLite reader wants NCHW.
            engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)  # only OpenCV 5 has engines
            net = cv2.dnn.readNet(path) if engine is None else cv2.dnn.readNet(path, engine=engine)
            n, h, w, c = shape
            x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
        else:
            net = cv2.dnn.readNetFromONNX(path)
            x = rng.uniform(-1, 1, shape).astype(np.float32)
        names = net.getUnconnectedOutLayersNames()

        def run():
            net.setInput(x)
            return net.forward(names)

        return run, {}
    raise ValueError(f"unknown runner kind {kind!r}")


def peak_rss_mb() -> float:
    """This process's peak resident set size. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss across fork+exec, so a child would report its parent's peak (here: the compiler)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak RSS needs Linux")


def _context_switches() -> tuple[int, int]:
    """(voluntary, involuntary) context switches of this process so far, all threads."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_nvcsw, r.ru_nivcsw


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def paired_child(args: argparse.Namespace) -> int:
    """Two runners in one process, one call of each per round in alternating order: whatever
    load the machine has hits both alike, so the ratio of their p50s is fair even when the
    machine is busy (separate processes minutes apart see different loads)."""
    import numpy as np

    shape = tuple(int(s) for s in args.shape.split(",")) if args.shape else None
    a, info = _make_runner(args.kind, args.path, shape, args.threads)
    b, _ = _make_runner(args.against, args.against_path, shape, args.threads)
    for _ in range(args.warmup + 1):
        a()
        b()
    ta, tb, ca, cb = [], [], [], []  # wall and CPU ms per call
    start = time.perf_counter()
    while len(ta) < args.max_iters and (
        len(ta) < args.min_iters or time.perf_counter() - start < args.min_seconds
    ):
        first, second = ((a, ta, ca), (b, tb, cb)) if len(ta) % 2 == 0 else ((b, tb, cb), (a, ta, ca))
        for run, times, cpu in (first, second):
            t, c = time.perf_counter_ns(), time.process_time_ns()
            run()
            times.append((time.perf_counter_ns() - t) / 1e6)
            cpu.append((time.process_time_ns() - c) / 1e6)
    model = info.pop("model", None)
    print(json.dumps({"backend": getattr(model, "backend", None), "rounds": len(ta),
                      "ratio": float(np.median(ta) / np.median(tb)),  # p50 wall
                      "lq_ratio": float(np.percentile(ta, 25) / np.percentile(tb, 25)),
                      "cpu_ratio": float(np.median(ca) / np.median(cb))}))
    return 0


def profile_child(args: argparse.Namespace) -> int:
    """Where the numpy backend's CPU time goes: per op type and the slowest steps (median per
    step), beside onnxruntime's own per-node profile of the source model when it is ONNX."""
    import collections

    import numpy as np

    from iotrt.engine import load

    model = load(args.path, backend="numpy")
    g = model.artifact.graph
    rng = np.random.default_rng(0)
    feeds = {s.name: rng.uniform(-1, 1, s.shape).astype(s.dtype) for s in model.inputs}
    steps = model.profile(feeds, args.min_iters)
    total = sum(ms for _, ms in steps)
    by_op = collections.Counter()
    for node, ms in steps:
        by_op[node.op.value] += ms
    print(f"numpy backend: {len(steps)} steps, {total:.2f} ms CPU (sum of per-step medians, "
          f"{args.min_iters} runs)")
    for op, ms in by_op.most_common():
        print(f"  {op:22s} {ms:8.2f} ms {100 * ms / total:5.1f}%")
    print("  slowest steps:")
    for node, ms in sorted(steps, key=lambda s: -s[1])[:args.top]:
        print(f"  {ms:8.3f} ms  {node.op.value:12s} {node.name[:28]:28s} {_describe(g, node, ms)}")
    if args.against_path and args.against_path.endswith(".onnx"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "iotrt-bench-ort")
        sess = ort.InferenceSession(args.against_path, opts, providers=["CPUExecutionProvider"])
        ort_feeds = {i.name: rng.uniform(-1, 1, [d if isinstance(d, int) else 1 for d in i.shape])
                     .astype(np.float32) for i in sess.get_inputs()}
        for _ in range(args.min_iters):
            sess.run(None, ort_feeds)
        trace = Path(sess.end_profiling())
        node_us, op_of = collections.defaultdict(list), {}
        for e in json.loads(trace.read_text()):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                name = e["name"][:-len("_kernel_time")]
                node_us[name].append(e["dur"])
                op_of[name] = e["args"].get("op_name", "?")
        trace.unlink()
        per_node = {name: statistics.median(us) / 1e3 for name, us in node_us.items()}
        ort_total = sum(per_node.values())
        ort_ops = collections.Counter()
        for name, ms in per_node.items():
            ort_ops[op_of[name]] += ms
        print(f"onnxruntime: {ort_total:.2f} ms in kernels (sum of per-node medians)")
        for op, ms in ort_ops.most_common():
            print(f"  {op:22s} {ms:8.2f} ms {100 * ms / ort_total:5.1f}%")
        print("  slowest nodes:")
        for name, ms in sorted(per_node.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {ms:8.3f} ms  {op_of[name]:12s} {name}")
    return 0


def _describe(g, node, ms: float) -> str:
    """A conv step's geometry and arithmetic rate; empty for other ops."""
    import numpy as np

    if node.op.value != "Conv" or node.inputs[1] not in g.consts:
        return ""
    w = g.consts[node.inputs[1]]
    x, y = g.shapes[node.inputs[0]], g.shapes[node.outputs[0]]
    gflop = 2 * np.prod(y) * np.prod(w.shape[1:]) / 1e9
    s = node.attrs.get("strides") or [1, 1]
    return (f"x{tuple(x[1:])} w{tuple(w.shape)} stride {s[0]} group {node.attrs.get('group', 1)}: "
            f"{gflop * 1e3:.1f} MFLOP, {gflop / ms * 1e3:.0f} GFLOP/s")


def child(args: argparse.Namespace) -> int:
    import numpy as np

    if args.kind == "profile":
        return profile_child(args)
    if args.against:
        return paired_child(args)
    t0 = time.perf_counter()
    shape = tuple(int(s) for s in args.shape.split(",")) if args.shape else None
    run, info = _make_runner(args.kind, args.path, shape, args.threads)
    run()  # first call: lazy allocations, plan warm-up
    load_s = time.perf_counter() - t0
    if args.settle:
        # auto's first load: run past the warm-up after which an unsettled choice is re-checked,
        # and wait for that re-check, so the measured processes all start from a settled cache
        from iotrt.engine import autotune

        for _ in range(autotune.RECHECK_AFTER_RUNS):
            run()
        info["model"].wait_recheck()
    for _ in range(args.warmup):
        run()
    times, cpu = [], []  # wall and CPU (this process, all its threads) ms per run
    switches = _context_switches()
    threads_seen = _thread_count()
    start = time.perf_counter()
    while len(times) < args.max_iters and (
        len(times) < args.min_iters or time.perf_counter() - start < args.min_seconds
    ):
        t, c = time.perf_counter_ns(), time.process_time_ns()
        run()
        times.append((time.perf_counter_ns() - t) / 1e6)
        cpu.append((time.process_time_ns() - c) / 1e6)
        threads_seen = max(threads_seen, _thread_count())
    voluntary, involuntary = (b - a for a, b in zip(switches, _context_switches()))
    model = info.pop("model", None)
    info.update(
        backend=getattr(model, "backend", info.get("backend")),
        p50_ms=float(np.median(times)),
        p90_ms=float(np.percentile(times, 90)),
        cpu_p50_ms=float(np.median(cpu)),
        iters=len(times),
        # where wall time beyond CPU time goes: waits (voluntary: sleeps, locks, I/O) or
        # preemption by other programs (involuntary), per run; and the threads the process had
        waits_per_run=voluntary / len(times),
        preempted_per_run=involuntary / len(times),
        threads=threads_seen,
        load_s=load_s,
        peak_rss_mb=peak_rss_mb(),
    )
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = sorted(
            {f"{p['internal_api']}:{p.get('architecture', '?')}x{p['num_threads']}" for p in threadpool_info()}
        )
    except ImportError:
        pass
    print(json.dumps(info))
    return 0


# ---------------------------------------------------------------------------------------------
# Parent side: prepare models, spawn one child per measurement, print the table.


@dataclass
class Case:
    name: str
    source: Path  # .onnx (random weights) or .tflite
    shape: tuple[int, ...]
    artifact: Path | None = None


def child_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def measure(kind: str, path: Path, shape, args, settle: bool = False,
            against: tuple[str, Path] | None = None) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", kind, "--path", str(path),
        "--threads", str(args.threads), "--min-iters", str(args.min_iters),
        "--min-seconds", str(args.min_seconds), "--max-iters", str(args.max_iters),
        "--warmup", str(args.warmup),
    ]
    if shape:
        cmd += ["--shape", ",".join(map(str, shape))]
    if settle:
        cmd.append("--settle")
    if against:
        cmd += ["--against", against[0], "--against-path", str(against[1])]
    proc = subprocess.run(
        cmd, env=child_env(args.threads), capture_output=True, text=True, timeout=args.timeout
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {err}"}
    return json.loads(lines[-1])


def prepare(names: list[str], work: Path, args) -> list[Case]:
    cases = []
    for name in names:
        if name == "blazeface":
            if not models.BLAZEFACE.exists():
                print(f"skip blazeface: {models.BLAZEFACE} missing", file=sys.stderr)
                continue
            cases.append(Case(name, models.BLAZEFACE, (1, 128, 128, 3)))
        else:
            src = models.random_weights(models.light_model_path(name), work / f"{name}.onnx")
            (shape,) = models.onnx_inputs(src).values()
            cases.append(Case(name, src, shape))
    try:
        from iotrt.compiler import compile_model
    except ImportError as exc:
        print(f"note: iotrt compiler unavailable ({exc}); measuring the frameworks only")
        return cases
    for case in cases:
        out = work / f"{case.name}.iotm"
        print(f"  compiling {case.name} ...", flush=True)
        try:
            compile_model(case.source, out)
            case.artifact = out
        except Exception as exc:  # noqa: BLE001  a model the compiler rejects is reported, not fatal
            print(f"  compile {case.name} failed: {type(exc).__name__}: {exc}")
    return cases


def runs_for(case: Case) -> list[tuple[str, str, Path]]:
    """(label, child kind, path) for every measurement of one model."""
    runs = []
    if case.artifact is not None:
        # litert runs the embedded source .tflite: only TFLite-sourced artifacts have one
        runs += [(f"iotrt {b}", f"iotrt:{b}", case.artifact) for b in BACKENDS
                 if b != "litert" or case.source.suffix == ".tflite"]
    if case.source.suffix == ".onnx":
        runs.append(("onnxruntime (source .onnx)", "onnxruntime", case.source))
    else:
        runs.append(("LiteRT (source .tflite)", "litert", case.source))
    runs.append(("cv2.dnn (source)", "cv2.dnn", case.source))
    return runs


def combine(measurements: list[dict]) -> dict:
    """One runner's passes: median p50/p90 over passes, the highest peak RSS, the p50 spread."""
    ok = [m for m in measurements if "error" not in m]
    if not ok:
        return measurements[0]
    out = dict(ok[0])
    out["p50_ms"] = float(statistics.median(m["p50_ms"] for m in ok))
    out["p90_ms"] = float(statistics.median(m["p90_ms"] for m in ok))
    out["cpu_p50_ms"] = float(statistics.median(m["cpu_p50_ms"] for m in ok))
    for k in ("waits_per_run", "preempted_per_run"):
        out[k] = float(statistics.median(m.get(k, 0.0) for m in ok))
    out["peak_rss_mb"] = max(m["peak_rss_mb"] for m in ok)
    out["p50_spread_ms"] = [min(m["p50_ms"] for m in ok), max(m["p50_ms"] for m in ok)]
    out["passes"] = len(ok)
    return out


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def report(case: Case, results: dict[str, dict], paired: dict | None = None,
           numpy_paired: dict | None = None) -> list[str]:
    ok = {k: v for k, v in results.items() if "error" not in v}
    raw = {k: v for k, v in ok.items() if not k.startswith("iotrt")}
    best_raw = min(raw.items(), key=lambda kv: kv[1]["p50_ms"]) if raw else None
    print(f"\n{case.name} {case.shape}")
    print(f"  {'runner':30s} {'p50 ms':>9s} {'p50 range':>15s} {'p90 ms':>9s} {'CPU p50 ms':>11s} "
          f"{'peak RSS MB':>12s} {'vs best raw':>12s}  note")
    for label, r in results.items():
        if "error" in r:
            print(f"  {label:30s} {'error':>9s}  {r['error']}")
            continue
        ratio = r["p50_ms"] / best_raw[1]["p50_ms"] if best_raw else None
        note = f"chose {r['backend']}" if label == "iotrt auto" else ""
        if "blas" in r and label == "iotrt numpy":
            note = ",".join(r["blas"])
        lo, hi = r.get("p50_spread_ms", (r["p50_ms"], r["p50_ms"]))
        print(
            f"  {label:30s} {r['p50_ms']:9.2f} {f'{lo:.1f}-{hi:.1f}':>15s} {r['p90_ms']:9.2f}"
            f" {r['cpu_p50_ms']:11.2f} {r['peak_rss_mb']:12.1f} {fmt_ratio(ratio):>12s}  {note}"
        )
    lines = []
    num, auto = ok.get("iotrt numpy"), ok.get("iotrt auto")
    ref_label = reference_label(case)
    ref = ok.get(ref_label)
    if num and ref:
        r = num["p50_ms"] / ref["p50_ms"]
        target = NUMPY_TARGETS.get(case.name)
        if numpy_paired is None:
            lines.append(f"{case.name}: numpy / {ref_label.split()[0]} latency = {r:.2f}x" + _verdict(r, target))
        else:
            p = numpy_paired
            lines.append(f"{case.name}: numpy / {ref_label.split()[0]}, interleaved in one process, "
                         f"{len(p['ratios'])} passes (medians): CPU time per run {p['cpu_ratio']:.2f}x "
                         f"({_list(p['cpu_ratios'])}), p50 latency {p['ratio']:.2f}x, lower-quartile "
                         f"latency {p['lq_ratio']:.2f}x; separate processes: p50 latency {r:.2f}x"
                         + _verdict(p["cpu_ratio"], target))
        rc = num["cpu_p50_ms"] / ref["cpu_p50_ms"]
        lines.append(f"{case.name}: numpy / {ref_label.split()[0]} CPU time per run = {rc:.2f}x"
                     " (the same comparison without the waits other programs cause)")
        lines.append(f"{case.name}: wall beyond CPU: numpy preempted {num['preempted_per_run']:.2f}/run,"
                     f" waited {num['waits_per_run']:.2f}/run, {num.get('threads', '?')} thread(s);"
                     f" {ref_label.split()[0]} preempted {ref['preempted_per_run']:.2f}/run,"
                     f" waited {ref['waits_per_run']:.2f}/run, {ref.get('threads', '?')} thread(s)")
        rss = num["peak_rss_mb"]
        lines.append(f"{case.name}: numpy peak RSS = {rss:.1f} MB" + _verdict(rss, RSS_BEFORE_MB.get(case.name), " MB"))
    if auto and best_raw:
        r = auto["p50_ms"] / best_raw[1]["p50_ms"]
        if paired is None:
            lines.append(f"{case.name}: auto (chose {auto.get('backend')}) / best raw ({best_raw[0]}) "
                         f"= {r:.2f}x" + _verdict(r, 1.1))
        else:
            p = paired
            chose = ", ".join(f"{b} {x:.2f}" for b, x in zip(p["chosen"], p["cpu_ratios"]))
            lines.append(f"{case.name}: auto / best raw ({p['against']}), each pass a fresh choice then "
                         f"interleaved in one process, {len(p['ratios'])} passes: CPU time per run worst "
                         f"{max(p['cpu_ratios']):.2f}x ({chose}); p50 latency median {p['ratio']:.2f}x "
                         f"({_list(p['ratios'])}), lower-quartile latency median {p['lq_ratio']:.2f}x; "
                         f"separate processes: p50 latency {r:.2f}x" + _verdict(max(p["cpu_ratios"]), 1.1))
    return lines


# numpy backend vs the model's reference framework (LiteRT for BlazeFace, else onnxruntime)
NUMPY_TARGETS = {"blazeface": 2.5, "light_shufflenet": 2.5, "light_squeezenet": 1.4, "light_resnet50": 1.4}
# numpy peak RSS before the depthwise/pool kernels (docs/compile.md table, 2026-11-25): not above
RSS_BEFORE_MB = {"blazeface": 47, "light_squeezenet": 52, "light_shufflenet": 58, "light_resnet50": 172,
                 "light_inception_v1": 101}


def _list(values: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def _verdict(value: float, target: float | None, unit: str = "x") -> str:
    if target is None:
        return ""
    return f" (target <= {target:g}{unit}: {'met' if value <= target else 'MISSED'})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="blazeface," + ",".join(models.LIGHT),
                   help="comma-separated: blazeface and/or light_* names")
    p.add_argument("--threads", type=int, default=1, help="threads for every runner (default 1)")
    p.add_argument("--min-iters", type=int, default=20)
    p.add_argument("--min-seconds", type=float, default=1.5)
    p.add_argument("--max-iters", type=int, default=300)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3,
                   help="fresh-process passes per runner, in rotating order; the median is shown")
    p.add_argument("--timeout", type=float, default=600, help="seconds per measurement")
    p.add_argument("--json", type=Path, help="also write all figures to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--settle", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--against", help=argparse.SUPPRESS)
    p.add_argument("--against-path", help=argparse.SUPPRESS)
    p.add_argument("--busy", type=int, default=0,
                   help="keep this many cores busy with spinning processes for the whole run "
                        "(auto must hold on a loaded device)")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing runners: the numpy backend's CPU time per op type and "
                        "its slowest steps, beside onnxruntime's own per-node profile (ONNX models)")
    p.add_argument("--top", type=int, default=15, help="slowest steps listed by --profile")
    args = p.parse_args(argv)
    if args.child:
        args.kind = args.child
        return child(args)
    if args.profile:
        return profile_all(args)

    unset = ", ".join(f"{k}={os.environ[k]!r}" for k in UNSET_ENV if k in os.environ) or "not set"
    print(
        f"engine benchmark: batch 1, {args.threads} thread(s) per runner, each measurement in a "
        f"fresh subprocess, {args.repeats} passes per runner in rotating order (median shown).\n"
        f"OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are UNSET in the benchmark's "
        f"subprocesses (here: {unset}); tests and CI keep them."
    )
    if args.busy:
        print(f"{args.busy} core(s) kept busy by spinning processes for the whole run")
    summary: list[str] = []
    everything: dict[str, dict] = {}
    # Each spinner ends by itself once this process is gone (killed: no `finally` runs).
    spin = ("import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n"
            "    for _ in range(100_000):\n        pass\n")
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(args.busy)]
    try:
        measure_all(args, summary, everything)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    print("\nratios")
    for line in summary:
        print("  " + line)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))
    return 0


def profile_all(args) -> int:
    """--profile: one fresh subprocess per model (the same environment as the measurements)."""
    with tempfile.TemporaryDirectory(prefix="iotrt-bench-") as tmp:
        for case in prepare(args.models.split(","), Path(tmp), args):
            if case.artifact is None:
                continue
            print(f"\n{case.name} {case.shape}", flush=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "profile",
                   "--path", str(case.artifact), "--against-path", str(case.source),
                   "--threads", str(args.threads), "--min-iters", str(args.min_iters),
                   "--top", str(args.top)]
            proc = subprocess.run(cmd, env=child_env(args.threads), capture_output=True, text=True,
                                  timeout=args.timeout)
            print(proc.stdout, end="")
            if proc.returncode != 0:
                print(f"  profile failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return 0


def pair_auto(case: Case, runs, results: dict[str, dict], args) -> dict | None:
    """auto against the fastest raw runner (by CPU time, which load stretches least), in one
    process per pass, interleaved. Each of the `args.repeats` passes starts from a fresh choice
    (cache deleted, first load measured again, under whatever load the machine has), so the
    figure says how often auto chooses right, not just once. Returns the median ratio."""
    from iotrt.engine.autotune import cache_path

    raw = {label: r for label, r in results.items() if not label.startswith("iotrt") and "error" not in r}
    if case.artifact is None or "error" in results.get("iotrt auto", {"error": 1}) or not raw:
        return None
    best = min(raw, key=lambda label: raw[label]["cpu_p50_ms"])
    kind, path = next((k, p) for label, k, p in runs if label == best)
    ratios = []
    for rep in range(args.repeats):
        cache_path(case.artifact).unlink(missing_ok=True)
        first = measure("iotrt:auto", case.artifact, case.shape, args, settle=True)
        print(f"  {case.name}: fresh auto choice {first.get('backend', first.get('error'))}; auto vs "
              f"{best}, interleaved (pass {rep + 1}/{args.repeats}) ...", flush=True)
        m = measure("iotrt:auto", case.artifact, case.shape, args, against=(kind, path))
        if "error" not in m:
            ratios.append(m)
    summary = summarize_pairs(ratios)
    return None if summary is None else {"against": best, **summary}


def reference_label(case: Case) -> str:
    return "LiteRT (source .tflite)" if case.source.suffix == ".tflite" else "onnxruntime (source .onnx)"


def pair_numpy(case: Case, runs, args) -> dict | None:
    """numpy against the model's reference framework, interleaved in one process per pass
    (`args.repeats` fresh passes): the median ratio of their p50 latencies."""
    ref = next(((k, p) for label, k, p in runs if label == reference_label(case)), None)
    if case.artifact is None or ref is None:
        return None
    ratios = []
    for rep in range(args.repeats):
        print(f"  {case.name}: numpy vs {ref[0]}, interleaved (pass {rep + 1}/{args.repeats}) ...", flush=True)
        m = measure("iotrt:numpy", case.artifact, case.shape, args, against=ref)
        if "error" not in m:
            ratios.append(m)
    return summarize_pairs(ratios)


def summarize_pairs(passes: list[dict]) -> dict | None:
    """Per statistic (p50 wall, lower-quartile wall, p50 CPU): each pass's ratio and the median."""
    if not passes:
        return None
    out: dict = {"chosen": [m.get("backend") for m in passes]}
    for key in ("ratio", "lq_ratio", "cpu_ratio"):
        out[key + "s"] = [m[key] for m in passes]
        out[key] = float(statistics.median(out[key + "s"]))
    return out


def measure_all(args, summary: list[str], everything: dict[str, dict]) -> None:
    with tempfile.TemporaryDirectory(prefix="iotrt-bench-") as tmp:
        cases = prepare(args.models.split(","), Path(tmp), args)
        for case in cases:
            runs = runs_for(case)
            if case.artifact is not None:
                # The first load on the "device" measures and caches auto's choice; what a node
                # sees from then on is the cached choice, which is what the auto runs measure.
                print(f"  {case.name}: auto first load (autotune) ...", flush=True)
                first = measure("iotrt:auto", case.artifact, case.shape, args, settle=True)
                print(f"  {case.name}: auto chose {first.get('backend', first.get('error'))}", flush=True)
            passes: dict[str, list[dict]] = {label: [] for label, _, _ in runs}
            for rep in range(args.repeats):
                # Rotate the order each pass: load from other programs drifts over minutes, and
                # should not always hit the same runner.
                shift = rep % len(runs)
                for label, kind, path in runs[shift:] + runs[:shift]:
                    print(f"  {case.name}: {label} (pass {rep + 1}/{args.repeats}) ...", flush=True)
                    passes[label].append(measure(kind, path, case.shape, args))
            results = {label: combine(ms) for label, ms in passes.items()}
            numpy_paired = pair_numpy(case, runs, args)
            paired = pair_auto(case, runs, results, args)
            everything[case.name] = {**results, "auto paired": paired, "numpy paired": numpy_paired}
            summary += report(case, results, paired, numpy_paired)


if __name__ == "__main__":
    sys.exit(main())
