"""Smoke runs of the benchmarks in bench/: each script is run as a user runs it (one command,
from the repository's root) with the smallest arguments that still go through every part of it,
and must exit with status 0, print what a reader relies on (its tables, each target with its
verdict, the JSON file with its keys) and leave no process behind.

Timings are never judged: whether a target is met on a shared machine says nothing about the
code, so a verdict may be either word (`met` or `MISSED`: every bench says one of the two, so
`grep MISSED` finds every miss). What is judged is what must hold on any machine: no runner of the engine benchmark
failed, `iotrt up` exited with 0 on SIGTERM, a recording replays every frame it holds.

Each run is a subprocess in a session of its own, with a mark in its environment that every
process it starts inherits (the supervisors and brokers the benches start in sessions of their
own, and their nodes, included): on a timeout all of them are killed, and a bench that exits
leaving one running fails.

About 2 minutes in all on the 2-core development machine when it is quiet (2 min 6 s, 2 min 43 s
and 3 min 25 s in three runs, the last two beside another session's tests). bench/bus.py has no
run shorter than `--quick` (about 40 s: a reader process per trial, and at least 30 frames per
trial at 30 and 15 frames/s); bench/footprint.py waits for the engine's backend choice to settle
(see its test); every other bench takes 1-20 s with the arguments below.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
from helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
MARK = "IOTRT_BENCH_SMOKE"      # environment variable carrying one run's token
GRACE_S = 10.0                  # for what a bench started to end after the bench has exited
NUM = r"-?[\d,]+\.?\d*"         # a figure as the benches print it: 3, 0.699, 98,136
V = r"(?:met|MISSED)"    # a target's verdict, either way


def _marked(token: str) -> list[psutil.Process]:
    """Every running process whose environment carries this run's token."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == token and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:    # ended meanwhile, or not ours to read: not the bench's
            continue
    return found


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def run_bench(tmp_path: Path, script: str, *args: str, timeout: float = 180.0) -> str:
    """Run `python bench/SCRIPT ARGS` from the repository's root; return its stdout once it has
    exited with 0 and left nothing running.

    Output goes to files, not pipes: a process left behind holding a pipe would keep a reader
    waiting for its end, and the leak would pass for a timeout."""
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env[MARK] = token
    command = f"bench/{script} {' '.join(args)}"
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, f"bench/{script}", *args], cwd=ROOT, env=env,
                                stdout=out, stderr=err, start_new_session=True)
    left: list[str] = []
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:     # a timeout, or the test interrupted: end everything
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _kill(_marked(token))
            proc.wait()
            timed_out = True
        else:
            timed_out = False
            try:
                wait_for(lambda: not _marked(token), GRACE_S, "its processes to end", poll=0.1)
                alive = []
            except AssertionError:
                alive = _marked(token)
            for p in alive:
                try:
                    left.append(f"{p.pid}: {' '.join(p.cmdline())[:200]}")
                except psutil.Error:
                    continue
            _kill(alive)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    tail = f"\n--- stdout:\n{stdout[-3000:]}\n--- stderr:\n{stderr[-3000:]}"
    assert not timed_out, f"{command} ran over {timeout:g} s and was killed{tail}"
    assert proc.returncode == 0, f"{command} exited with {proc.returncode}{tail}"
    assert not left, f"{command} left processes running:\n" + "\n".join(left)
    # an exception in a thread ends the thread, not the program: the exit status misses it
    assert "Traceback" not in stderr, f"{command} printed a traceback{tail}"
    return stdout


def expect(out: str, *patterns: str) -> None:
    """Each pattern matches a line of `out` (re.M: ^ and $ are a line's ends)."""
    missing = [p for p in patterns if not re.search(p, out, re.M)]
    assert not missing, "not in the output:\n  " + "\n  ".join(missing) + f"\n--- output:\n{out}"


