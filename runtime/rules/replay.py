"""Run rules offline against a list of messages with a simulated clock (`iotrt rules test`).

A messages file is YAML or JSON (a list), or JSON lines (.jsonl, e.g. recorded), each entry:

    - {t: 0.0, topic: faces, data: {faces: [{name: owner, score: 0.93}]}}
    - {t: 0.1, topic: faces, data: {faces: []}}
    - {t: 40}                        # no topic: only time passes (absences, intervals, delays)

`t` is seconds from the start; without it an entry comes `gap` seconds after the previous one.
A recorded entry may give `stamp_ns` (monotonic ns) instead; times are then relative to the
first stamp. The output of `iotrt echo TOPIC` (a `--- topic seq=...` line, then the data as
JSON) is read too, one message every `gap` seconds. A topic `node/output` also matches triggers
on `output`, the name a rule node usually gives that input. Between entries the simulated clock
stops at every moment the engine has something due, so holds, delays, absences and intervals
fire at their exact times.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotrt.rules.actions import TICK, Action, Message
from iotrt.rules.engine import Engine
from iotrt.rules.source import LocatedList, Problem, RulesError, load_located

_ECHO_HEADER = re.compile(r"^--- (\S+) seq=\d+ ")

# How long after the last message a replay keeps going to finish runs waiting on a delay.
DRAIN_LIMIT_S = 3600.0


@dataclass(frozen=True)
class Entry:
    t: float
    topic: str | None
    data: Any


def load_messages(path: str | Path, gap: float = 0.1) -> list[Entry]:
    """Read a messages file; raises RulesError with file:line for a malformed entry."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError([Problem(file, 0, f"cannot read messages: {exc}")]) from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    if _ECHO_HEADER.match(first):
        return _echo_entries(text, file, gap)
    if path.suffix == ".jsonl":
        raw, lines = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise RulesError([Problem(file, n, f"bad JSON: {exc.msg}")]) from None
                lines.append(n)
    else:
        doc, problems = load_located(text, file)  # JSON is YAML too
        if problems:
            raise RulesError(problems)
        if not isinstance(doc, list):
            raise RulesError([Problem(file, 1, "a messages file is a list of {t, topic, data}")])
        raw = doc
        lines = doc.item_lines if isinstance(doc, LocatedList) else [1] * len(doc)
    return _entries(raw, lines, file, gap)


def _echo_entries(text: str, file: str, gap: float) -> list[Entry]:
    entries, topic, header_line = [], None, 0
    for n, line in enumerate(text.splitlines(), 1):
        m = _ECHO_HEADER.match(line)
        if m:
            topic, header_line = m.group(1), n
        elif line.strip():
            if topic is None:
                raise RulesError([Problem(file, n, "data without a '--- topic seq=...' line")])
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RulesError([Problem(file, n, f"bad JSON after line {header_line}: "
                                                   f"{exc.msg}")]) from None
            entries.append(Entry(len(entries) * gap, topic, data))
            topic = None
    return entries


def _entries(raw: list, lines: list[int], file: str, gap: float) -> list[Entry]:
    entries: list[Entry] = []
    problems: list[Problem] = []
    t, first_stamp = 0.0, None
    for item, line in zip(raw, lines):
        if not isinstance(item, dict):
            problems.append(Problem(file, line, "each message is a mapping {t, topic, data}"))
            continue
        unknown = set(item) - {"t", "topic", "data", "stamp_ns", "seq", "src", "trace"}
        if unknown:
            problems.append(Problem(file, line, f"unknown keys {sorted(unknown)}; "
                                                f"use t, topic, data (or stamp_ns)"))
            continue
        if "t" in item:
            value = item["t"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(Problem(file, line, f"t must be seconds, got {value!r}"))
                continue
            new_t = float(value)
        elif "stamp_ns" in item and isinstance(item["stamp_ns"], int):
            first_stamp = item["stamp_ns"] if first_stamp is None else first_stamp
            new_t = (item["stamp_ns"] - first_stamp) / 1e9
        else:
            new_t = t + gap if entries else 0.0
        if new_t < t:
            problems.append(Problem(file, line, f"t={new_t:g} goes back in time (previous {t:g})"))
            continue
        topic = item.get("topic")
        if topic is not None and not isinstance(topic, str):
            problems.append(Problem(file, line, f"topic must be a string, got {topic!r}"))
            continue
        t = new_t
        entries.append(Entry(t, topic, item.get("data")))
    if problems:
        raise RulesError(problems)
    return entries


def replay(engine: Engine, entries: Iterable[Entry], start: dt.datetime,
           until: float | None = None) -> list[tuple[float, Action]]:
    """Feed `entries` to `engine` on a simulated clock starting at wall time `start`.

    Runs to `until` seconds (default: the last entry), then on to finish runs still waiting
    on a delay (at most DRAIN_LIMIT_S more). Returns (t, action) pairs in order.
    """
    out: list[tuple[float, Action]] = []
    now = 0.0

    def step(event: Message | Any, t: float) -> None:
        nonlocal now
        now = t
        for action in engine.handle(event, t, start + dt.timedelta(seconds=t)):
            out.append((t, action))

    def advance(to: float) -> None:
        while (due := engine.next_due()) is not None and due < to:
            step(TICK, max(due, now))

    step(TICK, 0.0)
    entries = list(entries)
    for entry in entries:
        advance(entry.t)
        if entry.topic:
            output = entry.topic.rsplit("/", 1)[-1]
            step(Message(entry.topic, entry.data, (output,) if output != entry.topic else ()),
                 entry.t)
        else:
            step(TICK, entry.t)
    end = until if until is not None else (entries[-1].t if entries else 0.0)
    advance(end)
    step(TICK, max(end, now))
    limit = end + DRAIN_LIMIT_S
    while engine.running() and (due := engine.next_due()) is not None and due <= limit:
        step(TICK, max(due, now))
    return out
