"""Perception benchmark: the face detector on 640x480 frames, in-process and as real processes.

    python bench/perception.py [--seconds 10] [--backend auto] [--frames 150] [--threads 1]

1. In-process, one frame at a time on the sim doorstep's 640x480 frames: model-only time (the
   engine's run on one prepared input, in a loop), the model's time inside each detector step,
   the whole detector step (letterbox, model, decode, weighted NMS, message), and LiteRT
   running the same .tflite (the reference, same run). Step minus model-in-step is the
   pre/post-processing overhead.
2. Real processes under `iotrt up`: camera(sim) -> detector -> identity over NNG + shared
   memory. At 30 fps: latency from capture (the camera's stamp_ns) to the detector publishing
   its detections (the detector's trace entry), and to the identity publishing names. Then the
   camera at 120 fps, more than the detector can take: the detections rate is the sustainable
   frames/s, and the frames it skipped are counted.

Every figure is measured in this run on this machine; nothing is compared to a stored number.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "face_detection_short_range.tflite"


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values), q))


def frames_640x480(n: int) -> list[np.ndarray]:
    from iotrt.nodes.sensing.scene import DoorScene

    scene = DoorScene(640, 480, period_s=12.0)
    return [scene.render(12.0 * i / n) for i in range(n)]


def in_process(args) -> dict:
    from iotrt.nodes.perception.inference import FaceDetector
    from iotrt.nodes.perception.modelcache import load_model

    frames = frames_640x480(args.frames)
    cache = Path(args.workdir) / "models"
    print(f"[1/3] in-process: compiling/loading BlazeFace (backend {args.backend}) ...", flush=True)
    model, _ = load_model(str(MODEL), cache, args.backend)
    det = FaceDetector(model)
    x, _ = det.blazeface.preprocess(frames[0])

    def timed(fn, n):
        out = []
        for i in range(n):
            t0 = time.perf_counter_ns()
            fn(i)
            out.append((time.perf_counter_ns() - t0) / 1e6)
        return out

    for i in range(5):  # warm-up: first runs allocate
        det(frames[i % len(frames)])
    model_ms = timed(lambda i: model.run({det.input_name: x}), args.frames)
    in_step_ms = []

    def step(i):
        det(frames[i])
        in_step_ms.append(det.model_ms)

    step_ms = timed(step, args.frames)

    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(str(MODEL), num_threads=args.threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]

    def litert(i):
        interp.set_tensor(inp, x)
        interp.invoke()

    for i in range(5):
        litert(i)
    litert_ms = timed(litert, args.frames)
    return {"model": model_ms, "in_step": in_step_ms, "step": step_ms, "litert": litert_ms}


GRAPH = """\
name: benchperc
runtime_dir: {root}/run
state_dir: {root}/state
nodes:
  - id: cam
    kind: camera
    params: {{source: sim, width: 640, height: 480, fps: {fps}}}
  - id: det
    kind: detector
    params: {{backend: {backend}}}
    inputs: {{image: {{from: cam/image, queue: 1}}}}
  - id: who
    kind: identity
    params: {{gallery: gallery.npz}}
    inputs: {{image: cam/image, detections: det/detections}}