def test_actuators(tmp_path):
    out = run_bench(tmp_path, "actuators.py", "-n", "20", "--json", str(tmp_path / "out.json"))
    stages = ["raw pynng Req0/Rep0", "command channel (ids on disk)",
              "lock under iotrt up, journaled", "lock alone, no journal"]
    expect(out, r"^stage\s+p50 ms\s+p99 ms\s+p50 x raw\s+p99 x raw$",
           *(rf"^{re.escape(s)}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}$" for s in stages),
           rf"^targets for the command channel: p50 {NUM} ms <= 1.0 ms {V}; "
           rf"p99 {NUM} ms <= 3.0 ms {V} \(load average {NUM}\)$")
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [r["stage"] for r in rows] == stages
    for r in rows:
        assert set(r) == {"stage", "n", "p50_ms", "p99_ms"} and r["n"] == 20, r


def test_bus(tmp_path):
    out = run_bench(tmp_path, "bus.py", "--quick", timeout=240)
    row = r"\|\s+{0}ms\s+{0}ms \|\s+{0}ms\s+{0}ms \|\s+{0}x".format(NUM)
    expect(out, r"^\s+payload\s+rate\s+iotrt path \|\s+raw p50\s+p99 \|\s+iotrt p50\s+p99 \|"
                r"\s+ratio\s+to\s+target\s+lost raw/iotrt$",
           rf"^\s+64 B\s+200/s\s+publish\(bytes\) {row}\s+raw\s+1.2x\s+\d+/\d+ {V}$",
           *(rf"^\s+{size}\s+{rate}/s\s+publish\(array\) {row}\s+raw\s+\d+/\d+ $"
             for size, rate in (("921,600 B", 30), ("6,220,800 B", 15))),
           *(rf"^\s+{size}\s+{rate}/s\s+loan\+publish {row}\s+64 B same rate\s+2.0x\s+\d+/\d+ {V}$"
             for size, rate in (("921,600 B", 30), ("6,220,800 B", 15))),
           rf"^  raw pynng:\s+{NUM} msg/s delivered$", rf"^  iotrt:\s+{NUM} msg/s delivered$",
           rf"^  ratio iotrt/raw: {NUM}x \(target >= 0.8x: {V}\)$",
           rf"^(all targets met|SOME TARGETS MISSED) \(load average at the end {NUM}\)$")


def test_e2e(tmp_path):
    out = run_bench(tmp_path, "e2e.py", "--seconds", "1", "--starts", "1")
    expect(out, rf"^pass 1: iotrt up -> first detection: cold \(compile \+ backend choice\) "
                rf"{NUM} s, warm \(cached model\) {NUM} s; CPU used by then {NUM} s / {NUM} s$",
           rf"^frames: camera {NUM}/s, detector ran on \d+ \({NUM}/s\), rules decided on \d+$",
           r"^latency \(ms\)\s+p50\s+p99\s+max\s+target$",
           rf"^capture -> detection\s+{NUM}\s+{NUM}\s+{NUM}\s*$",
           rf"^capture -> decision\s+{NUM}\s+{NUM}\s+{NUM}\s+p99 <= 33 ms: {V}$",
           r"^backlog: decision p50 first .* -> (none|GROWING)$",
           rf"^first detection cold: median {NUM} s over 1 passes .* target <= 2 s: {V}$",
           rf"^first detection warm: median {NUM} s over 1 passes .* target <= 1.5 s: {V}$",
           r"^process\s+CPU %\s+RSS MB\s+PSS MB$",
           rf"^supervisor\s+{NUM}\s+{NUM}\s+{NUM}$",
           rf"^total\s+{NUM}\s+{NUM}\s+{NUM}\s+\(budget 200 MB: PSS (within|OVER)\)$",
           r"^iotrt up exited with 0 on SIGTERM$")


ENGINE_RUNNERS = {
    "blazeface": ["iotrt numpy", "iotrt opencv", "iotrt onnxruntime", "iotrt litert", "iotrt auto",
                  "LiteRT (source .tflite)", "cv2.dnn (source)"],
    "light_squeezenet": ["iotrt numpy", "iotrt opencv", "iotrt onnxruntime", "iotrt auto",
                         "onnxruntime (source .onnx)", "cv2.dnn (source)"],
}


