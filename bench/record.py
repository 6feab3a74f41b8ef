"""Recording benchmark: `iotrt record` on the door graph's frames, and `iotrt replay --rate max`.

    python bench/record.py [--seconds 10] [--fps 30]

Runs a graph with the sim camera at 640x480 and --fps (the door graph's camera), then records
cam/image for --seconds with `iotrt record`, once with JPEG q=80 frames and once raw. For each:
the recorder's CPU (user+sys over the run, % of one core), its peak RSS, MB per minute of
recording, and the drops it counted. The reference, measured in the same run, is what JPEG
encoding alone costs per frame here (cv2.imencode q=80 of a 640x480 sim frame, one thread):
the ratio says how much the recorder adds on top of the compression it cannot avoid.

Then each file is replayed with `iotrt replay --rate max` into a graph with one consumer of the
frames, and the replay node's own count and play time (journal event `replay_done`) give the
throughput in messages/s.

Targets (issue 15): zero drops at 30 fps JPEG on this 2-core machine, recorder <= 25 % of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

GRAPH = """\
name: benchrec
nodes:
  - id: cam
    kind: camera
    params: {{source: sim, width: 640, height: 480, fps: {fps}}}
  - id: sink
    kind: recorder                    # a consumer for the replay (writes JPEG clips to tmp)
    params: {{dir: {tmp}/sink, keep_files: 1}}
    inputs:
      image: {{from: cam/image, queue: 4}}
"""
CPU_TARGET = 25.0


def iotrt(*args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "iotrt", *map(str, args)], env=env, **kw)


def jpeg_reference(n: int = 60) -> float:
    """ms per frame of JPEG q=80 encoding (with the RGB->BGR conversion) of sim frames."""
    import cv2

    from iotrt.nodes.sensing.scene import DoorScene

    cv2.setNumThreads(1)
    scene = DoorScene(640, 480)
    frames = [scene.render(k / 30) for k in range(n)]
    t0 = time.perf_counter()
    for f in frames:
        cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return (time.perf_counter() - t0) / n * 1e3


def record(env, out: Path, frames: str, seconds: float) -> dict:
    proc = iotrt("record", "--graph", "benchrec", "-o", out, "--topics", "cam/image",
                 "--frames", frames, "--quality", "80", "--duration", seconds, env=env,
                 stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    samples = []
    # RSS while recording (ru_maxrss below is the peak); WNOWAIT leaves the child to wait4
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        try:
            samples.append(ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"iotrt record failed:\n{err}")
    info = json.loads(subprocess.run(
        [sys.executable, "-m", "iotrt", "record", "info", str(out), "--json"], env=env,
        capture_output=True, text=True, check=True).stdout)
    n = info["topics"]["cam/image"]["count"]
    cpu_s = usage.ru_utime + usage.ru_stime
    steady = sorted(samples)[len(samples) // 2] / 1e6 if samples else 0.0
    return {"cpu_pct": cpu_s / seconds * 100, "rss_mb": usage.ru_maxrss / 1024,
            "rss_median_mb": steady,
            "mb_per_min": info["bytes"] / 1e6 / info["duration_s"] * 60, "frames": n,
            "fps": n / info["duration_s"], "drops": info["drops"],
            "ms_per_frame": cpu_s / max(n, 1) * 1e3}


def replay(env, graph: Path, rec: Path, state: Path) -> dict:
    proc = iotrt("replay", rec, "--graph", graph, "--rate", "max", "--state-dir", state,
                 "--settle", "0.2", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True)
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"iotrt replay failed:\n{out}{err}")
    from iotrt.journal import Journal

    reader = Journal.open_readonly(state / "benchrec" / "journal.db")
    done = reader.query(kind="replay_done")[-1].fields
    reader.close()
    return {"messages": done["messages"], "seconds": done["seconds"],
            "per_s": done["messages"] / done["seconds"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="recording length per run")
    ap.add_argument("--fps", type=float, default=30.0, help="camera frame rate")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="iotrt-benchrec-"))
    run_dir = Path("/tmp") / f"iotrt-br-{os.getpid()}"
    env = dict(os.environ, IOTRT_RUNTIME_DIR=str(run_dir), IOTRT_STATE_DIR=str(tmp / "state"))
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(var, None)
    graph = tmp / "benchrec.yaml"
    graph.write_text(GRAPH.format(fps=args.fps, tmp=tmp))
    ref_ms = jpeg_reference()
    print(f"reference: JPEG q=80 encode of a 640x480 frame: {ref_ms:.2f} ms "
          f"({ref_ms * args.fps / 10:.1f} % of a core at {args.fps:g} fps)")
    up = iotrt("up", graph, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([sys.executable, "-m", "iotrt", "topics", "benchrec"], env=env,
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("the bench graph did not start")
            time.sleep(0.5)
        time.sleep(2.0)     # the camera's first frames
        results = {}
        for frames in ("jpeg", "raw"):
            r = results[frames] = record(env, tmp / f"{frames}.mcap", frames, args.seconds)
            print(f"record {frames:4} {args.seconds:g} s at {args.fps:g} fps: "
                  f"CPU {r['cpu_pct']:5.1f} % of a core ({r['ms_per_frame']:.2f} ms/frame, "
                  f"{r['ms_per_frame'] / ref_ms:.2f}x the JPEG reference), "
                  f"RSS {r['rss_median_mb']:.0f} MB (peak {r['rss_mb']:.0f}), "
                  f"{r['mb_per_min']:.0f} MB/min, {r['frames']} frames ({r['fps']:.1f}/s), "
                  f"{r['drops']} dropped")
        j = results["jpeg"]
        met_drops, met_cpu = j["drops"] == 0, j["cpu_pct"] <= CPU_TARGET
        print(f"target JPEG: zero drops {'met' if met_drops else 'MISSED'}, "
              f"recorder <= {CPU_TARGET:g} % of a core {'met' if met_cpu else 'MISSED'}")
    finally:
        up.terminate()
        up.wait(60)
    for frames in ("jpeg", "raw"):
        r = replay(env, graph, tmp / f"{frames}.mcap", tmp / f"replay-{frames}")
        print(f"replay {frames:4} --rate max: {r['messages']} frames in {r['seconds']:.2f} s = "
              f"{r['per_s']:.0f} msgs/s ({r['per_s'] / args.fps:.1f}x real time)")
    subprocess.run(["rm", "-rf", str(tmp), str(run_dir)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