"""


def run_graph(args, fps: float, seconds: float) -> dict:
    """Run the graph for `seconds` after it is up; collect detections and identity messages."""
    from iotrt.bus import Subscriber
    from iotrt.graph import load_graph

    root = Path(args.workdir)
    path = root / f"bench{int(fps)}.yaml"
    path.write_text(GRAPH.format(root=root, fps=fps, backend=args.backend))
    graph = load_graph(path)
    env = dict(os.environ, IOTRT_THREADS=str(args.threads))
    log = open(root / f"up{int(fps)}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "iotrt", "up", str(path)], cwd=root, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    subs = {name: Subscriber(graph.output_address(*name.split("/")), queue=256)
            for name in ("cam/image", "det/detections", "who/faces")}
    got: dict[str, list] = {name: [] for name in subs}
    try:
        # Wait for the first identity message: every node is up and the model is loaded.
        deadline = time.monotonic() + 120
        while subs["who/faces"].recv(timeout_s=0.5) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"graph did not come up; see {root / f'up{int(fps)}.log'}")
        for sub in subs.values():  # start counting from now
            while sub.recv_nowait() is not None:
                pass
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for name, sub in subs.items():
                env_ = sub.recv_nowait()
                while env_ is not None:
                    if name != "cam/image":
                        got[name].append(env_)
                    else:
                        got[name].append(env_.seq)
                    env_ = sub.recv_nowait()
            time.sleep(0.002)
    finally:
        for sub in subs.values():
            sub.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()

    def hop_ms(envs, node):
        return [(t - e.stamp_ns) / 1e6 for e in envs for n, t in e.trace if n == node]

    cam = got["cam/image"]
    dets = got["det/detections"]
    return {
        "fps_in": (cam[-1] - cam[0]) / seconds if len(cam) > 1 else 0.0,
        "fps_out": len(dets) / seconds,
        "det_ms": hop_ms(dets, "det"),
        "who_ms": hop_ms(got["who/faces"], "who"),
        "stale": dets[-1].data.get("stale", 0) if dets else 0,
    }


def enroll_owner(workdir: Path) -> None:
    from iotrt.cli import main as cli

    rc = cli(["enroll", "owner", str(ROOT / "nodes" / "sensing" / "data" / "owner.jpg"),
              "--gallery", str(workdir / "gallery.npz"), "--backend", "onnxruntime"])
    if rc:
        raise SystemExit("enrolling the sim owner failed")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="measuring time per graph run")
    p.add_argument("--backend", default="auto", help="engine backend for the detector")
    p.add_argument("--frames", type=int, default=150, help="frames for the in-process part")
    p.add_argument("--threads", type=int, default=1, help="threads per process (IOTRT_THREADS)")
    args = p.parse_args()
    if not MODEL.is_file():
        print(f"missing {MODEL}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    os.environ["IOTRT_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="iotrt-bench-") as tmp:
        args.workdir = tmp
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        ip = in_process(args)
        enroll_owner(Path(tmp))
        print(f"[2/3] processes at 30 fps for {args.seconds:.0f} s ...", flush=True)
        live = run_graph(args, 30.0, args.seconds)
        print(f"[3/3] processes at 120 fps (saturating) for {args.seconds:.0f} s ...", flush=True)
        sat = run_graph(args, 120.0, args.seconds)

    m50, s50, l50 = pct(ip["model"], 50), pct(ip["step"], 50), pct(ip["litert"], 50)
    i50 = pct(ip["in_step"], 50)
    print(f"\nBlazeFace detector, 640x480 frames, backend {args.backend}, {args.threads} thread(s)")
    print(f"  {'':44s} {'p50 ms':>8s} {'p99 ms':>8s}")
    rows = [
        ("model only, same input in a loop (iotrt)", ip["model"]),
        ("model inside the detector step", ip["in_step"]),
        ("LiteRT, same model (reference)", ip["litert"]),
        ("detector step (pre + model + post)", ip["step"]),
        ("capture -> detections published @30 fps", live["det_ms"]),
        ("capture -> identity published  @30 fps", live["who_ms"]),
        ("capture -> detections published @120 fps", sat["det_ms"]),
    ]
    for label, values in rows:
        if values:
            print(f"  {label:44s} {pct(values, 50):8.2f} {pct(values, 99):8.2f}")
        else:
            print(f"  {label:44s} {'no data':>8s}")
    print(f"  in-process frames/s (1 / step p50):          {1000 / s50:8.1f}")
    print(f"  @30 fps:  camera {live['fps_in']:.1f} fps, detections {live['fps_out']:.1f}/s")
    print(f"  @120 fps: camera {sat['fps_in']:.1f} fps, detections {sat['fps_out']:.1f}/s "
          f"(sustainable), stale skipped {sat['stale']}")
    print("\nratios")
    print(f"  detector step / model in step     {s50 / i50:6.2f}x  (pre/post-processing overhead "
          f"{s50 - i50:.2f} ms)")
    print(f"  model in step / model in a loop   {i50 / m50:6.2f}x  (fresh frames vs one repeated input)")
    print(f"  iotrt model / LiteRT model        {m50 / l50:6.2f}x")
    if live["who_ms"]:
        print(f"  capture->identity p50 / 33.3 ms   {pct(live['who_ms'], 50) / 33.3:6.2f}x  "
              f"(the one-frame-period target at 30 fps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