def test_engine(tmp_path):
    """A .tflite and an ONNX model (the light_* path: random weights, onnxruntime as the
    reference), every runner, the paired passes of numpy and auto, a --busy spinner (which
    must end with the run: run_bench fails a bench that leaves a process)."""
    out = run_bench(tmp_path, "engine.py", "--models", "blazeface,light_squeezenet",
                    "--repeats", "1", "--min-seconds", "0", "--min-iters", "2",
                    "--max-iters", "2", "--warmup", "0", "--busy", "1",
                    "--json", str(tmp_path / "out.json"))
    expect(out, r"^1 core\(s\) kept busy by spinning processes for the whole run$",
           r"^blazeface \(1, 128, 128, 3\)$", r"^light_squeezenet \(1, 3, 224, 224\)$",
           r"^  runner\s+p50 ms\s+p50 range\s+p90 ms\s+CPU p50 ms\s+peak RSS MB\s+vs best raw"
           r"\s+note$",
           r"^ratios$",
           rf"^  blazeface: numpy / LiteRT, interleaved in one process, .* \(target <= 2.5x: {V}\)$",
           rf"^  blazeface: numpy peak RSS = {NUM} MB \(target <= 47 MB: {V}\)$",
           rf"^  blazeface: auto / best raw .* \(target <= 1.1x: {V}\)$",
           rf"^  light_squeezenet: numpy / onnxruntime, interleaved .* \(target <= 1.4x: {V}\)$",
           rf"^  light_squeezenet: auto / best raw .* \(target <= 1.1x: {V}\)$")
    figures = json.loads((tmp_path / "out.json").read_text())
    assert set(figures) == set(ENGINE_RUNNERS)
    for model, runners in ENGINE_RUNNERS.items():
        got = figures[model]
        assert set(got) == {*runners, "auto paired", "numpy paired"}, model
        for label in runners:
            assert "error" not in got[label], (model, label, got[label]["error"])
            assert {"p50_ms", "p90_ms", "cpu_p50_ms", "peak_rss_mb", "backend"} <= set(got[label])
        for paired in ("auto paired", "numpy paired"):
            assert got[paired] and {"ratio", "lq_ratio", "cpu_ratio"} <= set(got[paired]), \
                (model, paired, got[paired])


def test_engine_profile(tmp_path):
    out = run_bench(tmp_path, "engine.py", "--profile", "--models", "light_squeezenet",
                    "--min-iters", "2", "--top", "3")
    expect(out, r"^light_squeezenet \(1, 3, 224, 224\)$",
           rf"^numpy backend: \d+ steps, {NUM} ms CPU",
           rf"^  Conv\s+{NUM} ms\s+{NUM}%$", r"^  slowest steps:$",
           rf"^onnxruntime: {NUM} ms in kernels", r"^  slowest nodes:$")
    assert "profile failed" not in out, out


def test_footprint(tmp_path):
    """Its unmeasured warm-up waits (60 s at most per start, up to 3 starts) for the engine's
    backend choice to settle: 13 s on a quiet machine, 74-83 s seen under another's load."""
    out = run_bench(tmp_path, "footprint.py", "--seconds", "1", "--repeat", "2", "--breakdown",
                    timeout=280)
    table = r"^  process\s+CPU %\s+RSS MB\s+PSS MB\s+runq ms/s$"
    expect(out, r"^\(4 runs took \d+ s\)$",
           r"^grouped \(as shipped: process groups\)$",
           r"^one process per node \(process: lines removed\)$",
           rf"^  total\s+{NUM}\s+{NUM}\s+{NUM}\s+\(\d+ processes\)$",
           rf"^  capture -> decision: p50 {NUM} ms, p99 {NUM} ms over \d+ decisions; "
           rf"input drops \d+ \(whole run\), lost on in-process inputs \d+ ",
           r"^  capture -> each hop of a decision: ",
           rf"^  2 runs \(memory above: the first\): total PSS {NUM}, {NUM} MB; "
           rf"capture -> decision p99 {NUM}, {NUM} ms$",         # --repeat 2
           rf"^    supervisor: \S+ {NUM}",     # --breakdown: PSS by mapping
           r"^targets$",
           rf"^  grouped PSS total {NUM} MB <= 150 MB: {V} \(one process per node: {NUM} MB, "
           rf"ratio {NUM}\)$",
           rf"^  supervisor RSS {NUM} MB <= 25 MB: {V}$",
           rf"^  capture -> decision p99 grouped {NUM} ms <= one process per node {NUM} ms: "
           rf"{V} \(ratio {NUM}\)$",
           rf"^  frames lost to the in-process path: \d+ == 0: {V}$")
    assert len(re.findall(table, out, re.M)) == 2, out


