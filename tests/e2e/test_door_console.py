"""The door graph as a new user meets it in the terminal (issue 14, items 1 and 8).

One real `iotrt up` of a copy of configs/door.yaml on the simulated doorstep, with the README's
next step done: the custom node of docs/nodes.md (`my_nodes/facecount.py`) wired in as the
guide shows. The console must show one concise, timestamped line per decision (who was
recognised, what a rule told the lock, the lock unlocking for N s and re-locking by itself, the
visitor's snapshot) and not the model compiler's passes; `iotrt echo` shows the custom node's
output. Deadlines are generous: the machine may be loaded.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import Up, up_env, wait_for

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "nodes.md"
STAMP = r"\d\d:\d\d:\d\d\.\d{3}"


def guide_block(lang: str, marker: str) -> str:
    """The fenced `lang` block of docs/nodes.md that contains `marker`."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"docs/nodes.md has {len(found)} {lang} blocks with {marker!r}"
    return found[0]


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    """The door graph plus the guide's facecount node, running; yields (Up, graph, env)."""
    work = tmp_path_factory.mktemp("door")
    for name in ("door.yaml", "door.rules.yaml", "door.gallery.npz"):
        shutil.copy2(ROOT / "configs" / name, work / name)
    (work / "my_nodes").mkdir()
    (work / "my_nodes" / "facecount.py").write_text(guide_block("python", "# facecount.py"))
    graph = work / "door.yaml"
    fragment = guide_block("yaml", "my_nodes/facecount.py")
    graph.write_text(graph.read_text().rstrip("\n") + "\n\n" + fragment)
    run_root = Path(tempfile.mkdtemp(prefix="iotrt-con", dir="/tmp"))
    env = {**up_env(run_root, work / "state"), "CAMERA_SOURCE": "sim", "CAMERA_FPS": "15",
           "WEB_PORT": "0"}
    env.pop("JOURNAL_STREAM", None)
    u = Up(graph, env, work / "up.log")
    try:
        yield u, graph, env
    finally:
        if u.proc.poll() is None:
            u.proc.send_signal(signal.SIGINT)
            try:
                u.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        u.close()
        shutil.rmtree(run_root, ignore_errors=True)


def test_console_shows_each_decision_in_one_line(door):
    u, _, _ = door
    wait_for(lambda: re.search(r"all \d+ nodes up", u.text), 240, "the graph up")
    lines = [
        "iotrt.events: who: recognised owner",
        "iotrt.events: rules: rule unlock_for_enrolled -> lock: unlock ",
        "iotrt.events: lock: unlocked for 5 s (owner)",
        "iotrt.events: lock: re-locked (timeout)",
        "iotrt.events: rules: rule visitor -> doorbell: notify",
    ]
    for line in lines:
        u.wait_log(line, timeout=240)
    wait_for(lambda: re.search(r"iotrt\.events: who: (recognised .*; )?1 unknown face$", u.text,
                               re.M), 240, "the visitor seen")
    wait_for(lambda: re.search(r"iotrt\.events: snapshot: saved \S+/snapshots/\S+\.jpg$",
                               u.text, re.M), 240, "the visitor's snapshot path")
    text = u.text
    # every line the supervisor writes carries a time (none under journald: it adds its own)
    own = [ln for ln in text.splitlines() if " iotrt.supervisor: " in ln or " iotrt.events: " in ln]
    assert own and all(re.match(rf"{STAMP} (INFO|WARNING|ERROR) ", ln) for ln in own), own[:5]
    # the detector compiled its model on this first start, quietly: passes are DEBUG
    assert "compiling once" in text
    assert "fold constants" not in text and "memory plan" not in text


def test_custom_node_from_the_guide_runs_and_echo_shows_it(door, tmp_path):
    u, graph, env = door
    wait_for(lambda: re.search(r"all \d+ nodes up", u.text), 240, "the graph up")
    out = tmp_path / "echo.txt"
    with open(out, "w") as f:
        echo = subprocess.Popen([sys.executable, "-m", "iotrt", "echo", "facecount/count",
                                 "--graph", str(graph), "--changes"], env=env, stdout=f,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: '"known": 1' in out.read_text(), 240,
                 f"the owner counted by facecount in `iotrt echo`:\n{out.read_text()}")
    finally:
        echo.kill()
        echo.wait()
    assert re.search(r"^--- facecount/count seq=\d+ src=facecount", out.read_text(), re.M)
    assert '{"faces": 1, "known": 1}' in out.read_text()
