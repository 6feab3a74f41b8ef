"""Checks shared by the rules schema and the trigger modules: each turns one YAML value into a
typed value or raises `Invalid` with the line to report (collected into RulesError)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from iotrt.rules.expressions import Expression, ExpressionError, compile_expression
from iotrt.rules.source import LocatedDict, LocatedList
from iotrt.yamlcheck import suggest

# Variables an expression can use (documented in docs/rules.md).
NAMES = ("msg", "topic", "trigger", "state", "last", "now", "hour", "minute", "weekday")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|sec|m|min|h)?\s*$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
_TOPIC = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")  # an input name or a bus topic


class Invalid(Exception):
    """One problem at one line; collected into RulesError by the caller."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def parse_duration(value: Any, line: int = 0) -> float:
    """'5s', '250ms', '2min', '1h' or a number of seconds -> seconds (float, >= 0)."""
    if isinstance(value, bool):
        raise Invalid(line, f"expected a duration like '5s', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value)) if isinstance(value, str) else None
        if not m:
            raise Invalid(line, f"expected a duration like '5s', '250ms' or '2min', got {value!r}")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise Invalid(line, f"a duration must be a finite number >= 0, got {value!r}")
    return seconds


def line_of(obj: Any, key: Any, default: int) -> int:
    """The line of `obj[key]` in its YAML file (default when `obj` came from Python)."""
    if isinstance(obj, (LocatedDict, LocatedList)):
        return obj.line_of(key)
    return default


def check_keys(d: Mapping, allowed: tuple[str, ...], what: str, line: int) -> None:
    for key in d:
        if key not in allowed:
            hint = suggest(key, allowed)
            raise Invalid(line_of(d, key, line),
                          f"unknown key '{key}' in {what}{hint}; allowed: {', '.join(allowed)}")


def mapping(value: Any, what: str, line: int) -> Mapping:
    if not isinstance(value, Mapping):
        raise Invalid(line, f"{what} must be a mapping, got {type(value).__name__}")
    return value


def name(value: Any, what: str, line: int) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise Invalid(line, f"{what} must be a name (letters, digits, _ . -), got {value!r}")
    return value


def topic(value: Any, what: str, line: int) -> str:
    if not isinstance(value, str) or not _TOPIC.match(value):
        raise Invalid(line, f"{what} must be an input name or a topic like node/output, "
                            f"got {value!r}")
    return value


def expression(value: Any, what: str, line: int) -> Expression:
    try:
        return compile_expression(value, NAMES)
    except ExpressionError as exc:
        raise Invalid(line, f"{what}: {exc} in {value!r}") from None


def number(value: Any, what: str, line: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(line, f"{what} must be a number, got {value!r}")
    return float(value)


def time_of_day(value: Any, line: int) -> dt.time:
    try:
        return dt.time.fromisoformat(str(value))
    except ValueError:
        raise Invalid(line, f"expected a time of day like \"07:30\" or \"22:15:00\", "
                            f"got {value!r}") from None
