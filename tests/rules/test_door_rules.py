"""configs/door.rules.yaml: unlock for an enrolled person, visitor event for others, never unlock
for an unknown face."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from iotrt.rules import Engine, Message, SendCommand, load_rules

RULES = load_rules(Path(__file__).resolve().parents[2] / "configs" / "door.rules.yaml")


def faces(*people):
    return {"faces": [{"name": n, "score": s, "known": n != "unknown", "box": [0, 0, 10, 10]}
                      for n, s in people]}


def feed(frames, dt=0.1):
    engine = Engine(RULES)
    out = []
    for i, frame in enumerate(frames):
        out += [(i, a) for a in engine.handle(Message("faces", frame), i * dt)]
    return out


def test_owner_unlocks_for_five_seconds_after_two_frames():
    out = feed([faces(("owner", 0.93)), faces(("owner", 0.91))])
    cmds = [(i, a) for i, a in out if isinstance(a, SendCommand)]
    assert [(i, a.output, a.data["action"], a.data["duration_s"]) for i, a in cmds] == [
        (1, "lock", "unlock", 5)]
    assert cmds[0][1].data["who"] == "owner"


def test_one_misrecognised_frame_does_not_unlock():
    out = feed([faces(("owner", 0.93)), faces(), faces(("owner", 0.9)), faces()])
    assert not any(isinstance(a, SendCommand) and a.output == "lock" for _, a in out)


def test_low_score_enrolled_face_does_not_unlock():
    out = feed([faces(("owner", 0.6))] * 10)
    assert not any(isinstance(a, SendCommand) and a.output == "lock" for _, a in out)


def test_unknown_face_is_a_visitor_event_once_per_visit():
    out = feed([faces(("unknown", 0.7))] * 50)  # 5 s of a visitor standing there
    assert not any(isinstance(a, SendCommand) and a.output == "lock" for _, a in out)
    notes = [a for _, a in out if isinstance(a, SendCommand) and a.output == "doorbell"]
    assert len(notes) == 1 and notes[0].label == "notify"
    assert "not enrolled" in notes[0].data["message"]
    snaps = [a for _, a in out if isinstance(a, SendCommand) and a.output == "snapshot"]
    assert len(snaps) == 1 and snaps[0].data == {"reason": "visitor"}


def test_owner_staying_keeps_the_door_unlocked_every_four_seconds():
    out = feed([faces(("owner", 0.95))] * 100)  # 10 s at 10 frames/s
    unlock_frames = [i for i, a in out if isinstance(a, SendCommand) and a.output == "lock"]
    assert unlock_frames == [1, 41, 81]


NAMES = st.sampled_from(["owner", "alice", "unknown"])
FRAME = st.lists(st.tuples(NAMES, st.floats(0, 1)), max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(FRAME, max_size=60))
def test_property_never_unlocks_without_two_confident_enrolled_frames(frames):
    out = feed([faces(*f) for f in frames])
    for i, a in out:
        if isinstance(a, SendCommand) and a.output == "lock":
            assert i >= 1
            for frame in (frames[i - 1], frames[i]):
                assert any(n != "unknown" and s >= 0.8 for n, s in frame)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1), max_size=3), max_size=60))
def test_property_unknown_faces_alone_never_unlock(scores):
    out = feed([faces(*[("unknown", s) for s in frame]) for frame in scores])
    assert not any(isinstance(a, SendCommand) and a.output == "lock" for _, a in out)
