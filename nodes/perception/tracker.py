"""Faces followed across frames, so one visit is one episode.

A detector misses a face now and then (motion blur, a turned head) and the matcher names a face
`unknown` in a frame where it was not sure. Frame by frame, one visit then looks like several:
the rules see the faces come and go, and the journal several arrivals. The `Tracker` links each
frame's faces to the faces of earlier frames by the overlap of their boxes (IoU, greedily,
best overlap first), and keeps a face that was not detected for a short hold (`hold_s` of
capture time) as a *held* face, so a missed frame is not a departure.

Each face of the identity output then carries:

    "track": 3,           # the same number for as long as the face is followed
    "held": false,        # true: not detected in this frame, still within the hold
    "person": "owner",    # whom this track was recognised as (None: not, or not yet)

`person` is set once `confirm` of the track's frames matched the same enrolled person (one
lucky match does not name a stranger) and stays for the track's life. The per-frame evidence
is unchanged: `name`, `score` and `known` say what *this* frame matched, and a held face has
`known: false` and score 0 (it was not seen), so a rule that unlocks on `known` still needs
recognitions in real frames. Rules that count presence (a visitor at the door) use `person`.

The message also gets `people` (the persons of the tracks in view, sorted) and `visitors`
(tracks in view recognised as nobody), the view the journal's `faces_seen` follows.

The limit of linking by overlap: a face that takes the place of another within the hold (a
stranger stepping into the box the owner just left, overlapping it by `min_iou`) continues
that track and its `person`, so the door's visitor rule would not announce them. Nothing
that unlocks reads `person`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Faces of one message that are tracked (more are passed through with `track: None`): the
# association is quadratic in faces x tracks, and a message is untrusted input.
MAX_TRACKS = 32


def iou(a: Any, b: Any) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (0 for anything malformed)."""
    try:
        ax1, ay1, ax2, ay2 = (float(v) for v in a)
        bx1, by1, bx2, by2 = (float(v) for v in b)
    except (TypeError, ValueError):
        return 0.0
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if not (iw > 0 and ih > 0):  # (also false for NaN)
        return 0.0
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    value = inter / union if union > 0 else 0.0
    return value if math.isfinite(value) else 0.0


@dataclass
class Track:
    id: int
    box: list
    seen_ns: int  # capture stamp of the last frame that detected it
    votes: Counter = field(default_factory=Counter)  # enrolled name -> frames matched
    person: str | None = None


class Tracker:
    """Links faces across frames; `update(out, stamp_ns)` adds the track fields to one identity
    output (in place, and returns it)."""

    def __init__(self, hold_s: float = 1.0, min_iou: float = 0.3, confirm: int = 2) -> None:
        self.hold_ns = int(hold_s * 1e9)
        self.min_iou = min_iou
        self.confirm = confirm
        self.tracks: list[Track] = []
        self._next = 1
        self._last_ns: int | None = None

    def update(self, out: dict, stamp_ns: int) -> dict:
        # Capture stamps only go forward; one from the past counts as no time passing.
        now = stamp_ns if self._last_ns is None else max(stamp_ns, self._last_ns)
        self._last_ns = now
        faces = out["faces"]
        tracked = faces[:MAX_TRACKS]
        pairs = sorted(((iou(t.box, f.get("box")), ti, fi)
                        for ti, t in enumerate(self.tracks) for fi, f in enumerate(tracked)),
                       key=lambda p: p[0], reverse=True)
        track_of: dict[int, Track] = {}
        used: set[int] = set()
        for overlap, ti, fi in pairs:
            if overlap < self.min_iou:
                break
            if ti in used or fi in track_of:
                continue
            used.add(ti)
            track_of[fi] = self.tracks[ti]
        detected: set[int] = set()
        for fi, face in enumerate(tracked):
            track = track_of.get(fi)
            if track is None:
                if len(self.tracks) >= MAX_TRACKS:
                    face.update(track=None, held=False, person=None)
                    continue
                track = Track(self._next, face.get("box"), now)
                self._next += 1
                self.tracks.append(track)
            track.box, track.seen_ns = face.get("box"), now
            detected.add(track.id)
            if face.get("known") is True:
                track.votes[face["name"]] += 1
                name, count = track.votes.most_common(1)[0]
                if count >= self.confirm:
                    track.person = name
            face.update(track=track.id, held=False, person=track.person)
        for face in faces[MAX_TRACKS:]:
            face.update(track=None, held=False, person=None)
        self.tracks = [t for t in self.tracks if now - t.seen_ns <= self.hold_ns]
        for t in self.tracks:
            if t.id not in detected:
                faces.append({"name": "unknown", "score": 0.0, "known": False, "box": t.box,
                              "track": t.id, "held": True, "person": t.person})
        live = [f for f in faces if f["track"] is not None]
        out["people"] = sorted({f["person"] for f in live if f["person"]})
        out["visitors"] = sum(f["person"] is None for f in live)
        return out
