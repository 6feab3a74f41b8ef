"""What `iotrt up` prints: log lines with a timestamp (unless journald adds its own), and one
concise line per decision-level journal record.

The supervisor journals every record the nodes send; the decisions among them (who was
recognised, what a rule told an actuator to do, an actuator's new state and why, a file a
node saved, a failure) also get one line on the console through `decision_line`, so a user
watching `iotrt up` sees the device decide. Everything else stays in the journal
(`iotrt events`). Records come from other processes: every field is checked, text is cut to a
bounded length and stripped of control characters (no terminal escapes from a gallery name).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

MAX_TEXT = 120       # characters of any one value shown
MAX_NAMES = 5        # names listed in one line

# kind -> log level of its line (kinds not listed are not shown)
SHOWN = {"faces_seen": logging.INFO, "command_sent": logging.INFO,
         "command_applied": logging.INFO, "actuator_state": logging.INFO,
         "rules_reloaded": logging.INFO, "command_failed": logging.WARNING,
         "rule_error": logging.WARNING, "rule_disabled": logging.WARNING,
         "rules_reload_failed": logging.WARNING}


def under_journald() -> bool:
    """systemd connects our output to journald and says so in JOURNAL_STREAM; journald stamps
    each line itself (node processes inherit the variable, and their lines reach journald
    through the supervisor)."""
    return bool(os.environ.get("JOURNAL_STREAM"))


def setup_logging(level: int | str = logging.INFO) -> None:
    """Root logging to stderr for the `iotrt` entry points (a no-op if logging is set up
    already): '12:04:31.207 INFO name: message', without the time under journald."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not under_journald():
        fmt = "%(asctime)s.%(msecs)03d " + fmt
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S")


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """A value from a record as one bounded, printable line."""
    s = value if isinstance(value, str) else repr(value)
    s = "".join(c if c.isprintable() else "?" for c in s[:limit + 1])
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _seconds(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.3g} s"
    return None


def _names(value: Any) -> list[str]:
    names = [text(n, 40) for n in value[:MAX_NAMES + 1] if isinstance(n, str)] \
        if isinstance(value, list) else []
    return names[:MAX_NAMES] + (["..."] if len(names) > MAX_NAMES else [])


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _action(data: Any, label: Any) -> str:
    """What a command asks, in a few words: its action and fields, else its label."""
    named = isinstance(label, str) and label and label != "command"   # "command": no label
    if named and not (isinstance(data, dict) and isinstance(data.get("action"), str)):
        return text(label, 60)
    if not isinstance(data, dict):
        return text(data, 60)
    parts = [text(data["action"], 30)] if isinstance(data.get("action"), str) else []
    for key, value in list(data.items())[:6]:
        if key == "action":
            continue
        parts.append(f"{text(key, 20)}={text(value, 40)}")
    return text(" ".join(parts), 80)


def decision_line(kind: str, node: str, fields: dict) -> str | None:
    """The console line for one journal record, or None if it is not a decision."""
    if kind not in SHOWN or not isinstance(fields, dict):
        return None
    who = text(node, 40)
    f = fields
    if kind == "faces_seen":
        known, unknown = _names(f.get("known")), _count(f.get("unknown"))
        parts = [f"recognised {', '.join(known)}"] if known else []
        if unknown:
            parts.append(f"{unknown} unknown face{'s' if unknown > 1 else ''}")
        return f"{who}: {'; '.join(parts)}" if parts else None
    if kind == "command_sent":
        return (f"{who}: rule {text(f.get('rule'), 40)} -> {text(f.get('output'), 40)}: "
                f"{_action(f.get('data'), f.get('label'))}")
    if kind == "command_failed":
        return (f"{who}: rule {text(f.get('rule'), 40)} -> {text(f.get('output'), 40)} failed: "
                f"{text(f.get('error', 'no acknowledgement'))}")
    if kind == "command_applied":
        result = f.get("result")
        if not isinstance(result, dict):
            return None
        if isinstance(result.get("path"), str):
            return f"{who}: saved {text(result['path'], 200)}"
        if isinstance(result.get("state"), str):
            line = f"{who}: {text(result['state'], 40)}"
            secs = _seconds(result.get("relock_in_s"))
            line += f" for {secs}" if secs else ""
            command = f.get("command")
            if isinstance(command, dict) and isinstance(command.get("who"), str):
                line += f" ({text(command['who'], 40)})"
            return line
        return None
    if kind == "actuator_state":
        if not isinstance(f.get("locked"), bool):
            return None
        cause = text(f.get("cause", "?"), 40)
        if f["locked"]:
            return f"{who}: locked ({cause})" if cause == "start" else f"{who}: re-locked ({cause})"
        secs = _seconds(f.get("relock_in_s"))
        return f"{who}: unlocked ({cause})" + (f", re-locks in {secs}" if secs else "")
    if kind == "rules_reloaded":
        rules = f.get("rules")
        return f"{who}: reloaded {len(rules) if isinstance(rules, list) else '?'} rules"
    if kind == "rule_error":
        return f"{who}: rule {text(f.get('rule'), 40)} failed: {text(f.get('error'))}"
    if kind == "rule_disabled":
        return f"{who}: rule {text(f.get('rule'), 40)} disabled: {text(f.get('reason'))}"
    return f"{who}: reloading {text(f.get('file'), 200)} failed; the old rules stay"
