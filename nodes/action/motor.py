"""Motor actuator with a dead-man timeout: without a fresh command the motors stop.

Commands name each motor's speed as a fraction of full speed, -1..1:
``{"left": 0.4, "right": 0.4}``; motors not named get 0; ``{"stop": true}`` stops all. Each
command is good for ``deadman_s``: the sender (a rule node, a teleop client) must keep sending,
and if it dies, hangs or loses the link the motors stop on time. The stop comes from a timer
thread of this node, not from its event loop.

Drivers: ``serial`` speaks the line protocol below to a motor controller (Arduino-class MCU) with
pyserial; ``sim`` records each change to a JSON-lines file.

Serial line protocol (ASCII, one command per line, ``\\n`` terminated):

    host -> controller   M <s1> <s2> ... <sN>   speeds in per-mille of full speed, -1000..1000,
                                                in the order of the ``motors`` parameter
                         S                      stop every motor
    controller -> host   OK                     applied
                         ERR <reason>           refused (reported in the command's ack)

While the motors turn, the host repeats the last ``M`` line every ``refresh_s`` so the firmware can
run its own watchdog (stop when no line came for, say, 3 x refresh_s): that covers the case where
this whole computer hangs or loses power, which no software here can.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.action.actuator import CommandRefused, DriverError, StateLog, device_params, number, serve, sim_file

SPEC = NodeSpec(
    doc="motors with a dead-man timeout: each command is good for deadman_s, then they stop",
    outputs={"state": "{speeds: {name: -1..1}, cause: str}"},
    commands_in={"commands": "{<motor>: speed -1..1, ...} or {stop: true}"},
    safety=True,   # runs in a process of its own, never in a process group
    params=[
        Param("driver", str, "sim", "how the motors are driven", choices=("sim", "serial")),
        Param("motors", list, ["left", "right"], "motor names, in protocol order"),
        Param("deadman_s", float, 0.5, "stop the motors when no command came for this long",
              min=0.01),
        Param("port", str, "/dev/ttyACM0", "serial: the motor controller's serial port"),
        Param("baud", int, 115200, "serial: baud rate", min=1),
        Param("reply_timeout_s", float, 0.2, "serial: wait this long for OK (0: do not wait)",
              min=0),
        Param("refresh_s", float, 0.1, "serial: repeat the speeds this often for the firmware "
                                       "watchdog (0: never)", min=0),
        *device_params("motor"),
    ],
    hardware=lambda p: p["driver"] != "sim",
)


# -- drivers: drive(speeds: list[float]), stop(), close() ------------------------------------

class SerialMotors:
    """The line protocol above over pyserial."""

    def __init__(self, port: str, baud: int, reply_timeout_s: float, serial: Any = None) -> None:
        if serial is None:
            try:
                import serial
            except ModuleNotFoundError as exc:
                raise DriverError("the serial motor driver needs pyserial "
                                  "(pip install 'iotrt[hardware]')") from exc
        self.port = port
        self._wait = reply_timeout_s
        try:
            self._serial = serial.Serial(port, baud, timeout=reply_timeout_s or None,
                                         write_timeout=1.0)
            self._serial.reset_input_buffer()  # drop a boot banner or stale replies
        except (OSError, ValueError, serial.SerialException) as exc:
            raise DriverError(f"cannot open the motor controller on {port}: {exc}") from exc
        self._errors = (OSError, serial.SerialException)

    def drive(self, speeds: list[float]) -> None:
        self._send("M " + " ".join(str(round(s * 1000)) for s in speeds))

    def stop(self) -> None:
        self._send("S")

    def _send(self, line: str) -> None:
        try:
            self._serial.write(line.encode("ascii") + b"\n")
            if not self._wait:
                return
            reply = self._serial.readline()
        except self._errors as exc:
            raise DriverError(f"motor controller on {self.port}: {exc}") from exc
        if not reply.endswith(b"\n"):
            raise DriverError(f"motor controller on {self.port} did not answer {line!r} "
                              f"within {self._wait:g} s")
        text = reply.decode("ascii", "replace").strip()
        if text != "OK":
            raise DriverError(f"motor controller on {self.port} answered {line!r} with {text!r}")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._serial.close()


class SimMotors:
    """No hardware: keeps the speeds and records each change (``speeds``) in a JSON-lines
    file (see ``StateLog``)."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.path = path
        self.names = names
        self.speeds = [0.0] * len(names)
        self._log = StateLog(path)

    def drive(self, speeds: list[float]) -> None:
        if speeds != self.speeds:  # a refresh is not a change
            self._record(speeds)

    def stop(self) -> None:
        self._record([0.0] * len(self.names))

    def _record(self, speeds: list[float]) -> None:
        self.speeds = list(speeds)
        self._log.write(speeds=dict(zip(self.names, speeds)))

    def close(self) -> None:
        self.stop()
        self._log.close()


