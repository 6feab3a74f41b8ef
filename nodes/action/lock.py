"""Door lock actuator: fail-secure by construction.

- It starts locked: the GPIO line is requested with its *locked* level as the initial value, so
  there is no instant at start-up where the door is open.
- An unlock always carries a duration (``{"action": "unlock", "duration_s": 5}``); a command
  without one is refused, and a longer one is capped at ``max_unlock_s``.
- The lock re-locks by itself when the duration ends, from a timer thread of its own: a dead or
  silent rule node, or a busy event loop here, cannot keep the door open.
- If this process dies, the GPIO line is released. Wired as docs/actuators.md describes
  (fail-secure strike, pull-down, relay energised to *unlock*), a released or unpowered line means
  locked; the supervisor then restarts the node, which starts locked.

Drivers: ``gpio`` (libgpiod through the ``gpiod`` Python package, 2.x API; Debian's
python3-libgpiod 1.x has a different API and is not supported) and ``sim``, which records every
state change to a JSON-lines file so tests and users can see what the door would have done.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from iotrt.node import Node, NodeSpec, Param
from iotrt.nodes.action.actuator import CommandRefused, DriverError, StateLog, device_params, number, serve, sim_file

# A door held open longer than an hour is not an "unlock" but a configuration mistake; the bound
# also keeps every deadline a number the timer thread and the supervisor can wait on.
MAX_UNLOCK_S = 3600.0

SPEC = NodeSpec(
    doc="door lock: starts locked, unlocks only for a bounded time, re-locks by itself",
    outputs={"state": "{locked: bool, relock_in_s: float | None, cause: str}"},
    commands_in={"commands": "{action: 'unlock', duration_s: float} or {action: 'lock'}"},
    safety=True,   # runs alone; the supervisor kills it if a re-lock is late (frozen process)
    params=[
        Param("driver", str, "sim", "how the lock is driven", choices=("sim", "gpio")),
        Param("chip", str, "/dev/gpiochip0", "gpio: the GPIO chip device"),
        Param("line", str, "", "gpio: offset or name of the line that drives the lock relay"),
        Param("active_low", bool, False, "gpio: the line is driven low to unlock"),
        Param("max_unlock_s", float, 30.0, "longest unlock allowed; longer requests are capped",
              min=0.1, max=MAX_UNLOCK_S),
        *device_params("lock"),
    ],
    hardware=lambda p: p["driver"] != "sim",
)


# -- drivers: set_locked(bool) and close() ---------------------------------------------------

class GpioLock:
    """One output line via libgpiod 2.x. Unlocked = line *active* (energise the release);
    ``active_low`` makes active the low level. Locked is the line's inactive level."""

    def __init__(self, chip: str, line: str, active_low: bool, consumer: str,
                 gpiod: Any = None) -> None:
        gpiod = gpiod if gpiod is not None else _import_gpiod()
        if not line:
            raise DriverError("the gpio lock needs the 'line' parameter (an offset such as 17 "
                              "or a line name such as GPIO17)")
        self._key: int | str = int(line) if line.strip().isdigit() else line
        self._value = gpiod.line.Value
        settings = gpiod.LineSettings(direction=gpiod.line.Direction.OUTPUT,
                                      active_low=active_low, output_value=self._value.INACTIVE)
        try:
            self._request = gpiod.request_lines(chip, consumer=consumer,
                                                config={self._key: settings})
        except (OSError, ValueError) as exc:
            raise DriverError(f"cannot request GPIO line {line!r} on {chip}: {exc} (is the "
                              f"chip right, the line free, and the service user in the gpio "
                              f"group?)") from exc

    def set_locked(self, locked: bool) -> None:
        value = self._value.INACTIVE if locked else self._value.ACTIVE
        try:
            self._request.set_value(self._key, value)
        except OSError as exc:
            raise DriverError(f"cannot set GPIO line {self._key!r}: {exc}") from exc

    def close(self) -> None:
        # Drive the locked level before letting go, in case the wiring lacks its pull-down.
        try:
            self.set_locked(True)
        finally:
            self._request.release()


def _import_gpiod() -> Any:
    try:
        import gpiod
    except ModuleNotFoundError as exc:
        raise DriverError("the gpio lock needs the 'gpiod' package, 2.x "
                          "(pip install 'iotrt[hardware]')") from exc
    if not hasattr(gpiod, "request_lines"):
        raise DriverError(f"the gpio lock needs the gpiod 2.x Python API; the installed gpiod "
                          f"({getattr(gpiod, '__version__', '1.x')}, e.g. Debian's "
                          f"python3-libgpiod) is the older 1.x API. pip install 'gpiod>=2'")
    return gpiod


