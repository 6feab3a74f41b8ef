"""Motors: the dead-man logic, and the serial driver's line protocol over a real pty."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from iotrt.nodes.action.actuator import DriverError, SafetyTimer, execute
from iotrt.nodes.action.motor import Motors, SerialMotors, SimMotors, motor_names


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def drive(self, speeds):
        self.calls.append(("drive", list(speeds)))

    def stop(self):
        self.calls.append(("stop",))

    def close(self):
        self.calls.append(("close",))


def test_deadman_stops_when_commands_stop():
    clock, rec = Clock(), Recorder()
    motors = Motors(rec, ["left", "right"], deadman_s=0.5, clock=clock)
    assert rec.calls == [("stop",)]  # stopped from the start
    kind, ack = execute(motors, {"left": 0.4, "right": -1})
    assert kind == "command_applied"
    assert ack["speeds"] == {"left": 0.4, "right": -1.0} and ack["deadman_s"] == 0.5
    clock.t += 0.3
    execute(motors, {"left": 0.4, "right": -1})  # a fresh command keeps them going
    clock.t += 0.45
    assert motors.check() == pytest.approx(0.05) and motors.moving
    clock.t += 0.05
    assert motors.check() is None
    assert rec.calls[-1] == ("stop",) and not motors.moving
    assert [c["cause"] for c in motors.changes()] == ["start", "command", "deadman"]


def test_refresh_repeats_the_speeds_for_the_firmware_watchdog():
    clock, rec = Clock(), Recorder()
    motors = Motors(rec, ["m"], deadman_s=1.0, refresh_s=0.25, clock=clock)
    execute(motors, {"m": 0.5})
    for _ in range(3):
        clock.t += 0.25
        motors.check()
    assert rec.calls.count(("drive", [0.5])) == 4
    clock.t += 0.25
    motors.check()
    assert rec.calls[-1] == ("stop",)


@pytest.mark.parametrize("command, why", [
    ({"left": 1.5}, "outside -1..1"),
    ({"left": "fast"}, "must be a number"),
    ({"front": 0.2}, "unknown motor(s) front"),
])
def test_refused_commands_leave_the_motors_as_they_were(command, why):
    rec = Recorder()
    motors = Motors(rec, ["left", "right"], deadman_s=0.5)
    kind, ack = execute(motors, command)
    assert kind == "command_refused" and why in ack["error"]
    assert rec.calls == [("stop",)]


def test_stop_and_zero_commands_stop():
    rec = Recorder()
    motors = Motors(rec, ["left", "right"], deadman_s=5)
    execute(motors, {"left": 0.2})
    assert rec.calls[-1] == ("drive", [0.2, 0.0])
    execute(motors, {"stop": True})
    assert rec.calls[-1] == ("stop",) and motors.check() is None
    execute(motors, {"right": -0.2})
    execute(motors, {"left": 0, "right": 0})
    assert rec.calls[-1] == ("stop",) and not motors.moving


def test_motor_names():
    assert motor_names(["a", "b"]) == ["a", "b"]
    for bad in ([], ["a", "a"], ["stop"], [""]):
        with pytest.raises(ValueError, match="distinct names"):
            motor_names(bad)


def test_sim_records_changes_not_refreshes(tmp_path):
    sim = SimMotors(tmp_path / "m.jsonl", ["l", "r"])
    motors = Motors(sim, ["l", "r"], deadman_s=5, refresh_s=0.01)
    execute(motors, {"l": 0.1, "r": 0.1})
    execute(motors, {"l": 0.1, "r": 0.1})
    motors.close()
    rows = [json.loads(x)["speeds"] for x in sim.path.read_text().splitlines()]
    assert rows == [{"l": 0, "r": 0}, {"l": 0.1, "r": 0.1}, {"l": 0, "r": 0}]


# -- the serial driver over a pty: the test plays the motor controller's firmware -----------

class Firmware:
    """Reads protocol lines from the pty's master side and answers like a controller would."""

    def __init__(self, reply=lambda line: b"OK\n") -> None:
        self.master, self.slave = os.openpty()
        self.port = os.ttyname(self.slave)
        self.reply = reply
        self.lines: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop:
            try:
                chunk = os.read(self.master, 1024)
            except OSError:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self.lines.append((time.monotonic(), line.decode()))
                answer = self.reply(line.decode())
                if answer:
                    os.write(self.master, answer)

    def wait_for(self, line_wanted: str, after: float, timeout=5.0) -> float:
        """When the firmware first received ``line_wanted`` after time ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((t for t, line in list(self.lines) if t > after and line == line_wanted),
                       None)
            if hit is not None:
                return hit
            time.sleep(0.005)
        raise AssertionError(f"firmware never saw the line; got {self.lines}")

    def close(self) -> None:
        self._stop = True
        os.close(self.slave)
        os.close(self.master)
        self._thread.join(timeout=5)


@pytest.fixture
def firmware():
    fw = Firmware()
    yield fw
    fw.close()


def test_serial_line_protocol(firmware):
    driver = SerialMotors(firmware.port, 115200, reply_timeout_s=1.0)
    driver.drive([0.4, -1.0])
    driver.drive([0.0005, 0.0])
    driver.close()
    assert [line for _, line in firmware.lines] == ["M 400 -1000", "M 0 0", "S"]


def test_serial_errors_are_driver_errors(tmp_path):
    fw = Firmware(reply=lambda line: b"ERR overcurrent\n" if line.startswith("M") else b"OK\n")
    try:
        driver = SerialMotors(fw.port, 115200, reply_timeout_s=1.0)
        motors = Motors(driver, ["l", "r"], deadman_s=1)
        kind, ack = execute(motors, {"l": 1})
        assert kind == "command_failed" and "'ERR overcurrent'" in ack["error"]
        assert [line for _, line in fw.lines][-1] == "S"  # it asked for a stop after the error
        driver.close()
    finally:
        fw.close()
    silent = Firmware(reply=lambda line: None)
    try:
        driver = SerialMotors(silent.port, 115200, reply_timeout_s=0.05)
        with pytest.raises(DriverError, match="did not answer 'S' within 0.05 s"):
            driver.stop()
        driver._serial.close()
    finally:
        silent.close()
    with pytest.raises(DriverError, match="cannot open the motor controller on /nonexistent"):
        SerialMotors("/nonexistent/tty", 115200, 0.1)


def test_deadman_stops_real_serial_motors_on_time(firmware):
    motors = Motors(SerialMotors(firmware.port, 115200, 1.0), ["l", "r"], deadman_s=0.3,
                    refresh_s=0.1)
    timer = SafetyTimer(motors.check)
    motors.wake = timer.poke
    try:
        t0 = time.monotonic()
        execute(motors, {"l": 0.5, "r": 0.5})
        stopped = firmware.wait_for("S", after=t0)
        sent = [line for t, line in firmware.lines if t > t0]
    finally:
        timer.close()
        motors.close()
    assert 0.3 <= stopped - t0 < 1.3  # never early; late only by scheduling
    assert sent[0] == "M 500 500" and sent.count("M 500 500") >= 3  # refreshed while driving


def test_a_controller_that_stops_answering_while_driving_gets_a_stop():
    clock, rec = Clock(), Recorder()
    motors = Motors(rec, ["m"], deadman_s=1.0, refresh_s=0.2, clock=clock)
    execute(motors, {"m": 0.5})

    def dead(speeds):
        rec.calls.append(("drive-failed", list(speeds)))
        raise DriverError("no answer")
    rec.drive = dead
    clock.t += 0.2
    with pytest.raises(DriverError):
        motors.check()  # on the safety timer this ends the node, after the stop below
    assert rec.calls[-2:] == [("drive-failed", [0.5]), ("stop",)] and not motors.moving
