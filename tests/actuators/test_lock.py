"""The door lock's logic and drivers, in-process: fail-secure decisions, GPIO via a fake gpiod."""

from __future__ import annotations

import enum
import inspect
import json
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from helpers import wait_for

from iotrt.nodes.action.actuator import DriverError, SafetyTimer, execute
from iotrt.nodes.action.lock import SPEC, GpioLock, Lock, SimLock


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def sim(tmp_path):
    return SimLock(tmp_path / "lock.jsonl")


def history(sim: SimLock) -> list[bool]:
    return [json.loads(line)["locked"] for line in sim.path.read_text().splitlines()]


def test_starts_locked(sim):
    lock = Lock(sim, max_unlock_s=30)
    assert sim.locked is True and lock.locked is True
    assert history(sim) == [True]
    assert lock.changes() == [{"locked": True, "relock_in_s": None, "cause": "start"}]


@pytest.mark.parametrize("command, why", [
    ({"action": "unlock"}, "needs 'duration_s'"),
    ({"action": "unlock", "duration_s": None}, "needs 'duration_s'"),
    ({"action": "unlock", "duration_s": "5"}, "must be a number"),
    ({"action": "unlock", "duration_s": True}, "must be a number"),
    ({"action": "unlock", "duration_s": float("nan")}, "must be a number"),
    ({"action": "unlock", "duration_s": 0}, "more than 0"),
    ({"action": "unlock", "duration_s": -3}, "outside"),
    ({"action": "open", "duration_s": 3}, "unknown action 'open'"),
    ({}, "unknown action None"),
])
def test_refuses_unsafe_or_malformed_unlocks(sim, command, why):
    lock = Lock(sim, max_unlock_s=30)
    kind, ack = execute(lock, command)
    assert kind == "command_refused" and ack["ok"] is False and why in ack["error"]
    assert sim.locked is True and history(sim) == [True]


def test_not_a_map_is_refused(sim):
    kind, ack = execute(Lock(sim, 30), ["unlock", 5])
    assert kind == "command_refused" and "map" in ack["error"]


def test_unlock_relocks_on_time():
    clock = Clock()
    driver = SimpleNamespace(locked=None, set_locked=lambda v: setattr(driver, "locked", v))
    lock = Lock(driver, max_unlock_s=30, clock=clock)
    lock.changes()
    kind, ack = execute(lock, {"action": "unlock", "duration_s": 5})
    assert kind == "command_applied"
    assert ack == {"ok": True, "state": "unlocked", "relock_in_s": 5.0, "capped": False}
    assert driver.locked is False
    clock.t += 4.9
    assert lock.check() == pytest.approx(0.1)
    assert driver.locked is False
    clock.t += 0.1
    assert lock.check() is None
    assert driver.locked is True
    assert [c["cause"] for c in lock.changes()] == ["command", "timeout"]


def test_long_unlock_is_capped_and_a_new_unlock_restarts_the_time():
    clock = Clock()
    driver = SimpleNamespace(set_locked=lambda v: setattr(driver, "locked", v))
    lock = Lock(driver, max_unlock_s=10, clock=clock)
    _, ack = execute(lock, {"action": "unlock", "duration_s": 3600})
    assert ack["relock_in_s"] == 10 and ack["capped"] is True
    clock.t += 8
    execute(lock, {"action": "unlock", "duration_s": 4})
    clock.t += 3.5
    assert lock.check() == pytest.approx(0.5) and driver.locked is False
    clock.t += 0.5
    lock.check()
    assert driver.locked is True


def test_lock_command_cancels_the_pending_relock():
    clock = Clock()
    driver = SimpleNamespace(set_locked=lambda v: setattr(driver, "locked", v))
    lock = Lock(driver, max_unlock_s=10, clock=clock)
    execute(lock, {"action": "unlock", "duration_s": 5})
    kind, ack = execute(lock, {"action": "lock"})
    assert (kind, ack) == ("command_applied", {"ok": True, "state": "locked"})
    assert driver.locked is True and lock.check() is None
    assert lock.state()["relock_in_s"] is None


