"""What every actuator node shares: the command loop (journal, apply, ack) and the safety timer.

An actuator is a controller object with ``apply(command) -> result`` for one command input.
``serve`` runs the node's event loop: each command is first journaled durably with
``node.record("command_received", sync=True, ...)``, then applied, its outcome journaled, and only
then acknowledged. So a command is never carried out without a journal record (even if the
actuator is killed the next instant), and any command whose ack the sender saw is in the journal.
A command that cannot be journaled (fields JSON cannot hold, nesting too deep, a full disk, the
supervisor not answering) is refused - acknowledged ``{"ok": False, "error": ...}`` - and never
applied.

A command the actuator refuses (bad or unsafe input: ``CommandRefused``) or cannot carry out
(``DriverError``: the webhook timed out, the serial controller did not answer) is still
acknowledged, with ``{"ok": False, "error": ...}``: the sender must not retry a refused command,
and the journal says why. Any other exception is a bug or a broken device: it ends the node, and
the supervisor restarts it in its safe start state.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from iotrt import errors
from iotrt.node import NoAck, NodeError, Param

log = logging.getLogger(__name__)


class CommandRefused(errors.TransportError, ValueError):
    """The command is malformed or unsafe; it was not applied. The message says what to send."""


class DriverError(errors.DeviceError, RuntimeError):
    """The device or service did not do what the command asked."""


class Controller(Protocol):
    def apply(self, command: dict[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Device(Controller, Protocol):
    """A controller with state and time-based safety actions (lock, motors)."""

    def check(self) -> float | None: ...       # do what is due; seconds until the next check

    def state(self) -> dict[str, Any]: ...     # current state, for the periodic `state` message

    def changes(self) -> list[dict[str, Any]]: ...  # state changes since the last call

    wake: Callable[[], None]                   # the device calls it when a deadline moved
    # set to node.safety_deadline: the supervisor's backstop for a safety action this process
    # might fail to take (SPEC safety=True); False when it was not armed
    deadline: Callable[[float | None], bool]


def execute(controller: Controller, data: Any) -> tuple[str, dict[str, Any]]:
    """Apply one command; returns (journal kind, ack result). Pure of any node machinery."""
    if not isinstance(data, dict):
        return "command_refused", {"ok": False, "error": f"a command must be a map of fields, "
                                                         f"not {type(data).__name__}"}
    try:
        result = controller.apply(data)
    except CommandRefused as exc:
        return "command_refused", {"ok": False, "error": str(exc)}
    except DriverError as exc:
        return "command_failed", {"ok": False, "error": str(exc)}
    return "command_applied", {"ok": True, **result}


def _journal(node, kind: str, **fields: Any) -> tuple[str, bool] | None:
    """Record durably; None when written, else (why not, whether the journal is reachable)."""
    try:
        node.record(kind, sync=True, **fields)
    except NoAck as exc:     # the supervisor does not answer
        return str(exc), False
    except NodeError as exc:   # the content, or the journal's disk
        return str(exc), True
    return None


def handle_command(node, controller: Controller, event) -> dict[str, Any]:
    """Journal (durably), apply, journal the outcome, then ack one command event; returns the
    ack result. A command that cannot be journaled is refused and never applied."""
    src = event.command.src if event.command is not None else ""  # the sending node's id
    where = dict(id=event.id, input=event.input, src=src)
    problem = _journal(node, "command_received", **where, command=event.data)
    if problem is not None:
        reason, reachable = problem
        result = {"ok": False, "error": f"refused, not applied: the command cannot be "
                                        f"journaled ({reason})"}
        node.log.warning("command %s on %s: %s", event.id, event.input, result["error"])
        # the id and the reason are plain text, which a working journal can hold
        if reachable and _journal(node, "command_unjournalable", **where,
                                  error=result["error"]) is not None:
            node.log.error("command %s: the journal refused the refusal too", event.id)
        event.ack(result)
        return result
    kind, result = execute(controller, event.data)
    if not result["ok"]:
        node.log.warning("command %s on %s: %s", event.id, event.input, result["error"])
    problem = _journal(node, kind, **where, command=event.data, result=result)
    if problem is not None:   # applied, and its receipt is journaled: the ack must still go
        node.log.error("command %s: outcome %s not journaled: %s", event.id, kind, problem[0])
    event.ack(result)
    return result


class StateLog:
    """The record a sim driver keeps: one JSON line per state change,
    ``{"t_ns": wall clock, "mono_ns": monotonic, "pid", **state}``, flushed at once so it
    survives a SIGKILL of the process (the kernel has it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def write(self, **state: Any) -> None:
        self._file.write(json.dumps({"t_ns": time.time_ns(), "mono_ns": time.monotonic_ns(),
                                     "pid": os.getpid(), **state}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def device_params(what: str) -> list[Param]:
    """The parameters every stateful device (lock, motor) has besides its own."""
    return [
        Param("sim_file", str, "", f"sim: JSON-lines record of {what} changes "
                                   f"(default: <state dir>/<node id>.{what}.jsonl)"),
        Param("state_period_s", float, 1.0, "republish the state this often (for late readers)",
              min=0.05, max=3600.0),
    ]


def sim_file(node, what: str) -> Path:
    """Where a sim driver records its state: the ``sim_file`` param, else
    ``<state dir>/<node id>.<what>.jsonl`` (the state dir survives restarts)."""
    if node.params["sim_file"]:
        return Path(node.params["sim_file"])
    return Path(node.config.state_dir or ".") / f"{node.id}.{what}.jsonl"


# Causes of state changes the device made by itself: journaled (a command is journaled anyway).
SELF_CAUSES = ("timeout", "deadman")


def secret(node, param: str) -> str:
    """The value of the environment variable that parameter ``param`` names ("" if unset):
    secrets stay out of graph files."""
    name = node.params[param]
    if not name:
        return ""
    value = os.environ.get(name)
    if not value:
        raise DriverError(f"{param} names ${name}, which is not set in the node's environment "
                          f"(the graph's env: or the service's EnvironmentFile=)")
    return value


def serve(node, make: Callable[[], Controller], device: bool = False,
          state_period_s: float = 1.0) -> None:
    """Build the controller with ``make()`` and run the node's event loop over it.

    A DriverError or ValueError from ``make`` (no such GPIO chip, the serial port is busy, a bad
    URL) ends the node with that one message instead of a traceback; the supervisor retries
    with backoff. With ``device=True`` the controller is a ``Device``: its safety checks run on
    a SafetyTimer and its state is published on the ``state`` output at each change and every
    ``state_period_s``."""
    try:
        controller = make()
    except (DriverError, ValueError) as exc:
        node.log.error("cannot start: %s", exc)
        raise SystemExit(1) from None
    timer = None
    if device:
        # The timer thread changes state on its own (re-lock, dead-man stop); it wakes the loop
        # (node.post) to publish those changes at once: no polling timer.
        timer = SafetyTimer(controller.check, name=f"{node.id}-safety",
                            after=lambda: node.post("safety"))
        controller.wake = timer.poke
        controller.deadline = node.safety_deadline
        node.timer("state", state_period_s)
    try:
        node.ready()
        for event in node:
            if event.kind == "command":
                handle_command(node, controller, event)
            if timer is None:
                continue
            timer.raise_if_failed()
            if event.timer == "state":
                node.publish("state", controller.state())
            for change in controller.changes():
                node.publish("state", change)
                if change.get("cause") in SELF_CAUSES:
                    node.record("actuator_state", **change)
    finally:
        if timer is not None:
            timer.close()
        controller.close()


class SafetyTimer:
    """A thread that calls ``check()`` whenever it asked to be called next.

    ``check()`` performs whatever safety action is due (re-lock, stop the motors) and returns
    the seconds until it next needs to run, or None when nothing is pending. ``poke()`` makes it
    run now (after a command changed the deadline). It runs on its own thread, so a slow or
    blocked event loop (a journal write waiting on the supervisor, a busy user callback) cannot
    delay a safety action.
    """

    def __init__(self, check: Callable[[], float | None], name: str = "safety",
                 after: Callable[[], None] = lambda: None) -> None:
        self._check = check
        self._after = after       # after each check that may have changed state
        self._cond = threading.Condition()
        self._poked = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def poke(self) -> None:
        with self._cond:
            self._poked = True
            self._cond.notify()

    def raise_if_failed(self) -> None:
        """Re-raise, on the caller's thread, an exception the check raised (the timer stopped)."""
        if self._error is not None:
            raise RuntimeError("the actuator's safety timer failed") from self._error

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while True:
                wait = self._check()
                self._after()
                with self._cond:
                    if self._closed:
                        return
                    if not self._poked:
                        self._cond.wait(timeout=None if wait is None else _bounded(wait))
                    self._poked = False
                    if self._closed:
                        return
        except BaseException as exc:  # handed to the event loop, which re-raises
            log.exception("safety timer %s failed", self._thread.name)
            self._error = exc


# The longest the safety timer sleeps at once. A controller's deadline is bounded by its params,
# but a wait past what the platform's clock holds raises OverflowError and would kill the timer
# (and so the node); a longer deadline just means another check after a day.
MAX_WAIT_S = 86400.0


def _bounded(wait: float) -> float:
    """``wait`` within 0..MAX_WAIT_S (NaN, which compares false both ways, becomes 0: check now)."""
    return min(wait, MAX_WAIT_S) if wait > 0 else 0.0


def number(command: dict[str, Any], key: str, lo: float, hi: float,
           default: float | None = None) -> float:
    """A numeric command field within [lo, hi], or CommandRefused naming the field."""
    value = command.get(key, default)
    if value is None:
        raise CommandRefused(f"missing '{key}' (a number from {lo:g} to {hi:g})")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise CommandRefused(f"'{key}' must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise CommandRefused(f"'{key}' = {value:g} is outside {lo:g}..{hi:g}")
    return float(value)


_FIELD = re.compile(r"\{(\w+)\}")


def fill(template: str, fields: dict[str, Any], what: str,
         escape: Callable[[str], str] = lambda text: text) -> str:
    """Replace each ``{name}`` in ``template`` by the command's field ``name``.

    Deliberately not ``str.format`` (which reaches attributes and items: ``{x.__class__}``):
    only plain names, and a missing one refuses the command instead of sending a half-filled
    topic, URL or argument. ``escape`` encodes each value for where it goes (URL quoting).
    """
    def one(match: re.Match) -> str:
        name = match[1]
        if name not in fields:
            raise CommandRefused(f"{what} {template!r} needs the field '{name}', which the "
                                 f"command does not have")
        value = fields[name]
        if isinstance(value, str):
            return escape(value)
        try:     # msgpack carries bytes and NaN, which have no faithful JSON text
            return escape(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise CommandRefused(f"{what} {template!r}: the field '{name}' cannot be written "
                                 f"as text: {exc}") from exc
    return _FIELD.sub(one, template)


def has_fields(template: str) -> bool:
    return _FIELD.search(template) is not None
