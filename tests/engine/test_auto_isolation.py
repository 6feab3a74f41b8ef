"""`auto` measures in a separate process: a real detector node imports only the framework it runs.

A graph (sim camera + detector) is started with `iotrt up` on a fresh state directory, so the
node compiles BlazeFace, starts on numpy and has the backends measured by a child process. The
node's own memory map (/proc/PID/maps: the native libraries each framework loads) must then show
the winner's framework and no other.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest
from helpers import Up, up_env, wait_for

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

# a native library each framework maps when it is imported
FRAMEWORK_LIBS = {"onnxruntime": "onnxruntime_pybind11_state", "litert": "libLiteRt.so"}

GRAPH = """\
name: isolate
nodes:
  - id: cam
    kind: camera
    params: {source: sim, width: 320, height: 240, fps: 10}
  - id: faces
    kind: detector
    inputs:
      image: {from: cam/image, queue: 1}
"""


def node_process(supervisor: int, node_id: str) -> psutil.Process | None:
    for proc in psutil.Process(supervisor).children(recursive=True):
        try:
            config = proc.environ().get("IOTRT_NODE_CONFIG", "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if config and json.loads(config).get("id") == node_id:
            return proc
    return None


def frameworks_mapped(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name, lib in FRAMEWORK_LIBS.items() if lib in maps}


@pytest.fixture
def run_dir():
    path = Path(tempfile.mkdtemp(prefix="iotrt-iso", dir="/tmp"))  # ipc paths: max 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_detector_node_imports_only_the_framework_auto_chose(tmp_path, run_dir):
    graph = tmp_path / "g.yaml"
    graph.write_text(textwrap.dedent(GRAPH))
    state = tmp_path / "state"
    up = Up(graph, up_env(run_dir, state), tmp_path / "up.log")
    try:
        cache = wait_for(lambda: next(state.glob("*/models/*.auto.json"), None), 240,
                         "the measuring process to cache its choice")
        choice = wait_for(lambda: _json(cache), 10, "a complete cache file")
        # the candidates were built and timed, by another process
        assert {"onnxruntime", "litert"} <= set(choice["medians_ms"]) | set(choice["rejected"])
        assert len(choice["medians_ms"]) >= 2
        winner = choice["backend"]
        if winner != "numpy":
            up.wait_log(f"auto: switched to {winner}", timeout=120)
        node = wait_for(lambda: node_process(up.proc.pid, "faces"), 30, "the detector's process")
        wait_for(lambda: not node.children(), 60, "the measuring process to exit")
        assert frameworks_mapped(node.pid) == {winner} & set(FRAMEWORK_LIBS), up.text[-3000:]
        # nor the timing inputs' generator (numpy.random, which brings secrets and OpenSSL):
        # only the measuring process times anything
        assert "numpy/random/" not in Path(f"/proc/{node.pid}/maps").read_text()
    finally:
        stop(up)


def stop(up: Up) -> None:
    """SIGTERM the supervisor; whatever it leaves behind is killed."""
    try:
        procs = psutil.Process(up.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    up.proc.terminate()
    try:
        up.proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    up.close()
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def test_a_failed_measuring_process_is_an_error_naming_the_artifact(tmp_path):
    from iotrt.engine import autotune

    bad = tmp_path / "broken.iotm"
    bad.write_bytes(b"not an artifact")
    with pytest.raises(autotune.MeasureError, match=r"broken\.iotm exited 1: .*"):
        autotune.measure_in_child(bad, threads=1)
    assert not autotune.cache_path(bad).exists()