def test_model_load(tmp_path):
    """Its target is no timing: loading a cached model imports no compiler module (exit 1 if
    one is)."""
    out = run_bench(tmp_path, "model_load.py", "--runs", "1")
    expect(out, rf"^reference: \+ import iotrt.compiler\s+PSS\s+{NUM} MB\s+RSS\s+{NUM} MB\s+"
                r"modules \d+, of them iotrt.compiler [1-9]\d*$",
           rf"^model load\s+PSS\s+{NUM} MB\s+RSS\s+{NUM} MB\s+modules \d+, of them "
           r"iotrt.compiler 0$",
           rf"^PSS ratio model load / reference: {NUM} \({NUM} MB less\); "
           r"target: no iotrt.compiler module imported: met$")


def test_mqtt(tmp_path):
    """A real mosquitto, as in CI (.ci/run installs it)."""
    out = run_bench(tmp_path, "mqtt.py", "--seconds", "1", "--json", str(tmp_path / "out.json"))
    expect(out, r"^stage\s+events\s+p50 ms\s+p99 ms\s+p50 x ref\s+p99 x ref$",
           *(rf"^{re.escape(s)}\s+\d+\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}$"
             for s in ("direct paho publish (reference)", "feeder -> bridge node -> MQTT")),
           rf"^bridge CPU: {NUM} % of one core \(target <= 2 %: {V}\); "
           rf"the feeder, for scale: {NUM} %$",
           rf"^bridge off \(host empty, inputs still wired\): {NUM} % of one core$")
    figures = json.loads((tmp_path / "out.json").read_text())
    assert set(figures) == {"reference", "bridge", "off", "cpu_target_pct", "met"}
    for stage in ("reference", "bridge"):
        assert set(figures[stage]) == {"stage", "events", "p50_ms", "p99_ms", "cpu_pct", "process"}
        assert figures[stage]["events"] >= 1
    assert set(figures["off"]) == {"stage", "cpu_pct", "process"}
    assert figures["bridge"]["process"] == "homeassistant"


def test_perception(tmp_path):
    out = run_bench(tmp_path, "perception.py", "--seconds", "1", "--frames", "3")
    rows = ["model only, same input in a loop (iotrt)", "model inside the detector step",
            "LiteRT, same model (reference)", "detector step (pre + model + post)",
            "capture -> detections published @30 fps", "capture -> identity published  @30 fps",
            "capture -> detections published @120 fps"]
    expect(out, r"^\[1/3\] in-process", r"^\[2/3\] processes at 30 fps", r"^\[3/3\] processes at 120",
           r"^BlazeFace detector, 640x480 frames, backend auto, 1 thread\(s\)$",
           *(rf"^  {re.escape(r)}\s+{NUM}\s+{NUM}$" for r in rows),
           rf"^  @30 fps:  camera {NUM} fps, detections {NUM}/s$",
           rf"^  @120 fps: camera {NUM} fps, detections {NUM}/s \(sustainable\), "
           r"stale skipped \d+$",
           r"^ratios$", rf"^  iotrt model / LiteRT model\s+{NUM}x$")


