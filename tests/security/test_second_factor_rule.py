"""docs/security.md's second-factor rule: an enrolled face unlocks only within 30 s after a
correct keypad code, and each code entry opens the door once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iotrt.rules import TICK, Engine, Message, SendCommand, load_rules

DOC = Path(__file__).parents[2] / "docs" / "security.md"
FACE = {"faces": [{"name": "owner", "score": 0.9, "known": True, "box": [0, 0, 9, 9]}]}
PHOTO_OF_A_STRANGER = {"faces": [{"name": "unknown", "score": 0.0, "known": False, "box": [0] * 4}]}


@pytest.fixture
def run(tmp_path):
    (block,) = re.findall(r"```yaml rules\n(.*?)```", DOC.read_text(), re.S)
    path = tmp_path / "door.2fa.rules.yaml"
    path.write_text(block)

    def feed(events):
        """events: (t, topic, data); returns the times of the unlock commands."""
        engine = Engine(load_rules(path))
        out = []
        for t, topic, data in events:
            while (due := engine.next_due()) is not None and due < t:
                out += [(due, a) for a in engine.handle(TICK, due)]
            out += [(t, a) for a in engine.handle(Message(topic, data), t)]
        return [t for t, a in out if isinstance(a, SendCommand) and a.output == "lock"]
    return feed


def test_a_face_alone_never_unlocks(run):
    assert run([(t / 10, "faces", FACE) for t in range(100)]) == []


def test_face_within_the_window_after_a_code_unlocks_once(run):
    events = [(0.0, "keypad", {"ok": True})] + [(10 + t / 10, "faces", FACE) for t in range(50)]
    assert run(events) == [10.1]


def test_the_window_closes_and_a_wrong_code_opens_none(run):
    late = [(0.0, "keypad", {"ok": True})] + [(31 + t / 10, "faces", FACE) for t in range(5)]
    assert run(late) == []
    wrong = [(0.0, "keypad", {"ok": "yes"})] + [(1 + t / 10, "faces", FACE) for t in range(5)]
    assert run(wrong) == []


def test_a_code_does_not_help_a_stranger(run):
    events = [(0.0, "keypad", {"ok": True})] + [(1 + t / 10, "faces", PHOTO_OF_A_STRANGER)
                                                  for t in range(5)]
    assert run(events) == []