def test_safety_timer_relocks_in_real_time(sim):
    lock = Lock(sim, max_unlock_s=10)
    timer = SafetyTimer(lock.check)
    lock.wake = timer.poke
    try:
        t0 = time.monotonic()
        execute(lock, {"action": "unlock", "duration_s": 0.3})
        deadline = t0 + 5
        while sim.locked is False and time.monotonic() < deadline:
            time.sleep(0.005)
        took = time.monotonic() - t0
    finally:
        timer.close()
    assert sim.locked is True
    assert 0.3 <= took < 1.3, took  # never early; late only by scheduling on a busy machine
    assert history(sim) == [True, False, True]


@pytest.mark.parametrize("value", [3600.5, 1e9, 18446744073709551616, float("inf")])
def test_max_unlock_s_has_a_maximum_in_the_spec_and_the_controller(sim, value):
    problems = SPEC.check_params({"max_unlock_s": value})[1]
    assert problems and "max_unlock_s" in str(problems[0])
    with pytest.raises(ValueError, match="at most 3600"):
        Lock(sim, max_unlock_s=value)


def test_a_huge_wait_does_not_kill_the_safety_timer():
    # A deadline past what the platform's clock holds once raised OverflowError in
    # Condition.wait and stopped the timer (and with it the lock node).
    calls = []

    def check():
        calls.append(1)
        return 1e12 if len(calls) == 1 else float("nan") if len(calls) == 2 else None
    timer = SafetyTimer(check)
    try:
        timer.poke()
        wait_for(lambda: timer.poke() or len(calls) >= 3, 5, "the timer's third check")
        timer.raise_if_failed()
    finally:
        timer.close()
    assert len(calls) >= 3


def test_safety_timer_failure_is_raised_on_the_loop():
    def broken():
        raise OSError("line gone")
    timer = SafetyTimer(broken)
    timer._thread.join(timeout=5)
    with pytest.raises(RuntimeError, match="safety timer failed"):
        timer.raise_if_failed()
    timer.close()


def test_sim_close_leaves_it_locked(sim):
    lock = Lock(sim, max_unlock_s=10)
    execute(lock, {"action": "unlock", "duration_s": 5})
    lock.close()
    assert history(sim) == [True, False, True]


# -- GPIO driver against a fake object with the gpiod 2.x API --------------------------------

class FakeGpiod:
    """The parts of gpiod 2.x the lock uses, modelling the *physical* level of each line."""

    class line:  # mirrors the gpiod.line module
        class Direction(enum.Enum):
            AS_IS = 1
            INPUT = 2
            OUTPUT = 3

        class Value(enum.Enum):
            INACTIVE = 0
            ACTIVE = 1

    @dataclass
    class LineSettings:
        direction: object = None
        active_low: bool = False
        output_value: object = None

    def __init__(self, chips: dict[str, list[str]]) -> None:
        self.chips = chips  # chip path -> line names by offset
        self.requests: list[FakeRequest] = []

    def request_lines(self, path, config, consumer=None, event_buffer_size=None,
                      output_values=None):
        if path not in self.chips:
            raise FileNotFoundError(2, "No such file or directory", path)
        req = FakeRequest(self, path, config, consumer)
        self.requests.append(req)
        return req


class FakeRequest:
    def __init__(self, gpiod: FakeGpiod, path, config, consumer) -> None:
        self.gpiod, self.consumer, self.released = gpiod, consumer, False
        names = gpiod.chips[path]
        self.settings, self.level = {}, {}
        for key, settings in config.items():
            if isinstance(key, str) and key not in names:
                raise ValueError(f"unknown line name: {key}")
            if isinstance(key, int) and not 0 <= key < len(names):
                raise ValueError(f"offset out of range: {key}")
            self.settings[key] = settings
            # The kernel drives the requested initial value from the moment of the request.
            self.level[key] = self._physical(key, settings.output_value)

    def _physical(self, key, value) -> int:
        active = value == self.gpiod.line.Value.ACTIVE
        return int(active != self.settings[key].active_low)

    def set_value(self, key, value) -> None:
        assert not self.released, "set_value after release"
        assert self.settings[key].direction == self.gpiod.line.Direction.OUTPUT
        self.level[key] = self._physical(key, value)

    def release(self) -> None:
        self.released = True


