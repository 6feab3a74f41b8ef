"""Property tests: whatever sequence of commands (valid, invalid, hostile) and time steps, the
lock is open only inside the window of its last accepted unlock, and motors turn only inside
the dead-man window of their last accepted command."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import example, given, settings
from hypothesis import strategies as st

from iotrt.nodes.action.actuator import execute
from iotrt.nodes.action.lock import Lock
from iotrt.nodes.action.motor import Motors

MAX_UNLOCK = 10.0
DEADMAN = 0.5

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-100, 100),
                    st.booleans(), st.text(max_size=3), st.none())
lock_commands = st.one_of(
    st.fixed_dictionaries({"action": st.just("unlock"),
                           "duration_s": st.floats(0.01, 100)}),
    st.fixed_dictionaries({"action": st.just("unlock")}, optional={"duration_s": numbers}),
    st.just({"action": "lock"}),
    st.fixed_dictionaries({"action": st.one_of(st.text(max_size=6), numbers)}),
    st.one_of(st.lists(st.integers(), max_size=2), st.text(max_size=4)),  # not a map at all
)
steps = st.lists(st.one_of(st.tuples(st.just("cmd"), lock_commands),
                           st.tuples(st.just("wait"), st.floats(0, 15))), max_size=30)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


@settings(max_examples=200, deadline=None)
@given(steps)
# A duration too small to move the clock: open and closed at the same instant.
@example([("wait", 1.0), ("cmd", {"action": "unlock", "duration_s": 3.6e-83})])
def test_the_lock_is_open_only_inside_its_last_unlock_window(script):
    clock = Clock()
    driver = SimpleNamespace(locked=None)
    driver.set_locked = lambda v: setattr(driver, "locked", v)
    lock = Lock(driver, MAX_UNLOCK, clock=clock)
    open_until = float("-inf")
    for step, arg in script:
        if step == "cmd":
            kind, ack = execute(lock, arg)
            if kind == "command_applied" and ack["state"] == "unlocked":
                open_until = clock.t + min(float(arg["duration_s"]), MAX_UNLOCK)
                assert ack["relock_in_s"] <= MAX_UNLOCK
            elif kind == "command_applied":
                open_until = float("-inf")
        else:
            clock.t += arg
        # What the safety timer does when a command pokes it or its deadline passes.
        lock.check()
        assert driver.locked is (clock.t >= open_until), (step, arg, clock.t, open_until)


motor_commands = st.one_of(
    st.fixed_dictionaries({}, optional={"left": st.floats(-1, 1), "right": st.floats(-1, 1)}),
    st.fixed_dictionaries({}, optional={"left": numbers, "right": numbers, "stop": numbers,
                                        "up": numbers}),
)
motor_steps = st.lists(st.one_of(st.tuples(st.just("cmd"), motor_commands),
                                 st.tuples(st.just("wait"), st.floats(0, 1))), max_size=30)


@settings(max_examples=200, deadline=None)
@given(motor_steps)
def test_motors_turn_only_inside_the_deadman_window(script):
    clock = Clock()
    driver = SimpleNamespace(speeds=None)
    driver.drive = lambda speeds: setattr(driver, "speeds", list(speeds))
    driver.stop = lambda: setattr(driver, "speeds", [0.0, 0.0])
    motors = Motors(driver, ["left", "right"], DEADMAN, clock=clock)
    fresh_until = float("-inf")
    for step, arg in script:
        if step == "cmd":
            kind, ack = execute(motors, arg)
            if kind == "command_applied":
                fresh_until = clock.t + DEADMAN if any(ack["speeds"].values()) else float("-inf")
        else:
            clock.t += arg
        motors.check()
        moving = any(driver.speeds)
        assert moving is (clock.t < fresh_until), (step, arg, clock.t, fresh_until)
        assert all(-1 <= s <= 1 for s in driver.speeds)
