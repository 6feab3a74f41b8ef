"""Runs every code example of docs/nodes.md, so the guide cannot drift from the code."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import pytest

from iotrt.bus import Subscriber, short_ipc_address
from iotrt.node import Node, load_spec
from iotrt.protocol import ENV_CONFIG, NodeConfig

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "nodes.md"


def blocks() -> dict[str, str]:
    """Code blocks keyed by the file name on their first line (or 'block N')."""
    found = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    out = {}
    for i, code in enumerate(found):
        m = re.match(r"# (\w+\.py)", code)
        out[m.group(1) if m else f"block {i}"] = code
    return out


@pytest.fixture
def guide_modules(tmp_path, monkeypatch):
    code = blocks()
    for name in ("brightness.py", "facecount.py", "heater.py", "counter.py"):
        (tmp_path / name).write_text(code[name])
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("brightness", "facecount", "heater"):
        sys.modules.pop(mod, None)
    return tmp_path, code


def test_guide_has_the_examples_this_test_runs():
    assert set(blocks()) == {"brightness.py", "facecount.py", "block 2", "heater.py", "counter.py",
                            "block 5"}


def test_brightness_module_and_its_unit_test(guide_modules):
    _, code = guide_modules
    exec(compile(code["block 2"], "docs/nodes.md: testing example", "exec"), {})


def test_facecount_example(guide_modules):
    import facecount

    node = Node.for_test(facecount)
    node.feed("faces", {"faces": [{"name": "owner", "known": True},
                                  {"name": "unknown", "known": False}]})
    node.feed("faces", {"faces": []})
    node.run()
    assert [p.data for p in node.published] == [{"faces": 2, "known": 1},
                                                {"faces": 0, "known": 0}]
    # the graph runs it as a file: SPEC and main(node), nothing else to write
    path = guide_modules[0] / "facecount.py"
    assert load_spec(str(path)).inputs.keys() == {"faces"}


def test_heater_example(guide_modules):
    import heater

    node = Node.for_test(heater, params={"setpoint": 21.0})
    node.feed("temperature", {"celsius": 19.0}).feed_command("setpoint", {"celsius": 18.0},
                                                            id="c1")
    node.feed("temperature", {"celsius": 18.2}).tick("status").feed_reload()
    node.run()
    assert [c.data for c in node.commands] == [{"on": True}, {"on": False}]
    assert node.acks == [{"id": "c1", "ok": True, "setpoint": 18.0}]
    assert node.records[0] == ("heater_switched", {"on": True, "celsius": 19.0})
    assert node.published[-1].data == {"on": False, "setpoint": 18.0}


def test_counter_script_runs_under_launch(guide_modules, rundir, spawn):
    tmp, _ = guide_modules
    script = tmp / "counter.py"
    assert load_spec(str(script)).param("period").default == 0.5  # read without running
    address = short_ipc_address(rundir, "g", "counter", "count")
    cfg = NodeConfig(id="counter", target=str(script), params={"period": 0.01},
                     outputs={"count": {"address": address}})
    cfg = NodeConfig.from_json(cfg.to_json())
    with Subscriber(address) as sub:
        proc = spawn([sys.executable, "-m", "iotrt.launch"], env={ENV_CONFIG: cfg.to_json()})
        first = sub.recv(timeout_s=10)
        assert first is not None and isinstance(first.data, int)
        later = sub.recv(timeout_s=10)
        assert later.data > first.data
        proc.signal(signal.SIGTERM)
        assert proc.wait_exit(10) == 0


def test_loan_example():
    """The camera snippet, with a stand-in for cv2.VideoCapture."""
    code = blocks()["block 5"]

    class Capture:
        def read(self, image):
            image[:] = 3
            return True, image

    node = Node.for_test(_camera_spec())
    namespace = {"node": node, "cap": Capture(), "t_capture": time.monotonic_ns()}
    exec(compile(code, "docs/nodes.md: loan example", "exec"), namespace)
    assert node.published[0].data.shape == (480, 640, 3)
    assert int(node.published[0].data.mean()) == 3


def _camera_spec():
    from iotrt.node import NodeSpec

    return NodeSpec(outputs={"image": "frame"})
