"""Every built-in node's param that becomes a node.timer period is bounded in its SPEC, so a
value `iotrt validate` accepts is a period node.timer schedules: (0 s, a day]. A param without
a maximum (Home Assistant's health_s: 86401 passed the graph check, then node.timer raised at
the node's start, a crash loop with no file:line) is the bug this guards against."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from iotrt.node import MAX_TIMER_S

NODES = Path(__file__).resolve().parents[2] / "nodes"

# (module, param) -> the timer period a value makes, for each node.timer fed by a param.
# A value of 0 that turns the timer off is left out of the range checked (`off`).
PERIODS = {
    ("iotrt.nodes.action.homeassistant", "health_s"): lambda v: v,
    ("iotrt.nodes.action.homeassistant", "faces_every_s"): lambda v: v,
    ("iotrt.nodes.sensing.odometry", "rate_hz"): lambda v: 1.0 / v,
    ("iotrt.nodes.sensing.imu", "rate_hz"): lambda v: 1.0 / v,
    ("iotrt.nodes.observe.recorder", "flush_s"): lambda v: min(1.0, v),
    ("iotrt.nodes.action.lock", "state_period_s"): lambda v: v,
    ("iotrt.nodes.action.motor", "state_period_s"): lambda v: v,
}
OFF = {("iotrt.nodes.action.homeassistant", "health_s"): 0.0}

# node.timer calls per file: each is listed in PERIODS above, takes a constant, or is tested
# on its own (the camera's frame period: tests/nodes/test_camera.py). A new timer fed by a
# param changes a count here, and belongs in PERIODS.
TIMER_CALLS = {
    "action/actuator.py": 1,        # state_period_s of lock and motor
    "action/homeassistant.py": 2,   # health_s; flush: min(faces_every_s, bridge every_s)
    "observe/clip.py": 1,           # constant 1.0
    "observe/recorder.py": 1,       # min(1.0, flush_s)
    "observe/replay.py": 1,         # constant TICK_S
    "observe/web.py": 1,            # constant RETRY_S
    "sensing/camera.py": 1,         # fps: tests/nodes/test_camera.py
    "sensing/imu.py": 1,            # 1 / rate_hz
    "sensing/odometry.py": 1,       # 1 / rate_hz
}


def test_every_timer_call_in_the_built_in_nodes_is_accounted_for():
    found = {}
    for path in sorted(NODES.rglob("*.py")):
        n = len(re.findall(r"\bnode\.timer\(", path.read_text(encoding="utf-8")))
        if n:
            found[str(path.relative_to(NODES))] = n
    assert found == TIMER_CALLS


@pytest.mark.parametrize("module, name", sorted(PERIODS))
def test_a_timer_param_the_graph_check_accepts_is_a_period_node_timer_schedules(module, name):
    spec = importlib.import_module(module).SPEC
    p = spec.param(name)
    assert p is not None and p.min is not None and p.max is not None, \
        f"{module}: param {name} feeds node.timer and needs a min and a max in its SPEC"
    off = OFF.get((module, name))
    low = p.min if off is None or p.min != off else None
    for value in [v for v in (low, p.max) if v is not None]:
        assert spec.check_params({name: value})[1] == []
        period = PERIODS[module, name](float(value))
        assert 0 < period <= MAX_TIMER_S, f"{module}: {name}={value} makes a period of {period} s"


def test_health_s_over_a_day_is_refused_by_the_graph_check_not_at_start():
    from iotrt.nodes.action.homeassistant import SPEC

    problems = SPEC.check_params({"health_s": MAX_TIMER_S + 1})[1]
    assert [p.param for p in problems] == ["health_s"]
    assert SPEC.check_params({"health_s": MAX_TIMER_S})[1] == []
    assert SPEC.check_params({"health_s": 0})[1] == []          # 0: off