def test_record(tmp_path):
    out = run_bench(tmp_path, "record.py", "--seconds", "1")
    expect(out, rf"^reference: JPEG q=80 encode of a 640x480 frame: {NUM} ms",
           rf"^target JPEG: zero drops {V}, recorder <= 25 % of a core {V}$")
    recorded, replayed = {}, {}
    for frames in ("jpeg", "raw"):
        m = re.search(rf"^record {frames}\s+1 s at 30 fps: CPU\s+{NUM} % of a core .* "
                      rf"(\d+) frames \({NUM}/s\), \d+ dropped$", out, re.M)
        assert m, out
        recorded[frames] = int(m.group(1))
        m = re.search(rf"^replay {frames}\s+--rate max: (\d+) frames in {NUM} s = {NUM} msgs/s",
                      out, re.M)
        assert m, out
        replayed[frames] = int(m.group(1))
    assert min(recorded.values()) >= 1, out
    assert replayed == recorded, out     # a replay plays every frame the recording holds


def test_rules(tmp_path):
    out = run_bench(tmp_path, "rules.py", "-n", "60", "--rounds", "1",
                    "--json", str(tmp_path / "out.json"))
    expect(out, r"^throughput \(median of 1 rounds\)\s+msgs/s\s+x ref$",
           *(rf"^{re.escape(r)}\s+{NUM}\s+{NUM}$"
             for r in ("plain Python lambdas (reference)",
                       "engine, Python rules (callable conditions)",
                       "engine, YAML rules (sandboxed expressions)")),
           rf"^target: YAML rules >= 0.3x plain-Python lambdas\s+{NUM}x\s+{V}$",
           r"^trigger -> command sent \(rounds pooled\)\s+p50 ms\s+p99 ms\s+cmds$",
           rf"^in-process, Python rules\s+{NUM}\s+{NUM}\s+\d+$",
           rf"^in-process, YAML rules\s+{NUM}\s+{NUM}\s+\d+$",
           rf"^target: YAML p99 <= 1.1x Python rules' p99\s+{NUM}x\s+{V}$",
           rf"^publish -> rule node process -> actuator\s+{NUM}\s+{NUM}\s+\d+\s+"
           r"\(\d+ missing, 30 msgs/s, YAML rules\)$")
    figures = json.loads((tmp_path / "out.json").read_text())
    assert figures["rules"] == 100 and figures["messages"] == 60
    assert set(figures["throughput_msgs_s"]) == {"reference_lambdas", "engine_python",
                                                  "engine_yaml"}
    assert set(figures["latency_ms"]) == {"in_process_python", "in_process_yaml",
                                          "processes_yaml"}
    assert all(len(v) == 2 for v in figures["latency_ms"].values())


def test_startup(tmp_path):
    out = run_bench(tmp_path, "startup.py", "--nodes", "4", "--runs", "1", "--idle-s", "0.5")
    expect(out, r"^nodes\s+up -> all ready\s+reference\s+ratio$",
           rf"^\s+4\s+{NUM}s\s+{NUM}s\s+{NUM}$",
           rf"^idle with 4 nodes over 0.5s: supervisor {NUM}% CPU; a node {NUM}% \(median\); "
           rf"ratio supervisor/node {NUM}$")


def test_web(tmp_path):
    """A real MJPEG viewer of the door graph's web node."""
    out = run_bench(tmp_path, "web.py", "--seconds", "1")
    expect(out, r"^window\s+detector/s\s+vs ref\s+web CPU %$",
           rf"^1. nobody looks\s+{NUM}\s+{NUM}\s+{NUM}$",
           rf"^2. one viewer at 10 fps \({NUM} fps seen\)\s+{NUM}\s+{NUM}\s+{NUM}$",
           rf"^3. nobody looks again\s+{NUM}\s+{NUM}\s+{NUM}$",
           rf"^reference \(mean of 1 and 3\): {NUM} detections/s$",
           rf"^detector rate drop with a viewer: {NUM} % \(target <= 5 %: {V}\)$",
           rf"^web node with a viewer: {NUM} % of a core \(target <= 15 %: {V}\)$",
           rf"^web node with no viewer: {NUM} % of a core \(target <= 0.5 %: {V}\)$")