def test_fake_matches_the_real_gpiod_2_api():
    gpiod = pytest.importorskip("gpiod")
    if not hasattr(gpiod, "request_lines"):
        pytest.skip("installed gpiod is the 1.x API")
    real = inspect.signature(gpiod.request_lines).parameters
    assert list(real)[:3] == ["path", "config", "consumer"]
    settings = inspect.signature(gpiod.LineSettings).parameters
    assert {"direction", "active_low", "output_value"} <= set(settings)
    assert {m.name for m in gpiod.line.Value} == {m.name for m in FakeGpiod.line.Value}
    assert "OUTPUT" in gpiod.line.Direction.__members__
    from gpiod.line_request import LineRequest
    assert callable(LineRequest.set_value) and callable(LineRequest.release)


@pytest.mark.parametrize("active_low, locked_level, unlocked_level", [(False, 0, 1), (True, 1, 0)])
def test_gpio_levels(active_low, locked_level, unlocked_level):
    fake = FakeGpiod({"/dev/gpiochip0": [f"GPIO{i}" for i in range(28)]})
    driver = GpioLock("/dev/gpiochip0", "17", active_low, consumer="iotrt:door", gpiod=fake)
    (req,) = fake.requests
    assert req.consumer == "iotrt:door" and req.settings[17].active_low is active_low
    assert req.level[17] == locked_level  # locked from the instant of the request
    clock = Clock()
    lock = Lock(driver, max_unlock_s=5, clock=clock)
    execute(lock, {"action": "unlock", "duration_s": 2})
    assert req.level[17] == unlocked_level
    clock.t += 2
    lock.check()
    assert req.level[17] == locked_level
    execute(lock, {"action": "unlock", "duration_s": 2})
    lock.close()
    assert req.level[17] == locked_level and req.released


def test_gpio_line_by_name_and_errors():
    fake = FakeGpiod({"/dev/gpiochip0": ["GPIO0", "DOOR"]})
    GpioLock("/dev/gpiochip0", "DOOR", False, consumer="c", gpiod=fake)
    assert "DOOR" in fake.requests[0].settings
    with pytest.raises(DriverError, match="line 'NOPE' on /dev/gpiochip0"):
        GpioLock("/dev/gpiochip0", "NOPE", False, consumer="c", gpiod=fake)
    with pytest.raises(DriverError, match="/dev/gpiochip9"):
        GpioLock("/dev/gpiochip9", "1", False, consumer="c", gpiod=fake)
    with pytest.raises(DriverError, match="needs the 'line' parameter"):
        GpioLock("/dev/gpiochip0", "", False, consumer="c", gpiod=fake)


def test_gpiod_1x_is_named_in_the_error(monkeypatch):
    import sys

    # The 1.x API: Chip(...).get_line(n).request(...), and no request_lines.
    old_api = SimpleNamespace(__version__="1.6.3", Chip=object)
    monkeypatch.setitem(sys.modules, "gpiod", old_api)
    with pytest.raises(DriverError, match="gpiod 2.x .*1.6.3.*python3-libgpiod"):
        GpioLock("/dev/gpiochip0", "17", False, consumer="c")


def test_a_failed_unlock_still_relocks_on_time():
    clock = Clock()
    calls = []

    def set_locked(locked):
        calls.append(locked)
        if locked is False:
            raise DriverError("line busy")
    driver = SimpleNamespace(set_locked=set_locked)
    lock = Lock(driver, max_unlock_s=10, clock=clock)
    woken = []
    lock.wake = lambda: woken.append(True)
    kind, ack = execute(lock, {"action": "unlock", "duration_s": 2})
    assert kind == "command_failed" and "line busy" in ack["error"] and woken
    clock.t += 2
    lock.check()
    assert calls == [True, False, True]