# -- the controller --------------------------------------------------------------------------

class Motors:
    """Decides the speeds: ``apply`` a command, ``check`` enforces the dead-man and refresh."""

    def __init__(self, driver: Any, names: list[str], deadman_s: float, refresh_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if deadman_s <= 0:
            raise ValueError("deadman_s must be > 0")
        self.names = names
        self.deadman_s = deadman_s
        self.refresh_s = refresh_s
        self._driver = driver
        self._clock = clock
        self._mutex = threading.Lock()
        self._speeds = [0.0] * len(names)
        self._fresh_until = 0.0
        self._next_refresh = 0.0
        self._changes: list[dict[str, Any]] = []
        self.wake: Callable[[], None] = lambda: None
        with self._mutex:
            self._stop("start")

    @property
    def moving(self) -> bool:
        return any(self._speeds)

    def _stop(self, cause: str) -> None:
        self._speeds = [0.0] * len(self.names)
        self._driver.stop()
        self._changes.append(self._state(cause))

    def _state(self, cause: str) -> dict[str, Any]:
        return {"speeds": dict(zip(self.names, self._speeds)), "cause": cause}

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        if command.get("stop"):
            with self._mutex:
                self._stop("command")
            return self._state("command")
        unknown = sorted(set(command) - set(self.names) - {"stop"})
        if unknown:
            raise CommandRefused(f"unknown motor(s) {', '.join(unknown)}: this node drives "
                                 f"{', '.join(self.names)} (speeds -1..1) or takes stop: true")
        speeds = [number(command, name, -1.0, 1.0, default=0.0) for name in self.names]
        with self._mutex:
            if not any(speeds):
                self._stop("command")
                return self._state("command")
            now = self._clock()
            self._fresh_until = now + self.deadman_s
            self._next_refresh = now + self.refresh_s if self.refresh_s else float("inf")
            try:
                self._driver.drive(speeds)
            except DriverError:
                self._stop("driver_error")  # unknown speeds on the wire: ask for a stop
                raise
            if speeds != self._speeds:
                self._speeds = speeds
                self._changes.append(self._state("command"))
        self.wake()
        return {**self._state("command"), "deadman_s": self.deadman_s}

    def check(self) -> float | None:
        with self._mutex:
            if not self.moving:
                return None
            now = self._clock()
            if now >= self._fresh_until:
                self._stop("deadman")
                return None
            if now >= self._next_refresh:
                try:
                    self._driver.drive(self._speeds)
                except DriverError:
                    # The controller stopped answering while the motors turn: ask for a stop,
                    # then let the node end (the supervisor restarts it, stopped).
                    self._stop("driver_error")
                    raise
                self._next_refresh = now + self.refresh_s
            return min(self._fresh_until, self._next_refresh) - now

    def state(self) -> dict[str, Any]:
        with self._mutex:
            return self._state("periodic")

    def changes(self) -> list[dict[str, Any]]:
        with self._mutex:
            out, self._changes = self._changes, []
            return out

    def close(self) -> None:
        with self._mutex:
            self._speeds = [0.0] * len(self.names)
            self._driver.close()


def motor_names(value: list) -> list[str]:
    names = [str(n) for n in value]
    if not names or len(set(names)) != len(names) or "stop" in names or not all(names):
        raise ValueError(f"motors={value!r}: give a list of distinct names other than 'stop', "
                         f"e.g. [left, right]")
    return names


def open_driver(node: Node, names: list[str]) -> Any:
    p = node.params
    if p["driver"] == "serial":
        return SerialMotors(p["port"], p["baud"], p["reply_timeout_s"])
    return SimMotors(sim_file(node, "motor"), names)


def main(node: Node) -> None:
    p = node.params

    def make() -> Motors:
        names = motor_names(p["motors"])
        refresh = p["refresh_s"] if p["driver"] == "serial" else 0.0
        return Motors(open_driver(node, names), names, p["deadman_s"], refresh)
    serve(node, make, device=True, state_period_s=p["state_period_s"])
