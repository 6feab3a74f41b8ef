"""Attack 12 (the smaller ones of this helper): another user read the journal, because the state
folder and journal were created with the umask's modes outside systemd; and the shipped door
rule was a deny-list (`name != "unknown"`), so a face named b"unknown" (bytes) unlocked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from iotrt.journal import Journal
from iotrt.rules import Engine, Message, SendCommand, load_rules

RULES = load_rules(Path(__file__).resolve().parents[2] / "configs" / "door.rules.yaml")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_state_folders_and_journal_are_private_whatever_the_umask(shared_tmp, as_other):
    root = shared_tmp / "state"
    old = os.umask(0o022)     # a login shell's usual umask, outside systemd's UMask=0077
    try:
        with Journal(root / "door" / "journal.db") as j:
            j.write("command_applied", "lock", {"who": "owner"})
            assert mode(root) == mode(root / "door") == 0o700
            for f in ("journal.db", "journal.db-wal"):
                assert mode(root / "door" / f) == 0o600, f
            peek = as_other(["cat", str(root / "door" / "journal.db")])
            assert peek.returncode != 0 and "Permission denied" in peek.stderr
    finally:
        os.umask(old)


def unlocks(*frames) -> list:
    engine = Engine(RULES)
    out = []
    for i, frame in enumerate(frames):
        out += engine.handle(Message("faces", frame), i * 0.1)
    return [a for a in out if isinstance(a, SendCommand) and a.output == "lock"]


@pytest.mark.parametrize("face", [
    {"name": b"unknown", "score": 0.99},                       # the attack: bytes, no `known`
    {"name": "Unknown", "score": 0.99, "known": False},
    {"name": "owner", "score": 0.99},                          # an enrolled name, not marked
    {"name": "owner", "score": 0.99, "known": "true"},         # truthy, but not True
    {"name": "owner", "score": 0.99, "known": 1},
])
def test_door_rule_unlocks_only_for_faces_marked_enrolled(face):
    frame = {"faces": [{**face, "box": [0, 0, 9, 9]}]}
    assert unlocks(frame, frame, frame) == []


def test_door_rule_still_unlocks_for_an_enrolled_face():
    frame = {"faces": [{"name": "owner", "score": 0.9, "known": True, "box": [0, 0, 9, 9]}]}
    (cmd,) = unlocks(frame, frame)
    assert cmd.data["who"] == "owner" and cmd.data["action"] == "unlock"