class SimLock:
    """A lock with no hardware: keeps its state and records each change (``locked``) in a
    JSON-lines file (see ``StateLog``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.locked: bool | None = None
        self._log = StateLog(path)

    def set_locked(self, locked: bool) -> None:
        self.locked = locked
        self._log.write(locked=locked)

    def close(self) -> None:
        self.set_locked(True)
        self._log.close()


# -- the controller: pure logic over a driver and a clock ------------------------------------

class Lock:
    """Decides the lock state. ``apply`` takes a command, ``check`` re-locks when due (the
    SafetyTimer calls it), ``changes()`` hands over the state changes to publish."""

    def __init__(self, driver: Any, max_unlock_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < max_unlock_s <= MAX_UNLOCK_S:   # also refuses NaN: no cap is no lock
            raise ValueError(f"max_unlock_s must be a finite number > 0, at most {MAX_UNLOCK_S:g} s, "
                             f"not {max_unlock_s}")
        self._driver = driver
        self.max_unlock_s = max_unlock_s
        self._clock = clock
        self._mutex = threading.Lock()
        self._relock_at: float | None = None
        self._changes: list[dict[str, Any]] = []
        self.wake: Callable[[], None] = lambda: None  # set to the SafetyTimer's poke
        # set to node.safety_deadline: the supervisor's backstop for a re-lock this process
        # fails to make (frozen, stuck in the driver); False = not armed
        self.deadline: Callable[[float | None], bool] = lambda in_s: True
        self._arming = threading.Lock()   # orders the reports: an arm is never undone by a
        #                                   disarm of the unlock before it
        with self._mutex:
            self._set(True, "start")

    def _set(self, locked: bool, cause: str) -> None:
        self._driver.set_locked(locked)
        self.locked = locked
        self._changes.append(self._state(cause))

    def _state(self, cause: str) -> dict[str, Any]:
        left = None if self._relock_at is None else max(0.0, self._relock_at - self._clock())
        return {"locked": self.locked, "relock_in_s": left, "cause": cause}

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        action = command.get("action")
        if action == "lock":
            with self._arming:
                with self._mutex:
                    self._relock_at = None
                    self._set(True, "command")
                self.deadline(None)
            return {"state": "locked"}
        if action != "unlock":
            raise CommandRefused(f"unknown action {action!r}: send {{action: unlock, "
                                 f"duration_s: N}} or {{action: lock}}")
        if command.get("duration_s") is None:
            raise CommandRefused(f"an unlock needs 'duration_s' (seconds, at most "
                                 f"{self.max_unlock_s:g}): the lock never opens without a time "
                                 f"limit")
        duration = number(command, "duration_s", 0.0, float("inf"))
        if duration <= 0:
            raise CommandRefused("'duration_s' must be more than 0")
        capped = duration > self.max_unlock_s
        duration = min(duration, self.max_unlock_s)
        with self._arming:
            if not self.deadline(duration):
                raise DriverError("the supervisor did not arm its re-lock backstop; not unlocking")
            with self._mutex:
                # The deadline is set, and the timer told, even if the driver fails half-way:
                # the line's state is then unknown, and the re-lock must still come.
                self._relock_at = self._clock() + duration
                try:
                    self._set(False, "command")
                finally:
                    self.wake()
        return {"state": "unlocked", "relock_in_s": duration, "capped": capped}

    def check(self) -> float | None:
        with self._mutex:
            if self._relock_at is None:
                return None
            left = self._relock_at - self._clock()
            if left > 0:
                return left
            self._relock_at = None
            self._set(True, "timeout")
        # Disarm, unless an unlock is arming a new deadline right now (it replaces this one).
        # Unacknowledged, the backstop kills a lock that is already locked: still safe.
        if self._arming.acquire(blocking=False):
            try:
                self.deadline(None)
            finally:
                self._arming.release()
        return None

    def state(self) -> dict[str, Any]:
        with self._mutex:
            return self._state("periodic")

    def close(self) -> None:
        """Lock and let go of the hardware (the node is stopping)."""
        with self._mutex:
            self._relock_at = None
            self.locked = True
            self._driver.close()

    def changes(self) -> list[dict[str, Any]]:
        with self._mutex:
            out, self._changes = self._changes, []
            return out


def open_driver(node: Node) -> Any:
    p = node.params
    if p["driver"] == "gpio":
        return GpioLock(p["chip"], p["line"], p["active_low"], consumer=f"iotrt:{node.id}")
    return SimLock(sim_file(node, "lock"))


def main(node: Node) -> None:
    serve(node, lambda: Lock(open_driver(node), node.params["max_unlock_s"]), device=True,
          state_period_s=node.params["state_period_s"])
